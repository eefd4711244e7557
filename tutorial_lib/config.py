"""Run-wide settings read once: the compute budget, the device and seeding.

The budget is one of

- ``smoke``: seconds per training cell; what CI and the tests use (deterministic on the CPU);
- ``cpu``:   a learner's laptop, minutes per stage;
- ``gpu``:   one GPU, a few minutes per stage.

Resolution order of :func:`get_budget`: an explicit argument, then the environment variable
``TUTORIAL_BUDGET``, then ``smoke`` when the ``CI`` variable is set (to anything but
``0``/``false``), then ``gpu`` if CUDA is available, else ``cpu``.
"""

from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

BUDGETS = ("smoke", "cpu", "gpu")


def _ci_enabled() -> bool:
    value = os.environ.get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def get_budget(budget: str | None = None) -> str:
    """Return the budget name to use: ``'smoke'``, ``'cpu'`` or ``'gpu'`` (see module doc)."""
    if budget is None:
        budget = os.environ.get("TUTORIAL_BUDGET") or None
    if budget is None:
        if _ci_enabled():
            return "smoke"
        return "gpu" if torch.cuda.is_available() else "cpu"
    budget = str(budget).strip().lower()
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    return budget


def get_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device`` as a :class:`torch.device`; default CUDA when available, else CPU."""
    if device is None:
        device = os.environ.get("TUTORIAL_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available on this machine")
    return device


def device_name(device: str | torch.device | None = None) -> str:
    """The hardware behind ``device``: the GPU's name, or the CPU's model name."""
    device = get_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so that a run repeats exactly on the CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def describe_run(budget: str | None = None, device: str | torch.device | None = None) -> str:
    """One line naming the budget and device, for a notebook's first output."""
    return f"budget={get_budget(budget)}  device={get_device(device)}  torch={torch.__version__}"
