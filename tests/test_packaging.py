"""The install descriptions agree with each other and with what CI runs."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda package name -> PyPI name


def _pyproject_requirements() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    out = {}
    for req in reqs:
        name, spec = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", req).groups()
        out[name.lower()] = spec.replace(" ", "")
    return out


def _conda_requirements() -> dict[str, str]:
    out = {}
    in_deps = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        match = re.match(r"^  - ([A-Za-z0-9_.\-]+)\s*(.*)$", line)
        if in_deps and match:
            name, spec = match.groups()
            if name in ("python", "pip"):
                continue
            out[CONDA_NAMES.get(name, name).lower()] = spec.replace(" ", "")
    return out


def test_environment_yml_lists_the_same_packages_and_bounds_as_pyproject():
    assert _conda_requirements() == _pyproject_requirements()


def test_the_lowest_versions_file_pins_every_lower_bound():
    pins = {}
    for line in (ROOT / ".ci" / "lowest-versions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9.]+)\.\*", line.strip()).groups()
            pins[name.lower()] = version
    bounds = {name: re.fullmatch(r">=([0-9.]+)", spec).group(1) for name, spec in _pyproject_requirements().items()}
    assert pins == bounds


def test_ci_runs_the_test_command_shown_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines()
                if "pytest" in line and not line.strip().startswith("#")]
    assert commands, ".ci/run runs no pytest command"
    assert all(command in readme for command in commands)


def test_no_benchmark_images_are_tracked():
    """Benchmark images are downloaded by users (tutorial_lib.data), never committed."""
    try:
        listing = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    images = [p for p in listing if p.lower().endswith((".bmp", ".jpg", ".jpeg", ".png"))]
    assert images == [], f"image files tracked in the repository: {images[:3]}"
