"""Tests of tutorial_lib.elbo: the bound, its gap, the prediction of Eq. (10) and the toy mixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import trapezoid  # numpy.trapezoid needs NumPy >= 2

from tutorial_lib import elbo as E

# The toy settings of notebooks/01_blind_sr_and_the_elbo.ipynb under the smoke budget.
TOY_SEEDS = (0, 1, 2)
TOY_LAMBDA = 0.1
SMOKE_STEPS, SMOKE_PRETRAIN_STEPS = 300, 150


def _random_model(rng: np.random.Generator, batch: int = 5, m: int = 4, n: int = 8, alpha: float = 0.7):
    log_prior = np.log(rng.dirichlet(np.ones(m), size=batch))
    h = rng.standard_normal((batch, n))
    predictions = h[:, None, :] + 0.6 * rng.standard_normal((batch, m, n))
    return log_prior, E.gibbs_log_lik(h, predictions, alpha), h, predictions


def test_elbo_never_exceeds_log_marginal_and_gap_is_kl_to_posterior() -> None:
    rng = np.random.default_rng(0)
    log_prior, log_lik, _, _ = _random_model(rng)
    exact = E.log_marginal(log_prior, log_lik)
    post = E.posterior(log_prior, log_lik)
    for _ in range(50):
        q = rng.dirichlet(np.full(4, 0.5), size=5)
        bound = E.elbo(q, log_prior, log_lik)
        assert np.all(bound <= exact + 1e-12)
        np.testing.assert_allclose(exact - bound, E.kl(q, post), rtol=0, atol=1e-10)


def test_bound_is_tight_at_posterior_given_h_and_l_only() -> None:
    rng = np.random.default_rng(1)
    log_prior, log_lik, _, _ = _random_model(rng)
    exact = E.log_marginal(log_prior, log_lik)
    post = E.posterior(log_prior, log_lik)
    np.testing.assert_allclose(post.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(E.elbo(post, log_prior, log_lik), exact, rtol=0, atol=1e-10)
    # The prior p(z | L) (the "true posterior" of the paper's wording) leaves a gap.
    assert np.all(exact - E.elbo(np.exp(log_prior), log_prior, log_lik) > 1e-6)


def test_log_marginal_matches_direct_sum_and_survives_large_scales() -> None:
    log_prior = np.log([0.2, 0.3, 0.5])
    log_lik = np.array([-1.0, -2.0, -0.5])
    np.testing.assert_allclose(E.log_marginal(log_prior, log_lik), math.log(np.sum(np.exp(log_prior + log_lik))))
    shifted = E.log_marginal(log_prior, log_lik - 1e4)
    assert np.isfinite(shifted)
    np.testing.assert_allclose(shifted, E.log_marginal(log_prior, log_lik) - 1e4, rtol=0, atol=1e-9)


def test_kl_properties_and_errors() -> None:
    p = np.array([0.1, 0.2, 0.7])
    assert E.kl(p, p) == pytest.approx(0.0, abs=1e-15)
    assert E.kl([1.0, 0.0, 0.0], p) == pytest.approx(-math.log(0.1))
    assert E.kl([0.5, 0.5, 0.0], [1.0, 0.0, 0.0]) == math.inf
    with pytest.raises(ValueError, match="q must sum to 1"):
        E.kl([0.5, 0.6, 0.0], p)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        E.gibbs_log_lik(np.zeros(3), np.zeros((2, 3)), alpha=0.0)


def test_gibbs_likelihood_is_a_normalised_gaussian() -> None:
    # Eq. (7) with alpha = 2 sigma^2 is the density of N(F_z, sigma^2 I): integrate in 1-D.
    alpha, f = 0.8, 0.3
    grid = np.linspace(-8, 8, 20001)
    density = np.exp(E.gibbs_log_lik(grid[:, None], np.full((len(grid), 1, 1), f), alpha)[:, 0])
    assert trapezoid(density, grid) == pytest.approx(1.0, abs=1e-9)
    sigma2 = E.noise_variance_from_alpha(alpha)
    assert trapezoid(density * (grid - f) ** 2, grid) == pytest.approx(sigma2, rel=1e-6)


def test_lambda_alpha_and_noise_variance_conversions() -> None:
    assert E.alpha_from_lambda(0.05, 48 * 48, "sum") == pytest.approx(0.05)
    assert E.alpha_from_lambda(0.05, 48 * 48, "mean") == pytest.approx(115.2)
    for reduction in ("sum", "mean"):
        lam = E.lambda_from_noise_variance(0.01, 100, reduction)
        assert E.noise_variance_from_alpha(E.alpha_from_lambda(lam, 100, reduction)) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="reduction"):
        E.alpha_from_lambda(0.1, 10, "avg")


def test_negative_elbo_times_alpha_is_eq8_plus_a_constant() -> None:
    rng = np.random.default_rng(2)
    log_prior, _, h, predictions = _random_model(rng, batch=1, n=6)
    alpha, n = 0.4, h.shape[-1]
    log_lik = E.gibbs_log_lik(h, predictions, alpha)
    for _ in range(5):
        q = rng.dirichlet(np.ones(4), size=1)
        eq8 = E.expected_sq_error(h, q, predictions) + alpha * E.kl(q, np.exp(log_prior))
        constant = alpha * 0.5 * n * math.log(math.pi * alpha)
        np.testing.assert_allclose(-alpha * E.elbo(q, log_prior, log_lik), eq8 + constant, atol=1e-10)


def test_mean_prediction_minimises_expected_squared_error() -> None:
    rng = np.random.default_rng(3)
    q = rng.dirichlet(np.ones(4))
    predictions = rng.standard_normal((4, 10))
    h_star = E.mean_prediction(q, predictions)
    best = E.expected_sq_error(h_star, q, predictions)
    for _ in range(100):
        assert E.expected_sq_error(h_star + 1e-3 * rng.standard_normal(10), q, predictions) > best
    # Gradient descent on h_hat (torch) lands on the closed form.
    h_hat = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    q_t, f_t = torch.from_numpy(q), torch.from_numpy(predictions)
    for _ in range(300):
        (grad,) = torch.autograd.grad(E.expected_sq_error(h_hat, q_t, f_t), h_hat)
        h_hat = (h_hat - 0.1 * grad).detach().requires_grad_(True)
    np.testing.assert_allclose(h_hat.detach().numpy(), h_star, atol=1e-10)


def test_mean_prediction_is_the_mixture_mean_not_its_mode() -> None:
    # Experts far apart compared with sigma = sqrt(alpha / 2): the predictive mixture
    # sum_z q_z N(F_z, alpha/2 I) is most probable near the expert with the largest q_z, and the
    # bound's maximiser H* (its mean) lies between the experts, where the density is low.
    rng = np.random.default_rng(5)
    q = np.array([0.4, 0.3, 0.2, 0.1])
    predictions = rng.standard_normal((4, 6))
    alpha = 2 * 0.1**2
    log_density = lambda h_hat: float(E.log_marginal(np.log(q), E.gibbs_log_lik(h_hat, predictions, alpha)))
    h_star = E.mean_prediction(q, predictions)
    assert log_density(predictions[0]) > log_density(h_star) + 10
    # With experts close together (compared with sigma) the mean is close to the mode.
    close = predictions[0] + 0.01 * rng.standard_normal((4, 6))
    log_density_close = lambda h_hat: float(E.log_marginal(np.log(q), E.gibbs_log_lik(h_hat, close, alpha)))
    assert log_density_close(E.mean_prediction(q, close)) >= log_density_close(close[0])


@pytest.mark.parametrize("q", [[0.5, 0.3], [0.7, 0.5], [1.2, -0.2], [np.nan, 1.0]])
def test_mean_prediction_and_decomposition_need_a_distribution(q) -> None:
    q = np.array(q)
    predictions, h = np.ones((2, 3)), np.zeros(3)
    with pytest.raises(ValueError, match="q must"):
        E.mean_prediction(q, predictions)
    with pytest.raises(ValueError, match="q must"):
        E.loss_decomposition(h, q, predictions)
    with pytest.raises(ValueError, match="q must"):
        E.mean_prediction(torch.from_numpy(q), torch.from_numpy(predictions))


def test_loss_decomposition_identity() -> None:
    rng = np.random.default_rng(4)
    h = rng.standard_normal((7, 12))
    q = rng.dirichlet(np.ones(3), size=7)
    predictions = rng.standard_normal((7, 3, 12))
    expected_loss, loss_of_mean, spread = E.loss_decomposition(h, q, predictions)
    np.testing.assert_allclose(expected_loss, loss_of_mean + spread, rtol=0, atol=1e-12)
    assert np.all(spread >= 0) and np.all(expected_loss >= loss_of_mean)


def test_mixture_objective_terms() -> None:
    torch.manual_seed(0)
    log_q = torch.log_softmax(torch.randn(4, 3, dtype=torch.float64), -1)
    predictions, target = torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    uniform = torch.full((3,), -math.log(3), dtype=torch.float64)
    terms = E.mixture_objective(log_q, uniform, predictions, target, lam=0.2)
    q = log_q.exp().numpy()
    expected = E.expected_sq_error(target.numpy(), q, predictions.numpy()) / 5
    assert terms["recon"].item() == pytest.approx(expected.mean())
    assert terms["kl"].item() == pytest.approx(E.kl(q, np.full(3, 1 / 3)).mean())
    assert terms["loss"].item() == pytest.approx(terms["recon"].item() + 0.2 * terms["kl"].item())
    of_mean = E.mixture_objective(log_q, uniform, predictions, target, 0.2, reconstruction="of_mean")
    assert of_mean["recon"].item() <= terms["recon"].item()
    mean_prediction = (log_q.exp()[:, :, None] * predictions).sum(1)  # the loss of the q-weighted mean
    assert of_mean["recon"].item() == pytest.approx(((mean_prediction - target) ** 2).mean().item())
    assert of_mean["recon"].item() < terms["recon"].item() - 1e-3  # by the experts' spread, not by rounding


def test_toy_data_is_deterministic_and_balanced() -> None:
    a, b = E.make_toy_data(30, 3, seed=5), E.make_toy_data(30, 3, seed=5)
    assert a.l.shape == (30, 16) and a.h.shape == (30, 32) and a.kernel_id.shape == (30,)
    assert torch.equal(a.l, b.l) and torch.equal(a.kernel_id, b.kernel_id)
    assert torch.bincount(a.kernel_id).tolist() == [10, 10, 10]
    np.testing.assert_allclose(a.kernels.sum(1), 1.0)
    assert not torch.equal(a.l, E.make_toy_data(30, 3, seed=6).l)


@pytest.fixture(scope="module")
def toy_data() -> E.ToyData:
    return E.make_toy_data(3000, 3, seed=0)


@pytest.fixture(scope="module")
def toy_test() -> E.ToyData:
    return E.make_toy_data(1500, 3, seed=1)


def test_toy_training_is_deterministic_and_loss_decreases(toy_data: E.ToyData) -> None:
    runs = [E.train_toy_mixture(toy_data, 3, "pretrained", TOY_LAMBDA, steps=60, seed=0, pretrain_steps=30) for _ in range(2)]
    assert runs[0].history == runs[1].history
    loss = np.array(runs[0].history["loss"])
    assert loss[-10:].mean() < 0.7 * loss[:10].mean()
    pre = np.array(runs[0].history["pretrain_loss"])
    assert pre[-5:].mean() < pre[:5].mean()
    # the trained toy's prediction is Eq. (10), the q-weighted mean of its experts, and its error
    # matrix is each expert's mean squared error per hidden kernel
    result, sample = runs[0], E.make_toy_data(12, 3, seed=2)
    with torch.no_grad():
        q, experts = result.q(sample.l), result.experts(sample.l)
        torch.testing.assert_close(result.predict(sample.l), (q[:, :, None] * experts).sum(1))
        errors = E.expert_error_matrix(result.experts, sample)
        for k in range(3):
            rows = sample.kernel_id == k
            expected = ((experts[rows] - sample.h[rows][:, None]) ** 2).mean(dim=(0, 2)).double().numpy()
            np.testing.assert_allclose(errors[k], expected, rtol=1e-6)


def test_toy_settings_are_checked_by_name(toy_data: E.ToyData) -> None:
    for kwargs, name in ((dict(n_experts=0), "n_experts"), (dict(steps=0), "steps"), (dict(lam=-0.1), "lam")):
        with pytest.raises(ValueError, match=name):
            E.train_toy_mixture(toy_data, **kwargs)
    for kwargs, name in ((dict(n_kernels=0), "n_kernels"), (dict(scale=0), "scale")):
        with pytest.raises(ValueError, match=name):
            E.make_toy_data(10, **kwargs)


def test_identity_head_needs_as_many_experts_as_kernels(toy_data: E.ToyData) -> None:
    with pytest.raises(ValueError, match="head='identity'"):
        E.pretrain_gate(E.ToyGate(16, 4), toy_data, steps=1)


def test_pretrained_prior_specialises_and_uniform_prior_does_not(toy_data: E.ToyData, toy_test: E.ToyData) -> None:
    for seed in TOY_SEEDS:
        scores = {}
        for prior in ("uniform", "pretrained"):
            result = E.train_toy_mixture(
                toy_data, 3, prior, TOY_LAMBDA, steps=SMOKE_STEPS, seed=seed, pretrain_steps=SMOKE_PRETRAIN_STEPS
            )
            scores[prior] = E.specialisation_scores(result.q(toy_test.l), toy_test.kernel_id, 3)
        assert scores["uniform"]["mutual_information_bits"] < 0.05
        assert scores["uniform"]["mean_max_q"] < 0.4
        assert scores["pretrained"]["mutual_information_bits"] > 1.2
        assert scores["pretrained"]["mean_max_q"] > 0.9


def test_specialisation_scores_extremes() -> None:
    kernel_id = torch.arange(300) % 3
    uniform = torch.full((300, 3), 1 / 3)
    hard = torch.nn.functional.one_hot(kernel_id, 3).float()
    assert E.specialisation_scores(uniform, kernel_id, 3) == pytest.approx(
        {"mutual_information_bits": 0.0, "mean_max_q": 1 / 3, "largest_mean_q": 1 / 3})
    assert E.specialisation_scores(hard, kernel_id, 3)["mutual_information_bits"] == pytest.approx(math.log2(3))
    np.testing.assert_allclose(E.mean_q_per_kernel(hard, kernel_id, 3), np.eye(3))
    assert E.specialisation_scores(hard, kernel_id, 3)["largest_mean_q"] == pytest.approx(1 / 3)
    collapsed = torch.nn.functional.one_hot(torch.zeros(300, dtype=torch.long), 3).float()  # one expert takes all
    assert E.specialisation_scores(collapsed, kernel_id, 3) == pytest.approx(
        {"mutual_information_bits": 0.0, "mean_max_q": 1.0, "largest_mean_q": 1.0})
