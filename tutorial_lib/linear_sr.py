"""The smallest learned super-resolution model: a least-squares linear filter.

Notebook 02 uses it to show, in seconds, two facts that the deep experts obey too: a restorer
learns exactly the mapping its training pairs define (trained one pixel off, it predicts the
image shifted by one pixel and loses to bicubic), and a restorer fitted to one blur kernel is
excellent on it and poor on the others (the paper's Fig. 1).

For each of the ``u * u`` output phases a linear filter predicts the ``u x u`` HR block under an
LR pixel from the ``window x window`` LR neighbourhood around it, plus a bias:
``u * u`` filters of ``window**2 + 1`` weights, fitted in one :func:`numpy.linalg.lstsq` call.
Stacked, the filters are a sub-pixel convolution (:func:`torch.nn.functional.pixel_shuffle`),
the same kind of output layer as the experts' transposed convolution.

1. :func:`draw_pairs`: training pairs from :class:`~tutorial_lib.degradations.PatchSampler`
   (the library's training sampler, rotations and flips included);
2. :func:`centre_block`: the HR block under the centre LR pixel, optionally shifted;
3. :func:`fit_linear_sr`: the least-squares fit;
4. :func:`linear_sr_method`: the fitted filters as a method for
   :func:`tutorial_lib.evaluation.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import check_integer
from .degradations import PatchSampler, symmetric_pad

__all__ = ["WINDOW", "centre_block", "draw_pairs", "fit_linear_sr", "linear_sr_method"]

WINDOW = 5  # LR window side of the filters


def draw_pairs(images: Sequence[np.ndarray], kernels: np.ndarray, scale: int, n_pairs: int,
               window: int = WINDOW, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_pairs`` training pairs (a multiple of 1000): LR patches ``(n, window, window)``, HR
    patches ``(n, window * scale, window * scale)`` (float64) and the kernel index of each
    ``(n,)``, drawn from ``images`` (HR float (H, W) in [0, 1]) blurred by ``kernels``."""
    check_integer("n_pairs", n_pairs)
    if n_pairs % 1000:
        raise ValueError(f"n_pairs must be a multiple of 1000 (pairs are drawn 1000 at a time), got {n_pairs}")
    sampler = PatchSampler(list(images), kernels, scale, lr_patch=check_integer("window", window), seed=seed)
    batches = [sampler.sample(1000) for _ in range(n_pairs // 1000)]
    return (torch.cat([b["lr"][:, 0] for b in batches]).double().numpy(),
            torch.cat([b["hr"][:, 0] for b in batches]).double().numpy(),
            torch.cat([b["kernel_index"] for b in batches]).numpy())


def centre_block(hr_patches: np.ndarray, scale: int, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The ``scale x scale`` HR block under the centre LR pixel of each patch ``(n, s, s)``
    (``s = window * scale``, ``window`` odd), moved by ``shift = (rows, cols)`` HR pixels:
    ``(0, 0)`` is the aligned target, ``(1, 0)`` one row off."""
    hr_patches = np.asarray(hr_patches)
    side = hr_patches.shape[-1]
    if hr_patches.ndim != 3 or hr_patches.shape[-2] != side or side % scale or (side // scale) % 2 == 0:
        raise ValueError(f"hr_patches must be (n, s, s) with s = scale x an odd window, got {hr_patches.shape} "
                         f"at scale {scale}")
    top = scale * (side // scale // 2) + shift[0]
    left = scale * (side // scale // 2) + shift[1]
    if not (0 <= top and top + scale <= side and 0 <= left and left + scale <= side):
        raise ValueError(f"shift {shift} moves the block outside the {side}x{side} patch")
    return hr_patches[:, top:top + scale, left:left + scale]


def fit_linear_sr(lr_patches: np.ndarray, hr_blocks: np.ndarray) -> np.ndarray:
    """Least squares ``hr_block ~ [lr_window, 1] @ W``: returns ``W`` of shape
    ``(window**2 + 1, scale**2)``, one column per output phase (row-major within the block),
    the last row the biases. ``lr_patches`` (n, window, window), ``hr_blocks`` (n, u, u)."""
    lr_patches, hr_blocks = np.asarray(lr_patches, np.float64), np.asarray(hr_blocks, np.float64)
    if len(lr_patches) != len(hr_blocks) or lr_patches.ndim != 3 or hr_blocks.ndim != 3:
        raise ValueError(f"lr_patches (n, w, w) and hr_blocks (n, u, u) must hold the same number of pairs, "
                         f"got {lr_patches.shape} and {hr_blocks.shape}")
    if len(lr_patches) <= lr_patches[0].size + 1:
        raise ValueError(f"{len(lr_patches)} pairs cannot determine {lr_patches[0].size + 1} weights per phase")
    design = np.c_[lr_patches.reshape(len(lr_patches), -1), np.ones(len(lr_patches))]
    return np.linalg.lstsq(design, hr_blocks.reshape(len(hr_blocks), -1), rcond=None)[0]


def linear_sr_method(weights: np.ndarray, scale: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fitted filters as a method for :func:`~tutorial_lib.evaluation.evaluate`:
    ``(B, 1, h, w)`` LR -> ``(B, 1, scale * h, scale * w)``, every LR pixel's window (borders
    padded symmetrically, as the training patches see the image) mapped to its HR block."""
    w = torch.from_numpy(np.asarray(weights, np.float64))
    window = math.isqrt(w.shape[0] - 1)
    if w.ndim != 2 or window**2 + 1 != w.shape[0] or w.shape[1] != scale * scale:
        raise ValueError(f"weights must be (window**2 + 1, scale**2) = (k, {scale * scale}), got {tuple(w.shape)}")

    def method(lr: torch.Tensor) -> torch.Tensor:
        windows = F.unfold(symmetric_pad(lr.double(), window // 2), window)  # (B, window**2, h*w)
        phases = torch.einsum("bpn,pq->bqn", windows, w[:-1]) + w[-1][None, :, None]  # (B, u*u, h*w)
        return F.pixel_shuffle(phases.reshape(lr.shape[0], scale * scale, *lr.shape[-2:]), scale)

    method.__name__ = "linear_sr"
    return method
