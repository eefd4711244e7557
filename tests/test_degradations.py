import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image

from tutorial_lib import degradations as D
from tutorial_lib import kernels as K


@pytest.fixture(scope="module")
def photo():
    """A real photograph as Y in [0, 1] (ships with scikit-image)."""
    import skimage.data
    from tutorial_lib.metrics import rgb_to_y
    return rgb_to_y(skimage.data.astronaut()[100:230, 150:290] / 255.0)


def test_downsample_keeps_the_documented_pixels():
    img = np.arange(12 * 12, dtype=np.float64).reshape(12, 12)
    # row u//2, columns u//2, u//2 + u, ... (value = 12 * row + column)
    assert D.downsample(img, 2)[0, :3].tolist() == [12 * 1 + 1, 12 * 1 + 3, 12 * 1 + 5]
    assert D.downsample(img, 3)[0, :3].tolist() == [12 * 1 + 1, 12 * 1 + 4, 12 * 1 + 7]
    assert D.downsample(img, 4)[0, :3].tolist() == [12 * 2 + 2, 12 * 2 + 6, 12 * 2 + 10]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_downsample_equals_pil_nearest(scale, photo):
    img = D.modcrop(photo, scale).astype(np.float32)
    pil = np.array(Image.fromarray(img, mode="F").resize(
        (img.shape[1] // scale, img.shape[0] // scale), Image.NEAREST))
    np.testing.assert_array_equal(D.downsample(img, scale), pil)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_equals_pil(scale, photo):
    lr = photo[:37, :41]
    pil = np.array(Image.fromarray(lr.astype(np.float32), mode="F").resize(
        (41 * scale, 37 * scale), Image.BICUBIC))
    assert np.abs(D.bicubic_upsample(lr, scale) - pil).max() < 1e-6
    batch = torch.from_numpy(np.stack([lr, lr[::-1].copy()]))[:, None]
    up = D.bicubic_upsample(batch, scale)
    assert up.shape == (2, 1, 37 * scale, 41 * scale)
    assert np.abs(up[0, 0].numpy() - pil).max() < 1e-6


def test_bicubic_takes_a_noisy_lr_image_outside_0_1(photo):
    # a noisy LR image (Eq. 1 with noise) leaves [0, 1]; NumPy and torch upsample it alike
    lr = D.degrade(photo, K.anisotropic_gaussian(1.0, 2.0, 0.0), 2, noise_sigma=0.05, rng=0)
    assert lr.min() < 0 or lr.max() > 1
    up = D.bicubic_upsample(lr, 2)
    np.testing.assert_allclose(up, D.bicubic_upsample(torch.from_numpy(lr), 2).numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="NaN or infinite"):
        D.bicubic_upsample(np.full((8, 8), np.nan), 2)


def test_blur_is_scipy_correlate_with_reflect(photo):
    kernel = K.anisotropic_gaussian(0.75, 3.0, np.pi / 8)  # not symmetric under transpose
    expected = scipy.ndimage.correlate(photo, kernel, mode="reflect")
    np.testing.assert_allclose(D.blur(photo, kernel), expected, atol=1e-12)
    out = D.blur_torch(torch.from_numpy(photo)[None, None], kernel)
    np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=1e-12)


def test_symmetric_pad_matches_numpy():
    x = torch.arange(20.0).reshape(1, 1, 4, 5)
    np.testing.assert_array_equal(D.symmetric_pad(x, 3)[0, 0].numpy(),
                                  np.pad(x[0, 0].numpy(), 3, mode="symmetric"))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_batched_degradation_uses_one_kernel_per_image(scale, photo):
    kernels = K.kernel_set("unseen")[:5]
    out = D.degrade_with_kernels(photo, kernels, scale)
    for k in range(5):
        np.testing.assert_allclose(out[k, 0].numpy(), D.degrade(photo, kernels[k], scale),
                                   atol=1e-12)


@pytest.mark.parametrize("scale", [2, 3])
def test_torch_degradation_of_a_batch_equals_numpy_per_image(scale, photo):
    # (B, 1, H, W) with one anisotropic kernel per image, odd sides (modcropped), and one kernel for all
    images = np.stack([photo[:47, :53], photo[20:67, 30:83], photo[40:87, 60:113]])
    kernels = K.kernel_set("unseen")[[1, 9, 20]]  # anisotropic: a transposed kernel would differ
    batch = torch.from_numpy(images.copy())[:, None]
    lr = D.degrade(batch, kernels, scale)
    shared = D.degrade(batch, kernels[0], scale)
    for b in range(3):
        np.testing.assert_allclose(lr[b, 0].numpy(), D.degrade(images[b], kernels[b], scale), atol=1e-12)
        np.testing.assert_allclose(shared[b, 0].numpy(), D.degrade(images[b], kernels[0], scale), atol=1e-12)
    noisy = D.degrade(batch, kernels, scale, noise_sigma=0.05, rng=7)
    expected_noise = 0.05 * torch.randn(lr.shape, generator=torch.Generator().manual_seed(7), dtype=lr.dtype)
    torch.testing.assert_close(noisy - lr, expected_noise, rtol=0, atol=1e-12)


def test_degrade_modcrops_and_adds_noise(photo):
    img = photo[:31, :29]
    kernel = K.kernel_set("seen")[0]
    assert D.degrade(img, kernel, 3).shape == (10, 9)
    noisy = D.degrade(img, kernel, 3, noise_sigma=0.01, rng=0)
    # i.i.d. Gaussian noise of the given sigma, drawn from the given seed, added to the clean LR image
    np.testing.assert_allclose(noisy - D.degrade(img, kernel, 3),
                               0.01 * np.random.default_rng(0).standard_normal((10, 9)), atol=1e-15)


def test_an_integer_seed_makes_torch_noise_repeatable(photo):
    hr = torch.from_numpy(photo[:32, :32].copy())[None, None]
    kernel = K.kernel_set("seen")[0]
    first, again = (D.degrade(hr, kernel, 2, noise_sigma=0.05, rng=7) for _ in range(2))
    assert torch.equal(first, again) and not torch.equal(first, D.degrade(hr, kernel, 2, noise_sigma=0.05, rng=8))
    with pytest.raises(TypeError, match="torch.Generator"):
        D.degrade(photo, kernel, 2, noise_sigma=0.05, rng=torch.Generator())


def test_bad_input_gets_clear_errors(photo):
    kernel = K.kernel_set("seen")[0]
    with pytest.raises(ValueError, match="2-D"):
        D.degrade(np.zeros((8, 8, 3)), kernel, 2)
    with pytest.raises(ValueError, match="float"):
        D.degrade(np.zeros((32, 32), dtype=np.uint8), kernel, 2)
    with pytest.raises(ValueError, match="smaller"):
        D.degrade(np.zeros((4, 4)), kernel, 2)
    with pytest.raises(ValueError, match="scale"):
        D.degrade(photo, kernel, 0)
    with pytest.raises(ValueError, match="odd"):
        D.degrade(photo, np.ones((4, 4)) / 16, 2)


@pytest.mark.parametrize("blur", ["conv", "matmul"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_patch_pairs_are_exact_crops_of_the_whole_image_degradation(scale, blur, photo):
    """The property that keeps training aligned with evaluation, borders and flips included."""
    images = [photo, photo[5:, 9:].copy()]
    kernels = K.kernel_set("seen")
    sampler = D.PatchSampler(images, kernels, scale, lr_patch=8, dtype=torch.float64, seed=1, blur=blur)
    batch = sampler.sample(64)
    assert batch["lr"].shape == (64, 1, 8, 8) and batch["hr"].shape == (64, 1, 8 * scale, 8 * scale)
    assert set(batch["op"].tolist()) == set(range(8))  # every rotation/flip is exercised
    assert len(set(batch["row"].tolist())) > 1 and len(set(batch["col"].tolist())) > 1  # positions vary
    for n in range(64):
        img = D.modcrop(images[batch["image_index"][n]], scale)
        whole = np.ascontiguousarray(D.dihedral(img, int(batch["op"][n])))
        lr_whole = D.degrade(whole, kernels[batch["kernel_index"][n]], scale)
        r, c, p = int(batch["row"][n]), int(batch["col"][n]), 8
        np.testing.assert_allclose(batch["lr"][n, 0].numpy(), lr_whole[r:r + p, c:c + p], atol=1e-12)
        np.testing.assert_allclose(batch["hr"][n, 0].numpy(),
                                   whole[scale * r: scale * (r + p), scale * c: scale * (c + p)],
                                   atol=0)


def test_patch_sampler_blur_methods_agree_in_float32(photo):
    kernels = K.kernel_set("seen")
    conv = D.PatchSampler([photo], kernels, 3, lr_patch=24, seed=5, blur="conv").sample(32)
    matmul = D.PatchSampler([photo], kernels, 3, lr_patch=24, seed=5, blur="matmul").sample(32)
    assert torch.equal(conv["hr"], matmul["hr"])
    torch.testing.assert_close(conv["lr"], matmul["lr"], rtol=0, atol=1e-6)
    assert D.PatchSampler([photo], kernels, 2, lr_patch=8).blur == "conv"  # the CPU default
    with pytest.raises(ValueError, match="blur"):
        D.PatchSampler([photo], kernels, 2, lr_patch=8, blur="fft")


def test_patch_sampler_reaches_the_borders(photo):
    sampler = D.PatchSampler([photo[:40, :40].copy()], K.kernel_set("seen"), 2, lr_patch=8, seed=0)
    batch = sampler.sample(512)
    assert batch["row"].min() == 0 and batch["row"].max() == 20 - 8


def test_patch_sampler_is_deterministic_with_a_seed(photo):
    a = D.PatchSampler([photo], K.kernel_set("seen"), 2, lr_patch=8, seed=3).sample(16)
    b = D.PatchSampler([photo], K.kernel_set("seen"), 2, lr_patch=8, seed=3).sample(16)
    assert torch.equal(a["lr"], b["lr"]) and torch.equal(a["kernel_index"], b["kernel_index"])


def test_patch_sampler_noise_is_sigma_times_its_generators_normal_draws(photo):
    clean = D.PatchSampler([photo], K.kernel_set("seen"), 2, lr_patch=8, seed=3)
    noisy = D.PatchSampler([photo], K.kernel_set("seen"), 2, lr_patch=8, seed=3, noise_sigma=0.05)
    a, b = clean.sample(16), noisy.sample(16)
    assert torch.equal(a["hr"], b["hr"])  # the same pairs: the noise is drawn after everything else
    after = torch.Generator().set_state(clean.generator.get_state())
    torch.testing.assert_close(b["lr"] - a["lr"], 0.05 * torch.randn(a["lr"].shape, generator=after, dtype=a["lr"].dtype),
                               rtol=0, atol=1e-6)


def test_one_pixel_slip_is_detectable(photo):
    """A crop off by one HR pixel is not the degradation of its HR target (what the exact
    test above guards against)."""
    kernel = K.kernel_set("seen")[3]
    lr = D.degrade(photo, kernel, 2)
    shifted = D.degrade(photo[1:, 1:], kernel, 2)
    assert np.abs(lr[2:10, 2:10] - shifted[2:10, 2:10]).max() > 1e-3


def test_patch_sampler_rejects_small_images():
    with pytest.raises(ValueError, match="smaller than one HR patch"):
        D.PatchSampler([np.zeros((20, 20))], K.kernel_set("seen"), 2, lr_patch=24)


def test_modcrop_shapes_and_content():
    img = np.arange(7 * 10, dtype=np.float64).reshape(7, 10)
    for scale, shape in [(1, (7, 10)), (2, (6, 10)), (3, (6, 9)), (4, (4, 8)), (7, (7, 7))]:
        cropped = D.modcrop(img, scale)
        assert cropped.shape == shape
        np.testing.assert_array_equal(cropped, img[: shape[0], : shape[1]])
    assert D.modcrop(img, np.int64(2)).shape == (6, 10)
    assert D.modcrop(np.zeros((7, 10, 3)), 2).shape == (6, 10, 3)  # RGB too


@pytest.mark.parametrize("img, scale, message", [
    (np.zeros((8, 8)), 0, "scale"), (np.zeros((8, 8)), 2.0, "scale"),
    (np.zeros((8, 8)), True, "scale"), (np.zeros(8), 2, "2-D"),
    (np.zeros((3, 8)), 4, "smaller than the scale"),
])
def test_modcrop_rejects_bad_input(img, scale, message):
    with pytest.raises(ValueError, match=message):
        D.modcrop(img, scale)


def test_centre_crop_stays_on_the_lr_grid():
    img = np.arange(11 * 14, dtype=float).reshape(11, 14)
    np.testing.assert_array_equal(D.centre_crop(img, 4), img[3:7, 5:9])  # (11-4)//2 = 3, (14-4)//2 = 5
    np.testing.assert_array_equal(D.centre_crop(img, 5, 2), img[2:6, 4:8])  # side 4, top 3 -> 2, left 5 -> 4
    np.testing.assert_array_equal(D.centre_crop(img, 20), img)  # smaller than side: kept whole
    assert np.shares_memory(D.centre_crop(img, 4), img)
    with pytest.raises(ValueError, match="side must be at least multiple"):
        D.centre_crop(img, 1, 2)
    with pytest.raises(ValueError, match="at least 2-D"):
        D.centre_crop(np.zeros(5), 2)


def test_images_are_drawn_in_proportion_to_their_patch_positions():
    """A small image is drawn as often as its share of the patch positions, not as often as a big one."""
    rng = np.random.default_rng(0)
    big, small = rng.uniform(0.2, 0.8, (96, 96)), rng.uniform(0.2, 0.8, (32, 32))
    sampler = D.PatchSampler([big, small], K.kernel_set("seen"), 2, lr_patch=8, seed=0)
    positions = np.array([(48 - 8 + 1) ** 2, (16 - 8 + 1) ** 2])  # LR positions of an 8 x 8 patch
    np.testing.assert_allclose(sampler.image_weights.numpy(), positions / positions.sum())
    counts = np.bincount(sampler.sample(4000)["image_index"].numpy(), minlength=2)
    assert counts[1] / 4000 == pytest.approx(positions[1] / positions.sum(), abs=0.02)


def test_blur_is_a_correlation_for_a_kernel_that_is_not_point_symmetric():
    """Blurring correlates. Every Gaussian of the bank is point-symmetric, so with the bank a
    convolution gives the same result; with any other kernel the NumPy path (evaluation) and the
    torch path (PatchSampler, training) must still agree."""
    rng = np.random.default_rng(0)
    img = rng.uniform(0.1, 0.9, (30, 34))
    kernel = rng.uniform(size=(5, 5))
    kernel[0, :] += 2.0  # weight above the centre only
    kernel /= kernel.sum()
    np.testing.assert_allclose(D.blur(img, kernel), scipy.ndimage.correlate(img, kernel, mode="reflect"),
                               atol=1e-12)
    lr_numpy = D.degrade(img, kernel, 2)
    lr_torch = D.degrade(torch.from_numpy(img)[None, None], kernel, 2)[0, 0].numpy()
    np.testing.assert_allclose(lr_numpy, lr_torch, atol=1e-12)
