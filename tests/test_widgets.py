"""The kernel explorer: its state function (values, determinism, errors) and its widgets,
built headless (no front end is needed to construct ipywidgets and fire their callbacks)."""

import math

import numpy as np
import pytest

from tutorial_lib import degradations as D
from tutorial_lib import kernels as K
from tutorial_lib.metrics import psnr_y, ssim_y
from tutorial_lib.widgets import kernel_explorer, kernel_explorer_state


@pytest.fixture(scope="module")
def hr():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.8, (62, 70))
    return D.blur(image, K.anisotropic_gaussian(1.0, 1.0, 0.0))  # smooth, in [0, 1]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_state_matches_the_library_pipeline(hr, scale):
    state = kernel_explorer_state(hr, 0.75, 3.0, math.pi / 8, scale, 0.0)
    kernel = K.anisotropic_gaussian(0.75, 3.0, math.pi / 8)
    np.testing.assert_array_equal(state["kernel"], kernel)
    assert state["kernel"].shape == (11, 11) and state["kernel"].sum() == pytest.approx(1.0)
    cropped = D.modcrop(hr, scale)
    np.testing.assert_array_equal(state["hr"], cropped)
    np.testing.assert_array_equal(state["lr"], D.degrade(hr, kernel, scale))
    np.testing.assert_array_equal(state["bicubic"], D.bicubic_upsample(state["lr"], scale))
    assert state["lr"].shape == (cropped.shape[0] // scale, cropped.shape[1] // scale)
    assert state["psnr"] == psnr_y(cropped, state["bicubic"], shave_border=scale)
    assert state["ssim"] == ssim_y(cropped, state["bicubic"], shave_border=scale)
    assert state["scale"] == scale
    np.testing.assert_allclose(state["covariance"], K.covariance(0.75, 3.0, math.pi / 8))


def test_kernel_size_and_normalisation(hr):
    state = kernel_explorer_state(hr, 2.0, 0.5, 1.0, 2, 0.0, kernel_size=21)
    assert state["kernel"].shape == (21, 21)
    assert state["kernel"].sum() == pytest.approx(1.0, abs=1e-12)
    assert state["kernel"].min() >= 0


def test_noise_is_deterministic_given_the_seed(hr):
    clean = kernel_explorer_state(hr, 1.5, 1.5, 0.0, 2, 0.0)
    a = kernel_explorer_state(hr, 1.5, 1.5, 0.0, 2, 0.02, seed=3)
    b = kernel_explorer_state(hr, 1.5, 1.5, 0.0, 2, 0.02, seed=3)
    c = kernel_explorer_state(hr, 1.5, 1.5, 0.0, 2, 0.02, seed=4)
    np.testing.assert_array_equal(a["lr"], b["lr"])
    assert a["psnr"] == b["psnr"]
    assert not np.array_equal(a["lr"], c["lr"])
    noise = a["lr"] - clean["lr"]  # sigma times the seed's standard normal draws, exactly
    np.testing.assert_allclose(noise, 0.02 * np.random.default_rng(3).standard_normal(noise.shape), atol=1e-15)
    assert a["psnr"] < clean["psnr"]


def test_an_image_too_small_for_a_scale_the_dropdown_offers_is_refused(hr):
    small = hr[:14, :14]  # 14 px: enough at x2 (14 >= 11), not at x3 (cropped to 12 < 2 * 3 + 7)
    kernel_explorer_state(small, 1.0, 1.0, 0.0, 2, 0.0)
    with pytest.raises(ValueError, match="too small for a 11x11 kernel at scale 3: it needs 13 px per side"):
        kernel_explorer_state(small, 1.0, 1.0, 0.0, 3, 0.0)
    with pytest.raises(ValueError, match="at scale 3"):
        kernel_explorer(small, scale=2, draw=False)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_the_noise_slider_works_up_to_its_maximum_on_black_and_white(scale):
    # noise pushes an LR image with pure black and white outside [0, 1]; bicubic takes it
    image = np.zeros((60, 66))
    image[:, 33:] = 1.0
    explorer = kernel_explorer(image, scale=scale, draw=False)
    sigma = explorer.controls["noise_sigma"].max
    state = kernel_explorer_state(image, 1.5, 1.5, 0.0, scale, sigma, seed=0)
    assert state["lr"].min() < 0 and state["lr"].max() > 1
    np.testing.assert_array_equal(state["bicubic"], D.bicubic_upsample(state["lr"], scale))
    assert np.isfinite(state["psnr"]) and np.isfinite(state["ssim"])


@pytest.mark.parametrize("kwargs, message", [
    ({"lambda1": 0.0}, "lambda1 must be a finite number > 0"),
    ({"lambda2": -1.0}, "lambda2 must be a finite number > 0"),
    ({"lambda1": float("nan")}, "lambda1"),
    ({"lambda2": "3"}, "lambda2 must be a number"),
    ({"theta": float("inf")}, "theta must be a finite angle"),
    ({"scale": 5}, r"scale must be one of \(2, 3, 4\)"),
    ({"scale": 2.0}, "scale must be one of"),
    ({"scale": True}, "scale must be one of"),
    ({"noise_sigma": -0.01}, "noise_sigma must be a finite number >= 0"),
    ({"kernel_size": 10}, "kernel_size must be a positive odd integer"),
])
def test_bad_arguments_get_clear_errors(hr, kwargs, message):
    arguments = {"lambda1": 1.0, "lambda2": 2.0, "theta": 0.3, "scale": 2, "noise_sigma": 0.0}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        kernel_explorer_state(hr, **arguments)


def test_bad_images_get_clear_errors(hr):
    with pytest.raises(ValueError, match="single-channel"):
        kernel_explorer_state(np.stack([hr] * 3, -1), 1.0, 1.0, 0.0, 2, 0.0)
    with pytest.raises(ValueError, match="float"):
        kernel_explorer_state((hr * 255).astype(np.uint8), 1.0, 1.0, 0.0, 2, 0.0)
    with pytest.raises(ValueError, match="too small"):
        kernel_explorer_state(hr[:9, :9], 1.0, 1.0, 0.0, 2, 0.0)


def test_widget_builds_headless_and_follows_its_sliders(hr):
    explorer = kernel_explorer(hr, draw=False)
    assert set(explorer.controls) == {"lambda1", "lambda2", "theta", "scale", "noise_sigma"}
    first = explorer.state
    assert first["psnr"] == kernel_explorer_state(hr, 0.75, 3.0, math.pi / 4, 2, 0.0)["psnr"]
    assert "PSNR" in explorer.summary.value

    explorer.controls["lambda2"].value = 1.5  # fires the callback, as a slider release does
    expected = kernel_explorer_state(hr, 0.75, 1.5, math.pi / 4, 2, 0.0)
    assert explorer.state["psnr"] == expected["psnr"] != first["psnr"]
    np.testing.assert_array_equal(explorer.state["kernel"], expected["kernel"])
    assert f"{expected['psnr']:.2f} dB" in explorer.summary.value

    explorer.controls["scale"].value = 3
    assert explorer.state["scale"] == 3 and explorer.state["lr"].shape == (60 // 3, 69 // 3)
    explorer.controls["noise_sigma"].value = 0.01
    again = kernel_explorer_state(hr, 0.75, 1.5, math.pi / 4, 3, 0.01)
    np.testing.assert_array_equal(explorer.state["lr"], again["lr"])


def test_widget_draws_its_figure_into_the_output(hr, monkeypatch):
    import IPython.display
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, *args, **kwargs: shown.append(obj))
    explorer = kernel_explorer(hr[:40, :40], scale=4)
    explorer.controls["theta"].value = 0.0
    assert len(shown) == 2 and all(isinstance(fig, Figure) for fig in shown)  # one figure per update
    assert explorer.state["scale"] == 4
    assert plt.get_fignums() == []  # every figure drawn into the output is closed again
    assert "application/vnd.jupyter.widget-view+json" in explorer._repr_mimebundle_()


def test_widget_rejects_bad_arguments_before_building(hr):
    with pytest.raises(ValueError, match="scale must be one of"):
        kernel_explorer(hr, scale=8)


@pytest.mark.parametrize("kwargs", [{"lambda1": 6.0}, {"lambda2": 0.1}, {"theta": 4.0}, {"theta": -0.3},
                                    {"noise_sigma": 0.2}])
def test_a_start_outside_a_sliders_range_is_refused_not_clamped(hr, kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"{name} must lie in its slider's range .*kernel_explorer_state takes"):
        kernel_explorer(hr, draw=False, **kwargs)


def test_the_sliders_limits_are_shown_as_asked():
    hr = np.random.default_rng(0).uniform(0.2, 0.8, (64, 64))
    for start in ({"lambda1": 5.0, "lambda2": 0.25, "theta": math.pi, "noise_sigma": 0.05},
                  {"lambda1": 0.25, "lambda2": 5.0, "theta": 0.0, "noise_sigma": 0.0}):
        explorer = kernel_explorer(hr, draw=False, **start)
        assert {name: explorer.controls[name].value for name in start} == pytest.approx(start)


def test_kernel_explorer_keeps_its_kernel_size_and_seed_when_a_slider_moves():
    """The explorer keeps kernel_size and seed when a slider moves (lost, it would fall back to
    11 x 11 and seed 0 without a word)."""
    pytest.importorskip("ipywidgets")
    from tutorial_lib.widgets import kernel_explorer, kernel_explorer_state

    hr = np.random.default_rng(0).uniform(0.2, 0.8, (64, 64))
    explorer = kernel_explorer(hr, kernel_size=21, noise_sigma=0.01, seed=5, draw=False)
    expected = kernel_explorer_state(hr, 0.75, 3.0, math.pi / 4, 2, 0.01, kernel_size=21, seed=5)
    assert explorer.state["kernel"].shape == (21, 21)
    np.testing.assert_array_equal(explorer.state["lr"], expected["lr"])
    explorer.controls["lambda2"].value = 1.5  # fires the callback, as a slider release does
    expected = kernel_explorer_state(hr, 0.75, 1.5, math.pi / 4, 2, 0.01, kernel_size=21, seed=5)
    assert explorer.state["kernel"].shape == (21, 21)
    np.testing.assert_array_equal(explorer.state["lr"], expected["lr"])
