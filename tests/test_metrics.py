import numpy as np
import pytest
import skimage.color
import skimage.data
import skimage.metrics

from tutorial_lib import metrics as M


@pytest.fixture(scope="module")
def real_pair():
    hr = M.rgb_to_y(skimage.data.coffee() / 255.0)[:200, :240]
    rng = np.random.default_rng(0)
    return hr, np.clip(hr + 0.03 * rng.standard_normal(hr.shape), 0, 1)


def test_rgb_to_y_matches_skimage():
    rgb = skimage.data.astronaut()
    expected = skimage.color.rgb2ycbcr(rgb)[..., 0] / 255.0
    np.testing.assert_allclose(M.rgb_to_y(rgb / 255.0), expected, atol=1e-12)
    y = M.rgb_to_y(np.stack([np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2))], -1))
    np.testing.assert_allclose(y, 16 / 255)
    np.testing.assert_allclose(M.rgb_to_y(np.ones((2, 2, 3))), 235 / 255)


def test_psnr_matches_skimage_on_rounded_shaved_images(real_pair):
    hr, sr = real_pair
    a, b = M.to_uint8_levels(hr)[3:-3, 3:-3], M.to_uint8_levels(sr)[3:-3, 3:-3]
    expected = skimage.metrics.peak_signal_noise_ratio(a, b, data_range=255)
    assert M.psnr_y(hr, sr, shave_border=3) == pytest.approx(expected, abs=1e-10)


def test_8_bit_images_are_refused_not_scored():
    levels = np.full((8, 8), 128, dtype=np.uint8)
    for call in (lambda: M.psnr_y(levels, levels), lambda: M.ssim_y(levels.astype(float) / 255, levels),
                 lambda: M.rgb_to_y(np.zeros((4, 4, 3), dtype=np.uint8))):
        with pytest.raises(ValueError, match="float in \\[0, 1\\].*uint8"):
            call()


def test_a_reference_on_the_0_255_scale_is_refused_not_scored():
    """Float images left on the 8-bit scale would clip to white and give a meaningless score."""
    hr = np.linspace(0.0, 255.0, 64).reshape(8, 8)
    for metric in (M.psnr_y, M.ssim_y):
        with pytest.raises(ValueError, match=r"reference must be float in \[0, 1\].*\[0, 255\].*divide"):
            metric(hr, hr / 255)
        with pytest.raises(ValueError, match="reference must be"):
            metric(np.broadcast_to(hr, (3, 8, 8)), np.zeros((3, 8, 8)))
    assert M.psnr_y(hr / 255, hr / 255) == np.inf  # the same image in [0, 1] is fine


def test_psnr_rounds_and_clips_the_estimate():
    hr = np.full((8, 8), 100 / 255)
    # within half a level of the truth and overshooting values clip to the same 8-bit image
    assert np.isinf(M.psnr_y(hr, hr + 0.4 / 255))
    assert M.psnr_y(np.ones((8, 8)), np.full((8, 8), 1.3)) == np.inf
    # rounded, not truncated: 0.4 below a level is that level, 0.6 above it is the next one
    np.testing.assert_array_equal(M.to_uint8_levels(np.array([0.4, 0.6, 254.4, 254.6]) / 255), [0, 1, 254, 255])
    assert np.isinf(M.psnr_y(hr, hr - 0.4 / 255))
    assert M.psnr_y(hr, hr + 0.6 / 255) == pytest.approx(10 * np.log10(255.0 ** 2))  # every pixel one level off


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_matches_skimage_defaults_on_random_images(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((40, 52))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    expected = skimage.metrics.structural_similarity(M.to_uint8_levels(a), M.to_uint8_levels(b),
                                                     data_range=255)
    assert M.ssim_y(a, b) == pytest.approx(expected, abs=1e-12)


def test_ssim_variants_match_skimage_on_a_real_image(real_pair):
    hr, sr = real_pair
    a, b = M.to_uint8_levels(hr)[2:-2, 2:-2], M.to_uint8_levels(sr)[2:-2, 2:-2]
    default = skimage.metrics.structural_similarity(a, b, data_range=255)
    matlab = skimage.metrics.structural_similarity(a, b, data_range=255, gaussian_weights=True,
                                                   sigma=1.5, use_sample_covariance=False)
    assert M.ssim_y(hr, sr, 2) == pytest.approx(default, abs=1e-12)
    assert M.ssim_y(hr, sr, 2, variant="matlab") == pytest.approx(matlab, abs=1e-12)
    assert M.ssim_y(hr, sr, 2, variant="matlab") < M.ssim_y(hr, sr, 2)


def test_stacks_are_evaluated_per_image(real_pair):
    hr, sr = real_pair
    stack_hr, stack_sr = np.stack([hr, hr]), np.stack([sr, hr])
    psnr = M.psnr_y(stack_hr, stack_sr, 2)
    assert psnr.shape == (2,) and psnr[0] == pytest.approx(M.psnr_y(hr, sr, 2)) and np.isinf(psnr[1])
    ssim = M.ssim_y(stack_hr, stack_sr, 2)
    assert ssim[0] == pytest.approx(M.ssim_y(hr, sr, 2)) and ssim[1] == pytest.approx(1.0)


@pytest.mark.parametrize("variant", ["skimage", "matlab"])
def test_a_repeated_reference_is_processed_once_with_the_same_numbers(real_pair, variant):
    hr, sr = real_pair
    rng = np.random.default_rng(0)
    estimates = np.clip(sr[None] + 0.02 * rng.standard_normal((3,) + sr.shape), 0, 1)
    repeated = np.broadcast_to(hr, estimates.shape)  # as evaluate passes it: one image, stride 0
    copied = np.ascontiguousarray(repeated)
    assert repeated.strides[0] == 0 and copied.strides[0] != 0
    assert np.array_equal(M.ssim_y(repeated, estimates, 2, variant=variant),
                          M.ssim_y(copied, estimates, 2, variant=variant))
    assert np.array_equal(M.psnr_y(repeated, estimates, 2), M.psnr_y(copied, estimates, 2))


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        M.psnr_y(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(ValueError, match="too small"):
        M.psnr_y(np.zeros((8, 8)), np.zeros((8, 8)), shave_border=4)
    with pytest.raises(ValueError, match="window"):
        M.ssim_y(np.zeros((6, 6)), np.zeros((6, 6)))
    with pytest.raises(ValueError, match="variant"):
        M.ssim_y(np.zeros((16, 16)), np.zeros((16, 16)), variant="fast")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        M.rgb_to_y(np.zeros((4, 4)))
