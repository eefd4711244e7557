"""The script that makes the shipped checkpoints, run end to end with the smoke budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tutorial_lib.checkpoints import load_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_checkpoints.py"


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env=env)


def test_main_equal_steps_and_evaluate_stages(tmp_path):
    out = tmp_path / "ck"
    common = ["--budget", "smoke", "--scales", "2", "--eval-bundled", "--set5", "none",  # bundled test images only
              "--out", str(out), "--threads", "2"]
    run = _run("--stages", "main", "equalsteps", "--note", "a test run", *common)
    assert run.returncode == 0, run.stderr
    for kind in ("encoder", "mixture", "single"):
        model, sidecar = load_checkpoint(out / f"x2_{kind}.pt", expected_kind=kind, scale=2)
        assert sidecar["note"] == "a test run" and sidecar["training_data"]["source"] == "bundled-train"
        assert sidecar["device_name"] and sidecar["cpu_allocator"]
    results = json.loads((out / "x2_results.json").read_text(encoding="utf-8"))
    assert results["steps"] == {"pretrain": 30, "mixture": 30, "single": 30}
    trained = results["metrics"]
    assert set(trained) == {"encoder", "mixture", "single", "bicubic"}
    assert set(trained["mixture"]["bundled-test"]) == {"seen", "unseen"}

    # re-evaluating the same checkpoints gives the same numbers (inference is deterministic); this run
    # looks for Set5 on disk, finds none and says so
    env = {k: v for k, v in os.environ.items() if k != "TUTORIAL_SET5_DIR"}
    env["TUTORIAL_DATA_DIR"] = str(tmp_path / "no_benchmarks")
    looking = [a for a in common if a not in ("--set5", "none")]
    run = _run("--stages", "evaluate", "--note", "re-evaluated", *looking, env=env)
    assert run.returncode == 0, run.stderr
    assert "Set5: no local copy" in run.stdout
    again = json.loads((out / "x2_results.json").read_text(encoding="utf-8"))
    assert again["metrics"] == trained and again["note"] == "re-evaluated"
    assert again["steps"] == results["steps"]

    # the equal-steps single network (trained in the first run, after the main stage)
    equal = json.loads((out / "x2_single_equal_steps.json").read_text(encoding="utf-8"))
    assert equal["steps"] == equal["mixture_steps"] == 30
    assert set(equal["metrics"]["bundled-test"]) == {"seen", "unseen"}
