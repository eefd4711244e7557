"""The paper's 58 anisotropic Gaussian blur kernels and their seen/unseen split.

A kernel is ``k(z) ∝ exp(-½ zᵀ Σ⁻¹ z)`` on an odd ``size × size`` grid centred on the middle
pixel, normalised to sum 1, with covariance ``Σ = R(θ) diag(λ1, λ2) R(θ)ᵀ``. The λ are
**variances** (eigenvalues of Σ), not standard deviations.

Coordinates: ``z = (r, c)``, the row offset then the column offset from the centre, so
``θ = 0`` puts the first eigenvector along the rows (vertical on screen) and ``θ`` turns it
towards the +column axis. This is the convention under which the bank, split into the
authors' 29 unseen kernels and the other 29, reproduces the paper's Bicubic rows for *both*
groups. The whole bank is closed under transposition, so the authors' unseen kernels are
found in it under either convention; but which bank entries they occupy changes, and through
the θ = 0 / θ = π duplicates so does the complementary seen set (with rows and columns
swapped, Set5 ×2 seen bicubic gives 28.97 dB instead of the paper's 28.94).

The bank (paper Sec. 4.1): λ ∈ {0.75, 1.5, 2.25, 3.0};
4 isotropic kernels (λ1 = λ2) + 6 pairs λ1 < λ2 × 9 orientations θ = t·π/8, t = 0 … 8.
θ = 0 and θ = π give the same kernel, so only 52 of the 58 are distinct.

The split: :data:`UNSEEN_INDICES` lists, in the authors' file order, the bank indices of the
29 unseen (test) kernels; the 29 seen (training) kernels are the other bank entries. Three of
the unseen kernels (θ = 0 of the pairs (0.75, 2.25), (1.5, 3.0) and (2.25, 3.0)) have an
exact twin (θ = π) among the seen ones, so "unseen" results are partly seen;
:func:`kernel_set` ``("unseen_clean")`` drops them (26 kernels left). The seen set also holds
three exact duplicate pairs of its own (θ = 0 and θ = π of (0.75, 1.5), (0.75, 3.0) and
(1.5, 2.25)): 29 seen classes but 26 distinct kernels, which caps the accuracy of a kernel
classifier at 26/29 ≈ 89.7 %. See :func:`duplicate_pairs` and :func:`seen_unseen_twins`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

EIGENVALUES: tuple[float, ...] = (0.75, 1.5, 2.25, 3.0)
N_ORIENTATIONS = 9  # θ = t·π/8, t = 0 … 8 (both ends included)
KERNEL_SIZE = 11

# Bank indices of the authors' 29 unseen kernels, in the order of their file
# ``blindsr_kernel_test.npy`` (checked in tests against that file when it is available).
UNSEEN_INDICES: tuple[int, ...] = (
    28, 44, 40, 24, 43, 32, 18, 42, 1, 20, 41, 11, 50, 13, 3,
    2, 36, 47, 27, 33, 35, 49, 37, 45, 38, 0, 34, 29, 19,
)


@dataclass(frozen=True)
class KernelParams:
    """Parameters of one bank kernel: variances ``lambda1 <= lambda2`` and angle ``theta``
    in radians (``t`` is the orientation step, θ = t·π/8; 0 for isotropic kernels)."""

    index: int
    lambda1: float
    lambda2: float
    t: int

    @property
    def theta(self) -> float:
        return self.t * np.pi / 8

    @property
    def isotropic(self) -> bool:
        return self.lambda1 == self.lambda2

    def label(self) -> str:
        if self.isotropic:
            return f"λ={self.lambda1:g} (iso)"
        return f"λ=({self.lambda1:g},{self.lambda2:g}) θ={self.t}π/8"


def _check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size!r}")
    return int(size)


def covariance(lambda1: float, lambda2: float, theta: float) -> np.ndarray:
    """Covariance ``R(θ) diag(λ1, λ2) R(θ)ᵀ`` (2, 2) in (row, column) coordinates."""
    if not (lambda1 > 0 and lambda2 > 0):
        raise ValueError(f"eigenvalues must be positive variances, got λ1={lambda1}, λ2={lambda2}")
    c, s = np.cos(theta), np.sin(theta)
    rotation = np.array([[c, -s], [s, c]])
    return rotation @ np.diag([float(lambda1), float(lambda2)]) @ rotation.T


def anisotropic_gaussian(lambda1: float, lambda2: float, theta: float,
                         size: int = KERNEL_SIZE) -> np.ndarray:
    """Anisotropic Gaussian kernel, float64 (size, size), non-negative, summing to 1.

    ``lambda1``, ``lambda2`` are the variances along the two principal axes (pixels²),
    ``theta`` the angle of the first axis in radians (see the module doc for coordinates).
    """
    size = _check_size(size)
    inverse = np.linalg.inv(covariance(lambda1, lambda2, theta))
    offsets = np.arange(size) - size // 2
    cols, rows = np.meshgrid(offsets, offsets)
    z = np.stack([rows, cols], axis=-1).astype(np.float64)
    quad = np.einsum("...i,ij,...j->...", z, inverse, z)
    kernel = np.exp(-0.5 * quad)
    return kernel / kernel.sum()


def bank_parameters() -> list[KernelParams]:
    """Parameters of the 58 bank kernels, in bank order: 4 isotropic, then for each pair
    (λ1 < λ2) in lexicographic order the 9 orientations t = 0 … 8."""
    params = [KernelParams(i, lam, lam, 0) for i, lam in enumerate(EIGENVALUES)]
    for lam1, lam2 in itertools.combinations(EIGENVALUES, 2):
        for t in range(N_ORIENTATIONS):
            params.append(KernelParams(len(params), lam1, lam2, t))
    return params


def kernel_bank(size: int = KERNEL_SIZE) -> np.ndarray:
    """All 58 kernels, float64 (58, size, size), in :func:`bank_parameters` order."""
    return np.stack([anisotropic_gaussian(p.lambda1, p.lambda2, p.theta, size)
                     for p in bank_parameters()])


SEEN_INDICES: tuple[int, ...] = tuple(i for i in range(58) if i not in set(UNSEEN_INDICES))


def duplicate_pairs(size: int = KERNEL_SIZE, atol: float = 1e-12) -> list[tuple[int, int]]:
    """Pairs of bank indices (i < j) whose kernels are identical (the θ = 0 / θ = π twins)."""
    bank = kernel_bank(size)
    return [(i, j) for i in range(len(bank)) for j in range(i + 1, len(bank))
            if np.abs(bank[i] - bank[j]).max() <= atol]


def seen_unseen_twins(size: int = KERNEL_SIZE) -> list[tuple[int, int]]:
    """``(seen_index, unseen_index)`` bank pairs where a seen kernel equals an unseen one."""
    seen, unseen = set(SEEN_INDICES), set(UNSEEN_INDICES)
    twins = []
    for i, j in duplicate_pairs(size):
        if i in seen and j in unseen:
            twins.append((i, j))
        elif j in seen and i in unseen:
            twins.append((j, i))
    return twins


KERNEL_SETS = ("seen", "unseen", "unseen_clean", "all")


def kernel_indices(name: str) -> tuple[int, ...]:
    """Bank indices of a named kernel set.

    ``seen``: the 29 training kernels; ``unseen``: the authors' 29 test kernels (their file
    order); ``unseen_clean``: the 26 unseen kernels that have no exact twin among the seen
    ones; ``all``: the 58 bank kernels.
    """
    if name == "seen":
        return SEEN_INDICES
    if name == "unseen":
        return UNSEEN_INDICES
    if name == "unseen_clean":
        leaked = {u for _, u in seen_unseen_twins()}
        return tuple(i for i in UNSEEN_INDICES if i not in leaked)
    if name == "all":
        return tuple(range(58))
    raise ValueError(f"kernel set must be one of {KERNEL_SETS}, got {name!r}")


def kernel_set(name: str, size: int = KERNEL_SIZE) -> np.ndarray:
    """Kernels of a named set (see :func:`kernel_indices`), float64 (K, size, size)."""
    return kernel_bank(size)[list(kernel_indices(name))]


def second_moments(kernel: np.ndarray) -> np.ndarray:
    """Covariance (2, 2) of a kernel seen as a distribution over (row, column) offsets.

    For a kernel well inside its window this recovers ``Σ`` of :func:`covariance`.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
        raise ValueError(f"kernel must be square with odd size, got shape {kernel.shape}")
    offsets = np.arange(kernel.shape[0]) - kernel.shape[0] // 2
    y, x = np.meshgrid(offsets, offsets)  # x: row offset, y: column offset
    weights = kernel / kernel.sum()
    mean_x, mean_y = (weights * x).sum(), (weights * y).sum()
    dx, dy = x - mean_x, y - mean_y
    return np.array([[(weights * dx * dx).sum(), (weights * dx * dy).sum()],
                     [(weights * dx * dy).sum(), (weights * dy * dy).sum()]])
