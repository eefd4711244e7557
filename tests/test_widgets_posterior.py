"""The posterior explorer's widgets, built headless: controls fire the state function."""

import math

import numpy as np
import pytest
import torch

from tutorial_lib.models import BlindSR, ENet, MixtureOfExperts
from tutorial_lib.posterior import posterior_explorer_state
from tutorial_lib.widgets import posterior_explorer

pytest.importorskip("ipywidgets")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = BlindSR(ENet(2), MixtureOfExperts(2, 2, channels=4, n_blocks=1)).eval()
    rng = np.random.default_rng(0)
    images = {"a": rng.uniform(0.1, 0.9, (48, 52)), "b": rng.uniform(0.1, 0.9, (40, 40))}
    return model, images


def test_builder_state_follows_the_controls(setup):
    model, images = setup
    explorer = posterior_explorer(model, images, lambda1=1.0, lambda2=2.0, theta=0.0, draw=False)
    expected = posterior_explorer_state(model, images["a"], 1.0, 2.0, 0.0)
    np.testing.assert_array_equal(explorer.state["q"], expected["q"])
    explorer.controls["theta"].value = math.pi / 2
    explorer.controls["image"].value = "b"
    expected = posterior_explorer_state(model, images["b"], 1.0, 2.0, math.pi / 2)
    np.testing.assert_array_equal(explorer.state["fused"], expected["fused"])
    assert "q(z|L)" in explorer.summary.value and "fused" in explorer.summary.value
    assert set(explorer.values()) == {"image", "lambda1", "lambda2", "theta"}


def test_builder_errors(setup):
    model, images = setup
    with pytest.raises(ValueError, match="image must be one of"):
        posterior_explorer(model, images, image="c", draw=False)
    with pytest.raises(ValueError, match="at least one"):
        posterior_explorer(model, {}, draw=False)
    with pytest.raises(ValueError, match=r"lambda1 must lie in its slider's range \[0.25, 6\], got 7"):
        posterior_explorer(model, images, lambda1=7.0, draw=False)  # was shown as 6 without a word
    with pytest.raises(ValueError, match=r"theta must lie in its slider's range"):
        posterior_explorer(model, images, theta=-0.5, draw=False)
    small = {**images, "tiny": np.full((30, 40), 0.5)}  # every image the dropdown offers is checked
    with pytest.raises(ValueError, match=r"images\['tiny'\] of size 30x40 is too small for a 11x11 kernel at scale 2"):
        posterior_explorer(model, small, draw=False)


def test_builder_draws(setup):
    model, images = setup
    explorer = posterior_explorer(model, images, draw=True)  # draws the figure into the Output widget
    assert explorer.state["fused"].shape == images["a"].shape
    explorer.controls["lambda2"].value = 4.0  # a redraw through the callback
    assert explorer.values()["lambda2"] == 4.0
