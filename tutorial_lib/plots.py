"""Figure helpers that the notebooks share. Every function returns its matplotlib Figure,
except :func:`plot_kernel`, which draws into a given axes and returns the image it drew.

Conventions: images are float (H, W) in [0, 1] shown in gray with ``vmin=0, vmax=1``;
heat maps use perceptually uniform colour maps (viridis, cividis); categorical colours come
from the colour-blind-safe Okabe–Ito palette. Image axes are labelled in pixels
(rows downwards, columns to the right, as arrays are indexed).

- :func:`plot_kernel` draws one kernel into an existing axes, optionally with the ellipse
  of its covariance (1 standard deviation along each principal axis).
- :func:`plot_kernel_bank`: the 58 kernels of the paper in one figure, seen and unseen
  framed in two colours, exact duplicates (θ = 0 / θ = π) annotated.
- :func:`show_images`: images side by side with titles, optionally at a fixed number of
  screen pixels per image pixel, with zoomed insets.
- :func:`zoom_compare`: the same crop of a ground truth and of several restorations, with
  each restoration's PSNR (paper protocol) in its title.
- :func:`plot_matrix`: an annotated heat map (performance matrices, posteriors per kernel).
- :func:`plot_explorer_state`: the figure of :func:`tutorial_lib.widgets.kernel_explorer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Patch, Rectangle

from .metrics import psnr_y

# Okabe–Ito colours (distinguishable with the common colour-vision deficiencies)
SEEN_COLOUR = "#0072B2"  # blue
UNSEEN_COLOUR = "#E69F00"  # orange
TWIN_COLOUR = "#D55E00"  # vermillion
ZOOM_COLOUR = "#009E73"  # bluish green

Box = tuple[int, int, int, int]  # (top row, left column, height, width) in pixels


# ----------------------------------------------------------------------------- helpers
def _check_image(img: np.ndarray, name: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) image, got shape {img.shape}")
    return img


def _check_box(box: Sequence[int], shape: tuple[int, int], name: str = "box") -> Box:
    if len(box) != 4:
        raise ValueError(f"{name} must be (top, left, height, width), got {box!r}")
    top, left, height, width = (int(v) for v in box)
    if height < 1 or width < 1 or top < 0 or left < 0 \
            or top + height > shape[0] or left + width > shape[1]:
        raise ValueError(f"{name} {tuple(box)} (top, left, height, width) does not fit in an "
                         f"image of {shape[0]}x{shape[1]} pixels")
    return top, left, height, width


def _covariance_ellipse(sigma: np.ndarray, n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Points (rows, cols) of the 1-standard-deviation ellipse of a (row, col) covariance."""
    eigenvalues, eigenvectors = np.linalg.eigh(sigma)
    phi = np.linspace(0, 2 * np.pi, n)
    points = eigenvectors @ (np.sqrt(eigenvalues)[:, None] * np.stack([np.cos(phi), np.sin(phi)]))
    return points[0], points[1]


def plot_kernel(ax: plt.Axes, kernel: np.ndarray, title: str | None = None,
                covariance: np.ndarray | None = None, cmap: str = "viridis",
                vmax: float | None = None, ticks: bool = True) -> AxesImage:
    """Draw a (k, k) kernel centred on offset (0, 0); returns the AxesImage.

    ``covariance`` (2, 2) in (row, col) coordinates adds its 1-σ ellipse (white line).
    ``vmax`` defaults to the kernel's maximum (each kernel uses the full colour range).
    """
    kernel = _check_image(kernel, "kernel")
    half_r, half_c = kernel.shape[0] // 2, kernel.shape[1] // 2
    image = ax.imshow(kernel, cmap=cmap, vmin=0, vmax=vmax if vmax is not None else kernel.max(),
                      extent=(-half_c - 0.5, half_c + 0.5, half_r + 0.5, -half_r - 0.5),
                      interpolation="nearest")
    if covariance is not None:
        rows, cols = _covariance_ellipse(np.asarray(covariance, dtype=np.float64))
        ax.plot(cols, rows, color="white", lw=1.2)
    if ticks:
        ax.set_xlabel("column offset (px)")
        ax.set_ylabel("row offset (px)")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if title is not None:
        ax.set_title(title)
    return image


# -------------------------------------------------------------------------- kernel bank
def plot_kernel_bank(kernels: np.ndarray, params: Sequence, seen_indices: Sequence[int],
                     unseen_indices: Sequence[int], twins: Sequence[tuple[int, int]] = (),
                     duplicates: Sequence[tuple[int, int]] = (), cmap: str = "viridis",
                     title: str | None = None) -> Figure:
    """The kernel bank as one figure: one row per eigenvalue pair (λ1 < λ2) with one column
    per orientation step t (θ = t·π/8), and a last row with the isotropic kernels.

    Args:
        kernels: (N, k, k) bank kernels, indexed like ``params``.
        params: per kernel an object with ``index``, ``lambda1``, ``lambda2``, ``t`` and
            ``isotropic`` (:class:`tutorial_lib.kernels.KernelParams`).
        seen_indices, unseen_indices: bank indices of the two groups (blue and orange frames).
        twins: ``(seen, unseen)`` index pairs of identical kernels: both are marked with a
            vermillion star, the leak of unseen into seen.
        duplicates: all index pairs of identical kernels; each kernel of a pair gets
            "= #other" under its index.
    Each kernel uses its own colour range (its shape matters here, not its peak value).
    """
    kernels = np.asarray(kernels)
    if kernels.ndim != 3 or len(kernels) != len(params):
        raise ValueError(f"kernels must be (N, k, k) with N = len(params) = {len(params)}, "
                         f"got shape {kernels.shape}")
    seen, unseen = {int(i) for i in seen_indices}, {int(i) for i in unseen_indices}
    twin_members = {int(i) for pair in twins for i in pair}
    partner = {}
    for i, j in duplicates:
        partner[int(i)], partner[int(j)] = int(j), int(i)

    pairs = sorted({(p.lambda1, p.lambda2) for p in params if not p.isotropic})
    n_cols = max([p.t for p in params] + [sum(p.isotropic for p in params) - 1]) + 1
    has_iso = any(p.isotropic for p in params)
    n_rows = len(pairs) + int(has_iso)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.25 * n_cols + 1.2, 1.3 * n_rows + 1.0),
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    iso_col = 0
    for p in params:
        if p.isotropic:
            row, col = len(pairs), iso_col
            iso_col += 1
        else:
            row, col = pairs.index((p.lambda1, p.lambda2)), p.t
        ax = axes[row, col]
        ax.set_axis_on()
        plot_kernel(ax, kernels[p.index], cmap=cmap, ticks=False)
        colour = SEEN_COLOUR if p.index in seen else UNSEEN_COLOUR if p.index in unseen else "0.6"
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
        label = f"#{p.index}"
        if p.index in partner:
            label += f" = #{partner[p.index]}"
        ax.set_title(label, fontsize=8, color=TWIN_COLOUR if p.index in twin_members else "black",
                     fontweight="bold" if p.index in twin_members else "normal", pad=2)
        if p.index in twin_members:
            ax.text(0.04, 0.96, "★", transform=ax.transAxes, ha="left", va="top",
                    color=TWIN_COLOUR, fontsize=11)
        if p.isotropic:
            ax.set_xlabel(f"λ = {p.lambda1:g}", fontsize=8, labelpad=2)
    for row, (lam1, lam2) in enumerate(pairs):
        axes[row, 0].set_ylabel(f"λ1, λ2 =\n{lam1:g}, {lam2:g}", fontsize=8, rotation=0,
                                ha="right", va="center", labelpad=6)
    if has_iso:
        axes[len(pairs), 0].set_ylabel("isotropic", fontsize=8, rotation=0, ha="right",
                                       va="center", labelpad=6)
    for col in range(n_cols):
        axes[0, col].text(0.5, 1.32, f"θ = {col}π/8", transform=axes[0, col].transAxes,
                          ha="center", va="bottom", fontsize=9)
    handles = [Patch(facecolor="white", edgecolor=SEEN_COLOUR, lw=3, label=f"seen ({len(seen)})"),
               Patch(facecolor="white", edgecolor=UNSEEN_COLOUR, lw=3,
                     label=f"unseen ({len(unseen)})"),
               plt.Line2D([], [], color=TWIN_COLOUR, marker="*", ls="none", ms=10,
                          label=f"unseen kernel identical to a seen one ({len(twins)} pairs)")]
    fig.legend(handles=handles, loc="lower right", ncol=3, fontsize=9, frameon=False,
               bbox_to_anchor=(0.98, 0.005))
    fig.suptitle(title or f"the {len(params)} blur kernels: rows = eigenvalues (variances, px²), "
                 "columns = orientation; '= #j' marks an identical kernel", fontsize=11)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.88, bottom=0.07, wspace=0.15, hspace=0.45)
    return fig


# ------------------------------------------------------------------------------ images
def _add_zoom_inset(ax: plt.Axes, img: np.ndarray, box: Box, zoom: float, cmap: str,
                    vmin: float, vmax: float, corner: str = "lower right") -> plt.Axes:
    """Inset in a corner of ``ax`` showing ``box`` of ``img`` magnified ``zoom`` times."""
    top, left, height, width = box
    frac_w = min(0.48, zoom * width / img.shape[1])
    frac_h = min(0.48, zoom * height / img.shape[0])
    x0 = 1 - frac_w - 0.02 if "right" in corner else 0.02
    y0 = 0.02 if "lower" in corner else 1 - frac_h - 0.02
    inset = ax.inset_axes((x0, y0, frac_w, frac_h))
    inset.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    inset.set_xlim(left - 0.5, left + width - 0.5)
    inset.set_ylim(top + height - 0.5, top - 0.5)
    inset.set_xticks([])
    inset.set_yticks([])
    for spine in inset.spines.values():
        spine.set_edgecolor(ZOOM_COLOUR)
        spine.set_linewidth(1.5)
    ax.indicate_inset_zoom(inset, edgecolor=ZOOM_COLOUR, alpha=1.0)
    return inset


def show_images(images: Mapping[str, np.ndarray], ncols: int | None = None,
                pixel_scale: int | None = None, zoom_box: Sequence[int] | None = None,
                zoom: float = 3.0, cmap: str = "gray", vmin: float = 0.0, vmax: float = 1.0,
                panel_width: float = 3.6, suptitle: str | None = None,
                dpi: int = 100) -> Figure:
    """Show ``{title: (H, W) image}`` side by side (``ncols`` per row), each with its title.

    ``pixel_scale=n`` draws every image pixel as n×n screen pixels (``n = 1``: native
    resolution; all images on one row, figure ``dpi`` fixed so this holds when the notebook
    saves the PNG). Otherwise each panel is ``panel_width`` inches wide.
    ``zoom_box=(top, left, height, width)`` marks that region on every image and shows it
    ``zoom`` times larger in an inset (the box must fit in every image).
    """
    if not images:
        raise ValueError("show_images needs at least one image")
    arrays = {title: _check_image(img, f"images[{title!r}]") for title, img in images.items()}
    boxes = {t: _check_box(zoom_box, a.shape, "zoom_box") for t, a in arrays.items()} \
        if zoom_box is not None else {}
    n = len(arrays)
    if pixel_scale is not None:
        if int(pixel_scale) < 1:
            raise ValueError(f"pixel_scale must be a positive integer, got {pixel_scale!r}")
        scale = int(pixel_scale)
        pad, title_h, top_h = 12, 26, 34 if suptitle else 8
        widths = [scale * a.shape[1] for a in arrays.values()]
        heights = [scale * a.shape[0] for a in arrays.values()]
        fig_w = sum(widths) + pad * (n + 1)
        fig_h = max(heights) + title_h + top_h + pad
        fig = plt.figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
        x = pad
        axes = []
        for w, h in zip(widths, heights):
            axes.append(fig.add_axes((x / fig_w, (pad + max(heights) - h) / fig_h,
                                      w / fig_w, h / fig_h)))
            x += w + pad
    else:
        ncols = n if ncols is None else max(1, min(int(ncols), n))
        nrows = -(-n // ncols)
        aspect = max(a.shape[0] / a.shape[1] for a in arrays.values())
        fig, grid = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                                 figsize=(panel_width * ncols, panel_width * aspect * nrows + 0.6))
        axes = list(grid.ravel())
        for ax in axes[n:]:
            ax.set_axis_off()
    for ax, (title, img) in zip(axes, arrays.items()):
        ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if title in boxes:
            _add_zoom_inset(ax, img, boxes[title], zoom, cmap, vmin, vmax)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def _check_comparison(hr: np.ndarray, outputs: Mapping[str, np.ndarray], box: Sequence[int],
                      caller: str) -> tuple[np.ndarray, Box]:
    """``hr`` checked, every output of its shape, and ``box`` inside it (for the comparisons)."""
    hr = _check_image(hr, "hr")
    if not outputs:
        raise ValueError(f"{caller} needs at least one output")
    for name, out in outputs.items():
        if np.shape(out) != hr.shape:
            raise ValueError(f"outputs[{name!r}] has shape {np.shape(out)}, expected the shape "
                             f"of hr {hr.shape}")
    return hr, _check_box(box, hr.shape)


def zoom_compare(hr: np.ndarray, outputs: Mapping[str, np.ndarray], box: Sequence[int],
                 scale: int, context: bool = True, panel_size: float = 2.8,
                 suptitle: str | None = None) -> Figure:
    """The crop ``box = (top, left, height, width)`` of the ground truth ``hr`` and of each
    restoration in ``outputs`` (``{name: (H, W)}``, the size of ``hr``), side by side.

    Each restoration's title gives its PSNR on the *whole* image, paper protocol
    (:func:`tutorial_lib.metrics.psnr_y`, 8-bit rounding, ``shave = scale``). With
    ``context`` a first panel shows all of ``hr`` with the box drawn on it.
    Images: float in [0, 1].
    """
    hr, (top, left, height, width) = _check_comparison(hr, outputs, box, "zoom_compare")
    crop = (slice(top, top + height), slice(left, left + width))
    n = len(outputs) + 1 + int(context)
    aspect = height / width
    fig, axes = plt.subplots(1, n, figsize=(panel_size * n, panel_size * aspect + 0.7),
                             layout="constrained", squeeze=False)
    axes = list(axes[0])
    if context:
        ax = axes.pop(0)
        ax.imshow(hr, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), width, height, fill=False,
                               edgecolor=ZOOM_COLOUR, lw=1.5))
        ax.set_title(f"ground truth, {hr.shape[0]}×{hr.shape[1]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    panels = {"ground truth (crop)": (hr, None)}
    panels.update({name: (np.asarray(out), float(psnr_y(hr, out, shave_border=scale)))
                   for name, out in outputs.items()})
    for ax, (name, (img, psnr)) in zip(axes, panels.items()):
        ax.imshow(img[crop], cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                  extent=(left - 0.5, left + width - 0.5, top + height - 0.5, top - 0.5))
        ax.set_title(name if psnr is None else f"{name}\nPSNR {psnr:.2f} dB", fontsize=9)
        ax.set_xlabel("column (px)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("row (px)", fontsize=8)
    fig.suptitle(suptitle or f"crop of {height}×{width} px, ×{scale}; PSNR on the whole "
                 f"image (Y, 8-bit, shave {scale})", fontsize=10)
    return fig


def plot_errors(hr: np.ndarray, outputs: Mapping[str, np.ndarray], box: Sequence[int],
                panel_size: float = 2.8, suptitle: str | None = None) -> Figure:
    """The signed error ``output - hr`` of each restoration on the crop ``box = (top, left,
    height, width)``, in one diverging colour map centred on 0 with the same limits for every
    panel (red: too bright, blue: too dark; the limits are the 99th percentile of the errors'
    magnitude, larger ones saturate), and each panel's RMS error on the crop. A shift
    shows as red and blue bands on the two sides of every edge; noise as speckle."""
    hr, (top, left, height, width) = _check_comparison(hr, outputs, box, "plot_errors")
    crop = (slice(top, top + height), slice(left, left + width))
    errors = {name: np.asarray(out, dtype=np.float64)[crop] - hr[crop] for name, out in outputs.items()}
    # the same limits for every panel, at the 99th percentile of |error|: a few extreme pixels
    # on the sharpest edges would otherwise wash out the bands a shift leaves
    limit = float(np.percentile(np.abs(np.stack(list(errors.values()))), 99)) or 1.0
    n = len(errors)
    fig, axes = plt.subplots(1, n, figsize=(panel_size * n + 0.9, panel_size * height / width + 0.7),
                             layout="constrained", squeeze=False)
    image = None
    for ax, (name, error) in zip(axes[0], errors.items()):
        image = ax.imshow(error, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest",
                          extent=(left - 0.5, left + width - 0.5, top + height - 0.5, top - 0.5))
        ax.set_title(f"{name}\nRMS error {np.sqrt(np.mean(error ** 2)):.4f}", fontsize=9)
        ax.set_xlabel("column (px)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("row (px)", fontsize=8)
    fig.colorbar(image, ax=list(axes[0]), label="output − ground truth ([0, 1] units)", shrink=0.9, extend="both")
    fig.suptitle(suptitle or f"signed error on the crop of {height}×{width} px", fontsize=10)
    return fig


# ------------------------------------------------------------------------------ matrices
def plot_matrix(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
                title: str, xlabel: str, ylabel: str, colorbar_label: str,
                fmt: str = ".2f", cmap: str = "viridis", mark_row_max: bool = False,
                vmin: float | None = None, vmax: float | None = None) -> Figure:
    """Annotated heat map of a (R, C) matrix, brighter = larger (viridis by default).

    ``mark_row_max`` frames the largest entry of each row (e.g. the best restorer for each
    test kernel in a performance matrix, the paper's Fig. 1).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"matrix of shape {matrix.shape} does not match {len(row_labels)} row "
                         f"labels and {len(col_labels)} column labels")
    fig, ax = plt.subplots(figsize=(1.0 * matrix.shape[1] + 3.2, 0.55 * matrix.shape[0] + 1.8),
                           layout="constrained")
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=9,
                color="black" if image.norm(value) > 0.5 else "white")
    if mark_row_max:
        for i, j in enumerate(np.nanargmax(matrix, axis=1)):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=TWIN_COLOUR,
                                   lw=2.5))
    ax.set_xticks(range(matrix.shape[1]), labels=list(col_labels), rotation=30, ha="right",
                  fontsize=8)
    ax.set_yticks(range(matrix.shape[0]), labels=list(row_labels), fontsize=8)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    return fig


# ------------------------------------------------------------------------ kernel explorer
def plot_explorer_state(state: Mapping[str, object], title: str | None = None) -> Figure:
    """The kernel explorer's figure for one state of
    :func:`tutorial_lib.widgets.kernel_explorer_state`: the kernel (with its covariance
    ellipse when ``state`` has ``covariance``), the LR image drawn with one u×u block per
    LR pixel (nearest neighbour), and its bicubic upsampling with PSNR / SSIM."""
    kernel, lr, bicubic = (np.asarray(state[k]) for k in ("kernel", "lr", "bicubic"))
    scale = int(state["scale"])
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 4.4), layout="constrained",
                             gridspec_kw={"width_ratios": [0.8, 1, 1]})
    plot_kernel(axes[0], kernel, covariance=state.get("covariance"),
                title=f"kernel {kernel.shape[0]}×{kernel.shape[1]} (sum {kernel.sum():.3f})")
    axes[1].imshow(np.kron(lr, np.ones((scale, scale))), cmap="gray", vmin=0, vmax=1,
                   interpolation="nearest")
    axes[1].set_title(f"LR {lr.shape[0]}×{lr.shape[1]} (each pixel a {scale}×{scale} block)",
                      fontsize=10)
    axes[2].imshow(bicubic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[2].set_title(f"bicubic ×{scale}: PSNR {float(state['psnr']):.2f} dB, "
                      f"SSIM {float(state['ssim']):.4f}", fontsize=10)
    for ax in axes[1:]:
        ax.set_xlabel("column (HR px)")
        ax.set_ylabel("row (HR px)")
    if title:
        fig.suptitle(title)
    return fig


# ------------------------------------------------------------------- training and posteriors
def plot_histories(histories: Mapping[str, Mapping[str, Sequence]], keys: Sequence[str],
                   titles: Mapping[str, str] | None = None, ylabels: Mapping[str, str] | None = None,
                   x: str = "step", xlabel: str = "training step", logy: Sequence[str] = (),
                   suptitle: str | None = None, panel_size: tuple[float, float] = (4.2, 3.2)) -> Figure:
    """Training curves: one panel per entry of ``keys``, one line per run of ``histories``.

    ``histories``: ``{run name: history}`` with a history a mapping of equally long lists
    (a :class:`tutorial_lib.training.TrainingHistory`); a run without a key is left out of
    that panel. ``x`` names the list used on the horizontal axis (``'step'`` or ``'time'``);
    ``logy`` lists the keys drawn on a logarithmic axis. Colours follow the viridis map.
    """
    if not histories:
        raise ValueError("plot_histories needs at least one history")
    if not keys:
        raise ValueError("plot_histories needs at least one key to plot")
    titles, ylabels = dict(titles or {}), dict(ylabels or {})
    fig, axes = plt.subplots(1, len(keys), figsize=(panel_size[0] * len(keys), panel_size[1]),
                             layout="constrained", squeeze=False)
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(histories), 1)))
    for ax, key in zip(axes[0], keys):
        drawn = False
        for colour, (name, history) in zip(colours, histories.items()):
            if key not in history or x not in history:
                continue
            xs, ys = np.asarray(history[x], dtype=float), np.asarray(history[key], dtype=float)
            if ys.ndim != 1:
                raise ValueError(f"history {name!r}: {key!r} holds a vector per entry (shape {ys.shape}); "
                                 "pass one column at a time as a history of its own (e.g. one per expert)")
            if xs.shape != ys.shape:
                raise ValueError(f"history {name!r}: {x!r} and {key!r} have different lengths "
                                 f"({len(xs)} and {len(ys)})")
            ax.plot(xs, ys, color=colour, lw=1.4, label=name)
            drawn = True
        if key in logy:
            ax.set_yscale("log")
        ax.set(title=titles.get(key, key), xlabel=xlabel, ylabel=ylabels.get(key, key))
        ax.grid(alpha=0.3)
        if drawn and len(histories) > 1:
            ax.legend(fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def plot_heatmap(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
                 title: str, xlabel: str, ylabel: str, colorbar_label: str,
                 cmap: str = "viridis", row_colours: Sequence[str] | None = None,
                 vmin: float | None = None, vmax: float | None = None,
                 figsize: tuple[float, float] | None = None, fontsize: int = 7,
                 legend: Mapping[str, str] | None = None) -> Figure:
    """A heat map without numbers, for matrices too large to annotate (a 29×29 confusion
    matrix, a 58×4 posterior map). ``row_colours`` colours each row's tick label (e.g.
    seen / unseen kernels); ``legend`` = ``{label: colour}`` explains those colours."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"matrix of shape {matrix.shape} does not match {len(row_labels)} row "
                         f"labels and {len(col_labels)} column labels")
    if row_colours is not None and len(row_colours) != matrix.shape[0]:
        raise ValueError(f"row_colours has {len(row_colours)} entries for {matrix.shape[0]} rows")
    if figsize is None:
        figsize = (min(0.28 * matrix.shape[1] + 3.5, 14.0), min(0.2 * matrix.shape[0] + 1.8, 14.0))
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(matrix.shape[1]), labels=list(col_labels), rotation=90 if matrix.shape[1] > 8 else 0,
                  fontsize=fontsize)
    ax.set_yticks(range(matrix.shape[0]), labels=list(row_labels), fontsize=fontsize)
    if row_colours is not None:
        for tick, colour in zip(ax.get_yticklabels(), row_colours):
            tick.set_color(colour)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    if legend:
        ax.legend(handles=[Patch(color=c, label=lab) for lab, c in legend.items()], fontsize=8,
                  loc="upper left", bbox_to_anchor=(1.25, 1.0), frameon=False)
    return fig


def plot_accuracy_vs_distance(thresholds: Sequence[float], curves: Mapping[str, Sequence[float]],
                              chance: Sequence[float] | None = None,
                              title: str = "kernel accuracy within a distance",
                              xlabel: str = "distance d = ||Σ_pred − Σ_true||_F (px²)") -> Figure:
    """Fraction of cases whose predicted kernel lies within ``d`` of the true one, one line
    per entry of ``curves`` (``{name: values per threshold}``), with an optional chance curve
    (a uniformly random prediction) dashed."""
    thresholds = np.asarray(thresholds, dtype=float)
    if not curves:
        raise ValueError("plot_accuracy_vs_distance needs at least one curve")
    fig, ax = plt.subplots(figsize=(6.0, 3.8), layout="constrained")
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(curves)))
    for colour, (name, values) in zip(colours, curves.items()):
        values = np.asarray(values, dtype=float)
        if values.shape != thresholds.shape:
            raise ValueError(f"curve {name!r} has {values.shape[0]} values for {thresholds.shape[0]} thresholds")
        ax.plot(thresholds, values, color=colour, lw=1.8, marker="o", ms=3, label=name)
    if chance is not None:
        ax.plot(thresholds, np.asarray(chance, dtype=float), color="gray", ls="--", lw=1.2, label="chance")
    ax.set(title=title, xlabel=xlabel, ylabel="fraction of cases", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
