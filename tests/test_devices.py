"""A model trained on a GPU stays on the GPU. Every helper that runs a model must send its
inputs to the model's device and hand its results back on the CPU, where the notebooks'
images and metrics live.

Without a GPU, the ``meta`` device stands in for one. Tensors there have shapes but no
data, so a forward pass runs, and copying the result back to the CPU fails with
"Cannot copy out of meta tensor". A helper that forgets to move its inputs fails earlier,
inside the forward pass, with a device mismatch. So each test records the device of every
input the model receives and accepts only the copy-out error.
"""

import numpy as np
import pytest
import torch

from tutorial_lib import encoder_analysis as A
from tutorial_lib import kernels as K
from tutorial_lib import posterior as P
from tutorial_lib.evaluation import model_method
from tutorial_lib.models import (
    BlindSR,
    EncoderWithClassifier,
    ENet,
    KernelClassifier,
    MixtureOfExperts,
    device_of,
)
from tutorial_lib.training import encoder_accuracy

META = torch.device("meta")


def _on_meta(model: torch.nn.Module) -> tuple[torch.nn.Module, list[torch.device]]:
    """``model`` on the meta device, with a hook that records the device of each input tensor."""
    devices: list[torch.device] = []

    def record(_module, inputs):
        devices.extend(x.device for x in inputs if isinstance(x, torch.Tensor))

    model.to(META).register_forward_pre_hook(record)
    return model, devices


def _run_to_copy_out(call) -> None:
    """Run ``call``; on meta it may stop only where a result is copied back to the CPU."""
    try:
        call()
    except NotImplementedError as error:
        assert "meta" in str(error), error


def test_device_of_reads_the_parameters():
    assert device_of(ENet(4)) == torch.device("cpu")
    assert device_of(ENet(4).to(META)) == META
    assert device_of(torch.nn.ReLU()) == torch.device("cpu")  # no parameters


@pytest.fixture()
def image():
    return np.random.default_rng(0).uniform(0.2, 0.8, (64, 64))


def test_patch_probabilities_runs_on_the_models_device():
    model, devices = _on_meta(EncoderWithClassifier(ENet(4), KernelClassifier(4, 29)))
    _run_to_copy_out(lambda: A.patch_probabilities(model, torch.rand(2, 1, 48, 48), 24))
    assert devices and set(devices) == {META}


def test_layer_table_runs_on_the_models_device():
    model, devices = _on_meta(ENet(4))
    rows = A.layer_table(model, torch.rand(2, 1, 48, 48))  # shapes only: nothing to copy back
    assert rows[-1]["shape"] == (2, 4)
    assert set(devices) == {META}


def test_posteriors_run_on_the_models_device(image):
    model, devices = _on_meta(ENet(3))
    _run_to_copy_out(lambda: A.posterior_per_kernel(model, {"a": image}, 2, K.kernel_set("seen")[:2]))
    _run_to_copy_out(lambda: P.posteriors_of(model, torch.rand(2, 1, 32, 32)))
    assert devices and set(devices) == {META}


def test_encoder_accuracy_runs_on_the_models_device(image):
    model, devices = _on_meta(EncoderWithClassifier(ENet(4), KernelClassifier(4, 29)))
    _run_to_copy_out(lambda: encoder_accuracy(model, {"a": image}, 2))
    assert devices and set(devices) == {META}


def test_explorer_and_evaluation_run_on_the_models_device(image):
    model, devices = _on_meta(BlindSR(ENet(3), MixtureOfExperts(3, 2, channels=8, n_blocks=1)))
    _run_to_copy_out(lambda: P.posterior_explorer_state(model, image, 1.0, 2.0, 0.5))
    _run_to_copy_out(lambda: model_method(model, 2)(torch.rand(3, 1, 20, 20)))
    assert devices and set(devices) == {META}


def test_model_method_moves_the_model_to_the_device_asked():
    model = BlindSR(ENet(3), MixtureOfExperts(3, 2, channels=8, n_blocks=1))
    devices: list[torch.device] = []
    model.register_forward_pre_hook(lambda _m, inputs: devices.extend(x.device for x in inputs))
    method = model_method(model, 2, device=META)
    assert device_of(model) == META
    _run_to_copy_out(lambda: method(torch.rand(3, 1, 20, 20)))
    assert devices and set(devices) == {META}
