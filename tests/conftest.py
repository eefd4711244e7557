"""Shared test fixtures. Files under ../shared (beside the checkout) are used when present
and the tests that need them skip cleanly otherwise: the project never ships them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("CI", "true")  # tests always run the deterministic smoke budget
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


@pytest.fixture(scope="session")
def unseen_reference_file() -> Path:
    path = SHARED / "reference" / "blindsr_kernel_test.npy"
    if not path.is_file():
        pytest.skip("the authors' unseen-kernel file is not available beside the checkout")
    return path


@pytest.fixture(scope="session")
def set5_dir() -> Path:
    path = SHARED / "datasets" / "Set5"
    if not path.is_dir():
        pytest.skip("Set5 is not available beside the checkout")
    return path
