"""What a trained E-Net (and the mixture it drives) has learned: small analysis helpers.

Read top to bottom:

1. :func:`layer_table`: output shape and parameter count of every leaf layer of a network
   for one input (a forward-hook table, e.g. Table 1 / Table 2 of the paper).
2. Kernel geometry: :func:`kernel_order` sorts bank kernels by ``(λ1, λ2, θ)`` so that
   similar kernels sit next to each other in a confusion matrix; :func:`kernel_distance`
   is the Frobenius norm of the difference of two kernels' covariances ``Σ``.
3. Accuracy against similarity: :func:`accuracy_within_distance` turns a confusion matrix
   into "the predicted kernel lies within distance ``d`` of the true one".
4. Patch-level predictions: :func:`tile_patches` and :func:`patch_probabilities` classify
   non-overlapping patches of a whole LR image, to compare with one whole-image pass.
5. Posteriors: :func:`posterior_per_kernel` (mean ``q`` of E-Net per kernel over images),
   :func:`entropy` and :func:`kernel_information` (how much ``q`` tells about the kernel:
   the mutual information between the kernel and the latent state, in nats).

Conventions as the rest of the library: HR images are float (H, W) in [0, 1]; LR batches
are float tensors (B, 1, h, w) in [0, 1]; kernels are (K, k, k) float arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from . import kernels as kernel_lib
from .degradations import degrade_with_kernels, modcrop
from .models import _tiles, device_of, enet_of

__all__ = [
    "accuracy_from_probabilities",
    "accuracy_within_distance",
    "confusion_from_probabilities",
    "entropy",
    "kernel_distance",
    "kernel_information",
    "kernel_order",
    "layer_table",
    "patch_probabilities",
    "posterior_per_kernel",
    "tile_patches",
]


# --------------------------------------------------------------------------- layer table
def layer_table(model: nn.Module, *inputs: torch.Tensor) -> list[dict[str, Any]]:
    """Run ``model(*inputs)`` once (eval mode, no gradients, on the model's device) and
    record every leaf module.

    Returns one row per leaf module call, in call order: ``name`` (the module's dotted
    name), ``type`` (class name), ``shape`` (output shape as a tuple) and ``params``
    (parameters of that module, counted once even when it is called twice).
    """
    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    handles = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, _inputs: tuple, output: Any) -> None:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
        params = 0 if id(module) in seen else sum(p.numel() for p in module.parameters(recurse=False))
        seen.add(id(module))
        rows.append({"name": names[module], "type": type(module).__name__, "shape": shape, "params": params})

    for module in model.modules():
        if not list(module.children()):
            handles.append(module.register_forward_hook(hook))
    device = device_of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return rows


# ------------------------------------------------------------------------ kernel geometry
def _params_of(indices: Sequence[int]) -> list[kernel_lib.KernelParams]:
    bank = kernel_lib.bank_parameters()
    for i in indices:
        if not 0 <= int(i) < len(bank):
            raise ValueError(f"bank indices must lie in [0, {len(bank)}), got {i}")
    return [bank[int(i)] for i in indices]


def kernel_order(indices: Sequence[int]) -> np.ndarray:
    """Positions that sort the bank kernels ``indices`` by ``(λ1, λ2, t)``.

    ``np.asarray(indices)[kernel_order(indices)]`` lists the kernels with equal eigenvalue
    pairs together and, within a pair, by orientation ``θ = t·π/8``: neighbours in this
    order are similar kernels (except across a pair boundary). Ties keep the given order.
    """
    params = _params_of(indices)
    keys = [(p.lambda1, p.lambda2, p.t) for p in params]
    return np.array(sorted(range(len(keys)), key=lambda i: keys[i]), dtype=np.int64)


def kernel_distance(indices: Sequence[int]) -> np.ndarray:
    """(K, K) distances ``||Σ_i − Σ_j||_F`` between the covariances of bank kernels (px²).

    Zero exactly for identical kernels (the θ = 0 / θ = π twins), symmetric, and small for
    kernels of similar shape and orientation. The largest value in the bank (3.18 px²) is
    reached both between the narrowest and the widest isotropic kernels and between two
    (0.75, 3) kernels at orthogonal orientations.
    """
    params = _params_of(indices)
    sigmas = np.stack([kernel_lib.covariance(p.lambda1, p.lambda2, p.theta) for p in params])
    diff = sigmas[:, None] - sigmas[None]
    distance = np.sqrt((diff ** 2).sum(axis=(2, 3)))
    distance[distance < 1e-9] = 0.0
    return distance


def accuracy_within_distance(confusion: np.ndarray, distance: np.ndarray,
                             thresholds: Sequence[float]) -> np.ndarray:
    """Fraction of cases whose predicted kernel lies within ``d`` of the true one, per ``d``.

    Args:
        confusion: (K, K) counts, row = true kernel, column = predicted kernel.
        distance: (K, K) distances between kernels (e.g. :func:`kernel_distance`).
        thresholds: the distances ``d`` (>= 0).

    Returns:
        float array (len(thresholds),) in [0, 1], non-decreasing in ``d``; at ``d = 0`` it is
        the top-1 accuracy counting identical kernels as correct.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    distance = np.asarray(distance, dtype=np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.shape != distance.shape:
        raise ValueError(f"confusion {confusion.shape} and distance {distance.shape} must be the same (K, K)")
    total = confusion.sum()
    if total <= 0:
        raise ValueError("confusion holds no cases")
    return np.array([(confusion * (distance <= d + 1e-12)).sum() / total for d in thresholds])


# ----------------------------------------------------------------- patch-level predictions
def tile_patches(lr: torch.Tensor, patch: int) -> torch.Tensor:
    """Non-overlapping ``patch × patch`` tiles of a batch of LR images (the remainder at the
    right and bottom is dropped): (B, 1, h, w) -> (B, n_tiles, 1, patch, patch)."""
    if lr.ndim != 4 or lr.shape[1] != 1:
        raise ValueError(f"lr must have shape (B, 1, h, w), got {tuple(lr.shape)}")
    h, w = lr.shape[-2:]
    if patch < 1 or patch > min(h, w):
        raise ValueError(f"patch must lie in [1, {min(h, w)}] for LR images of {h}x{w}, got {patch}")
    return _tiles(lr, patch)


@torch.no_grad()
def patch_probabilities(model: nn.Module, lr: torch.Tensor, patch: int) -> torch.Tensor:
    """Class probabilities (softmax of the model's output) of every tile of every image.

    ``model`` maps (N, 1, p, p) to (N, C) logits or scores (an ``EncoderWithClassifier``:
    C = K kernels; an ``ENet``: C = M states); it is run in eval mode, on its own device.
    Returns (B, n_tiles, C) on the CPU; average over axis 1 for an image's patch-averaged prediction.
    """
    tiles = tile_patches(lr, patch)
    b, n = tiles.shape[:2]
    was_training = model.training
    model.eval()
    try:
        logits = model(tiles.reshape(b * n, 1, patch, patch).to(device_of(model)))
    finally:
        model.train(was_training)
    return torch.softmax(logits.float(), dim=1).reshape(b, n, -1).cpu()


# ------------------------------------------------------------------------------ posteriors
@torch.no_grad()
def posterior_per_kernel(enet: nn.Module, images: Mapping[str, np.ndarray] | Sequence[np.ndarray],
                         scale: int, kernels: np.ndarray) -> np.ndarray:
    """``q(z | L)`` of E-Net for every image × kernel: (n_images, K, M), rows summing to 1.

    Each HR image (float (H, W) in [0, 1], modcropped to ``scale``) is degraded by each of
    the ``K`` kernels (Eq. 1) and the whole LR image goes through ``enet`` (an ``ENet``, or
    the E-Net of an encoder with its classifier or of a mixture; eval mode). Average over
    axis 0 for the mean posterior of each kernel.
    """
    enet = enet_of(enet)  # also the E-Net of a classifier or a mixture: q over its M states
    arrays = list(images.values()) if isinstance(images, Mapping) else list(images)
    if not arrays:
        raise ValueError("images must hold at least one HR image")
    device = device_of(enet)
    was_training = enet.training
    enet.eval()
    out = []
    try:
        for hr in arrays:
            lr = degrade_with_kernels(modcrop(np.asarray(hr, dtype=np.float64), scale), kernels, scale).float()
            out.append(torch.softmax(enet(lr.to(device)).float(), dim=1).cpu().numpy())
    finally:
        enet.train(was_training)
    return np.stack(out).astype(np.float64)


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats of probability vectors along ``axis`` (0·log 0 = 0)."""
    p = np.asarray(p, dtype=np.float64)
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=axis)


def kernel_information(q: np.ndarray) -> dict[str, float]:
    """How much E-Net's posterior depends on the kernel.

    ``q``: (n_images, K, M) posteriors (:func:`posterior_per_kernel`), each case equally
    likely. Returns, in nats: ``mean_entropy`` = mean over cases of H(q) (0: hard choices,
    log M: uniform), ``marginal_entropy`` = H of the mean q (log M: every expert used
    equally), ``information`` = I(kernel; z) = H(mean over kernels of the per-kernel mean
    q) − mean over kernels of H(per-kernel mean q), i.e. how far the kernels' average
    posteriors differ from each other (0: q does not depend on the kernel, the mixture is
    an input-independent ensemble; at most min(log K, log M)), and ``max_information`` =
    log M.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 3:
        raise ValueError(f"q must have shape (n_images, K, M), got {q.shape}")
    per_kernel = q.mean(axis=0)  # (K, M)
    marginal = per_kernel.mean(axis=0)  # (M,)
    information = float(entropy(marginal) - entropy(per_kernel).mean())
    return {"mean_entropy": float(entropy(q).mean()), "marginal_entropy": float(entropy(marginal)),
            "information": max(information, 0.0), "max_information": float(np.log(q.shape[2]))}


def accuracy_from_probabilities(probabilities: np.ndarray | torch.Tensor, same: np.ndarray) -> dict[str, float]:
    """Top-1, top-3 and duplicate-aware top-1 of kernel predictions.

    Args:
        probabilities: (n_images, K, K) class probabilities (or logits: only their order
            counts); ``[i, k]`` is the prediction for image ``i`` degraded by kernel ``k``.
        same: (K, K) bool, ``True`` where two classes are the same kernel (e.g.
            ``kernel_distance(indices) == 0``).

    Returns ``{"top1", "top3", "top1_distinct"}`` as fractions of the ``n_images × K`` cases
    (``top1_distinct`` also counts a prediction of an identical twin kernel as correct).
    """
    p = torch.as_tensor(np.asarray(probabilities, dtype=np.float64))
    if p.ndim != 3 or p.shape[1] != p.shape[2]:
        raise ValueError(f"probabilities must have shape (n_images, K, K), got {tuple(p.shape)}")
    same = np.asarray(same, dtype=bool)
    if same.shape != tuple(p.shape[1:]):
        raise ValueError(f"same must have shape {tuple(p.shape[1:])}, got {same.shape}")
    k = p.shape[1]
    target = torch.arange(k).expand(p.shape[0], k)
    ranked = p.argsort(dim=2, descending=True)
    top1 = (ranked[..., 0] == target).double().mean().item()
    top3 = (ranked[..., :3] == target[..., None]).any(dim=2).double().mean().item()
    distinct = same[target.numpy(), ranked[..., 0].numpy()].mean()
    return {"top1": float(top1), "top3": float(top3), "top1_distinct": float(distinct)}


def confusion_from_probabilities(probabilities: np.ndarray | torch.Tensor) -> np.ndarray:
    """(K, K) int64 counts of the arg-max predictions of (n_images, K, K) class
    probabilities: row = true kernel ``k`` (the middle axis), column = predicted class."""
    p = np.asarray(probabilities)
    if p.ndim != 3 or p.shape[1] != p.shape[2]:
        raise ValueError(f"probabilities must have shape (n_images, K, K), got {p.shape}")
    k = p.shape[1]
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (np.broadcast_to(np.arange(k), p.shape[:2]).ravel(), p.argmax(axis=2).ravel()), 1)
    return confusion
