"""Tests of tutorial_lib.linear_sr: the least-squares linear restorer of notebook 02."""

import numpy as np
import pytest
import torch

from tutorial_lib import kernels as K
from tutorial_lib import linear_sr as L
from tutorial_lib.data import bundled_images
from tutorial_lib.degradations import symmetric_pad
from tutorial_lib.evaluation import evaluate


@pytest.mark.parametrize("scale", [2, 3])
def test_the_fit_recovers_a_linear_map_exactly(scale):
    rng = np.random.default_rng(0)
    lr = rng.uniform(size=(300, 5, 5))
    truth = rng.normal(size=(26, scale * scale))
    blocks = (np.c_[lr.reshape(300, -1), np.ones(300)] @ truth).reshape(300, scale, scale)
    np.testing.assert_allclose(L.fit_linear_sr(lr, blocks), truth, atol=1e-10)


@pytest.mark.parametrize("scale", [2, 3])
def test_the_method_maps_every_window_to_its_block(scale):
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(26, scale * scale))
    lr = torch.from_numpy(rng.uniform(size=(1, 1, 6, 7)))
    out = L.linear_sr_method(weights, scale)(lr)[0, 0].numpy()
    padded = symmetric_pad(lr, 2)[0, 0].numpy()
    expected = np.zeros((6 * scale, 7 * scale))
    for i in range(6):
        for j in range(7):
            window = padded[i:i + 5, j:j + 5].ravel()
            block = (window @ weights[:-1] + weights[-1]).reshape(scale, scale)  # phases row-major
            expected[i * scale:(i + 1) * scale, j * scale:(j + 1) * scale] = block
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_centre_block_and_its_shift():
    patches = np.arange(2 * 10 * 10, dtype=float).reshape(2, 10, 10)  # window 5 at scale 2
    np.testing.assert_array_equal(L.centre_block(patches, 2), patches[:, 4:6, 4:6])
    np.testing.assert_array_equal(L.centre_block(patches, 2, (1, 0)), patches[:, 5:7, 4:6])
    np.testing.assert_array_equal(L.centre_block(patches, 2, (1, 1)), patches[:, 5:7, 5:7])
    with pytest.raises(ValueError, match="outside"):
        L.centre_block(patches, 2, (5, 0))
    with pytest.raises(ValueError, match="odd window"):
        L.centre_block(np.zeros((2, 8, 8)), 2)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="multiple of 1000"):
        L.draw_pairs([np.full((64, 64), 0.5)], K.kernel_set("seen"), 2, 1500)
    with pytest.raises(ValueError, match="cannot determine 26 weights"):
        L.fit_linear_sr(np.zeros((20, 5, 5)), np.zeros((20, 2, 2)))
    with pytest.raises(ValueError, match="weights must be"):
        L.linear_sr_method(np.zeros((26, 9)), 2)


def test_trained_aligned_it_beats_bicubic_and_one_pixel_off_it_loses():
    train = list(bundled_images("train").values())
    test = {name: img[:128, :128] for name, img in bundled_images("test").items()}
    kernels = K.kernel_set("unseen")[::6]
    lr, hr, kernel_index = L.draw_pairs(train, K.kernel_set("seen"), 2, 10_000)
    assert lr.shape == (10_000, 5, 5) and hr.shape == (10_000, 10, 10) and set(kernel_index) <= set(range(29))
    bicubic = evaluate(test, 2, kernels).psnr
    aligned = evaluate(test, 2, kernels, L.linear_sr_method(L.fit_linear_sr(lr, L.centre_block(hr, 2)), 2)).psnr
    shifted = evaluate(test, 2, kernels, L.linear_sr_method(L.fit_linear_sr(lr, L.centre_block(hr, 2, (1, 1))), 2)).psnr
    assert aligned > bicubic + 0.5 and shifted < bicubic - 0.5, (bicubic, aligned, shifted)
