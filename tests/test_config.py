"""Tests of tutorial_lib.config: budget and device resolution, and the CPU allocator tuning."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from tutorial_lib import config


def test_budget_resolution_order(monkeypatch):
    monkeypatch.delenv("TUTORIAL_BUDGET", raising=False)
    monkeypatch.setenv("CI", "true")
    assert config.get_budget() == "smoke"
    monkeypatch.setenv("TUTORIAL_BUDGET", "cpu")
    assert config.get_budget() == "cpu"
    assert config.get_budget("GPU ") == "gpu"
    monkeypatch.delenv("TUTORIAL_BUDGET")
    monkeypatch.setenv("CI", "false")
    assert config.get_budget() == ("gpu" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="budget must be one of"):
        config.get_budget("laptop")


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        config.get_device("cuda")


def test_a_device_torch_does_not_know_is_named():
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'.*'gpu'"):
        config.get_device("gpu")


@pytest.mark.parametrize("name", ["mps", "xla", "meta", "xpu"])
def test_a_device_torch_knows_but_the_project_does_not_use_is_refused(name, monkeypatch):
    with pytest.raises(ValueError, match=rf"device must be 'cpu' or 'cuda'.*'{name}': this project runs on the CPU"):
        config.get_device(name)
    monkeypatch.setenv("TUTORIAL_DEVICE", name)
    with pytest.raises(ValueError, match="environment variable TUTORIAL_DEVICE must be 'cpu' or 'cuda'"):
        config.get_device()
    assert config.get_device(torch.device("meta")).type == "meta"  # a device object is taken as given


def test_a_bad_value_from_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("TUTORIAL_DEVICE", "gpu")
    with pytest.raises(ValueError, match="environment variable TUTORIAL_DEVICE must be 'cpu' or 'cuda'.*'gpu'"):
        config.get_device()
    assert config.get_device("cpu").type == "cpu"  # an explicit device wins over the variable
    monkeypatch.setenv("TUTORIAL_BUDGET", "fast")
    with pytest.raises(ValueError, match="environment variable TUTORIAL_BUDGET must be one of.*'fast'"):
        config.get_budget()
    assert config.get_budget("smoke") == "smoke"


def test_an_old_pytorch_beside_numpy_2_is_a_clear_import_error(monkeypatch):
    config.check_numpy_bridge()  # this environment exchanges arrays

    def unavailable(array):  # what PyTorch < 2.3 does beside NumPy 2
        raise RuntimeError("Numpy is not available")

    monkeypatch.setattr(torch, "from_numpy", unavailable)
    with pytest.raises(ImportError, match=r"cannot exchange arrays with NumPy .*Numpy is not available.*numpy<2"):
        config.check_numpy_bridge()


def test_allocator_tuning_is_applied_once_and_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(config, "_allocator_state", None)
    monkeypatch.setenv("TUTORIAL_CPU_ALLOCATOR", "default")
    state = config.tune_cpu_allocator()
    assert state == {"applied": False, "reason": "TUTORIAL_CPU_ALLOCATOR=default", "settings": {}}
    monkeypatch.delenv("TUTORIAL_CPU_ALLOCATOR")
    assert config.tune_cpu_allocator() == state  # decided once per process


_RSS_PROBE = """
import json, torch
from tutorial_lib.config import tune_cpu_allocator

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

state = tune_cpu_allocator()
x = torch.ones(5 * 2**20)  # 20 MiB, touched
held = rss_mb()
del x
print(json.dumps({"applied": state["applied"], "freed_mb": held - rss_mb()}))
"""


def _last_line_of_python(code: str, variable: str, value: str | None) -> str:
    """Run ``code`` in a fresh interpreter with the environment variable ``variable`` set to
    ``value`` (or unset for ``None``); return the last line it prints."""
    env = {k: v for k, v in os.environ.items() if k != variable}
    if value is not None:
        env[variable] = value
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def _freed_after_del(env_value: str | None) -> dict:
    return json.loads(_last_line_of_python(_RSS_PROBE, "TUTORIAL_CPU_ALLOCATOR", env_value))


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the tuning applies to glibc on Linux")
def test_tuned_allocator_keeps_freed_activations_in_the_process():
    # glibc's default hands a freed 20 MiB block straight back to the kernel (the next step
    # would page-fault it in again); after tune_cpu_allocator() the process keeps it.
    default = _freed_after_del("default")
    tuned = _freed_after_del(None)
    assert not default["applied"] and default["freed_mb"] > 15
    assert tuned["applied"] and tuned["freed_mb"] < 5


@pytest.mark.parametrize("preset, expected", [(None, "1"), ("0", "0")])
def test_importing_the_package_asks_for_huge_pages_unless_told_otherwise(preset, expected):
    code = "import os, tutorial_lib; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    assert _last_line_of_python(code, "THP_MEM_ALLOC_ENABLE", preset) == expected


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="utf-8") as handle:
            return handle.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "unavailable"


_FAULT_PROBE = """
import resource, tutorial_lib, torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    x = torch.empty(16 * 2**20); x.fill_(1.0); del x  # 64 MiB, touched
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(_thp_mode() != "madvise",
                    reason="PyTorch's request matters only in 'madvise' mode ('always' gives huge pages anyway)")
def test_huge_pages_cut_the_page_faults_of_large_tensors():
    faults = {preset: int(_last_line_of_python(_FAULT_PROBE, "THP_MEM_ALLOC_ENABLE", preset)) for preset in (None, "0")}
    # 5 x 64 MiB in 4 KiB pages is about 82,000 faults; in 2 MiB pages a few hundred
    assert faults["0"] > 50_000 and faults[None] < faults["0"] / 10


def test_yes_no_variables_are_read_strictly(monkeypatch):
    for value, expected in (("1", True), ("True", True), ("yes", True), ("on", True), ("", False), ("0", False),
                            ("false", False), ("No", False), ("off", False)):
        monkeypatch.setenv("TUTORIAL_TRAIN_ENCODER", value)
        assert config.env_flag("TUTORIAL_TRAIN_ENCODER") is expected, value
    monkeypatch.delenv("TUTORIAL_TRAIN_ENCODER")
    assert config.env_flag("TUTORIAL_TRAIN_ENCODER") is False
    monkeypatch.setenv("TUTORIAL_TRAIN_ENCODER", "sure")  # was read as yes
    with pytest.raises(ValueError, match="environment variable TUTORIAL_TRAIN_ENCODER must be one of"):
        config.env_flag("TUTORIAL_TRAIN_ENCODER")


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "3", True])
def test_a_seed_outside_numpys_range_is_refused_by_name(seed):
    with pytest.raises(ValueError, match="seed must be an integer in"):
        config.seed_everything(seed)
