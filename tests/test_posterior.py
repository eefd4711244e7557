"""Clustering measures of E-Net's posterior and the posterior explorer's state function."""

import copy
import math

import numpy as np
import pytest
import scipy.stats
import torch

from tutorial_lib import kernels as K
from tutorial_lib import posterior as P
from tutorial_lib.degradations import bicubic_upsample, degrade
from tutorial_lib.metrics import psnr_y
from tutorial_lib.models import (
    BlindSR,
    EncoderWithClassifier,
    ENet,
    Expert,
    KernelClassifier,
    MixtureOfExperts,
)


@pytest.fixture(scope="module")
def hr():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.8, (72, 80))
    return np.clip(image, 0, 1)


@pytest.fixture(scope="module")
def mixture():
    torch.manual_seed(0)
    model = BlindSR(ENet(3), MixtureOfExperts(3, 2, channels=8, n_blocks=1))
    return model.eval()


def test_enet_of_accepts_the_three_holders():
    enet = ENet(4)
    assert P.enet_of(enet) is enet
    assert P.enet_of(EncoderWithClassifier(enet, KernelClassifier(4, 29))) is enet
    assert P.enet_of(BlindSR(enet, MixtureOfExperts(4, 2, channels=4, n_blocks=1))) is enet
    with pytest.raises(ValueError, match="no E-Net"):
        P.enet_of(BlindSR(None, MixtureOfExperts(4, 2, channels=4, n_blocks=1), mode="average"))
    with pytest.raises(ValueError, match="ENet"):
        P.enet_of(Expert(2, channels=4, n_blocks=1))


def test_posteriors_rows_sum_to_one_and_are_deterministic():
    torch.manual_seed(1)
    enet = ENet(4).train()  # posteriors_of must switch to eval mode (no dropout) and back
    lr = torch.rand(5, 1, 20, 24)
    q1, q2 = P.posteriors_of(enet, lr), P.posteriors_of(enet, lr.numpy()[:, 0])
    assert q1.shape == (5, 4)
    np.testing.assert_allclose(q1.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(q1, q2)
    assert enet.training


def test_image_crops_are_fixed_aligned_and_inside(hr):
    crops = P.image_crops({"a": hr, "b": hr[:64, :70]}, side=33, per_image=3, scale=2)
    assert list(crops) == ["a/0", "a/1", "a/2", "b/0", "b/1", "b/2"]
    assert all(c.shape == (32, 32) for c in crops.values())
    again = P.image_crops({"a": hr, "b": hr[:64, :70]}, side=33, per_image=3, scale=2)
    assert all(np.array_equal(crops[k], again[k]) for k in crops)
    sources = {"a": hr, "b": hr[:64, :70]}
    for key, crop in crops.items():  # each crop is a piece of its image, with corners on the scale grid
        windows = np.lib.stride_tricks.sliding_window_view(sources[key[0]], crop.shape)
        (tops, lefts) = np.nonzero((windows == crop).all(axis=(2, 3)))
        assert len(tops) == 1 and tops[0] % 2 == 0 and lefts[0] % 2 == 0, (key, tops, lefts)
    with pytest.raises(ValueError, match="smaller"):
        P.image_crops({"a": hr}, side=100, per_image=1)


def test_collect_posteriors_layout(hr):
    enet = ENet(4)
    crops = P.image_crops({"a": hr}, side=48, per_image=2)
    kernels = K.kernel_set("seen")[:5]
    ps = P.collect_posteriors(enet, crops, kernels, 2)
    assert ps.q.shape == (10, 4) and ps.n_kernels == 5
    np.testing.assert_array_equal(ps.kernel, np.tile(np.arange(5), 2))
    np.testing.assert_array_equal(ps.crop, np.repeat(np.arange(2), 5))
    # row (crop 1, kernel 3) is the posterior of that degraded crop
    lr = degrade(crops["a/1"], kernels[3], 2)
    np.testing.assert_allclose(ps.q[8], P.posteriors_of(enet, lr)[0], atol=1e-6)


def test_kernel_distances_covariance_recovers_sigma():
    a = K.anisotropic_gaussian(0.75, 1.5, 0.0, 31)[None]
    b = K.anisotropic_gaussian(1.5, 0.75, 0.0, 31)[None]  # swapped variances
    d = P.kernel_distances(a, b)[0, 0]
    assert d == pytest.approx(math.sqrt(2) * 0.75, rel=1e-3)
    bank = K.kernel_set("seen")
    full = P.kernel_distances(bank)
    np.testing.assert_allclose(full, full.T)
    np.testing.assert_allclose(np.diag(full), 0, atol=1e-12)
    img = P.kernel_distances(bank, kind="image")
    for i, j in K.duplicate_pairs():  # the theta = 0 / pi twins are at distance 0
        if i in K.SEEN_INDICES and j in K.SEEN_INDICES:
            si, sj = K.SEEN_INDICES.index(i), K.SEEN_INDICES.index(j)
            assert img[si, sj] < 1e-12 and full[si, sj] < 1e-9
    with pytest.raises(ValueError, match="kind"):
        P.kernel_distances(bank, kind="wasserstein")


@pytest.mark.parametrize("angle", [0.0, math.pi / 4, math.pi / 2, 1.0])
def test_line_kernel_is_normalised_symmetric_and_oriented(angle):
    k = P.line_kernel(7, angle)
    assert k.shape == (11, 11) and k.sum() == pytest.approx(1.0) and k.min() >= 0
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)
    cov = K.second_moments(k)
    values, vectors = np.linalg.eigh(cov)
    assert values[1] > 10 * max(values[0], 1e-3)  # a line: one dominant direction
    # principal direction (row, col) = (sin, cos) of the angle, up to sign
    assert abs(abs(vectors[:, 1] @ np.array([math.sin(angle), math.cos(angle)])) - 1) < 1e-2
    with pytest.raises(ValueError, match="length"):
        P.line_kernel(12, 0.0)


def _clustered(n_per=20, n_labels=4, spread=0.01, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(n_labels)
    labels = np.repeat(np.arange(n_labels), n_per)
    q = centres[labels] + spread * rng.normal(size=(len(labels), n_labels))
    return q, labels


def test_silhouette_high_for_clusters_and_low_when_shuffled():
    q, labels = _clustered()
    assert P.silhouette_by_kernel(q, labels) > 0.9
    base = P.shuffled_baseline(lambda lab: P.silhouette_by_kernel(q, lab), labels, n_shuffles=5)
    assert base["mean"] < 0.05 and base["max"] < 0.2
    with pytest.raises(ValueError, match="two"):
        P.silhouette_by_kernel(q, np.zeros(len(q), int))


def test_mean_posteriors_and_entropy():
    q, labels = _clustered(spread=0.0)
    np.testing.assert_allclose(P.mean_posteriors(q, labels), np.eye(4))
    assert P.posterior_entropy(np.full((2, 4), 0.25)) == pytest.approx([math.log(4)] * 2)
    assert P.posterior_entropy(np.eye(3)) == pytest.approx([0, 0, 0], abs=1e-9)
    with pytest.raises(ValueError, match="no member"):
        P.mean_posteriors(q, labels, n_labels=5)


def test_rank_correlation_does_not_depend_on_rounding_noise_in_tied_kernel_distances():
    # Distances that are equal in exact arithmetic (mirror-image kernels) differ in their last
    # bits from one library release to the next; the rank correlation must not change.
    bank = np.asarray(K.kernel_bank())[list(K.SEEN_INDICES)]
    dist = P.kernel_distances(bank)
    centroids = np.random.default_rng(3).dirichlet(np.ones(4), size=len(bank))
    reference = P.distance_preservation(centroids, dist)
    for seed in range(5):
        noise = np.random.default_rng(seed).normal(scale=1e-13, size=dist.shape)
        noisy = P.distance_preservation(centroids, dist + (noise + noise.T) * dist.max())
        assert noisy["spearman"] == pytest.approx(reference["spearman"], abs=1e-12)
        assert noisy["pearson"] == pytest.approx(reference["pearson"], abs=1e-9)
    ties = P._merge_ties(np.array([3.0, 1.0, 1.0 + 1e-12, 2.0, 3.0 - 1e-12]), rtol=1e-9)
    assert ties.tolist() == [3.0 - 1e-12, 1.0, 1.0, 2.0, 3.0 - 1e-12]


def test_distance_preservation_perfect_for_an_isometry_and_low_for_noise():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(12, 3))
    dist = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    perfect = P.distance_preservation(points @ rotation * 0.1, dist)
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["pearson"] == pytest.approx(1.0)
    unrelated = P.distance_preservation(rng.normal(size=(12, 3)), dist)
    assert abs(unrelated["spearman"]) < 0.4
    with pytest.raises(ValueError, match="kernel_dist"):
        P.distance_preservation(points, dist[:5, :5])


def test_nearest_centroid_retrieval_counts_ties_and_ranks():
    seen = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 5.0]])  # seen 1 and 2 are twins
    queries = np.array([[0.9, 0.1], [4.0, 4.0], [0.1, 0.0]])
    query_kernel_dist = np.array([[1.0, 0.0, 0.0, 5.0],   # closest: twins 1/2 -> retrieved 1: hit
                                  [5.0, 4.0, 4.0, 0.5],   # retrieved 3: hit
                                  [2.0, 0.1, 0.1, 3.0]])  # retrieved 0, but 1/2 closer: miss, rank 2
    result = P.nearest_centroid_retrieval(queries, seen, query_kernel_dist)
    np.testing.assert_array_equal(result["retrieved"], [1, 3, 0])
    assert result["accuracy"] == pytest.approx(2 / 3)
    np.testing.assert_array_equal(result["rank"], [0, 0, 2])


def test_explorer_state_matches_the_model(mixture, hr):
    state = P.posterior_explorer_state(mixture, hr, 0.75, 3.0, math.pi / 4)
    kernel = K.anisotropic_gaussian(0.75, 3.0, math.pi / 4)
    np.testing.assert_array_equal(state["kernel"], kernel)
    lr = degrade(state["hr"], kernel, 2)
    np.testing.assert_array_equal(state["lr"], lr)
    lr_t = torch.as_tensor(lr, dtype=torch.float32)[None, None]
    with torch.no_grad():
        out = mixture(lr_t, bicubic_upsample(lr_t, 2))
    np.testing.assert_allclose(state["q"], out["q"][0].numpy(), atol=1e-6)
    assert state["q"].sum() == pytest.approx(1.0)
    assert state["experts"].shape == (3, *state["hr"].shape)
    fused = state["bicubic"] + np.einsum("m,mhw->hw", state["q"], state["experts"] - state["bicubic"])
    np.testing.assert_allclose(state["fused"], fused, atol=1e-5)  # Eq. (10)
    assert state["psnr"]["fused"] == psnr_y(state["hr"], state["fused"], shave_border=2)
    best = max(range(3), key=lambda i: state["psnr"][f"expert {i + 1}"])
    assert state["best_expert"] == best
    again = P.posterior_explorer_state(mixture, hr, kernel=kernel)
    np.testing.assert_array_equal(again["fused"], state["fused"])


def test_explorer_state_errors(mixture, hr):
    with pytest.raises(ValueError, match="either kernel"):
        P.posterior_explorer_state(mixture, hr, 0.75)
    with pytest.raises(ValueError, match="positive"):
        P.posterior_explorer_state(mixture, hr, -1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="odd"):
        P.posterior_explorer_state(mixture, hr, kernel=np.ones((4, 4)) / 16)
    with pytest.raises(ValueError, match="too small"):
        P.posterior_explorer_state(mixture, hr[:20, :20], 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="BlindSR"):
        P.posterior_explorer_state(Expert(2, channels=4, n_blocks=1), hr, 1.0, 1.0, 0.0)


def test_figures_draw(mixture, hr):
    import matplotlib.pyplot as plt

    state = P.posterior_explorer_state(mixture, hr, 1.0, 2.0, 0.3)
    fig = P.plot_posterior_state(state, title="t")
    assert len(fig.axes) == 2 + 1 + 1 + 3 + 1 + 1  # kernel, q, HR, bicubic, 3 experts, fused, colour bar
    kernel_ax = fig.axes[0]
    half = state["kernel"].shape[0] // 2
    assert kernel_ax.images[0].get_extent() == [-half - 0.5, half + 0.5, half + 0.5, -half - 0.5]  # offsets in px
    assert kernel_ax.get_xlabel() == "column offset (px)"
    plt.close(fig)
    rng = np.random.default_rng(0)
    fig = P.plot_embedding(rng.normal(size=(30, 3)), rng.uniform(size=30), "c", "t",
                           extra={"out": (rng.normal(size=(2, 3)), "X")})
    assert len(fig.axes) >= 4
    plt.close(fig)


def test_distance_preservation_reports_both_correlations_of_the_pair_distances():
    """Both correlations are of the two distance lists (notebook 06 prints the Pearson r)."""
    rng = np.random.default_rng(0)
    points = rng.normal(size=(12, 3))
    dist = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    centroids = rng.normal(size=(12, 3))
    q_dist = np.sqrt(((centroids[:, None] - centroids[None]) ** 2).sum(-1))
    i, j = np.triu_indices(12, k=1)
    out = P.distance_preservation(centroids, dist)
    assert out["pearson"] == pytest.approx(scipy.stats.pearsonr(dist[i, j], q_dist[i, j]).statistic, abs=1e-12)
    assert out["spearman"] == pytest.approx(scipy.stats.spearmanr(dist[i, j], q_dist[i, j]).statistic, abs=1e-12)
    assert abs(out["pearson"]) < 0.5  # unrelated embeddings: no correlation


def test_shuffled_baseline_draws_a_fresh_permutation_for_every_shuffle():
    """Each shuffle is a new permutation (one reused permutation would make the baseline's mean a
    single draw, with std 0)."""
    labels = np.arange(10)
    seen = []

    def measure(permuted):
        seen.append(tuple(permuted))
        return float(permuted[0])

    result = P.shuffled_baseline(measure, labels, n_shuffles=20, seed=1)
    assert len(set(seen)) == 20
    rng = np.random.default_rng(1)
    expected = np.array([rng.permutation(labels)[0] for _ in range(20)], dtype=float)
    assert result["mean"] == pytest.approx(expected.mean())
    assert result["std"] == pytest.approx(expected.std()) and result["std"] > 0
    assert result["max"] == expected.max()


def test_posterior_explorer_state_is_deterministic_for_a_model_left_in_training_mode():
    """posterior_explorer_state puts the model in eval mode: otherwise E-Net's dropout (p = 0.5)
    and batch statistics would make q random."""
    torch.manual_seed(0)
    model = BlindSR(ENet(3), MixtureOfExperts(3, 2, channels=8, n_blocks=1))
    reference = copy.deepcopy(model).eval()
    hr = np.random.default_rng(0).uniform(0.2, 0.8, (72, 80))
    expected = P.posterior_explorer_state(reference, hr, 0.75, 3.0, math.pi / 4)
    for _ in range(2):
        model.train()
        state = P.posterior_explorer_state(model, hr, 0.75, 3.0, math.pi / 4)
        np.testing.assert_allclose(state["q"], expected["q"], atol=1e-6)
        np.testing.assert_allclose(state["fused"], expected["fused"], atol=1e-5)
