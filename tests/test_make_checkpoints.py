"""The script that makes the shipped checkpoints, run end to end with the smoke budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tutorial_lib.checkpoints import load_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_checkpoints.py"


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True,
                          timeout=600, env=env)


def _script():
    """The script as a module, in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_checkpoints", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_main_equal_steps_and_evaluate_stages(tmp_path, capsys):
    out = tmp_path / "ck"
    common = ["--budget", "smoke", "--scales", "2", "--eval-bundled", "--set5", "none",  # bundled test images only
              "--out", str(out), "--threads", "2"]
    run = _run("--stages", "main", "equalsteps", "--note", "a test run", *common)
    assert run.returncode == 0, run.stderr
    for kind in ("encoder", "mixture", "single"):
        _, sidecar = load_checkpoint(out / f"x2_{kind}.pt", expected_kind=kind, scale=2)
        assert sidecar["note"] == "a test run" and sidecar["training_data"]["source"] == "bundled-train"
        assert sidecar["device_name"] and sidecar["cpu_allocator"]
        assert isinstance(sidecar["fused_optimizer"], bool)
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
    # (--data names other images: evaluating does not relabel what the models were trained on)
    run = _run("--stages", "evaluate", "--note", "re-evaluated", "--data", "bundled-test", *looking, env=env)
    assert run.returncode == 0, run.stderr
    assert "Set5: no local copy" in run.stdout
    again = json.loads((out / "x2_results.json").read_text(encoding="utf-8"))
    assert again["metrics"] == trained and again["note"] == "re-evaluated"
    assert again["steps"] == results["steps"] and again["data"] == "bundled-train"
    for kind in ("encoder", "mixture", "single"):
        assert load_checkpoint(out / f"x2_{kind}.pt")[1]["training_data"]["source"] == "bundled-train"

    # without an evaluation set, evaluating is refused before it could empty the stored metrics
    before = (out / "x2_results.json").read_text(encoding="utf-8")
    assert _script().run(["--stages", "evaluate", *[a for a in common if a != "--eval-bundled"]]) == 2
    err = capsys.readouterr().err
    assert "--eval-bundled" in err and "Traceback" not in err
    assert (out / "x2_results.json").read_text(encoding="utf-8") == before

    # the equal-steps single network (trained in the first run, after the main stage)
    equal = json.loads((out / "x2_single_equal_steps.json").read_text(encoding="utf-8"))
    assert equal["steps"] == equal["mixture_steps"] == 30
    assert set(equal["metrics"]["bundled-test"]) == {"seen", "unseen"}



def _main_in_process(monkeypatch, *args: str) -> None:
    """The script's ``main`` in this process (saves a Python start per call)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_checkpoints", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    module.main()


def test_packed_data_and_models_trained_in_separate_calls(tmp_path, monkeypatch):
    from tutorial_lib.data import load_images

    packed = tmp_path / "train.npz"
    _main_in_process(monkeypatch, "--data", "bundled-train", "--pack-data", str(packed))
    originals = load_images("bundled-train")
    with np.load(packed) as arrays:
        assert sorted(arrays.files) == sorted(originals)
        for name, y in originals.items():
            assert arrays[name].dtype == np.uint16
            assert np.abs(arrays[name] / (255 * 256) - y).max() <= 0.5 / (255 * 256) + 1e-12

    out = tmp_path / "ck"
    common = ["--budget", "smoke", "--scales", "2", "--eval-bundled", "--set5", "none", "--out", str(out),
              "--threads", "2", "--data", str(packed)]
    _main_in_process(monkeypatch, "--stages", "main", "--models", "encoder", "mixture", "--note", "call 1", *common)
    assert not (out / "x2_single.pt").exists() and not (out / "x2_results.json").exists()
    with pytest.raises(SystemExit, match="single"):  # no results without the single network
        _main_in_process(monkeypatch, "--stages", "results", *common)
    _main_in_process(monkeypatch, "--stages", "main", "results", "--models", "single", "--note", "call 2", *common)
    sidecars = {kind: load_checkpoint(out / f"x2_{kind}.pt", expected_kind=kind, scale=2)[1]
                for kind in ("encoder", "mixture", "single")}
    assert sidecars["encoder"]["note"] == sidecars["mixture"]["note"] == "call 1"
    assert sidecars["single"]["note"] == "call 2"
    assert all(s["training_data"]["source"] == "train" for s in sidecars.values())
    results = json.loads((out / "x2_results.json").read_text(encoding="utf-8"))
    assert results["steps"] == {"pretrain": 30, "mixture": 30, "single": 30}
    for kind in ("encoder", "mixture", "single"):  # copied from the sidecars, not re-measured
        assert results["metrics"][kind] == sidecars[kind]["metrics"]
    assert set(results["metrics"]["bicubic"]["bundled-test"]) == {"seen", "unseen"}
    assert results["note"] == "call 2"

    _main_in_process(monkeypatch, "--stages", "fusions", "--posterior-tile", "12", *common)
    fusions = json.loads((out / "x2_mixture_fusions.json").read_text(encoding="utf-8"))
    assert fusions["posterior_tile"] == 12 and fusions["sha256"] == sidecars["mixture"]["sha256"]
    unseen = fusions["metrics"]["bundled-test"]["unseen"]
    assert set(unseen) == {"whole", "tiles", "average", "oracle", "experts"}
    # q from the whole image is the paper's fusion, which the sidecar measured
    assert unseen["whole"]["psnr"] == pytest.approx(sidecars["mixture"]["metrics"]["bundled-test"]["unseen"]["psnr"],
                                                    abs=2e-3)

    # the warm start: the single network for half the joint budget, then a mixture of copies of it
    _main_in_process(monkeypatch, "--stages", "warmstart", "--posterior-tile", "12", *common)
    warm = json.loads((out / "x2_warm_start.json").read_text(encoding="utf-8"))
    assert warm["fraction"] == 0.5 and warm["encoder"] == "x2_encoder.pt"
    assert warm["steps"] == {"single_start": 30, "warm_mixture": 30}  # the smoke budget counts steps
    assert set(warm["metrics"]["warm_mixture"]["bundled-test"]["unseen"]) == {"whole", "tiles", "average", "oracle",
                                                                              "experts"}
    assert set(warm["metrics"]["single_start"]["bundled-test"]) == {"seen", "unseen"}
    assert warm["main_stage"]["single"]["metrics"] == sidecars["single"]["metrics"] and warm["seed"] == 0
    _main_in_process(monkeypatch, "--stages", "warmstart", "--seed", "1", "--set5", "none", "--out", str(out),
                     "--budget", "smoke", "--scales", "2", "--threads", "2", "--data", str(packed))  # no eval sets
    replicate = json.loads((out / "x2_warm_start_seed1.json").read_text(encoding="utf-8"))
    assert replicate["seed"] == 1 and replicate["metrics"]["warm_mixture"] == {}
    assert json.loads((out / "x2_warm_start.json").read_text(encoding="utf-8")) == warm  # the first run stays
    # a replicate of the main stage's single network: its own files, the first run's untouched
    _main_in_process(monkeypatch, "--stages", "main", "--models", "single", "--seed", "1", "--set5", "none",
                     "--out", str(out), "--budget", "smoke", "--scales", "2", "--threads", "2", "--data", str(packed))
    _, single_seed1 = load_checkpoint(out / "x2_single_seed1.pt", expected_kind="single", scale=2)
    assert single_seed1["seed"] == 1 and single_seed1["steps"] == 30
    assert load_checkpoint(out / "x2_single.pt", expected_kind="single", scale=2)[1] == sidecars["single"]
    with pytest.raises(SystemExit, match="warm-fraction"):
        _main_in_process(monkeypatch, "--stages", "warmstart", "--warm-fraction", "1", *common)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit, match="warm-fraction"):  # checked before any stage runs
        _main_in_process(monkeypatch, "--stages", "evaluate", "warmstart", "--warm-fraction", "2", *common)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_packed_data_is_checked(tmp_path, monkeypatch):
    bad = tmp_path / "bad.npz"
    np.savez(bad, a=np.full((8, 8), 2.0))
    with pytest.raises(SystemExit, match="outside"):
        _main_in_process(monkeypatch, "--data", str(bad), "--pack-data", str(tmp_path / "x.npz"))
    with pytest.raises(SystemExit, match="no such file"):
        _main_in_process(monkeypatch, "--data", str(tmp_path / "missing.npz"), "--stages", "results")
    assert not (tmp_path / "x.npz").exists()


def test_bundled_means_the_training_photographs(monkeypatch):
    import importlib.util

    from tutorial_lib.data import load_images

    spec = importlib.util.spec_from_file_location("make_checkpoints", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    images, label = script.load_training_images("bundled")
    assert label == "bundled-train" and sorted(images) == sorted(load_images("bundled-train"))
    assert not set(images) & set(load_images("bundled-test"))  # never the test photographs


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 half a zip", b"not an archive at all"])
def test_an_unreadable_npz_is_reported_in_one_line(tmp_path, monkeypatch, content):
    bad = tmp_path / "train.npz"
    bad.write_bytes(content)
    with pytest.raises(SystemExit, match="is not a readable .npz of Y images"):
        _main_in_process(monkeypatch, "--data", str(bad), "--stages", "results", "--out", str(tmp_path / "ck"))
    np.save(tmp_path / "one.npy", np.zeros((8, 8)))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    with pytest.raises(SystemExit, match="holds one array, not named images"):
        _main_in_process(monkeypatch, "--data", str(tmp_path / "one.npz"), "--stages", "results")
    assert not (tmp_path / "ck").exists()


def test_bad_input_is_refused_in_one_line(tmp_path, capsys):
    """A missing data folder, a scale the paper does not use and an --out that is a file end with
    exit status 2 and one error line, before anything is trained or written."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_checkpoints", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    for args, message in ((["--data", str(tmp_path / "missing")], "neither 'bundled'"),
                          (["--scales", "5"], "invalid choice: 5"),
                          (["--out", str(a_file)], "is a file; name a folder"),
                          (["--joint-seconds", "0"], "--joint-seconds must be a positive number of seconds"),
                          (["--pretrain-seconds", "nan"], "--pretrain-seconds must be a positive number"),
                          (["--threads", "-1"], "--threads must be a positive integer"),
                          (["--stages", "msweep"], "evaluate on Set5 or the bundled test images")):
        out = [] if "--out" in args else ["--out", str(tmp_path / "ck")]
        try:
            status = script.run(["--budget", "smoke", "--set5", "none", *out, *args])
        except SystemExit as exit_:  # argparse's own errors
            status = exit_.code
        err = capsys.readouterr().err
        assert status == 2 and message in err and "Traceback" not in err
    assert a_file.read_text() == "keep me" and not (tmp_path / "ck").exists()
    # a stage that trains needs --out named: the default folder holds the shipped checkpoints
    shipped = {p.name: p.stat().st_mtime_ns for p in script.SHIPPED.iterdir()}
    assert script.run(["--budget", "smoke", "--set5", "none", "--scales", "2"]) == 2
    assert "trains models: name the folder with --out" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in script.SHIPPED.iterdir()} == shipped


def test_ablation_sweep_and_matrix_stages(tmp_path, monkeypatch):
    from PIL import Image

    from tutorial_lib.data import bundled_images

    set5 = tmp_path / "tiny_set5"  # two 64 x 64 crops stand in for Set5: the stages' bookkeeping, quickly
    set5.mkdir()
    for name, y in list(bundled_images("test").items())[:2]:
        Image.fromarray(np.round(y[100:164, 100:164] * 255).astype(np.uint8)).save(set5 / f"{name}.png")
    out = tmp_path / "ck"
    common = ["--budget", "smoke", "--scales", "2", "--set5", str(set5), "--out", str(out), "--threads", "2"]
    _main_in_process(monkeypatch, "--stages", "main", "ablations", "msweep", "matrix", "--models", "encoder",
                     "mixture", "--sweep-eval-side", "32", *common)

    _, mixture = load_checkpoint(out / "x2_mixture.pt", expected_kind="mixture", scale=2)
    for name in ("average", "uniform", "hard"):  # Table 3's rows, each with the mixture's budget
        _, sidecar = load_checkpoint(out / f"x2_{name}.pt", expected_kind="mixture", scale=2)
        assert sidecar["ablation"] == name and sidecar["budget_settings"] == mixture["budget_settings"]
        assert set(sidecar["metrics"]["Set5"]) == {"seen", "unseen"}
    # hard selection of the trained mixture, without training: names the weights and their budget
    hard = json.loads((out / "x2_hard_selection_eval.json").read_text(encoding="utf-8"))
    assert hard["model_sha256"] == mixture["sha256"] and hard["budget"] == mixture["budget_settings"]
    assert hard["mode"] == "hard" and set(hard["metrics"]["Set5"]) == {"seen", "unseen"}

    sweep = json.loads((out / "x2_msweep.json").read_text(encoding="utf-8"))  # Fig. 3
    assert [row["M"] for row in sweep["rows"]] == [1, 2, 4, 6, 8] and sweep["eval_crop_side"] == 32
    assert all(row["steps"] == 30 and set(row["metrics"]["Set5"]) == {"seen", "unseen"} for row in sweep["rows"])

    matrix = json.loads((out / "x2_matrix.json").read_text(encoding="utf-8"))  # Fig. 1
    n = len(matrix["kernels"])
    assert n >= 2 and [row["trained_on"] for row in matrix["rows"]] == matrix["kernels"]
    assert all(len(row["psnr"]) == n and all(np.isfinite(row["psnr"])) for row in matrix["rows"])
    # the trained mixture sits beside the specialists (no single network was trained in this folder)
    assert set(matrix["reference"]) == {"x2_mixture", "bicubic"} and matrix["eval_images"] == "Set5"
