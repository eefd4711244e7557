"""The evidence lower bound (ELBO) of a discrete latent-variable model, and a 1-D toy mixture.

The paper (Wang et al., Pattern Recognition 2020, Sec. 3.1-3.3) models the unknown blur kernel
of a low-resolution (LR) image ``L`` with a discrete latent variable ``z in {1..M}``:

    log p(H | L) = log sum_z p(z | L) p(H | z, L)                                     (Eq. 4)

and trains on a lower bound of it, obtained with any distribution ``q(z | L)``:

    log p(H | L) >= E_q[log p(H | z, L)] - KL(q || p(z | L)) = ELBO(q)                (Eq. 6)

The gap is exact and worth remembering:

    log p(H | L) - ELBO(q) = KL(q || p(z | H, L)),

a KL divergence to the *posterior* given both H and L, so the bound is tight exactly when
``q = p(z | H, L)``. The KL inside the ELBO is a different one: it is the KL to the *prior*
``p(z | L)``, which has not seen H (the paper calls ``p(z | L)`` "the true posterior", which is
loose; ``p(z | H, L)`` does not appear in the paper).

This module, read top to bottom:

1. the discrete model: :func:`log_marginal`, :func:`posterior`, :func:`kl`, :func:`elbo`
   (NumPy, float64, any leading batch shape, latent states on the last axis);
2. the Gibbs likelihood of Eq. (7), :func:`gibbs_log_lik`, and how its scale ``alpha``, the
   paper's weight ``lambda`` and a noise variance relate (:func:`alpha_from_lambda`,
   :func:`noise_variance_from_alpha`, :func:`lambda_from_noise_variance`);
3. inference, Eqs. (9)-(10): :func:`mean_prediction`, :func:`expected_sq_error` and the
   decomposition :func:`loss_decomposition` (these three accept NumPy arrays or torch tensors);
4. the training objective of Eq. (12) in torch, :func:`mixture_objective`;
5. a 1-D toy mixture of experts that trains in seconds on a CPU: :func:`make_toy_data`,
   :class:`ToyGate`, :class:`ToyExperts`, :func:`pretrain_gate` (Eq. 11),
   :func:`train_toy_mixture` (Eq. 12) and the measures :func:`specialisation_scores`,
   :func:`mean_q_per_kernel`, :func:`expert_error_matrix`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy.special import logsumexp
from torch import nn
from torch.nn import functional as F

from tutorial_lib.config import check_integer, seed_everything

Array = np.ndarray | torch.Tensor

# --------------------------------------------------------------------------------------------
# 1. The discrete latent-variable model
# --------------------------------------------------------------------------------------------


def _as_float64(name: str, value: object) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        raise ValueError(f"{name} must have a last axis over the M latent states, got a scalar")
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN")
    return array


def _check_distribution(name: str, p: np.ndarray, atol: float = 1e-8) -> None:
    if (p < 0).any():
        raise ValueError(f"{name} must be non-negative (probabilities on the last axis)")
    total = p.sum(axis=-1)
    if not np.allclose(total, 1.0, atol=atol):
        raise ValueError(f"{name} must sum to 1 over its last axis, got sums {np.unique(total)[:4]}")


def log_marginal(log_prior: np.ndarray, log_lik: np.ndarray) -> np.ndarray:
    """``log p(H | L) = log sum_z p(z | L) p(H | z, L)`` (Eq. 4), by log-sum-exp.

    Args:
        log_prior: ``(..., M)`` float, ``log p(z | L)``; ``exp`` sums to 1 on the last axis.
        log_lik: ``(..., M)`` float, ``log p(H | z, L)`` (any scale, e.g. ``-1e4``: no overflow).

    Returns:
        ``(...)`` float64, the log marginal likelihood.
    """
    log_prior = _as_float64("log_prior", log_prior)
    log_lik = _as_float64("log_lik", log_lik)
    _check_distribution("exp(log_prior)", np.exp(log_prior))
    return logsumexp(log_prior + log_lik, axis=-1)


def posterior(log_prior: np.ndarray, log_lik: np.ndarray) -> np.ndarray:
    """The exact posterior ``p(z | H, L) = p(z | L) p(H | z, L) / p(H | L)`` (Bayes' rule).

    Args: as :func:`log_marginal`. Returns ``(..., M)`` float64 probabilities summing to 1.
    """
    log_joint = _as_float64("log_prior", log_prior) + _as_float64("log_lik", log_lik)
    return np.exp(log_joint - log_marginal(log_prior, log_lik)[..., None])


def kl(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``KL(q || p) = sum_z q_z log(q_z / p_z)`` in nats, with ``0 log 0 = 0``.

    Args:
        q, p: ``(..., M)`` probabilities summing to 1 on the last axis (broadcastable).

    Returns:
        ``(...)`` float64, >= 0; ``inf`` where ``p_z = 0 < q_z``.
    """
    q = _as_float64("q", q)
    p = _as_float64("p", p)
    _check_distribution("q", q)
    _check_distribution("p", p)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * (np.log(q) - np.log(p)), 0.0)
    return terms.sum(axis=-1)


def elbo(q: np.ndarray, log_prior: np.ndarray, log_lik: np.ndarray) -> np.ndarray:
    """The evidence lower bound ``E_q[log p(H | z, L)] - KL(q || p(z | L))`` (Eq. 6).

    Args:
        q: ``(..., M)`` any distribution over the latent states (the encoder's output).
        log_prior: ``(..., M)`` ``log p(z | L)``.
        log_lik: ``(..., M)`` ``log p(H | z, L)``.

    Returns:
        ``(...)`` float64, never above :func:`log_marginal`; the difference is
        ``kl(q, posterior(log_prior, log_lik))``.
    """
    q = _as_float64("q", q)
    log_lik = _as_float64("log_lik", log_lik)
    with np.errstate(invalid="ignore"):
        expected_log_lik = np.where(q > 0, q * log_lik, 0.0).sum(axis=-1)
    return expected_log_lik - kl(q, np.exp(_as_float64("log_prior", log_prior)))


# --------------------------------------------------------------------------------------------
# 2. The Gibbs likelihood (Eq. 7) and the meaning of alpha and lambda
# --------------------------------------------------------------------------------------------


def gibbs_log_lik(h: np.ndarray, predictions: np.ndarray, alpha: float) -> np.ndarray:
    """Normalised Gibbs (Gaussian) log-likelihood of Eq. (7), one value per expert.

    ``log p(H | z, L) = -||H - F_z||^2 / alpha - (N / 2) log(pi alpha)``: a Gaussian with
    independent noise of variance ``sigma^2 = alpha / 2`` on each of the N values.

    Args:
        h: ``(..., N)`` the target (HR signal or flattened image).
        predictions: ``(..., M, N)`` the experts' predictions ``F_z``.
        alpha: > 0, the scale of Eq. (7).

    Returns:
        ``(..., M)`` float64 log densities.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    h = np.asarray(h, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    if predictions.shape[-1] != h.shape[-1]:
        raise ValueError(
            f"predictions must end with N={h.shape[-1]} values like h, got shape {predictions.shape}"
        )
    n_values = h.shape[-1]
    sq_err = ((h[..., None, :] - predictions) ** 2).sum(axis=-1)
    return -sq_err / alpha - 0.5 * n_values * math.log(math.pi * alpha)


def alpha_from_lambda(lam: float, n_values: int, reduction: Literal["sum", "mean"] = "mean") -> float:
    """The Gibbs scale ``alpha`` that a weight ``lam`` on the KL term stands for.

    Multiplying ``-ELBO`` by ``alpha`` gives Eq. (8): ``E_q||H - F_z||^2 + alpha KL``, with the
    squared error *summed* over the N values, so ``lambda = alpha`` for ``reduction='sum'``. A
    loss that *averages* the squared error over the N values is that objective divided by N,
    so ``lambda_mean = alpha / N``, i.e. ``alpha = N * lambda_mean``.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if n_values < 1:
        raise ValueError(f"n_values must be >= 1, got {n_values}")
    return float(lam) * (n_values if reduction == "mean" else 1)


def noise_variance_from_alpha(alpha: float) -> float:
    """The per-value noise variance of the Gaussian that Eq. (7) is: ``sigma^2 = alpha / 2``."""
    return float(alpha) / 2.0


def lambda_from_noise_variance(
    sigma2: float, n_values: int, reduction: Literal["sum", "mean"] = "mean"
) -> float:
    """The KL weight ``lambda`` that matches Gaussian noise of variance ``sigma2`` per value."""
    return 2.0 * float(sigma2) / alpha_from_lambda(1.0, n_values, reduction)


# --------------------------------------------------------------------------------------------
# 3. Inference (Eqs. 9-10) and the decomposition of the expected loss
#    (these work on NumPy arrays and on torch tensors alike)
# --------------------------------------------------------------------------------------------


def _check_weights(q: Array, name: str = "q") -> None:
    """``q`` must be a distribution over the last axis: non-negative, summing to 1."""
    values = q.detach().double().cpu().numpy() if isinstance(q, torch.Tensor) else np.asarray(q, dtype=np.float64)
    if values.ndim == 0 or values.size == 0:
        raise ValueError(f"{name} must have shape (..., M) with M >= 1, got {tuple(values.shape)}")
    if not np.all(np.isfinite(values)) or values.min() < 0:
        raise ValueError(f"{name} must hold finite, non-negative weights")
    worst = float(np.abs(values.sum(-1) - 1).max())
    if worst > 1e-4:
        raise ValueError(f"{name} must sum to 1 over its last axis (a distribution over the M experts); "
                         f"a row is off by {worst:.3g}")


def mean_prediction(q: Array, predictions: Array) -> Array:
    """The closed-form minimiser of Eq. (9): ``H* = sum_z q_z F_z`` (Eq. 10).

    This is the prediction that maximises the bound over ``H_hat`` at fixed ``q``: the *mean*
    of the predictive mixture ``sum_z q_z N(F_z, alpha/2 I)``, the best estimate under squared
    error (and so for PSNR). It is not the mixture's *mode* (a MAP estimate): when the experts
    lie far apart compared with ``sigma = sqrt(alpha/2)``, the most probable ``H_hat`` sits near
    the expert with the largest ``q_z`` instead.

    Args:
        q: ``(..., M)`` weights (the encoder's ``q(z | L)``), summing to 1 over the last axis.
        predictions: ``(..., M, N)`` the experts' predictions.

    Returns:
        ``(..., N)`` the q-weighted mean prediction.
    """
    _check_weights(q)
    return (q[..., None] * predictions).sum(-2)


def expected_sq_error(h_hat: Array, q: Array, predictions: Array) -> Array:
    """The objective of Eq. (9): ``sum_z q_z ||h_hat - F_z||^2`` (squared error summed over N).

    Args:
        h_hat: ``(..., N)`` a candidate prediction; q: ``(..., M)``; predictions: ``(..., M, N)``.

    Returns:
        ``(...)`` the expected squared error.
    """
    sq_err = ((h_hat[..., None, :] - predictions) ** 2).sum(-1)
    return (q * sq_err).sum(-1)


def loss_decomposition(h: Array, q: Array, predictions: Array) -> tuple[Array, Array, Array]:
    """Split the expected loss into the loss of the expected prediction plus a spread.

    ``sum_z q_z ||H - F_z||^2 = ||H - Fbar||^2 + sum_z q_z ||F_z - Fbar||^2`` with
    ``Fbar = sum_z q_z F_z`` (bias-variance: the cross term vanishes because
    ``sum_z q_z (F_z - Fbar) = 0``).

    Args: h ``(..., N)``, q ``(..., M)``, predictions ``(..., M, N)``.

    Returns:
        ``(expected_loss, loss_of_mean, spread)``, each of shape ``(...)``.
    """
    f_bar = mean_prediction(q, predictions)  # checks that q sums to 1, which the identity needs
    expected_loss = expected_sq_error(h, q, predictions)
    loss_of_mean = ((h - f_bar) ** 2).sum(-1)
    spread = expected_sq_error(f_bar, q, predictions)
    return expected_loss, loss_of_mean, spread


# --------------------------------------------------------------------------------------------
# 4. The training objective, Eq. (12), in torch
# --------------------------------------------------------------------------------------------


def mixture_objective(
    log_q: torch.Tensor,
    log_prior: torch.Tensor,
    predictions: torch.Tensor,
    target: torch.Tensor,
    lam: float,
    reconstruction: Literal["expected", "of_mean"] = "expected",
) -> dict[str, torch.Tensor]:
    """Eq. (12) for a batch: ``E_q[mse(H, F_z)] + lam * KL(q || prior)``, averaged over the batch.

    The squared error is *averaged* over the N values (``mse``), so ``lam`` here corresponds to
    ``alpha = N * lam`` in Eq. (7) (see :func:`alpha_from_lambda`). The image version,
    :func:`tutorial_lib.objectives.elbo_loss`, *sums* over pixels by default (``lam = alpha``):
    the same ``lam`` means an ``N`` times weaker KL there, so a value does not carry over.

    Args:
        log_q: ``(B, M)`` log-probabilities of the encoder (``log_softmax`` of its scores).
        log_prior: ``(B, M)`` or ``(M,)`` log-probabilities of the prior (uniform or the
            pre-trained encoder's output); treated as a constant.
        predictions: ``(B, M, N)`` the experts' predictions; target: ``(B, N)``.
        lam: weight of the KL term, >= 0.
        reconstruction: ``'expected'`` for ``sum_z q_z mse(H, F_z)`` (the paper's ELBO) or
            ``'of_mean'`` for ``mse(H, sum_z q_z F_z)`` (the loss of the expected prediction,
            *not* a bound, for comparison).

    Returns:
        dict of scalar tensors ``loss``, ``recon``, ``kl``.
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if predictions.ndim != 3 or predictions.shape[:2] != log_q.shape:
        raise ValueError(
            f"predictions must have shape (B, M, N) with (B, M) = {tuple(log_q.shape)}, "
            f"got {tuple(predictions.shape)}"
        )
    q = log_q.exp()
    if reconstruction == "expected":
        recon = (q * ((predictions - target[:, None, :]) ** 2).mean(-1)).sum(-1).mean()
    elif reconstruction == "of_mean":
        recon = ((mean_prediction(q, predictions) - target) ** 2).mean(-1).mean()
    else:
        raise ValueError(f"reconstruction must be 'expected' or 'of_mean', got {reconstruction!r}")
    kl_term = (q * (log_q - log_prior.detach())).sum(-1).mean()
    return {"loss": recon + lam * kl_term, "recon": recon, "kl": kl_term}


# --------------------------------------------------------------------------------------------
# 5. A 1-D toy: Eq. (1) with K hidden blurs, and a mixture of M linear experts
# --------------------------------------------------------------------------------------------


def gaussian_kernel_1d(width: float, radius: int) -> np.ndarray:
    """A normalised 1-D Gaussian ``(2 radius + 1,)`` float64 with standard deviation ``width``."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / width) ** 2)
    return kernel / kernel.sum()


@dataclass
class ToyData:
    """A toy data set: ``l = S(b_k * h) + n`` in 1-D (Eq. 1), ``k`` hidden.

    Attributes:
        l: ``(n, length // scale)`` float32 observations (blurred, subsampled, noisy).
        h: ``(n, length)`` float32 clean signals (smoothed noise, unit standard deviation).
        kernel_id: ``(n,)`` int64 in ``[0, n_kernels)``, the blur used (never shown to the
            experts or to the encoder in joint training).
        kernels: ``(n_kernels, 2 radius + 1)`` float64 blur kernels, narrowest first.
        widths: the kernels' standard deviations, in samples of ``h``.
        scale: the subsampling factor ``u``.
    """

    l: torch.Tensor
    h: torch.Tensor
    kernel_id: torch.Tensor
    kernels: np.ndarray
    widths: tuple[float, ...]
    scale: int

    @property
    def n_kernels(self) -> int:
        return len(self.widths)

    def subset(self, index: slice | torch.Tensor) -> ToyData:
        """The samples at ``index`` (same kernels)."""
        return ToyData(self.l[index], self.h[index], self.kernel_id[index], self.kernels, self.widths, self.scale)


def make_toy_data(
    n: int,
    n_kernels: int = 3,
    seed: int = 0,
    length: int = 32,
    scale: int = 2,
    noise: float = 0.02,
    widths: tuple[float, ...] | None = None,
    smoothness: float = 1.0,
) -> ToyData:
    """Draw ``n`` toy pairs: a smooth random signal ``h`` and ``l = S(b_k * h) + noise``.

    ``h`` is white noise smoothed by a Gaussian of standard deviation ``smoothness`` and
    scaled to unit standard deviation; ``b_k`` is one of ``n_kernels`` Gaussian blurs (standard deviations
    ``widths``, default evenly spaced in [0.5, 3]); ``S`` keeps samples ``scale*i + scale//2``
    (as PIL's nearest-neighbour downsampling); the noise is Gaussian with standard deviation
    ``noise``. Kernel ids are balanced (``n // n_kernels`` each, the remainder spread) and
    shuffled. Restoring ``h`` well needs to know ``k``: that is the blind SR problem.

    Returns:
        a :class:`ToyData`; deterministic for a given ``seed``.
    """
    for name, value in (("n_kernels", n_kernels), ("scale", scale), ("length", length)):
        check_integer(name, value)
    if n < n_kernels:
        raise ValueError(f"n must be at least n_kernels={n_kernels}, got {n}")
    if length % scale:
        raise ValueError(f"length must be a multiple of scale={scale}, got {length}")
    if widths is None:
        widths = tuple(float(w) for w in np.linspace(0.5, 3.0, n_kernels))
    if len(widths) != n_kernels:
        raise ValueError(f"widths must have n_kernels={n_kernels} entries, got {len(widths)}")
    rng = np.random.default_rng(seed)
    radius = math.ceil(3 * max(widths))
    smooth_radius = math.ceil(3 * smoothness)
    kernels = np.stack([gaussian_kernel_1d(w, radius) for w in widths])

    # Clean signals, with `radius` extra samples each side so that the blur has no boundary.
    white = rng.standard_normal((n, length + 2 * radius + 2 * smooth_radius))
    smoother = gaussian_kernel_1d(smoothness, smooth_radius)
    long_h = np.stack([np.convolve(row, smoother, mode="valid") for row in white])
    long_h /= long_h.std(axis=1, keepdims=True)
    h = long_h[:, radius : radius + length]

    kernel_id = rng.permutation(np.arange(n) % n_kernels)
    blurred = np.stack([np.convolve(row, kernels[k], mode="valid") for row, k in zip(long_h, kernel_id)])
    l = blurred[:, scale // 2 :: scale] + noise * rng.standard_normal((n, length // scale))
    return ToyData(
        l=torch.from_numpy(l).float(),
        h=torch.from_numpy(h).float(),
        kernel_id=torch.from_numpy(kernel_id).long(),
        kernels=kernels,
        widths=tuple(widths),
        scale=scale,
    )


class ToyGate(nn.Module):
    """The toy E-Net: an MLP from ``l`` ``(B, n_in)`` to ``M`` scores ``s`` ``(B, M)``.

    ``q(z | l) = softmax(s)``; use :meth:`log_q` for ``log_softmax(s)``.
    """

    def __init__(self, n_in: int, n_experts: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_experts)
        )

    def forward(self, l: torch.Tensor) -> torch.Tensor:
        return self.net(l)

    def log_q(self, l: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.net(l), dim=-1)


class ClassificationHead(nn.Module):
    """Two fully connected layers from the M scores to K kernel logits (pre-training, Eq. 11)."""

    def __init__(self, n_experts: int, n_kernels: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_experts, hidden), nn.ReLU(), nn.Linear(hidden, n_kernels))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return self.net(scores)


class ToyExperts(nn.Module):
    """M linear restoration maps, evaluated together: ``(B, n_in) -> (B, M, n_out)``.

    Expert z computes ``F_z(l) = l W_z + b_z``. A linear map is the best restorer for one known
    Gaussian blur and Gaussian signals (a Wiener filter), so one expert per kernel is ideal.
    """

    def __init__(self, n_in: int, n_out: int, n_experts: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(n_experts, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(n_experts, n_out))

    @property
    def n_experts(self) -> int:
        return self.weight.shape[0]

    def forward(self, l: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bi,mio->bmo", l, self.weight) + self.bias


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block (the toy models are far too small to gain
    from more, and on a shared machine extra threads mostly wait for each other)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Yield ``steps`` index tensors of ``batch_size`` samples (reshuffled every epoch)."""
    order = torch.randperm(n, generator=generator)
    position = 0
    for _ in range(steps):
        if position + batch_size > n:
            order = torch.randperm(n, generator=generator)
            position = 0
        yield order[position : position + batch_size]
        position += batch_size


def pretrain_gate(
    gate: ToyGate,
    data: ToyData,
    steps: int = 300,
    lr: float = 1e-2,
    batch_size: int = 256,
    seed: int = 0,
    head: Literal["identity", "mlp"] = "identity",
) -> dict[str, list[float]]:
    """Pre-train ``gate`` to identify the blur kernel with a cross-entropy loss (Eq. 11).

    ``head='identity'`` (needs ``M == K``): the M scores are the kernel logits, so
    ``softmax(s)`` itself learns ``p(k | l)``. ``head='mlp'``: the paper's classification module,
    two FC layers from the M scores to K logits (any K); it is discarded afterwards. Either
    way the gate's own ``softmax(s)`` then serves as the prior ``q_hat(z | l)`` of Eq. (12).
    With the MLP head nothing forces ``softmax(s)`` to put different kernels on different
    states: the head can read the kernel off the scores in any way.

    Returns:
        history: ``loss`` (cross-entropy, nats) and ``accuracy`` (on the batch) per step.
    """
    n_experts = gate.net[-1].out_features
    if head == "identity":
        if n_experts != data.n_kernels:
            raise ValueError(
                f"head='identity' needs as many gate outputs as kernels, got M={n_experts}, "
                f"K={data.n_kernels}; use head='mlp'"
            )
        classifier: nn.Module = nn.Identity()
    elif head == "mlp":
        torch.manual_seed(seed)
        classifier = ClassificationHead(n_experts, data.n_kernels)
    else:
        raise ValueError(f"head must be 'identity' or 'mlp', got {head!r}")
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam([*gate.parameters(), *classifier.parameters()], lr=lr)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    with _one_thread():
        for index in _batches(len(data.l), batch_size, steps, generator):
            logits = classifier(gate(data.l[index]))
            loss = F.cross_entropy(logits, data.kernel_id[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            history["loss"].append(loss.item())
            history["accuracy"].append((logits.argmax(-1) == data.kernel_id[index]).float().mean().item())
    return history


@dataclass
class ToyMixtureResult:
    """What :func:`train_toy_mixture` returns: the trained modules and their history.

    ``history`` holds per-step lists ``loss``, ``recon``, ``kl`` (Eq. 12 terms, batch means)
    and, for the pre-trained prior, ``pretrain_loss`` and ``pretrain_accuracy``.
    ``prior_gate`` is the frozen pre-trained gate (``None`` for the uniform prior).
    """

    gate: ToyGate
    experts: ToyExperts
    prior: str
    lam: float
    prior_gate: ToyGate | None = None
    history: dict[str, list[float]] = field(default_factory=dict)

    @torch.no_grad()
    def q(self, l: torch.Tensor) -> torch.Tensor:
        """The trained encoder's ``q(z | l)``, ``(B, M)``."""
        return self.gate.log_q(l).exp()

    @torch.no_grad()
    def log_prior(self, l: torch.Tensor) -> torch.Tensor:
        """The prior used in training, ``(B, M)`` log-probabilities."""
        if self.prior_gate is None:
            m = self.experts.n_experts
            return torch.full((len(l), m), -math.log(m))
        return self.prior_gate.log_q(l)

    @torch.no_grad()
    def predict(self, l: torch.Tensor) -> torch.Tensor:
        """The prediction of Eq. (10), ``sum_z q_z F_z(l)``, ``(B, n_out)`` (:func:`mean_prediction`)."""
        return mean_prediction(self.q(l), self.experts(l))


def train_toy_mixture(
    data: ToyData,
    n_experts: int = 3,
    prior: Literal["uniform", "pretrained"] = "uniform",
    lam: float = 0.1,
    steps: int = 600,
    seed: int = 0,
    pretrain_steps: int = 300,
    lr_experts: float = 1e-2,
    lr_gate: float = 1e-3,
    batch_size: int = 256,
    reconstruction: Literal["expected", "of_mean"] = "expected",
    pretrain_head: Literal["identity", "mlp"] = "identity",
) -> ToyMixtureResult:
    """Train a gate and M linear experts jointly with Eq. (12) (Adam, minibatches).

    - ``prior='uniform'``: the gate starts untrained and the KL pulls ``q`` to ``1/M``.
    - ``prior='pretrained'``: the gate is first pre-trained on the kernel ids (Eq. 11,
      ``pretrain_steps``); a frozen copy gives the prior ``q_hat(z | l)`` and the trained copy
      starts from it, as in Sec. 3.3.2.

    The kernel ids are used only in pre-training. Deterministic for a given ``seed`` on the CPU;
    runs on one CPU thread (a few seconds for 1,500 steps).
    """
    if prior not in ("uniform", "pretrained"):
        raise ValueError(f"prior must be 'uniform' or 'pretrained', got {prior!r}")
    for name, value in (("n_experts", n_experts), ("steps", steps), ("batch_size", batch_size)):
        check_integer(name, value)
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    seed_everything(seed)
    n_in, n_out = data.l.shape[1], data.h.shape[1]
    gate = ToyGate(n_in, n_experts)
    experts = ToyExperts(n_in, n_out, n_experts)
    history: dict[str, list[float]] = {"loss": [], "recon": [], "kl": []}
    prior_gate = None
    if prior == "pretrained":
        pre = pretrain_gate(gate, data, steps=pretrain_steps, seed=seed, head=pretrain_head)
        history["pretrain_loss"], history["pretrain_accuracy"] = pre["loss"], pre["accuracy"]
        prior_gate = copy.deepcopy(gate).requires_grad_(False)

    result = ToyMixtureResult(gate, experts, prior, lam, prior_gate, history)
    with torch.no_grad():
        all_log_prior = result.log_prior(data.l)
    optimiser = torch.optim.Adam(
        [{"params": experts.parameters(), "lr": lr_experts}, {"params": gate.parameters(), "lr": lr_gate}]
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with _one_thread():
        for index in _batches(len(data.l), batch_size, steps, generator):
            l, h = data.l[index], data.h[index]
            terms = mixture_objective(gate.log_q(l), all_log_prior[index], experts(l), h, lam, reconstruction)
            optimiser.zero_grad()
            terms["loss"].backward()
            optimiser.step()
            for name, value in terms.items():
                history[name].append(value.item())
    return result


# --------------------------------------------------------------------------------------------
# Measures of specialisation
# --------------------------------------------------------------------------------------------


def mean_q_per_kernel(q: torch.Tensor, kernel_id: torch.Tensor, n_kernels: int) -> np.ndarray:
    """Average ``q(z | l)`` over the samples of each hidden kernel: ``(n_kernels, M)`` float64."""
    q = torch.as_tensor(q, dtype=torch.float64)
    rows = [q[kernel_id == k].mean(0) for k in range(n_kernels)]
    return torch.stack(rows).numpy()


def specialisation_scores(q: torch.Tensor, kernel_id: torch.Tensor, n_kernels: int) -> dict[str, float]:
    """How much the gate's weights tell about the hidden kernel.

    Returns:
        ``mutual_information_bits``: ``I(k; z)`` in bits for the joint distribution
        ``p(k, z) = mean over samples of [k_i = k] q_i(z)`` (z drawn from the gate's q). It is 0
        when q does not depend on the kernel (e.g. uniform weights) and at most
        ``log2(min(K, M))`` (hard choices, one expert per kernel).
        ``mean_max_q``: the average of ``max_z q_z`` (``1/M`` for uniform weights, 1 for hard
        choices).
        ``largest_mean_q``: ``max_z`` of the average ``q_z``, the share of the busiest expert
        (``1/M`` when all are used equally, 1 when one expert takes every input).
    """
    q = torch.as_tensor(q, dtype=torch.float64)
    one_hot = F.one_hot(torch.as_tensor(kernel_id), n_kernels).double()
    joint = (one_hot.T @ q / len(q)).numpy()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        mi = np.where(joint > 0, joint * np.log2(joint / outer), 0.0).sum()
    return {"mutual_information_bits": float(max(mi, 0.0)), "mean_max_q": float(q.max(-1).values.mean()),
            "largest_mean_q": float(q.mean(0).max())}


@torch.no_grad()
def expert_error_matrix(experts: ToyExperts, data: ToyData) -> np.ndarray:
    """Mean squared error of each expert on each hidden kernel: ``(n_kernels, M)`` float64.

    The toy's version of the paper's Fig. 1 (there: PSNR of networks trained per kernel).
    """
    sq_err = ((experts(data.l) - data.h[:, None, :]) ** 2).mean(-1).double()
    return torch.stack([sq_err[data.kernel_id == k].mean(0) for k in range(data.n_kernels)]).numpy()
