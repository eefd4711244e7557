"""The paper's evaluation protocol over every image × every kernel of a group.

For each HR Y image (modcropped to the scale) and each kernel of the group: degrade as
Eq. (1), super-resolve, then PSNR and SSIM on 8-bit-rounded Y with ``shave = scale``
(:mod:`tutorial_lib.metrics`). The reported numbers are the plain averages over all
image × kernel pairs, as the authors' code. The kernels of one image are degraded and
super-resolved as one batch.

A *method* is any callable ``lr (B, 1, h, w) float tensor in [0, 1] -> sr (B, 1, u·h, u·w)``;
:func:`bicubic_method` is the baseline, :func:`model_method` wraps a trained network.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from . import kernels as kernel_lib
from .config import get_device
from .degradations import _check_image, bicubic_upsample, degrade_with_kernels, modcrop
from .metrics import psnr_y, ssim_y
from .models import EncoderWithClassifier, ENet, device_of

Method = Callable[[torch.Tensor], torch.Tensor]
FUSION_OUTPUTS = ("fused", "hard", "average")


@dataclass
class EvaluationResult:
    """Averages over ``n_images × n_kernels`` pairs, and the per-pair values."""

    psnr: float
    ssim: float
    n_images: int
    n_kernels: int
    scale: int
    kernels: str
    method: str
    ssim_variant: str
    seconds: float
    per_image_psnr: dict[str, float] = field(default_factory=dict)
    per_pair_psnr: np.ndarray | None = None  # (n_images, n_kernels)
    per_pair_ssim: np.ndarray | None = None

    def summary(self) -> dict:
        """JSON-ready dict without the per-pair arrays."""
        out = asdict(self)
        out.pop("per_pair_psnr")
        out.pop("per_pair_ssim")
        out["psnr"], out["ssim"] = round(self.psnr, 4), round(self.ssim, 5)
        out["seconds"] = round(self.seconds, 3)
        out["per_image_psnr"] = {k: round(v, 4) for k, v in self.per_image_psnr.items()}
        return out


def bicubic_method(scale: int) -> Method:
    """The Bicubic rows of the paper's tables."""
    def method(lr: torch.Tensor) -> torch.Tensor:
        return bicubic_upsample(lr, scale)
    method.__name__ = "bicubic"
    return method


def model_method(model: torch.nn.Module, scale: int, output: str = "fused",
                 device: torch.device | str | None = None, batch_size: int = 8) -> Method:
    """Wrap a network for :func:`evaluate`.

    ``model(lr, base)`` must return a tensor (single network) or a dict with key ``output``
    (``'fused'``: Eq. 10). For a mixture, ``output='hard'`` (the expert of largest q) or
    ``'average'`` (uniform weights) re-fuses the experts as the ablations of Table 3. Runs in eval mode, without
    gradients, in float32 on ``device`` (default: the model's; on a GPU with TF32 switched
    off), ``batch_size`` LR images at a time; the bicubic base is computed here and passed in.
    A ``device`` other than the model's moves the model there (in place, as ``Module.to``).
    The restored images come back on the CPU.
    """
    if output not in FUSION_OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(FUSION_OUTPUTS)}, got {output!r}")
    if isinstance(model, (ENet, EncoderWithClassifier)):
        raise ValueError(f"{type(model).__name__} is E-Net, which classifies blur and does not super-resolve; "
                        "evaluate a mixture or a single network")
    if output != "fused" and not hasattr(model, "mode"):
        raise ValueError(f"output={output!r} re-fuses the experts of a mixture; {type(model).__name__} has none "
                         "(use output='fused')")
    model_scale = getattr(model, "scale", None)
    if model_scale is not None and model_scale != scale:
        raise ValueError(f"the model was built for x{model_scale} but scale={scale} was requested")
    device = device_of(model) if device is None else get_device(device)
    model.to(device)  # nothing to do where it is already

    @torch.no_grad()
    def method(lr: torch.Tensor) -> torch.Tensor:
        model.eval()
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False  # full float32 convolutions on a GPU too
        try:
            return _run(lr)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32

    def _run(lr: torch.Tensor) -> torch.Tensor:
        outs = []
        for start in range(0, lr.shape[0], batch_size):
            chunk = lr[start:start + batch_size].to(device=device, dtype=torch.float32)
            base = bicubic_upsample(chunk, scale)
            if output in FUSION_OUTPUTS[1:]:  # the ablations' fusions of a mixture
                pred = model(chunk, base, mode=output)["fused"]
            else:
                pred = model(chunk, base)
                if isinstance(pred, Mapping):
                    pred = pred[output]
            outs.append(pred.to(device="cpu", dtype=torch.float64))
        return torch.cat(outs)
    method.__name__ = getattr(model, "name", type(model).__name__)
    return method


def check_evaluable(hr: np.ndarray, scale: int, kernel_side: int = kernel_lib.KERNEL_SIZE, name: str = "") -> None:
    """Refuse an HR image too small for the protocol at ``scale`` (a ``ValueError`` naming it):
    after shaving ``scale`` pixels SSIM needs its 7x7 window, and the blur its kernel."""
    side = min(np.shape(hr)[:2]) - min(np.shape(hr)[:2]) % scale
    if side <= 2 * scale + 7 or side < kernel_side:
        raise ValueError(f"image {name!r} of size {np.shape(hr)[0]}x{np.shape(hr)[1]} is too small "
                         f"to evaluate at scale {scale} with {kernel_side}x{kernel_side} kernels")


def evaluate(images: Mapping[str, np.ndarray], scale: int, kernels: str | np.ndarray = "unseen",
             method: Method | str = "bicubic", ssim_variant: str = "skimage",
             device: torch.device | str | None = None, progress: bool = False
             ) -> EvaluationResult:
    """Average PSNR/SSIM of ``method`` over every image × kernel (paper protocol).

    Args:
        images: name -> HR Y image, float (H, W) in [0, 1].
        scale: upscaling factor ``u`` (also the shave border).
        kernels: a kernel-set name of :func:`tutorial_lib.kernels.kernel_indices`
            (``'seen'``, ``'unseen'``, ``'unseen_clean'``, ``'all'``) or an array (K, k, k).
        method: ``'bicubic'`` or a callable (see module doc).
        ssim_variant: ``'skimage'`` (paper) or ``'matlab'``.
        device: where degradation runs (default CPU; the method moves data itself).
    """
    if not isinstance(images, Mapping):
        raise TypeError("images must be a dict {name: HR Y image (H, W) float in [0, 1]}, "
                        f"got {type(images).__name__}")
    if not images:
        raise ValueError("evaluate needs at least one image")
    checked = {name: _check_image(img, f"image {name!r}") for name, img in images.items()}
    if isinstance(kernels, str):
        kernel_name, kernel_array = kernels, kernel_lib.kernel_set(kernels)
    else:
        kernel_name, kernel_array = "custom", np.asarray(kernels, dtype=np.float64)
        if kernel_array.ndim != 3:
            raise ValueError(f"kernels must be a set name or (K, k, k), got {kernel_array.shape}")
    if isinstance(method, str):
        if method != "bicubic":
            raise ValueError(f"method must be 'bicubic' or a callable, got {method!r}")
        method = bicubic_method(scale)
    device = get_device(device or "cpu")
    start = time.perf_counter()
    names = list(images)
    psnrs = np.zeros((len(names), len(kernel_array)))
    ssims = np.zeros_like(psnrs)
    iterator = names
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(names, desc="evaluate", leave=False)
    for row, name in enumerate(iterator):
        hr = modcrop(checked[name], scale)
        check_evaluable(hr, scale, kernel_array.shape[-1], name)
        lr = degrade_with_kernels(hr, kernel_array, scale, device=device)
        sr = method(lr)
        sr = sr.detach().to("cpu", torch.float64).numpy()[:, 0]
        if sr.shape[-2:] != hr.shape:
            raise ValueError(f"method returned {sr.shape[-2:]} for an HR image of {hr.shape}")
        reference = np.broadcast_to(hr, sr.shape)
        psnrs[row] = psnr_y(reference, sr, shave_border=scale)
        ssims[row] = ssim_y(reference, sr, shave_border=scale, variant=ssim_variant)
    return EvaluationResult(
        psnr=float(psnrs.mean()), ssim=float(ssims.mean()), n_images=len(names),
        n_kernels=len(kernel_array), scale=scale, kernels=kernel_name,
        method=getattr(method, "__name__", "method"), ssim_variant=ssim_variant,
        seconds=time.perf_counter() - start,
        per_image_psnr={n: float(p) for n, p in zip(names, psnrs.mean(axis=1))},
        per_pair_psnr=psnrs, per_pair_ssim=ssims)
