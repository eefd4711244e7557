"""Interactive explorers for the notebooks: the update logic is plain functions (tested),
the ipywidgets user interface only wires sliders to them.

- :func:`kernel_explorer_state`: one HR image, one kernel (λ1, λ2, θ), a scale and a noise
  level -> the LR image of Eq. (1), its bicubic upsampling and their PSNR / SSIM.
- :func:`kernel_explorer`: sliders for λ1, λ2, θ, the scale and the noise, and a figure
  (:func:`tutorial_lib.plots.plot_explorer_state`) redrawn whenever a slider moves.

ipywidgets is imported only inside the functions that build a user interface, so this
module imports without it. Later notebooks add their explorers here (one state function,
one builder each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import kernels as kernel_lib
from .degradations import SCALES, bicubic_upsample, degrade
from .metrics import psnr_y, ssim_y


# ------------------------------------------------------------------------ kernel explorer
def _positive_number(value: Any, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")  # noqa: TRY004
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        expected = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {expected}, got {value!r}")
    return value


def kernel_explorer_state(hr: np.ndarray, lambda1: float, lambda2: float, theta: float,
                          scale: int, noise_sigma: float, kernel_size: int = 11,
                          seed: int = 0) -> dict[str, Any]:
    """Degrade ``hr`` with one anisotropic Gaussian kernel (Eq. 1) and upsample it by bicubic.

    Args:
        hr: HR image, float (H, W) in [0, 1]; modcropped to ``scale``.
        lambda1, lambda2: variances (px², > 0) along the kernel's two principal axes.
        theta: angle of the first axis in radians, (row, col) coordinates
            (:mod:`tutorial_lib.kernels`).
        scale: the upscaling factor u, one of 2, 3, 4.
        noise_sigma: standard deviation (>= 0, in [0, 1] image units) of the Gaussian noise
            added to the LR image; the noise is drawn from ``numpy.random.default_rng(seed)``,
            so a state repeats exactly.
        kernel_size: odd side of the kernel window (the paper: 11).

    Returns a dict: ``kernel`` (k, k) summing to 1, ``covariance`` (2, 2), ``hr`` (the
    modcropped HR, (u·h, u·w)), ``lr`` (h, w) float (not rounded), ``bicubic`` (u·h, u·w),
    ``psnr`` (dB) and ``ssim`` of bicubic against ``hr`` with the paper's protocol (Y, 8-bit
    rounding, ``shave = scale``, skimage SSIM), and ``scale``.
    """
    lambda1 = _positive_number(lambda1, "lambda1")
    lambda2 = _positive_number(lambda2, "lambda2")
    if isinstance(theta, bool) or not isinstance(theta, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(theta)):
        raise ValueError(f"theta must be a finite angle in radians, got {theta!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    noise_sigma = _positive_number(noise_sigma, "noise_sigma", allow_zero=True)
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)) \
            or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    scale = int(scale)
    hr = _cropped_hr(hr, scale, int(kernel_size))
    kernel = kernel_lib.anisotropic_gaussian(lambda1, lambda2, float(theta), int(kernel_size))
    lr = degrade(hr, kernel, scale, noise_sigma=noise_sigma, rng=np.random.default_rng(seed))
    bicubic = bicubic_upsample(lr, scale)
    return {
        "kernel": kernel,
        "covariance": kernel_lib.covariance(lambda1, lambda2, float(theta)),
        "hr": hr,
        "lr": lr,
        "bicubic": bicubic,
        "psnr": float(psnr_y(hr, bicubic, shave_border=scale)),
        "ssim": float(ssim_y(hr, bicubic, shave_border=scale)),
        "scale": scale,
    }


def _cropped_hr(hr: np.ndarray, scale: int, kernel_size: int) -> np.ndarray:
    """``hr`` modcropped to ``scale``, checked as the posterior explorer checks its images
    (:func:`tutorial_lib.posterior.check_explorer_image`), without E-Net's minimum size."""
    from .posterior import check_explorer_image
    return check_explorer_image(hr, scale, kernel_size, min_lr_side=0)


class _Explorer:
    """What the explorers share: reading the controls, redrawing the figure of the latest
    state into ``output``, and displaying as their ``widget``. A subclass sets ``controls``,
    ``output``, ``widget``, ``state`` and says which figure to draw (``_figure``)."""

    def values(self) -> dict[str, Any]:
        """Current control values, as keyword arguments of the explorer's state function."""
        return {name: control.value for name, control in self.controls.items()}

    def _figure(self) -> Any:
        raise NotImplementedError

    def _draw(self) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig = self._figure()
        self.output.clear_output(wait=True)
        with self.output:
            display(fig)
        plt.close(fig)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


@dataclass
class KernelExplorer(_Explorer):
    """The kernel explorer: ``controls`` (name -> slider), ``output`` (the figure),
    ``summary`` (a one-line HTML readout), ``widget`` (the whole user interface) and
    ``state``, the latest :func:`kernel_explorer_state`. Displaying the explorer in a
    notebook displays ``widget``."""

    hr: np.ndarray
    controls: dict[str, Any]
    output: Any
    summary: Any
    widget: Any
    kernel_size: int = 11
    seed: int = 0
    state: dict[str, Any] = field(default_factory=dict)

    def update(self, change: Any = None, draw: bool = True) -> dict[str, Any]:
        """Recompute the state from the sliders (the sliders' callback) and redraw."""
        self.state = kernel_explorer_state(self.hr, kernel_size=self.kernel_size,
                                           seed=self.seed, **self.values())
        s = self.state
        self.summary.value = (f"<b>bicubic ×{s['scale']}</b>: PSNR {s['psnr']:.2f} dB, "
                              f"SSIM {s['ssim']:.4f} &nbsp;|&nbsp; LR {s['lr'].shape[0]}×"
                              f"{s['lr'].shape[1]}, kernel sum {s['kernel'].sum():.4f}")
        if draw:
            self._draw()
        return self.state

    def _figure(self) -> Any:
        from .plots import plot_explorer_state
        return plot_explorer_state(self.state)


def _check_slider_values(ranges: dict[str, tuple[float, float]], values: dict[str, float], state_function: str
                         ) -> None:
    """A starting value outside its slider's range would be moved to the limit without a word
    (ipywidgets clamps it): refuse it instead, and say where other values can be tried."""
    for name, (low, high) in ranges.items():
        value = float(values[name])
        if not low <= value <= high:
            raise ValueError(f"{name} must lie in its slider's range [{low:g}, {high:g}], got {value:g} "
                             f"({state_function} takes any valid value)")


_KERNEL_SLIDERS = {"lambda1": (0.25, 5.0), "lambda2": (0.25, 5.0), "theta": (0.0, math.pi), "noise_sigma": (0.0, 0.05)}
_POSTERIOR_SLIDERS = {"lambda1": (0.25, 6.0), "lambda2": (0.25, 6.0), "theta": (0.0, math.pi)}


def _range_slider(ranges: dict[str, tuple[float, float]], name: str, value: float, **kwargs: Any) -> Any:
    """An ipywidgets ``FloatSlider`` for ``name`` spanning its range in ``ranges`` (the table
    the starting values are checked against)."""
    import ipywidgets as widgets

    low, high = ranges[name]
    return widgets.FloatSlider(value=value, min=low, max=high, **kwargs)


def kernel_explorer(hr: np.ndarray, lambda1: float = 0.75, lambda2: float = 3.0,
                    theta: float = math.pi / 4, scale: int = 2, noise_sigma: float = 0.0,
                    kernel_size: int = 11, seed: int = 0, draw: bool = True) -> KernelExplorer:
    """Sliders for λ1, λ2 (variances, px²), θ (radians), the scale and the noise σ, wired to
    :func:`kernel_explorer_state` on ``hr`` (float (H, W) in [0, 1]; a crop of a few hundred
    pixels keeps it responsive). Sliders update when released. ``draw=False`` builds the
    interface without drawing figures (for tests). Returns a :class:`KernelExplorer`; show
    it by making it the last expression of a cell."""
    import ipywidgets as widgets

    # validates every argument once, with the state function's messages, and hr at every scale offered
    kernel_explorer_state(hr, lambda1, lambda2, theta, scale, noise_sigma, kernel_size, seed)
    _check_slider_values(_KERNEL_SLIDERS, {"lambda1": lambda1, "lambda2": lambda2, "theta": theta,
                                           "noise_sigma": noise_sigma}, "kernel_explorer_state")
    for other in SCALES:
        _cropped_hr(hr, other, int(kernel_size))
    style = {"description_width": "110px"}
    layout = widgets.Layout(width="420px")
    common = {"continuous_update": False, "style": style, "layout": layout}
    controls = {
        "lambda1": _range_slider(_KERNEL_SLIDERS, "lambda1", lambda1, step=0.25,
                                 description="λ1 (variance, px²)", **common),
        "lambda2": _range_slider(_KERNEL_SLIDERS, "lambda2", lambda2, step=0.25,
                                 description="λ2 (variance, px²)", **common),
        "theta": _range_slider(_KERNEL_SLIDERS, "theta", theta, step=math.pi / 16,
                               readout_format=".3f", description="θ (rad)", **common),
        "scale": widgets.Dropdown(options=list(SCALES), value=int(scale), description="scale u",
                                  style=style, layout=layout),
        "noise_sigma": _range_slider(_KERNEL_SLIDERS, "noise_sigma", noise_sigma, step=0.0025,
                                     readout_format=".4f",
                                     description="noise σ ([0, 1] units)", **common),
    }
    output = widgets.Output()
    summary = widgets.HTML()
    ui = widgets.VBox([widgets.HBox([widgets.VBox(list(controls.values())[:3]),
                                     widgets.VBox(list(controls.values())[3:] + [summary])]),
                       output])
    explorer = KernelExplorer(hr=np.asarray(hr), controls=controls, output=output,
                              summary=summary, widget=ui, kernel_size=kernel_size, seed=seed)
    for control in controls.values():
        control.observe(lambda change: explorer.update(change, draw=draw), names="value")
    explorer.update(draw=draw)
    return explorer


# Posterior explorer (a later notebook): an image and a kernel -> E-Net's q and each
# expert's output, built the same way: a pure state function plus a thin builder.


# --------------------------------------------------------------------- posterior explorer
@dataclass
class PosteriorExplorer(_Explorer):
    """The posterior explorer: ``controls`` (image dropdown and λ1, λ2, θ sliders),
    ``output`` (the figure), ``summary`` (HTML readout of q and the PSNRs), ``widget`` (the
    user interface) and ``state``, the latest
    :func:`tutorial_lib.posterior.posterior_explorer_state`."""

    model: Any
    images: dict[str, np.ndarray]
    controls: dict[str, Any]
    output: Any
    summary: Any
    widget: Any
    state: dict[str, Any] = field(default_factory=dict)

    def update(self, change: Any = None, draw: bool = True) -> dict[str, Any]:
        """Recompute the state from the controls (their callback) and redraw."""
        from .posterior import posterior_explorer_state

        values = self.values()
        hr = self.images[values.pop("image")]
        self.state = posterior_explorer_state(self.model, hr, **values)
        s = self.state
        q = " ".join(f"{v:.2f}" for v in s["q"])
        best = s["best_expert"] + 1
        self.summary.value = (f"<b>q(z|L)</b> = [{q}] &nbsp;|&nbsp; PSNR: bicubic {s['psnr']['bicubic']:.2f}, "
                              f"fused {s['psnr']['fused']:.2f}, best expert {best} "
                              f"{s['psnr'][f'expert {best}']:.2f} dB")
        if draw:
            self._draw()
        return self.state

    def _figure(self) -> Any:
        from .posterior import plot_posterior_state
        return plot_posterior_state(self.state)


def posterior_explorer(model: Any, images: dict[str, np.ndarray], image: str | None = None,
                       lambda1: float = 0.75, lambda2: float = 3.0, theta: float = math.pi / 4,
                       draw: bool = True) -> PosteriorExplorer:
    """Pick an image (``images``: name -> HR float (H, W) in [0, 1]; crops of ~100–200 px keep
    it responsive) and a kernel (λ1, λ2 variances in px², θ in radians); see E-Net's
    posterior q as bars, each expert's output and the fusion with their PSNR, for the
    mixture ``model`` (a ``BlindSR`` with an E-Net). The update logic is
    :func:`tutorial_lib.posterior.posterior_explorer_state`; ``draw=False`` builds the
    interface without figures (tests). Show it by making it the last expression of a cell."""
    import ipywidgets as widgets

    from .posterior import check_explorer_image, posterior_explorer_state

    if not images:
        raise ValueError("images must hold at least one image")
    image = next(iter(images)) if image is None else image
    if image not in images:
        raise ValueError(f"image must be one of {list(images)}, got {image!r}")
    posterior_explorer_state(model, images[image], lambda1, lambda2, theta)  # validates once
    _check_slider_values(_POSTERIOR_SLIDERS, {"lambda1": lambda1, "lambda2": lambda2, "theta": theta},
                         "posterior.posterior_explorer_state")
    for name, other in images.items():  # and every image the dropdown offers
        check_explorer_image(other, int(model.scale), kernel_lib.KERNEL_SIZE, f"images[{name!r}]")
    style = {"description_width": "110px"}
    layout = widgets.Layout(width="420px")
    common = {"continuous_update": False, "style": style, "layout": layout}
    controls = {
        "image": widgets.Dropdown(options=list(images), value=image, description="image",
                                  style=style, layout=layout),
        "lambda1": _range_slider(_POSTERIOR_SLIDERS, "lambda1", lambda1, step=0.25,
                                 description="λ1 (variance, px²)", **common),
        "lambda2": _range_slider(_POSTERIOR_SLIDERS, "lambda2", lambda2, step=0.25,
                                 description="λ2 (variance, px²)", **common),
        "theta": _range_slider(_POSTERIOR_SLIDERS, "theta", theta, step=math.pi / 8,
                               readout_format=".3f", description="θ (rad)", **common),
    }
    output = widgets.Output()
    summary = widgets.HTML()
    ui = widgets.VBox([widgets.HBox([widgets.VBox(list(controls.values())[:2]),
                                     widgets.VBox(list(controls.values())[2:])]), summary, output])
    explorer = PosteriorExplorer(model=model, images=dict(images), controls=controls, output=output,
                                 summary=summary, widget=ui)
    for control in controls.values():
        control.observe(lambda change: explorer.update(change, draw=draw), names="value")
    explorer.update(draw=draw)
    return explorer
