"""Evaluation metrics exactly as the paper's evaluation code computes them.

- :func:`rgb_to_y`: ITU-R BT.601 luma with the studio range, as ``skimage.color.rgb2ycbcr``:
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for R, G, B in [0, 1], so Y lies in
  [16, 235] / 255 here (this library keeps images in [0, 1]).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

_BT601_Y = np.array([65.481, 128.553, 24.966]) / 255.0


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """Luma of an RGB image, float (H, W, 3) in [0, 1] -> float64 (H, W) in [16/255, 235/255]."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have shape (H, W, 3), got {rgb.shape}")
    if not np.issubdtype(rgb.dtype, np.floating):
        raise ValueError(f"rgb must be float in [0, 1], got dtype {rgb.dtype} (divide 8-bit images by 255)")
    return (16.0 / 255.0) + rgb.astype(np.float64) @ _BT601_Y


# ------------------------------------------------------------------------------- PSNR
def _check_pair(reference: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference, estimate = np.asarray(reference), np.asarray(estimate)
    for name, img in (("reference", reference), ("estimate", estimate)):
        if not np.issubdtype(img.dtype, np.floating):
            raise ValueError(f"{name} must be float in [0, 1], got dtype {img.dtype} (divide 8-bit images by 255)")
    if reference.shape != estimate.shape:
        raise ValueError(f"images differ in shape: reference {reference.shape}, "
                         f"estimate {estimate.shape}")
    if reference.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or a stack (N, H, W), got shape {reference.shape}")
    one = _one_reference(reference)
    if one.size and (one.min() < -1e-6 or one.max() > 1 + 1e-6):
        # the estimate is clipped to [0, 1] by design (a network may overshoot); the ground truth is not
        raise ValueError(f"reference must be float in [0, 1], its values span [{one.min():.4g}, {one.max():.4g}] "
                         "(divide 8-bit images by 255)")
    return reference, estimate


def _one_reference(reference: np.ndarray) -> np.ndarray:
    """A stack that repeats one image (``np.broadcast_to(hr, (N, H, W))``, as the evaluation
    passes it) -> that image, so that work on the reference is done once; else unchanged.
    Broadcasting it back against the estimates gives the same numbers, bit for bit."""
    if reference.ndim == 3 and reference.shape[0] > 1 and reference.strides[0] == 0:
        return reference[0]
    return reference


def to_uint8_levels(img: np.ndarray) -> np.ndarray:
    """[0, 1] float -> float64 on 8-bit levels: ``round(clip(img, 0, 1) · 255)`` (0 … 255)."""
    return np.round(np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0) * 255.0)


def shave(img: np.ndarray, border: int) -> np.ndarray:
    """Remove ``border`` pixels from every side of the last two axes."""
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if border == 0:
        return img
    if img.shape[-2] <= 2 * border or img.shape[-1] <= 2 * border:
        raise ValueError(f"image of size {img.shape[-2]}x{img.shape[-1]} is too small to "
                         f"shave {border} pixels from each side")
    return img[..., border:-border, border:-border]


def psnr_y(reference: np.ndarray, estimate: np.ndarray, shave_border: int = 0) -> np.ndarray:
    """PSNR (dB) of Y images as the paper: both rounded to 8-bit levels (the estimate clipped
    first), ``shave_border`` pixels removed from every side (the paper uses ``shave = u``),
    ``10·log10(255² / MSE)``.

    ``reference``, ``estimate``: float in [0, 1], (H, W) -> float, or (N, H, W) -> (N,).
    """
    reference, estimate = _check_pair(reference, estimate)
    ref = shave(to_uint8_levels(_one_reference(reference)), shave_border)
    est = shave(to_uint8_levels(estimate), shave_border)
    mse = ((ref - est) ** 2).mean(axis=(-2, -1))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 ** 2 / mse)


# ------------------------------------------------------------------------------- SSIM
SSIM_VARIANTS = ("skimage", "matlab")


def _filter(img: np.ndarray, variant: str) -> np.ndarray:
    """Local mean over the last two axes: 7x7 uniform (skimage) or Gaussian σ = 1.5, 11x11."""
    if variant == "skimage":
        size = (1,) * (img.ndim - 2) + (7, 7)
        return scipy.ndimage.uniform_filter(img, size=size, mode="reflect")
    sigma = (0,) * (img.ndim - 2) + (1.5, 1.5)
    return scipy.ndimage.gaussian_filter(img, sigma=sigma, truncate=3.5, mode="reflect")


def ssim_y(reference: np.ndarray, estimate: np.ndarray, shave_border: int = 0,
           variant: str = "skimage") -> np.ndarray:
    """SSIM of Y images on the same rounded, shaved 8-bit levels as :func:`psnr_y`.

    ``variant='skimage'`` (the paper's protocol): ``skimage.metrics.structural_similarity``
    defaults — 7×7 uniform window, sample covariance (N/(N-1)), K1 = 0.01, K2 = 0.03,
    data range 255, the mean taken over the map without its 3-pixel border.
    ``variant='matlab'``: the original SSIM paper's 11×11 Gaussian window (σ = 1.5) and
    population covariance; gives lower values (e.g. 0.8517 instead of 0.8599).

    ``reference``, ``estimate``: float in [0, 1], (H, W) -> float, or (N, H, W) -> (N,).
    """
    if variant not in SSIM_VARIANTS:
        raise ValueError(f"variant must be one of {SSIM_VARIANTS}, got {variant!r}")
    reference, estimate = _check_pair(reference, estimate)
    x = shave(to_uint8_levels(_one_reference(reference)), shave_border)  # (H, W) when it repeats
    y = shave(to_uint8_levels(estimate), shave_border)
    win = 7 if variant == "skimage" else 11
    if min(y.shape[-2:]) < win:
        raise ValueError(f"image of size {y.shape[-2]}x{y.shape[-1]} (after shaving) is smaller "
                         f"than the {win}x{win} SSIM window")
    n = win * win
    cov_norm = n / (n - 1) if variant == "skimage" else 1.0
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ux, uy = _filter(x, variant), _filter(y, variant)
    vx = cov_norm * (_filter(x * x, variant) - ux * ux)
    vy = cov_norm * (_filter(y * y, variant) - uy * uy)
    vxy = cov_norm * (_filter(x * y, variant) - ux * uy)
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return ssim_map[..., pad:-pad, pad:-pad].mean(axis=(-2, -1))
