"""Run-wide settings read once: the compute budget, the device and seeding.

The budget is one of

- ``smoke``: seconds per training cell; what CI and the tests use (deterministic on the CPU);
- ``cpu``:   a learner's laptop, minutes per stage;
- ``gpu``:   one GPU: E-Net 40 s, then 150 s per model (see :mod:`tutorial_lib.training`).

Resolution order of :func:`get_budget`: an explicit argument, then the environment variable
``TUTORIAL_BUDGET``, then ``smoke`` when the ``CI`` variable is set (to anything but an empty
value, ``0``, ``false`` or ``no``), then ``gpu`` if CUDA is available, else ``cpu``.
:func:`get_device` reads ``TUTORIAL_DEVICE`` (``cpu`` or ``cuda``) the same way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

BUDGETS = ("smoke", "cpu", "gpu")


def _ci_enabled() -> bool:
    value = os.environ.get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


_YES, _NO = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def env_flag(variable: str) -> bool:
    """A yes/no environment variable (``TUTORIAL_TRAIN_ENCODER=1``): ``1``, ``true``, ``yes`` or
    ``on`` is True; unset, empty, ``0``, ``false``, ``no`` or ``off`` is False (any case); any
    other value is a ``ValueError`` that names the variable, not a silent guess."""
    value = os.environ.get(variable, "").strip().lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise ValueError(f"environment variable {variable} must be one of {_YES} or {_NO[1:]}, "
                     f"got {os.environ[variable]!r}")


def new_file_mode() -> int:
    """The permission bits a new file gets under this process's umask (``0o666 & ~umask``):
    files written through ``tempfile.mkstemp`` (0600) are given these before they are moved
    into place, so that they read like any other file the user writes."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def get_budget(budget: str | None = None) -> str:
    """Return the budget name to use: ``'smoke'``, ``'cpu'`` or ``'gpu'`` (see module doc)."""
    source = "budget"
    if budget is None:
        budget = os.environ.get("TUTORIAL_BUDGET") or None
        source = "environment variable TUTORIAL_BUDGET"
    if budget is None:
        if _ci_enabled():
            return "smoke"
        return "gpu" if torch.cuda.is_available() else "cpu"
    name = str(budget).strip().lower()
    if name not in BUDGETS:
        raise ValueError(f"{source} must be one of {BUDGETS}, got {budget!r}")
    return name


def folder_from_environment(variable: str, error: type[Exception] = ValueError) -> Path | None:
    """The folder named by the environment variable ``variable`` (``~`` expanded), or None when
    it is unset or empty; a value that names no folder raises ``error`` with a message that
    names the variable, rather than falling back silently to a default."""
    value = os.environ.get(variable)
    if not value:
        return None
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise error(f"environment variable {variable}={value!r} is not a folder")
    return folder


def check_integer(name: str, value: object, least: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer (NumPy's too, not a bool) of at least
    ``least``; else a ``ValueError`` that names it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def get_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device`` as a :class:`torch.device`.

    Default: the environment variable ``TUTORIAL_DEVICE`` if set, else CUDA when available,
    else the CPU. Asking for CUDA on a machine without it is a ``ValueError``.
    """
    source = "device"
    if device is None:
        device = os.environ.get("TUTORIAL_DEVICE") or None
        source = "environment variable TUTORIAL_DEVICE"
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{source} must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}") from error
    if not isinstance(device, torch.device) and chosen.type not in ("cpu", "cuda"):
        # e.g. 'mps' or 'xla': PyTorch knows the name, but this project runs on the CPU and CUDA only
        # (a torch.device object is taken as given: the tests use the 'meta' device)
        raise ValueError(f"{source} must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}: "
                         "this project runs on the CPU and on CUDA GPUs only")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{source} asks for {device!r}, but CUDA is not available on this machine")
    return chosen


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
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so that a run repeats exactly on the CPU.
    ``seed``: an integer in [0, 2**32 - 1] (NumPy's range)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= 2**32 - 1:
        raise ValueError(f"seed must be an integer in [0, 2**32 - 1], got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ALLOCATOR_SETTINGS = {"M_TRIM_THRESHOLD": 1 << 30, "M_MMAP_THRESHOLD": 1 << 25}
_allocator_state: dict[str, object] | None = None


def tune_cpu_allocator() -> dict[str, object]:
    """Keep freed memory inside the process so that CPU training stops page-faulting.

    Each training step on the CPU allocates and frees the same activation tensors (several
    MB each). With its default settings glibc's ``malloc`` gives the top of the heap back to
    the kernel when a step frees them, and the next step touches that memory again page by
    page. Measured on 2 CPU cores (30 s of ``cpu``-budget mixture training at x2, 4-5 runs
    each): system time 3.8-7.7 s without this tuning, 0.2 s with it; steps 225-259 (mean
    238) without, 222-289 (mean 254) with it, a gain within this machine's run-to-run
    spread. The benchmark gains more, and its batched mixture more than the loop over
    experts, whose tensors are four times smaller: at batch 16, batched 34-40 patches/s and
    batched / loop 0.92-1.00 with the tuning (8 runs), 30-36 patches/s and 0.84-0.90
    without (4 runs).

    Here glibc's trim threshold is raised to 1 GiB and its mmap threshold fixed at 32 MiB
    (both must be set: setting one turns off glibc's own adaptation of the other), so that
    freed blocks under 32 MiB stay in the process for the next step. Peak memory grows a
    little (``python -m tutorial_lib bench`` on the CPU: 710-970 MiB peak RSS, 763 MiB
    without the tuning). The PyTorch performance tuning guide suggests preloading jemalloc
    or tcmalloc for the same reason; this needs no extra library.

    Applied once per process, on Linux with glibc only, when ``tutorial_lib`` is imported;
    set ``TUTORIAL_CPU_ALLOCATOR=default`` beforehand to leave ``malloc`` alone. Training on
    the CPU and the CPU benchmark call it again to record its state (``cpu_allocator``).

    Returns:
        dict with ``applied`` (bool), ``reason`` (why not, or ``'glibc mallopt'``) and the
        ``settings`` it made (empty when not applied).
    """
    global _allocator_state
    if _allocator_state is not None:
        return dict(_allocator_state)
    state: dict[str, object] = {"applied": False, "reason": "", "settings": {}}
    if os.environ.get("TUTORIAL_CPU_ALLOCATOR", "").strip().lower() == "default":
        state["reason"] = "TUTORIAL_CPU_ALLOCATOR=default"
    elif platform.system() != "Linux":
        state["reason"] = f"not Linux ({platform.system()})"
    else:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if not hasattr(libc, "gnu_get_libc_version"):  # glibc only (not musl, e.g. Alpine)
                raise AttributeError("not glibc")
            ok = all(libc.mallopt(param, value) == 1 for param, value in
                     ((_M_TRIM_THRESHOLD, _ALLOCATOR_SETTINGS["M_TRIM_THRESHOLD"]),
                      (_M_MMAP_THRESHOLD, _ALLOCATOR_SETTINGS["M_MMAP_THRESHOLD"])))
        except (OSError, AttributeError):
            state["reason"] = "no glibc"
        else:
            if ok:
                state.update(applied=True, reason="glibc mallopt", settings=dict(_ALLOCATOR_SETTINGS))
            else:
                state["reason"] = "mallopt refused the settings"
    _allocator_state = state
    return dict(state)


def check_numpy_bridge() -> None:
    """Raise a clear ``ImportError`` when PyTorch cannot exchange arrays with this NumPy.

    PyTorch before 2.3 was built for NumPy 1.x: beside NumPy 2 it imports with only a warning
    and then fails at the first ``torch.from_numpy`` or ``Tensor.numpy()`` ("Numpy is not
    available"), deep inside a notebook. Checked once when ``tutorial_lib`` is imported.
    """
    try:
        torch.from_numpy(np.zeros(1))
    except RuntimeError as error:
        raise ImportError(
            f"PyTorch {torch.__version__} cannot exchange arrays with NumPy {np.__version__} ({error}). "
            "PyTorch before 2.3 needs NumPy 1.x: run pip install 'numpy<2', or install a newer PyTorch"
        ) from error


def describe_run(budget: str | None = None, device: str | torch.device | None = None) -> str:
    """One line naming the budget and device, for a notebook's first output."""
    return f"budget={get_budget(budget)}  device={get_device(device)}  torch={torch.__version__}"
