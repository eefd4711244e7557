"""Analysis helpers for the trained encoder: layer tables, kernel order and distances,
accuracy within a distance, patch tiling, posteriors and the information they carry."""

import numpy as np
import pytest
import torch

from tutorial_lib import encoder_analysis as A
from tutorial_lib import kernels as K
from tutorial_lib.models import (
    EncoderWithClassifier,
    ENet,
    KernelClassifier,
    count_parameters,
)


def test_layer_table_covers_every_parameter_and_gives_enet_shapes():
    enet = ENet(4)
    rows = A.layer_table(enet, torch.rand(2, 1, 48, 48))
    assert sum(r["params"] for r in rows) == count_parameters(enet) == 389_348
    convs = [r for r in rows if r["type"] == "Conv2d"]
    assert [r["shape"] for r in convs] == [(2, 32, 24, 24), (2, 64, 12, 12), (2, 128, 6, 6), (2, 256, 3, 3)]
    assert rows[-1]["shape"] == (2, 4)
    assert enet.training  # mode restored


def test_kernel_order_sorts_by_eigenvalues_then_angle():
    seen = list(K.SEEN_INDICES)
    order = A.kernel_order(seen)
    params = K.bank_parameters()
    keys = [(params[seen[i]].lambda1, params[seen[i]].lambda2, params[seen[i]].t) for i in order]
    assert keys == sorted(keys)
    assert sorted(order.tolist()) == list(range(len(seen)))


def test_kernel_distance_is_a_metric_and_zero_for_twins():
    idx = list(range(58))
    d = A.kernel_distance(idx)
    assert d.shape == (58, 58)
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0) and np.all(d >= 0)
    for i, j in K.duplicate_pairs():
        assert d[i, j] == 0
    # isotropic 0.75 vs isotropic 3: Sigma difference 2.25 I -> Frobenius 2.25 sqrt(2)
    assert d[0, 3] == pytest.approx(2.25 * np.sqrt(2))
    i, j, k = 0, 1, 3
    assert d[i, k] <= d[i, j] + d[j, k] + 1e-12


def test_accuracy_within_distance_is_monotone_and_exact_at_the_ends():
    d = A.kernel_distance(list(K.SEEN_INDICES))
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 5, size=d.shape)
    values = A.accuracy_within_distance(confusion, d, [0.0, 0.5, 1.0, 2.0, 100.0])
    assert np.all(np.diff(values) >= 0)
    assert values[-1] == pytest.approx(1.0)
    same = d == 0
    assert values[0] == pytest.approx((confusion * same).sum() / confusion.sum())
    with pytest.raises(ValueError, match="confusion"):
        A.accuracy_within_distance(confusion[:3], d, [0.0])


def test_tile_patches_round_trips_and_rejects_bad_patch():
    lr = torch.arange(2 * 10 * 13, dtype=torch.float32).reshape(2, 1, 10, 13)
    tiles = A.tile_patches(lr, 5)
    assert tiles.shape == (2, 4, 1, 5, 5)
    assert torch.equal(tiles[1, 3, 0], lr[1, 0, 5:10, 5:10])
    assert torch.equal(tiles[0, 1, 0], lr[0, 0, 0:5, 5:10])
    with pytest.raises(ValueError, match="patch"):
        A.tile_patches(lr, 11)


def test_patch_probabilities_are_distributions_and_restore_mode():
    torch.manual_seed(0)
    model = EncoderWithClassifier(ENet(4), KernelClassifier(4, 29))
    model.train()
    lr = torch.rand(2, 1, 40, 40)
    probs = A.patch_probabilities(model, lr, 16)
    assert probs.shape == (2, 4, 29)
    assert torch.allclose(probs.sum(dim=2), torch.ones(2, 4), atol=1e-5)
    assert model.training
    # each tile on its own through the model in eval mode (BatchNorm's running averages, no dropout)
    model.eval()
    with torch.no_grad():
        for b in range(2):
            for t, (row, col) in enumerate([(0, 0), (0, 16), (16, 0), (16, 16)]):
                tile = lr[b:b + 1, :, row:row + 16, col:col + 16]
                torch.testing.assert_close(probs[b, t], torch.softmax(model(tile), dim=1)[0], rtol=0, atol=1e-6)


def test_posterior_per_kernel_shape_and_rows():
    torch.manual_seed(0)
    enet = ENet(3)
    rng = np.random.default_rng(0)
    images = {"a": rng.random((40, 40)), "b": rng.random((36, 44))}
    q = A.posterior_per_kernel(enet, images, 2, K.kernel_set("seen")[:5])
    assert q.shape == (2, 5, 3)
    assert np.allclose(q.sum(axis=2), 1.0, atol=1e-6)
    # an encoder with its classifier, or a mixture: q over E-Net's M states, not the K classes
    classifier = EncoderWithClassifier(enet, KernelClassifier(3, 29))
    np.testing.assert_array_equal(A.posterior_per_kernel(classifier, images, 2, K.kernel_set("seen")[:5]), q)
    # entry (i, k): E-Net's softmax on image i degraded (Eq. 1) by kernel k
    from tutorial_lib.degradations import degrade, modcrop
    enet.eval()
    for i, hr in enumerate(images.values()):
        for k, kernel in enumerate(K.kernel_set("seen")[:5]):
            lr = torch.from_numpy(degrade(modcrop(hr, 2), kernel, 2)).float()[None, None]
            with torch.no_grad():
                expected = torch.softmax(enet(lr), dim=1)[0].double().numpy()
            np.testing.assert_allclose(q[i, k], expected, atol=1e-6)


def test_kernel_information_bounds():
    m = 4
    uniform = np.full((3, 6, m), 1 / m)
    info = A.kernel_information(uniform)
    assert info["information"] == pytest.approx(0.0, abs=1e-12)
    assert info["mean_entropy"] == pytest.approx(np.log(m))
    # each kernel always lands in its own state: I = H(marginal) = log M
    onehot = np.zeros((3, m, m))
    onehot[:, np.arange(m), np.arange(m)] = 1.0
    info = A.kernel_information(onehot)
    assert info["information"] == pytest.approx(np.log(m))
    assert info["mean_entropy"] == pytest.approx(0.0, abs=1e-9)
    # the same non-uniform q for every kernel: an ensemble, no information
    same = np.broadcast_to(np.array([0.7, 0.1, 0.1, 0.1]), (2, 5, m))
    assert A.kernel_information(same)["information"] == pytest.approx(0.0, abs=1e-12)
    # confident q that the images disagree on: each kernel's *mean* q is uniform, so no information,
    # although every single q is one-hot
    disagree = np.zeros((2, 2, 2))
    disagree[0, 0, 0] = disagree[0, 1, 1] = disagree[1, 0, 1] = disagree[1, 1, 0] = 1.0
    info = A.kernel_information(disagree)
    assert info["information"] == pytest.approx(0.0, abs=1e-12)
    assert info["mean_entropy"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="n_images, K, M"):
        A.kernel_information(np.ones((3, 4)))


def test_accuracy_from_probabilities_counts_twins_and_top3():
    same = np.eye(4, dtype=bool)
    same[0, 1] = same[1, 0] = True  # classes 0 and 1 are the same kernel
    probs = np.zeros((1, 4, 4))
    probs[0, 0] = [0.1, 0.6, 0.2, 0.1]  # predicts the twin: wrong top-1, right distinct, right top-3
    probs[0, 1] = [0.0, 1.0, 0.0, 0.0]  # right
    probs[0, 2] = [0.5, 0.3, 0.15, 0.05]  # third: top-3 only
    probs[0, 3] = [0.4, 0.3, 0.2, 0.1]  # last: wrong everywhere
    acc = A.accuracy_from_probabilities(probs, same)
    assert acc == {"top1": 0.25, "top3": 0.75, "top1_distinct": 0.5}
    with pytest.raises(ValueError, match="same"):
        A.accuracy_from_probabilities(probs, np.eye(3, dtype=bool))


def test_confusion_from_probabilities_counts_argmax_per_true_kernel():
    probs = np.zeros((2, 3, 3))
    probs[:, 0, 0] = 1.0
    probs[0, 1, 2] = probs[1, 1, 1] = 1.0
    probs[:, 2, 0] = 1.0
    confusion = A.confusion_from_probabilities(probs)
    assert confusion.tolist() == [[2, 0, 0], [0, 1, 1], [2, 0, 0]]
    assert confusion.sum() == 6
