r"""Training objectives: Eq. (11) for pre-training E-Net, Eq. (12) for joint training, and the
objectives of the ablations (Sec. 4.2).

Shapes: ``experts`` holds every expert's prediction ``F(L, z) = L~ + R(L, z)``,
``(B, M, 1, H, W)``; ``hr`` the ground truth ``(B, 1, H, W)``; ``q`` the posterior of E-Net
``(B, M)`` (rows sum to 1). Images are floats in [0, 1]. Every loss is averaged over the batch
(Eq. 12 sums over the training set; a mean over the batch only rescales the learning rate).

The squared error and the meaning of lambda
-------------------------------------------
Eq. (12) is ``E_q[ ||H - F(L, z)||^2 ] + lambda * KL(q || q^)``. How ``||.||^2`` is reduced
over the ``N = H*W`` pixels changes what a given ``lambda`` means:

- ``reduction='sum'`` (the default of every loss here): the *sum* over pixels, the squared
  norm as Eq. (12) writes it, and the scale :mod:`tutorial_lib.training` trains on.
- ``reduction='mean'``: the *mean* squared error over pixels, ``N`` times smaller.

``recon_sum = N * recon_mean``, so ``recon_sum + (lambda * N) * KL = N * (recon_mean +
lambda * KL)``: the mean-over-pixels loss with ``lambda`` has the same minimiser as the
sum-over-pixels loss with ``lambda_sum = N * lambda``. The same ``lambda = 0.05`` is therefore
a much stronger pull towards the prior ``q^`` with ``'mean'`` than with ``'sum'`` (N = 2304
for a 48x48 HR patch), and it also depends on the pixel range: on [0, 255] images the
squared error is 255^2 times larger than on [0, 1] images. The paper writes the squared norm
(a sum) and ``lambda = 0.05`` but states neither the pixel range nor how its code reduces the
error; the library reads Eq. (12) as written, on [0, 1] images, and any other convention needs
``lambda`` re-tuned.

Probabilistic reading (Eq. 7/8): the Gibbs likelihood ``p(H | z, L) ∝ exp(-||H - F||^2 /
alpha)`` with the *sum* over pixels is a Gaussian with noise variance ``sigma^2 = alpha / 2``
per pixel. Multiplying ``-J`` by ``alpha`` gives ``E_q||H - F||^2 + alpha * KL`` (Eq. 8), so
``lambda_sum`` plays the role of ``alpha = 2 sigma^2``: ``sigma^2 = lambda_sum / 2 =
N * lambda_mean / 2``. A larger ``lambda`` means a noisier assumed likelihood and hence more
trust in the prior.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "Reduction",
    "average_ensemble_loss",
    "elbo_loss",
    "expected_loss_decomposition",
    "hard_selection_losses",
    "kl_categorical",
    "kl_from_logits",
    "loss_of_expectation",
    "pretrain_loss",
    "squared_error",
    "uniform_prior",
]

Reduction = Literal["mean", "sum"]


def _check_experts(experts: torch.Tensor, hr: torch.Tensor, q: torch.Tensor | None = None) -> None:
    if experts.ndim != 5 or experts.shape[2] != 1:
        raise ValueError(f"experts must have shape (B, M, 1, H, W), got {tuple(experts.shape)}")
    b, m, _, h, w = experts.shape
    if tuple(hr.shape) != (b, 1, h, w):
        raise ValueError(f"hr must have shape (B, 1, H, W) = {(b, 1, h, w)} to match experts, got {tuple(hr.shape)}")
    if q is not None and tuple(q.shape) != (b, m):
        raise ValueError(f"q must have shape (B, M) = {(b, m)}, got {tuple(q.shape)}")


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum' (over pixels), got {reduction!r}")


def pretrain_loss(logits: torch.Tensor, kernel_index: torch.Tensor) -> torch.Tensor:
    """Eq. (11): cross-entropy of the kernel classifier, averaged over the batch.

    Args:
        logits: (B, K) kernel logits from :class:`tutorial_lib.models.EncoderWithClassifier`.
        kernel_index: (B,) integer index in [0, K) of the kernel that made each LR image.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, K), got {tuple(logits.shape)}")
    if kernel_index.shape != logits.shape[:1] or kernel_index.is_floating_point():
        raise ValueError(
            f"kernel_index must be an integer tensor of shape ({logits.shape[0]},), "
            f"got {kernel_index.dtype} {tuple(kernel_index.shape)}"
        )
    return F.cross_entropy(logits, kernel_index)


def squared_error(prediction: torch.Tensor, target: torch.Tensor, reduction: Reduction = "sum") -> torch.Tensor:
    """Per-image squared error ``||target - prediction||^2`` reduced over the last three axes
    (channel and pixels): mean or sum. ``(..., 1, H, W)`` -> ``(...)``; broadcasts."""
    _check_reduction(reduction)
    err = (target - prediction).square()
    return err.mean(dim=(-3, -2, -1)) if reduction == "mean" else err.sum(dim=(-3, -2, -1))


def uniform_prior(batch: int, M: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """The uniform prior ``q^ = 1/M`` (B, M): Eq. (12) "without pre-training"."""
    kwargs = {} if like is None else {"dtype": like.dtype, "device": like.device}
    return torch.full((batch, M), 1.0 / M, **kwargs)


def kl_categorical(q: torch.Tensor, q_prior: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample ``KL(q || q^) = sum_z q_z (log q_z - log q^_z)``: (B, M), (B, M) -> (B,).

    Probabilities are clamped at ``eps`` inside the logarithms only, so a ``q_z = 0`` term
    contributes exactly 0 and gradients stay finite. When ``q`` comes from scores, prefer
    :func:`kl_from_logits` (``log_softmax`` is exact where ``log(softmax)`` underflows).
    """
    if q.shape != q_prior.shape or q.ndim != 2:
        raise ValueError(f"q and q_prior must both have shape (B, M), got {tuple(q.shape)} and {tuple(q_prior.shape)}")
    return (q * (q.clamp_min(eps).log() - q_prior.clamp_min(eps).log())).sum(dim=1)


def kl_from_logits(
    scores: torch.Tensor,
    prior_probs: torch.Tensor | None = None,
    *,
    prior_scores: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Per-sample ``KL(softmax(scores) || q^)`` computed with ``log_softmax``: (B, M) -> (B,).

    Give the prior either as probabilities ``prior_probs`` (B, M) (clamped at ``eps`` in the
    log) or, more accurately, as the pre-trained E-Net's scores ``prior_scores`` (B, M).
    """
    if (prior_probs is None) == (prior_scores is None):
        raise ValueError("give exactly one of prior_probs and prior_scores")
    prior = prior_probs if prior_probs is not None else prior_scores
    if scores.ndim != 2 or prior.shape != scores.shape:
        raise ValueError(
            f"scores and the prior must both have shape (B, M), got {tuple(scores.shape)} and {tuple(prior.shape)}"
        )
    log_q = torch.log_softmax(scores, dim=1)
    if prior_scores is not None:
        log_prior = torch.log_softmax(prior_scores, dim=1)
    else:
        log_prior = prior_probs.clamp_min(eps).log()
    return (log_q.exp() * (log_q - log_prior)).sum(dim=1)


def elbo_loss(
    experts: torch.Tensor,
    hr: torch.Tensor,
    q: torch.Tensor,
    q_prior: torch.Tensor | None,
    lam: float = 0.05,
    reduction: Reduction = "sum",
    *,
    scores: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Eq. (12), the negative ELBO: ``E_q[||H - F(L, z)||^2] + lam * KL(q || q^)``.

    Args:
        experts: (B, M, 1, H, W) every expert's prediction ``F(L, z)``.
        hr: (B, 1, H, W) ground truth in [0, 1].
        q: (B, M) posterior of E-Net (gradients flow into E-Net through it).
        q_prior: (B, M) the pre-trained E-Net's posterior ``q^`` (detached here: it is a fixed
            target), or ``None`` for the uniform prior ("without pre-training").
        lam: weight ``lambda`` of the KL term; its meaning depends on ``reduction`` (module doc).
        reduction: ``'sum'`` (default, Eq. 12's squared norm) or ``'mean'`` of the squared error
            over the ``N`` pixels; ``'sum'`` with ``lam * N`` gives exactly ``N`` times the
            ``'mean'`` loss with ``lam``.
        scores: optional (B, M) E-Net scores with ``softmax(scores) == q``; when given, the KL is
            computed from them with ``log_softmax`` (numerically preferable).

    Returns:
        dict of scalars ``loss``, ``recon`` (the expected squared error) and ``kl`` (all batch
        means), and ``per_expert`` (B, M), each expert's squared error (detached).
    """
    _check_experts(experts, hr, q)
    b, m = q.shape
    if q_prior is None:
        q_prior = uniform_prior(b, m, like=q)
    q_prior = q_prior.detach()
    per_expert = squared_error(experts, hr.unsqueeze(1), reduction)  # (B, M)
    recon = (q * per_expert).sum(dim=1)
    kl = kl_from_logits(scores, q_prior) if scores is not None else kl_categorical(q, q_prior)
    return {
        "loss": (recon + lam * kl).mean(),
        "recon": recon.mean(),
        "kl": kl.mean(),
        "per_expert": per_expert.detach(),
    }


def average_ensemble_loss(experts: torch.Tensor, hr: torch.Tensor, reduction: Reduction = "sum") -> torch.Tensor:
    """The "averaged ensemble" ablation: ``||H - (1/M) sum_z F_z||^2`` (batch mean), no E-Net."""
    _check_experts(experts, hr)
    return squared_error(experts.mean(dim=1), hr, reduction).mean()


def loss_of_expectation(
    experts: torch.Tensor, hr: torch.Tensor, q: torch.Tensor, reduction: Reduction = "sum"
) -> torch.Tensor:
    """``||H - sum_z q_z F_z||^2`` (batch mean): the error of the fused prediction (Eq. 10).

    Not the first term of Eq. (12): by :func:`expected_loss_decomposition` it is smaller than
    the expected loss by the spread of the experts, so training on it does not make the
    experts specialise."""
    _check_experts(experts, hr, q)
    fused = torch.einsum("bm,bmchw->bchw", q, experts)
    return squared_error(fused, hr, reduction).mean()


def hard_selection_losses(
    experts: torch.Tensor, hr: torch.Tensor, q: torch.Tensor, reduction: Reduction = "sum"
) -> dict[str, torch.Tensor]:
    """The two alternating objectives of the "hard selection with training" ablation.

    Returns:
        ``expert_loss`` (stage A, E-Net fixed): squared error of the expert with the largest
        ``q_z`` only; ``q`` is used for the index alone, so no gradient reaches E-Net.
        ``encoder_loss`` (stage B, mixture fixed): ``sum_z q_z ||H - F_z||^2`` with the experts
        detached, the first term of Eq. (12) as a function of ``q`` only.
        Both are batch means. ``chosen``: the index of the expert of largest ``q_z``, (B,).
    """
    _check_experts(experts, hr, q)
    chosen = q.detach().argmax(dim=1)
    selected = experts[torch.arange(experts.shape[0], device=experts.device), chosen]  # (B, 1, H, W)
    expert_loss = squared_error(selected, hr, reduction).mean()
    per_expert = squared_error(experts.detach(), hr.unsqueeze(1), reduction)
    encoder_loss = (q * per_expert).sum(dim=1).mean()
    return {"expert_loss": expert_loss, "encoder_loss": encoder_loss, "chosen": chosen}


def expected_loss_decomposition(
    experts: torch.Tensor, hr: torch.Tensor, q: torch.Tensor, reduction: Reduction = "sum"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bias-variance split of the expected loss, per sample.

    With ``F_bar = sum_z q_z F_z`` (the fused prediction, Eq. 10) and ``sum_z q_z = 1``::

        sum_z q_z ||H - F_z||^2  =  ||H - F_bar||^2  +  sum_z q_z ||F_z - F_bar||^2
        (expected loss)             (loss of expectation)  (spread)

    exactly (the cross term vanishes because ``sum_z q_z (F_z - F_bar) = 0``).

    Returns:
        ``(expected_loss, loss_of_expectation, spread)``, each (B,).
    """
    _check_experts(experts, hr, q)
    worst = float((q.detach().sum(dim=1) - 1).abs().max()) if q.numel() else 0.0
    if not worst <= 1e-4 or bool((q.detach() < 0).any()):  # "not <=": a NaN weight is refused too
        raise ValueError(f"q must hold non-negative weights summing to 1 over the M experts (the identity needs it); "
                         f"a row is off by {worst:.3g}")
    fused = torch.einsum("bm,bmchw->bchw", q, experts)
    expected = (q * squared_error(experts, hr.unsqueeze(1), reduction)).sum(dim=1)
    of_expectation = squared_error(fused, hr, reduction)
    spread = (q * squared_error(experts, fused.unsqueeze(1), reduction)).sum(dim=1)
    return expected, of_expectation, spread
