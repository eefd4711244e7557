"""What E-Net's posterior ``q(z | L)`` encodes about the blur kernel (paper Sec. 4.2, Fig. 4).

Read top to bottom:

1. :func:`image_crops` and :func:`collect_posteriors`: a fixed set of HR crops, each
   degraded (Eq. 1) by every kernel of a set, and E-Net's posterior of every LR crop:
   ``q`` (N, M) with the kernel and crop of each row.
2. Measures of how well ``q`` clusters by kernel, each with a shuffled-label baseline:
   :func:`silhouette_by_kernel` (sklearn's silhouette score with the kernel as the cluster
   label), :func:`distance_preservation` (rank / linear correlation between distances of
   kernels and distances of their mean posteriors: the paper's "distance-preserving"),
   :func:`nearest_centroid_retrieval` (for each unseen kernel, is the seen kernel whose mean
   posterior is nearest also the most similar seen kernel?) and :func:`shuffled_baseline`.
3. Kernels as objects to compare: :func:`kernel_distances` (``‖Σ_i − Σ_j‖_F`` of their
   second moments, or the L2 distance of the kernels as images) and
   :func:`line_kernel`, a motion-like kernel that lies outside the Gaussian bank.
4. The posterior explorer's update logic, :func:`posterior_explorer_state`: an HR image and
   a kernel -> LR, ``q``, each expert's output, the fusion (Eq. 10) and their PSNR; and the
   figures :func:`plot_posterior_state` and :func:`plot_embedding`.

Conventions: images are float64 (H, W) in [0, 1] (Y channel); kernels (k, k) sum to 1;
posteriors ``q`` are float64 (N, M) with rows on the probability simplex. Everything is
deterministic: crops are placed on a fixed grid, E-Net runs in eval mode (no dropout,
BatchNorm running statistics), and the shuffled baselines take a seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from . import kernels as kernel_lib
from .degradations import bicubic_upsample, degrade, degrade_with_kernels, modcrop
from .metrics import psnr_y, ssim_y
from .models import device_of, enet_of
from .plots import plot_kernel

__all__ = [
    "PosteriorSet",
    "check_explorer_image",
    "collect_posteriors",
    "distance_preservation",
    "enet_of",
    "image_crops",
    "kernel_distances",
    "line_kernel",
    "mean_posteriors",
    "nearest_centroid_retrieval",
    "plot_embedding",
    "plot_posterior_state",
    "posterior_entropy",
    "posterior_explorer_state",
    "posteriors_of",
    "shuffled_baseline",
    "silhouette_by_kernel",
]


# ------------------------------------------------------------------------------ posteriors
# enet_of (models) is re-exported here: it says what the functions below accept.


@torch.no_grad()
def posteriors_of(model: torch.nn.Module, lr: torch.Tensor | np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``q(z | L)`` of E-Net (eval mode) for a batch of LR images.

    Args:
        model: anything :func:`enet_of` accepts.
        lr: (B, 1, h, w) or (B, h, w) or (h, w), float in [0, 1].

    Returns:
        float64 (B, M), rows summing to 1.
    """
    enet = enet_of(model)
    x = torch.as_tensor(np.asarray(lr) if not isinstance(lr, torch.Tensor) else lr)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"lr must be (B, 1, h, w), (B, h, w) or (h, w), got {tuple(x.shape)}")
    was_training = enet.training
    enet.eval()
    device = device_of(enet)
    out = [enet.posterior(x[i:i + batch_size].to(device=device, dtype=torch.float32)).double().cpu()
           for i in range(0, x.shape[0], batch_size)]
    enet.train(was_training)
    return torch.cat(out).numpy()


def image_crops(images: Mapping[str, np.ndarray], side: int, per_image: int, scale: int = 2
                ) -> dict[str, np.ndarray]:
    """Fixed, evenly spaced square crops: ``per_image`` crops of ``side × side`` from each image.

    Crop ``j`` of an image starts on a diagonal grid (top-left to bottom-right), with corners
    on multiples of ``scale`` (so the degradation grid is the image's). ``side`` is rounded
    down to a multiple of ``scale``. Returns ``{"name/j": crop}`` in image order; deterministic.
    """
    if per_image < 1:
        raise ValueError(f"per_image must be >= 1, got {per_image}")
    side -= side % scale
    crops = {}
    for name, img in images.items():
        img = np.asarray(img, dtype=np.float64)
        if img.ndim != 2 or min(img.shape) < side:
            raise ValueError(f"image {name!r} of shape {img.shape} is smaller than the crop side {side}")
        h, w = img.shape
        for j in range(per_image):
            frac = (j + 0.5) / per_image
            top = round(frac * (h - side)) // scale * scale
            left = round(frac * (w - side)) // scale * scale
            # alternate the anti-diagonal for odd crops, to cover more of the image
            if j % 2 == 1:
                left = round((1 - frac) * (w - side)) // scale * scale
            crops[f"{name}/{j}"] = img[top:top + side, left:left + side].copy()
    return crops


@dataclass
class PosteriorSet:
    """Posteriors of every crop × every kernel.

    ``q`` (N, M) float64; ``kernel`` (N,) int, the position of the row's kernel in the kernel
    list given to :func:`collect_posteriors` (not the bank index); ``crop`` (N,) int, the
    crop's position; ``kernel_names`` and ``crop_names`` for the labels.
    """

    q: np.ndarray
    kernel: np.ndarray
    crop: np.ndarray
    kernel_names: list[str]
    crop_names: list[str]

    @property
    def n_kernels(self) -> int:
        return len(self.kernel_names)


def collect_posteriors(model: torch.nn.Module, crops: Mapping[str, np.ndarray], kernels: np.ndarray,
                       scale: int, kernel_names: Sequence[str] | None = None) -> PosteriorSet:
    """Degrade every crop by every kernel (Eq. 1, :func:`degrade_with_kernels`) and take
    E-Net's posterior of each LR image.

    Args:
        model: E-Net or a model holding one (:func:`enet_of`).
        crops: ``{name: HR (H, W) float in [0, 1]}``, e.g. from :func:`image_crops`.
        kernels: (K, k, k), each summing to 1.
        scale: the down-sampling factor ``u``.

    Returns a :class:`PosteriorSet` of ``len(crops) * K`` rows, crop-major.
    """
    kernels = np.asarray(kernels, dtype=np.float64)
    if kernels.ndim != 3:
        raise ValueError(f"kernels must be (K, k, k), got shape {kernels.shape}")
    names = list(kernel_names) if kernel_names is not None else [f"k{i}" for i in range(len(kernels))]
    if len(names) != len(kernels):
        raise ValueError(f"{len(names)} kernel names for {len(kernels)} kernels")
    qs, kernel_ids, crop_ids = [], [], []
    for c, (name, hr) in enumerate(crops.items()):
        lr = degrade_with_kernels(modcrop(np.asarray(hr, dtype=np.float64), scale), kernels, scale)
        qs.append(posteriors_of(model, lr))
        kernel_ids.append(np.arange(len(kernels)))
        crop_ids.append(np.full(len(kernels), c))
    return PosteriorSet(q=np.concatenate(qs), kernel=np.concatenate(kernel_ids), crop=np.concatenate(crop_ids),
                        kernel_names=names, crop_names=list(crops))


def mean_posteriors(q: np.ndarray, labels: np.ndarray, n_labels: int | None = None) -> np.ndarray:
    """Centroid (mean ``q``) of each label: (n_labels, M). Labels are 0 … n_labels−1."""
    q, labels = np.asarray(q, dtype=np.float64), np.asarray(labels)
    n_labels = int(labels.max()) + 1 if n_labels is None else int(n_labels)
    centroids = np.zeros((n_labels, q.shape[1]))
    for k in range(n_labels):
        members = labels == k
        if not members.any():
            raise ValueError(f"label {k} has no member")
        centroids[k] = q[members].mean(axis=0)
    return centroids


def posterior_entropy(q: np.ndarray) -> np.ndarray:
    """Entropy of each row of ``q`` in nats, (N,): 0 for a one-hot row, log M for uniform."""
    q = np.asarray(q, dtype=np.float64)
    return -(q * np.log(np.clip(q, 1e-12, None))).sum(axis=1)


# ---------------------------------------------------------------------------------- kernels
def kernel_distances(kernels_a: np.ndarray, kernels_b: np.ndarray | None = None,
                     kind: str = "covariance") -> np.ndarray:
    """Pairwise distances between kernels, (Ka, Kb).

    ``kind='covariance'``: ``‖Σ_i − Σ_j‖_F`` of the kernels' second moments
    (:func:`tutorial_lib.kernels.second_moments`, px²); ``kind='image'``: the L2 distance of
    the kernels as images. ``kernels_b=None``: against ``kernels_a`` itself (symmetric,
    zero diagonal).
    """
    a = np.asarray(kernels_a, dtype=np.float64)
    b = a if kernels_b is None else np.asarray(kernels_b, dtype=np.float64)
    if a.ndim != 3 or b.ndim != 3:
        raise ValueError("kernels must be (K, k, k) arrays")
    if kind == "covariance":
        fa = np.stack([kernel_lib.second_moments(k).ravel() for k in a])
        fb = np.stack([kernel_lib.second_moments(k).ravel() for k in b])
    elif kind == "image":
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"kernels of different sizes {a.shape[1:]} and {b.shape[1:]}")
        fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)
    else:
        raise ValueError(f"kind must be 'covariance' or 'image', got {kind!r}")
    return np.sqrt(((fa[:, None] - fb[None]) ** 2).sum(axis=2))


def line_kernel(length: float, angle: float, size: int = kernel_lib.KERNEL_SIZE, samples: int = 201) -> np.ndarray:
    """A motion-like blur: a straight line segment of ``length`` px through the centre.

    ``angle`` in radians on screen: 0 is a horizontal line (motion along the columns),
    π/2 a vertical one (along the rows). The segment is
    sampled at ``samples`` points and splatted bilinearly, so fractional lengths and angles
    are smooth. Returns float64 (size, size) summing to 1, point-symmetric.
    """
    if not length >= 0 or length > size - 1:
        raise ValueError(f"length must lie in [0, {size - 1}] px for a {size}x{size} window, got {length}")
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer, got {size}")
    c = size // 2
    t = np.linspace(-length / 2, length / 2, samples)
    rows = c + t * math.sin(angle)
    cols = c + t * math.cos(angle)
    kernel = np.zeros((size, size))
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = rows - r0, cols - c0
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            rr, cc = np.clip(r0 + dr, 0, size - 1), np.clip(c0 + dc, 0, size - 1)
            np.add.at(kernel, (rr, cc), wr * wc)
    kernel = 0.5 * (kernel + kernel[::-1, ::-1])  # exact point symmetry
    return kernel / kernel.sum()


# --------------------------------------------------------------------------------- measures
def silhouette_by_kernel(q: np.ndarray, labels: np.ndarray, sample_size: int | None = None,
                         seed: int = 0) -> float:
    """Silhouette score (sklearn, Euclidean) of the posteriors with the kernel as the cluster
    label: near 1 = tight, well separated clusters per kernel; near 0 = overlapping; < 0 =
    rows closer to another kernel's cluster than to their own."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("silhouette needs at least two different labels")
    return float(silhouette_score(np.asarray(q, dtype=np.float64), labels, metric="euclidean",
                                  sample_size=sample_size, random_state=seed))


def _upper(matrix: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(matrix.shape[0], k=1)
    return matrix[i, j]


def distance_preservation(centroids: np.ndarray, kernel_dist: np.ndarray, rtol: float = 1e-9) -> dict[str, float]:
    """How well distances between mean posteriors follow distances between kernels.

    Args:
        centroids: (K, M) mean posterior per kernel (:func:`mean_posteriors`).
        kernel_dist: (K, K) symmetric kernel distances (:func:`kernel_distances`).
        rtol: kernel distances closer than ``rtol`` times the largest one are ties for the
            rank correlation. The bank is symmetric (a kernel and its mirror image), so about
            half of the 406 pairwise distances of the seen kernels equal another one in exact
            arithmetic; in floating point they differ in the last bits, differently from one
            NumPy release to the next, and which one ranked first moved ρ by 0.001.

    Returns ``{"spearman": ρ, "pearson": r}`` over the K(K−1)/2 pairs: 1 = the embedding
    orders (or scales) kernel pairs exactly as their distances do. Tied pairs share their
    average rank, as in :func:`scipy.stats.spearmanr`.
    """
    from scipy.stats import pearsonr, spearmanr

    centroids, kernel_dist = np.asarray(centroids, dtype=np.float64), np.asarray(kernel_dist, dtype=np.float64)
    if kernel_dist.shape != (len(centroids), len(centroids)):
        raise ValueError(f"kernel_dist must be ({len(centroids)}, {len(centroids)}), got {kernel_dist.shape}")
    q_dist = np.sqrt(((centroids[:, None] - centroids[None]) ** 2).sum(axis=2))
    x, y = _upper(kernel_dist), _upper(q_dist)
    if np.ptp(y) == 0 or np.ptp(x) == 0:
        return {"spearman": 0.0, "pearson": 0.0}
    return {"spearman": float(spearmanr(_merge_ties(x, rtol), y).statistic),
            "pearson": float(pearsonr(x, y).statistic)}


def _merge_ties(values: np.ndarray, rtol: float) -> np.ndarray:
    """``values`` with every run of sorted values whose steps are at most ``rtol * max|values|``
    set to the run's first value, so that rank statistics see them as ties."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.r_[True, np.diff(ordered) > rtol * np.abs(values).max()]
    merged = np.empty_like(values)
    merged[order] = ordered[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
    return merged


def nearest_centroid_retrieval(query_centroids: np.ndarray, seen_centroids: np.ndarray,
                               kernel_dist: np.ndarray, atol: float = 1e-9) -> dict[str, object]:
    """For each query (unseen) kernel: is the seen kernel whose mean posterior is nearest in
    q-space also the most similar seen kernel?

    Args:
        query_centroids: (Kq, M) mean posterior of each query kernel.
        seen_centroids: (Ks, M) mean posterior of each seen kernel.
        kernel_dist: (Kq, Ks) distance of each query kernel to each seen kernel.

    A hit counts when the retrieved seen kernel is *as* close as the closest one (within
    ``atol``), so identical seen twins (θ = 0 / π) both count. Returns ``accuracy`` (fraction
    of hits), ``rank`` (Kq,) the rank (0 = best) of the retrieved kernel among the seen ones
    by kernel distance, ``mean_rank``, ``retrieved`` (Kq,) and ``closest`` (Kq,) indices.
    """
    query_centroids = np.asarray(query_centroids, dtype=np.float64)
    seen_centroids = np.asarray(seen_centroids, dtype=np.float64)
    kernel_dist = np.asarray(kernel_dist, dtype=np.float64)
    if kernel_dist.shape != (len(query_centroids), len(seen_centroids)):
        raise ValueError(f"kernel_dist must be ({len(query_centroids)}, {len(seen_centroids)}), got {kernel_dist.shape}")
    q_dist = np.sqrt(((query_centroids[:, None] - seen_centroids[None]) ** 2).sum(axis=2))
    retrieved = q_dist.argmin(axis=1)
    chosen = kernel_dist[np.arange(len(retrieved)), retrieved]
    best = kernel_dist.min(axis=1)
    hits = chosen <= best + atol
    rank = (kernel_dist < chosen[:, None] - atol).sum(axis=1)  # seen kernels strictly closer
    return {"accuracy": float(hits.mean()), "rank": rank, "mean_rank": float(rank.mean()),
            "retrieved": retrieved, "closest": kernel_dist.argmin(axis=1)}


def shuffled_baseline(measure: Callable[[np.ndarray], float], labels: np.ndarray, n_shuffles: int = 20,
                      seed: int = 0) -> dict[str, float]:
    """``measure(permuted_labels) -> float`` averaged over ``n_shuffles`` random permutations
    of ``labels`` (``numpy.random.default_rng(seed)``): what the measure gives when the
    kernel labels carry no information. Returns ``mean``, ``std`` and ``max``."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    values = np.array([measure(rng.permutation(labels)) for _ in range(n_shuffles)])
    return {"mean": float(values.mean()), "std": float(values.std()), "max": float(values.max())}


# ------------------------------------------------------------------------- posterior explorer
def check_explorer_image(hr: np.ndarray, scale: int, kernel_side: int, name: str = "hr",
                         min_lr_side: int = 16) -> np.ndarray:
    """``hr`` (float (H, W) in [0, 1]) modcropped to ``scale``, or a ``ValueError`` naming
    ``name`` when it is too small for the kernel, for SSIM's 7x7 window after shaving
    ``scale`` pixels, or for an LR side of ``min_lr_side`` (E-Net's four stride-2 stages: 16;
    the kernel explorer, which runs no network: 0)."""
    hr = np.asarray(hr)
    if hr.ndim != 2:
        raise ValueError(f"{name} must be a single-channel image (H, W), got shape {hr.shape}")
    if not np.issubdtype(hr.dtype, np.floating):
        raise ValueError(f"{name} must be float in [0, 1], got dtype {hr.dtype}")
    cropped = modcrop(hr.astype(np.float64), scale)
    need = max(kernel_side, 2 * scale + 7, min_lr_side * scale)
    if min(cropped.shape) < need:
        raise ValueError(f"{name} of size {hr.shape[0]}x{hr.shape[1]} is too small for a {kernel_side}x{kernel_side} "
                         f"kernel at scale {scale}: it needs {need} px per side after cropping to a multiple of {scale}")
    return cropped


def posterior_explorer_state(model: torch.nn.Module, hr: np.ndarray, lambda1: float | None = None,
                             lambda2: float | None = None, theta: float | None = None,
                             kernel: np.ndarray | None = None, kernel_size: int = kernel_lib.KERNEL_SIZE
                             ) -> dict[str, object]:
    """One HR image and one kernel through the whole model: the explorer's update function.

    Give either ``lambda1, lambda2, theta`` (variances in px², radians; an anisotropic
    Gaussian, :func:`tutorial_lib.kernels.anisotropic_gaussian`) or ``kernel`` (k, k).
    ``model`` is a mixture (``BlindSR``) with an E-Net; its scale is used.

    Returns a dict: ``kernel`` (k, k), ``hr`` (modcropped), ``lr`` (h, w), ``bicubic``,
    ``q`` (M,) E-Net's posterior, ``experts`` (M, H, W) each expert's output
    ``bicubic + R_z``, ``fused`` (H, W) = ``bicubic + Σ q_z R_z`` (Eq. 10), ``psnr`` and
    ``ssim`` dicts over ``'bicubic'``, ``'expert 1'`` … ``'expert M'``, ``'fused'`` (paper
    protocol: Y, 8-bit, shave = scale), ``best_expert`` (index of the highest-PSNR expert),
    ``scale``. Deterministic (eval mode).
    """
    from .models import BlindSR

    if not isinstance(model, BlindSR) or model.enet is None:
        raise ValueError("model must be a BlindSR mixture with an E-Net (not the averaged ensemble)")
    if kernel is None:
        if lambda1 is None or lambda2 is None or theta is None:
            raise ValueError("give either kernel or all of lambda1, lambda2, theta")
        if not (lambda1 > 0 and lambda2 > 0):
            raise ValueError(f"lambda1 and lambda2 must be positive variances, got {lambda1}, {lambda2}")
        kernel = kernel_lib.anisotropic_gaussian(float(lambda1), float(lambda2), float(theta), kernel_size)
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
        raise ValueError(f"kernel must be square with an odd side, got shape {kernel.shape}")
    scale = int(model.scale)
    hr = check_explorer_image(hr, scale, kernel.shape[0])
    lr = degrade(hr, kernel, scale)
    lr_t = torch.as_tensor(lr, dtype=torch.float32)[None, None]
    model.eval()
    with torch.no_grad():
        base = bicubic_upsample(lr_t, scale)
        device = device_of(model)
        out = {k: v.cpu() for k, v in model(lr_t.to(device), base.to(device), mode="fused").items()
               if isinstance(v, torch.Tensor)}
    q = out["q"][0].double().numpy()
    experts = out["experts"][0, :, 0].double().numpy()
    fused = out["fused"][0, 0].double().numpy()
    bicubic = base[0, 0].double().numpy()
    outputs = {"bicubic": bicubic, **{f"expert {i + 1}": e for i, e in enumerate(experts)}, "fused": fused}
    psnr = {k: float(psnr_y(hr, v, shave_border=scale)) for k, v in outputs.items()}
    ssim = {k: float(ssim_y(hr, v, shave_border=scale)) for k, v in outputs.items()}
    expert_psnr = [psnr[f"expert {i + 1}"] for i in range(len(experts))]
    return {"kernel": kernel, "hr": hr, "lr": lr, "bicubic": bicubic, "q": q, "experts": experts,
            "fused": fused, "psnr": psnr, "ssim": ssim, "best_expert": int(np.argmax(expert_psnr)),
            "scale": scale}


# ---------------------------------------------------------------------------------- figures
def plot_posterior_state(state: Mapping[str, object], crop: Sequence[int] | None = None,
                         title: str | None = None) -> Figure:
    """Figure of one :func:`posterior_explorer_state`: the kernel, ``q`` as bars (the expert
    with the best PSNR marked), and the same crop of HR, bicubic, every expert and the
    fusion, each titled with its PSNR (on the whole image). ``crop = (top, left, h, w)``;
    default: the central square of at most 96 px."""
    hr = np.asarray(state["hr"])
    q = np.asarray(state["q"])
    experts = np.asarray(state["experts"])
    m = len(q)
    if crop is None:
        side = min(96, *hr.shape)
        crop = ((hr.shape[0] - side) // 2, (hr.shape[1] - side) // 2, side, side)
    top, left, h, w = crop
    window = (slice(top, top + h), slice(left, left + w))
    panels = {"ground truth": (hr, None), "bicubic": (state["bicubic"], state["psnr"]["bicubic"])}
    for i in range(m):
        panels[f"expert {i + 1} (q={q[i]:.2f})"] = (experts[i], state["psnr"][f"expert {i + 1}"])
    panels["fused (Eq. 10)"] = (state["fused"], state["psnr"]["fused"])
    # two rows, readable at a notebook's width: kernel, q, HR, bicubic and the fusion above, the experts below
    first_row = ["ground truth", "bicubic", "fused (Eq. 10)"]
    second_row = [name for name in panels if name not in first_row]
    n_cols = max(len(first_row) + 2, len(second_row))
    fig = plt.figure(figsize=(2.1 * n_cols + 0.4, 5.6), layout="constrained")
    grid = fig.add_gridspec(2, n_cols)
    places = {name: grid[0, k + 2] for k, name in enumerate(first_row)}
    places.update({name: grid[1, k] for k, name in enumerate(second_row)})
    ax = fig.add_subplot(grid[0, 0])
    kernel = np.asarray(state["kernel"])
    image = plot_kernel(ax, kernel, title=f"kernel {kernel.shape[0]}×{kernel.shape[1]}")  # offsets from the centre
    ax.title.set_fontsize(9)
    ax.xaxis.label.set_fontsize(8)
    ax.yaxis.label.set_fontsize(8)
    ax.tick_params(labelsize=7)
    colorbar = fig.colorbar(image, ax=ax, location="bottom", shrink=0.9, pad=0.02)
    colorbar.set_label("weight", fontsize=7)
    colorbar.ax.tick_params(labelsize=6)
    ax = fig.add_subplot(grid[0, 1])
    colours = ["#999999"] * m
    colours[int(state["best_expert"])] = "#009E73"
    ax.bar(np.arange(1, m + 1), q, color=colours)
    ax.set_ylim(0, 1)
    ax.set_xticks(np.arange(1, m + 1))
    ax.set_xlabel("expert z", fontsize=8)
    ax.set_ylabel("q(z | L)", fontsize=8)
    ax.set_title("posterior (green: best expert)", fontsize=9)
    ax.tick_params(labelsize=7)
    for name, (img, psnr) in panels.items():
        ax = fig.add_subplot(places[name])
        ax.imshow(np.asarray(img)[window], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name if psnr is None else f"{name}\n{psnr:.2f} dB", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_embedding(points: np.ndarray, colour: np.ndarray, colour_label: str, title: str,
                   axis_labels: Sequence[str] = ("PC 1", "PC 2", "PC 3"), cmap: str = "viridis",
                   views: Sequence[tuple[int, int]] = ((0, 1), (0, 2), (1, 2)), three_d: bool = True,
                   extra: Mapping[str, tuple[np.ndarray, str]] | None = None) -> Figure:
    """A 3-D scatter of ``points`` (N, ≥3) and its 2-D views, coloured by ``colour`` (N,)
    with a perceptually uniform colour map. ``extra``: ``{label: (points (n, ≥3), marker)}``
    drawn on top in black (e.g. kernels outside the bank). With ``three_d=False`` (or 2-D
    points) only the 2-D views are drawn."""
    points = np.asarray(points, dtype=np.float64)
    colour = np.asarray(colour, dtype=np.float64)
    dims = points.shape[1]
    if dims < 2:
        raise ValueError("points must have at least 2 columns")
    views = [v for v in views if max(v) < dims]
    three_d = three_d and dims >= 3
    n_panels = len(views) + int(three_d)
    n_cols = 2 if n_panels == 4 else n_panels  # 2 x 2 rather than four in a row: readable at a notebook's width
    n_rows = -(-n_panels // n_cols)
    fig = plt.figure(figsize=(4.3 * n_cols + 0.9, 3.9 * n_rows), layout="constrained")
    scatter = None
    k = 1
    markers = ["X", "P", "*", "D", "s", "^", "v"]
    if three_d:
        ax = fig.add_subplot(n_rows, n_cols, k, projection="3d")
        scatter = ax.scatter(points[:, 0], points[:, 1], points[:, 2], c=colour, cmap=cmap, s=6, alpha=0.7,
                             depthshade=False)
        for (label, (pts, marker)) in (extra or {}).items():
            pts = np.asarray(pts)
            ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c="black", marker=marker, s=50, label=label)
        ax.set_xlabel(axis_labels[0], fontsize=8)
        ax.set_ylabel(axis_labels[1], fontsize=8)
        ax.set_zlabel(axis_labels[2], fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_title("3-D view", fontsize=9)
        k += 1
    for i, j in views:
        ax = fig.add_subplot(n_rows, n_cols, k)
        scatter = ax.scatter(points[:, i], points[:, j], c=colour, cmap=cmap, s=6, alpha=0.7)
        for m_i, (label, (pts, marker)) in enumerate((extra or {}).items()):
            pts = np.asarray(pts)
            ax.scatter(pts[:, i], pts[:, j], c="black", marker=marker or markers[m_i % len(markers)], s=50,
                       label=label, edgecolors="white", linewidths=0.5)
        ax.set_xlabel(axis_labels[i], fontsize=8)
        ax.set_ylabel(axis_labels[j], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(f"{axis_labels[i]} vs {axis_labels[j]}", fontsize=9)
        k += 1
    if extra:
        fig.axes[-1].legend(fontsize=7, loc="best")
    fig.colorbar(scatter, ax=fig.axes, label=colour_label, shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return fig
