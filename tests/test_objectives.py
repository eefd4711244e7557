"""Tests of tutorial_lib.objectives: Eq. (11), Eq. (12), the ablation losses, identities."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tutorial_lib.models import BlindSR, ENet, MixtureOfExperts
from tutorial_lib.objectives import (
    average_ensemble_loss,
    elbo_loss,
    expected_loss_decomposition,
    hard_selection_losses,
    kl_categorical,
    kl_from_logits,
    loss_of_expectation,
    pretrain_loss,
    squared_error,
    uniform_prior,
)

torch.set_num_threads(2)


def _problem(b: int = 3, m: int = 4, h: int = 8, w: int = 8, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    experts = torch.rand(b, m, 1, h, w, generator=g, dtype=dtype)
    hr = torch.rand(b, 1, h, w, generator=g, dtype=dtype)
    q = torch.softmax(torch.randn(b, m, generator=g, dtype=dtype), dim=1)
    return experts, hr, q


def test_pretrain_loss_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 29, generator=g)
    k = torch.randint(0, 29, (5,), generator=g)
    assert torch.allclose(pretrain_loss(logits, k), F.cross_entropy(logits, k))
    manual = -torch.log_softmax(logits, 1)[torch.arange(5), k].mean()
    assert torch.allclose(pretrain_loss(logits, k), manual)
    with pytest.raises(ValueError, match="kernel_index"):
        pretrain_loss(logits, k.float())


def test_kl_zero_iff_equal_and_positive_otherwise():
    _, _, q = _problem()
    assert torch.allclose(kl_categorical(q, q), torch.zeros(3, dtype=q.dtype), atol=1e-12)
    other = torch.softmax(torch.randn(3, 4, dtype=q.dtype), dim=1)
    assert (kl_categorical(q, other) > 0).all()
    # Against the textbook formula and against torch's kl_div.
    ref = (q * (q / other).log()).sum(1)
    assert torch.allclose(kl_categorical(q, other), ref)
    assert torch.allclose(kl_categorical(q, other), F.kl_div(other.log(), q, reduction="none").sum(1))
    # KL to the uniform prior is log M - entropy.
    entropy = -(q * q.log()).sum(1)
    assert torch.allclose(kl_categorical(q, uniform_prior(3, 4, like=q)), math.log(4) - entropy)


def test_kl_handles_zero_probabilities():
    q = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    prior = torch.tensor([[0.5, 0.5, 0.0]])
    kl = kl_categorical(q, prior)
    assert torch.allclose(kl, torch.tensor([math.log(2.0)]))
    kl.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_kl_from_logits_matches_and_is_stable():
    g = torch.Generator().manual_seed(1)
    scores, prior_scores = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    q, prior = scores.softmax(1), prior_scores.softmax(1)
    assert torch.allclose(kl_from_logits(scores, prior), kl_categorical(q, prior), atol=1e-6)
    assert torch.allclose(kl_from_logits(scores, prior_scores=prior_scores), kl_categorical(q, prior), atol=1e-6)
    # Extreme scores: softmax underflows to 0 in float32, log_softmax does not.
    extreme = torch.tensor([[0.0, -200.0]], requires_grad=True)
    kl = kl_from_logits(extreme, prior_scores=torch.tensor([[0.0, 0.0]]))
    assert torch.allclose(kl, torch.tensor([math.log(2.0)]), atol=1e-6)
    kl.sum().backward()
    assert torch.isfinite(extreme.grad).all()
    with pytest.raises(ValueError, match="exactly one"):
        kl_from_logits(scores)


def test_elbo_terms_and_uniform_prior():
    experts, hr, q = _problem()
    out = elbo_loss(experts, hr, q, q, lam=0.05)
    per_expert = ((experts - hr[:, None]) ** 2).sum(dim=(2, 3, 4))  # the squared norm of Eq. (12)
    assert torch.allclose(out["per_expert"], per_expert)
    assert torch.allclose(out["recon"], (q * per_expert).sum(1).mean())
    assert torch.allclose(out["kl"], torch.zeros((), dtype=q.dtype), atol=1e-12)
    assert torch.allclose(out["loss"], out["recon"])
    uniform = elbo_loss(experts, hr, q, None, lam=0.05)
    assert torch.allclose(uniform["kl"], kl_categorical(q, uniform_prior(3, 4, like=q)).mean())
    assert torch.allclose(uniform["loss"], uniform["recon"] + 0.05 * uniform["kl"])
    # Scores path gives the same value.
    scores = q.log() + 0.3
    assert torch.allclose(elbo_loss(experts, hr, q, None, scores=scores)["loss"], uniform["loss"])


def test_mean_and_sum_reductions_relate_through_lambda():
    experts, hr, q = _problem(h=6, w=5)
    prior = torch.softmax(torch.randn(3, 4, dtype=q.dtype), dim=1)
    n = 6 * 5
    mean = elbo_loss(experts, hr, q, prior, lam=0.05, reduction="mean")
    summed = elbo_loss(experts, hr, q, prior, lam=0.05 * n, reduction="sum")
    assert torch.allclose(summed["loss"], n * mean["loss"])
    assert torch.allclose(summed["recon"], n * mean["recon"])
    with pytest.raises(ValueError, match="reduction"):
        elbo_loss(experts, hr, q, prior, reduction="none")


def test_elbo_gradients_reach_enet_and_every_expert():
    torch.manual_seed(0)
    model = BlindSR(ENet(M=3), MixtureOfExperts(3, 2, channels=16))
    lr = torch.rand(4, 1, 16, 16)
    hr = torch.rand(4, 1, 32, 32)
    prior = torch.softmax(torch.randn(4, 3), dim=1)
    out = model(lr)
    loss = elbo_loss(out["experts"], hr, out["q"], prior, lam=0.05, scores=out["scores"])["loss"]
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # Every expert's slice of the grouped weights gets a gradient.
    g = model.mixture.reconstruct.weight.grad.abs().sum(dim=(1, 2, 3))
    assert (g > 0).all()


def test_elbo_prior_receives_no_gradient():
    experts, hr, q = _problem(dtype=torch.float32)
    prior_scores = torch.randn(3, 4, requires_grad=True)
    q = q.clone().requires_grad_(True)
    elbo_loss(experts, hr, q, torch.softmax(prior_scores, dim=1))["loss"].backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert prior_scores.grad is None  # q^ is a fixed target


def test_decomposition_identity_float64():
    experts, hr, q = _problem(b=5, m=4)
    expected, of_expectation, spread = expected_loss_decomposition(experts, hr, q)
    assert torch.allclose(expected, of_expectation + spread, atol=0, rtol=1e-12)
    assert (spread >= 0).all()
    assert torch.allclose(of_expectation.mean(), loss_of_expectation(experts, hr, q))
    assert torch.allclose(expected.mean(), elbo_loss(experts, hr, q, q)["recon"])
    # One-hot q: no spread, both losses equal.
    onehot = F.one_hot(torch.tensor([0, 1, 2, 3, 0]), 4).to(torch.float64)
    e, o, s = expected_loss_decomposition(experts, hr, onehot)
    assert torch.allclose(e, o) and torch.allclose(s, torch.zeros(5, dtype=torch.float64))


def test_decomposition_needs_q_to_sum_to_one():
    experts, hr, q = _problem(b=5, m=4)
    nan = q.clone()
    nan[0, 0] = float("nan")
    for bad in (2 * q, q - 0.01, torch.cat([q[:, :1] + 0.5, q[:, 1:] - 0.5 / 3], dim=1), nan):
        with pytest.raises(ValueError, match="q must hold non-negative weights summing to 1"):
            expected_loss_decomposition(experts, hr, bad)


def test_average_ensemble_and_loss_of_expectation():
    experts, hr, _ = _problem()
    uniform = uniform_prior(3, 4, like=hr)
    assert torch.allclose(average_ensemble_loss(experts, hr), loss_of_expectation(experts, hr, uniform))
    assert torch.allclose(average_ensemble_loss(experts, hr, "sum"), squared_error(experts.mean(1), hr, "sum").mean())


def test_hard_selection_losses():
    experts, hr, q = _problem(dtype=torch.float32)
    experts = experts.clone().requires_grad_(True)
    q = q.clone().requires_grad_(True)
    out = hard_selection_losses(experts, hr, q)
    chosen = q.argmax(1)
    manual = ((experts[torch.arange(3), chosen] - hr) ** 2).sum(dim=(1, 2, 3)).mean()
    assert torch.allclose(out["expert_loss"], manual)
    assert torch.equal(out["chosen"], chosen)
    # Stage A: only the chosen experts get gradients, E-Net (q) none.
    (g_experts,) = torch.autograd.grad(out["expert_loss"], experts, retain_graph=True)
    for b in range(3):
        for z in range(4):
            assert (g_experts[b, z].abs().sum() > 0) == (z == chosen[b].item())
    assert torch.autograd.grad(out["expert_loss"], q, retain_graph=True, allow_unused=True)[0] is None
    # Stage B: gradient w.r.t. q only, equal to the first term of Eq. (12).
    assert torch.allclose(out["encoder_loss"], elbo_loss(experts, hr, q, q)["recon"])
    g_q, g_e = torch.autograd.grad(out["encoder_loss"], (q, experts), allow_unused=True)
    assert g_q.abs().sum() > 0 and g_e is None


def test_kl_from_logits_stays_finite_when_a_prior_probability_is_zero():
    """The prior's probabilities are clamped at eps before the log. Training
    passes the pre-trained E-Net's float32 softmax as ``prior_probs``, which can underflow to 0."""
    scores = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    prior = torch.tensor([[0.5, 0.5, 0.0]])
    kl = kl_from_logits(scores, prior)
    assert torch.isfinite(kl).all()
    torch.testing.assert_close(kl, kl_categorical(scores.softmax(1), prior), rtol=1e-5, atol=1e-6)
    kl.sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_elbo_loss_with_scores_and_an_underflowed_prior_is_finite():
    """The same, as training calls it: elbo_loss(..., q_prior=softmax(prior scores), scores=scores)."""
    g = torch.Generator().manual_seed(0)
    experts = torch.rand(2, 3, 1, 6, 6, generator=g)
    hr = torch.rand(2, 1, 6, 6, generator=g)
    scores = torch.randn(2, 3, generator=g, requires_grad=True)
    q_prior = torch.softmax(torch.tensor([[0.0, 200.0, -200.0], [0.0, 0.0, 0.0]]), dim=1)
    assert (q_prior == 0).any()  # float32 underflow, as a confident pre-trained E-Net gives
    out = elbo_loss(experts, hr, scores.softmax(1), q_prior, lam=0.05, scores=scores)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.isfinite(scores.grad).all()
