"""The evaluation protocol, and the paper's Bicubic rows reproduced on Set5."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tutorial_lib import cli
from tutorial_lib.data import bundled_images, load_folder
from tutorial_lib.evaluation import evaluate

# Paper Tables 4-5, Bicubic rows on Set5 (PSNR dB; SSIM for x2 seen)
PAPER_BICUBIC_SET5 = {(2, "seen"): 28.94, (3, "seen"): 29.23, (4, "seen"): 27.53,
                      (2, "unseen"): 28.85, (3, "unseen"): 29.10, (4, "unseen"): 27.50}


@pytest.fixture(scope="module")
def set5(set5_dir):
    return load_folder(set5_dir)


@pytest.mark.parametrize("scale, group", sorted(PAPER_BICUBIC_SET5))
def test_bicubic_reproduces_the_paper_on_set5(set5, scale, group):
    result = evaluate(set5, scale, group, "bicubic")
    assert result.n_images == 5 and result.n_kernels == 29
    # the paper prints two decimals: within its rounding (±0.005) plus float slack
    assert abs(result.psnr - PAPER_BICUBIC_SET5[scale, group]) <= 0.02
    if (scale, group) == (2, "seen"):
        assert abs(result.ssim - 0.8599) <= 0.0005


def test_per_pair_values_average_to_the_summary():
    from tutorial_lib import degradations as D
    from tutorial_lib import kernels as K
    from tutorial_lib.metrics import psnr_y, ssim_y

    images = {k: v[:96, :120] for k, v in bundled_images("test").items()}
    result = evaluate(images, 2, "unseen_clean")
    assert result.per_pair_psnr.shape == (3, 26)
    assert result.psnr == pytest.approx(result.per_pair_psnr.mean())
    assert result.ssim == pytest.approx(result.per_pair_ssim.mean())
    # each entry is the protocol applied by hand to that image and kernel: degrade (scipy path), bicubic, shave u
    kernels = K.kernel_set("unseen_clean")
    for i, j in ((0, 0), (2, 25), (1, 13)):
        hr = D.modcrop(list(images.values())[i], 2)
        sr = D.bicubic_upsample(torch.from_numpy(D.degrade(hr, kernels[j], 2))[None, None], 2)[0, 0].double().numpy()
        assert result.per_pair_psnr[i, j] == pytest.approx(psnr_y(hr, sr, shave_border=2), abs=1e-3)
        assert result.per_pair_ssim[i, j] == pytest.approx(ssim_y(hr, sr, shave_border=2), abs=1e-5)


def test_the_border_shaved_is_the_scale():
    """At x3 a method whose outer 3 pixels are wrong scores as bicubic: shave = u, not a fixed 2."""
    from tutorial_lib.degradations import bicubic_upsample

    hr = bundled_images("test")["camera"][:90, :90]
    u = 3

    def spoiled_border(lr: torch.Tensor) -> torch.Tensor:
        sr = bicubic_upsample(lr, u).clone()
        sr[..., :u, :] = sr[..., -u:, :] = 0
        sr[..., :, :u] = sr[..., :, -u:] = 0
        return sr

    spoiled = evaluate({"camera": hr}, u, "seen", spoiled_border)
    plain = evaluate({"camera": hr}, u, "seen", "bicubic")
    np.testing.assert_allclose(spoiled.per_pair_psnr, plain.per_pair_psnr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(spoiled.per_pair_ssim, plain.per_pair_ssim, rtol=0, atol=1e-12)

    def spoiled_inside(lr: torch.Tensor) -> torch.Tensor:  # one pixel further in: counted
        sr = bicubic_upsample(lr, u).clone()
        sr[..., u, :] = 0
        return sr

    assert (evaluate({"camera": hr}, u, "seen", spoiled_inside).per_pair_psnr < plain.per_pair_psnr - 1).all()


def test_the_ssim_variant_is_passed_to_every_pair():
    from tutorial_lib import degradations as D
    from tutorial_lib import kernels as K
    from tutorial_lib.metrics import ssim_y

    hr = D.modcrop(bundled_images("test")["chelsea"][:64, :64], 2)
    result = evaluate({"chelsea": hr}, 2, "unseen", ssim_variant="matlab")
    skimage_result = evaluate({"chelsea": hr}, 2, "unseen")
    kernels = K.kernel_set("unseen")
    for j in (0, 17):
        sr = D.bicubic_upsample(torch.from_numpy(D.degrade(hr, kernels[j], 2))[None, None], 2)[0, 0].double().numpy()
        assert result.per_pair_ssim[0, j] == pytest.approx(ssim_y(hr, sr, 2, variant="matlab"), abs=1e-5)
    assert (np.abs(result.per_pair_ssim - skimage_result.per_pair_ssim) > 1e-5).all()  # another window, other values
    np.testing.assert_array_equal(result.per_pair_psnr, skimage_result.per_pair_psnr)


def test_per_image_psnr_is_each_images_own_average_over_kernels():
    images = {name: img[100:148, 100:148] for name, img in bundled_images("test").items()}
    together = evaluate(images, 2, "unseen")
    assert list(together.per_image_psnr) == list(images)
    for name, image in images.items():
        assert together.per_image_psnr[name] == pytest.approx(evaluate({name: image}, 2, "unseen").psnr, abs=1e-9)


def test_model_method_runs_a_model_left_in_training_mode_in_eval_mode():
    """Evaluation uses eval mode whatever mode the model was left in (no dropout, running BN statistics)."""
    from tutorial_lib.degradations import bicubic_upsample
    from tutorial_lib.evaluation import model_method
    from tutorial_lib.models import BlindSR, ENet, MixtureOfExperts

    torch.manual_seed(0)
    model = BlindSR(ENet(2), MixtureOfExperts(2, 2, channels=8, n_blocks=1)).eval()
    lr = torch.rand(2, 1, 24, 24)
    with torch.no_grad():
        expected = model(lr, bicubic_upsample(lr, 2))["fused"].double()
    model.train()
    method = model_method(model, 2)
    first, second = method(lr), method(lr)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-6)


def test_cli_evaluate_uses_the_ssim_variant_asked_for(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    image = bundled_images("test")["camera"][100:148, 100:148]
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / "camera.png")
    results = {}
    for variant in ("skimage", "matlab"):
        assert cli.main(["evaluate", "--images", str(folder), "--scale", "2", "--kernels", "unseen",
                         "--ssim", variant, "--json"]) == 0
        results[variant] = json.loads(capsys.readouterr().out)
    assert results["matlab"]["ssim_variant"] == "matlab" and results["skimage"]["ssim_variant"] == "skimage"
    expected = evaluate({"camera": image}, 2, "unseen", ssim_variant="matlab").ssim
    assert results["matlab"]["ssim"] == pytest.approx(expected, abs=1e-4)
    assert results["matlab"]["ssim"] != results["skimage"]["ssim"]


def test_a_perfect_method_scores_infinite_psnr_and_unit_ssim():
    hr = bundled_images("test")["camera"][:64, :64]

    def oracle(lr):  # returns the ground truth for every kernel
        return torch.from_numpy(hr)[None, None].expand(lr.shape[0], 1, 64, 64)

    result = evaluate({"camera": hr}, 2, "seen", oracle)
    assert np.isinf(result.psnr) and result.ssim == pytest.approx(1.0)


def test_method_with_the_wrong_output_size_is_rejected():
    hr = bundled_images("test")["camera"][:64, :64]
    with pytest.raises(ValueError, match="returned"):
        evaluate({"camera": hr}, 2, "seen", lambda lr: lr)


def test_tiny_images_are_rejected_clearly():
    with pytest.raises(ValueError, match="too small"):
        evaluate({"tiny": np.zeros((10, 10))}, 2, "seen")
    with pytest.raises(ValueError, match="at least one image"):
        evaluate({}, 2, "seen")


def test_images_a_learner_might_pass_by_mistake_are_named():
    y = bundled_images("test")["camera"][100:164, 100:164]
    cases = {"dtype uint8": (y * 255).round().astype(np.uint8),  # 8-bit levels: a silently wrong PSNR before
             "divide by 255": y * 255.0,
             "2-D Y image": np.dstack([y] * 3),  # colour
             "NaN": np.where(y > 0.5, np.nan, y)}
    for message, image in cases.items():
        with pytest.raises(ValueError, match=f"image 'c'.*{message}"):
            evaluate({"c": image}, 2, "seen")
    with pytest.raises(TypeError, match="dict"):
        evaluate([y], 2, "seen")


def test_model_method_names_the_wrong_model_or_setting():
    from tutorial_lib.evaluation import model_method
    from tutorial_lib.models import (
        EncoderWithClassifier,
        ENet,
        Expert,
        KernelClassifier,
    )

    single = Expert(2, channels=4, n_blocks=1)
    with pytest.raises(ValueError, match="E-Net"):
        model_method(EncoderWithClassifier(ENet(4), KernelClassifier(4, 29)), 2)
    with pytest.raises(ValueError, match="built for x2 but scale=3"):
        model_method(single, 3)
    with pytest.raises(ValueError, match="re-fuses the experts of a mixture"):
        model_method(single, 2, output="hard")
    with pytest.raises(ValueError, match="output must be one of"):
        model_method(single, 2, output="Fused")


def test_cli_evaluate_prints_one_json_object(set5_dir, capsys):
    assert cli.main(["evaluate", "--images", str(set5_dir), "--scale", "4", "--kernels",
                     "unseen", "--method", "bicubic", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 5 and out["n_kernels"] == 29
    assert abs(out["psnr"] - 27.50) <= 0.02 and {"psnr", "ssim"} <= set(out)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["evaluate", "--images", str(tmp_path / "missing"), "--scale", "2"]) == 2
    assert cli.main(["evaluate", "--images", str(tmp_path), "--scale", "2"]) == 2  # empty folder
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert cli.main(["evaluate", "--images", str(tmp_path), "--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and "Traceback" not in err
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--images", "bundled", "--scale", "5"])


def test_cli_checks_its_arguments_before_any_work(tmp_path, capsys, monkeypatch):
    """An --out that is a file, an unknown demo image and a checkpoint for another scale are
    refused with one line each, before training, the demo or a download starts."""
    from tutorial_lib import demo, training

    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert cli.main(["demo", "--image", "nosuch", "--no-models", "--out", str(tmp_path / "demo")]) == 2
    assert "chelsea" in capsys.readouterr().err  # the message lists the bundled photographs

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(training, "train_from_cli", no_work)
    monkeypatch.setattr(demo, "run_demo", no_work)
    monkeypatch.setattr(cli, "_load_images", no_work)
    assert cli.main(["train", "--scale", "2", "--budget", "smoke", "--out", str(a_file)]) == 2
    assert cli.main(["train", "--scale", "2", "--budget", "smoke", "--out", str(a_file / "runs")]) == 2
    assert cli.main(["demo", "--out", str(a_file)]) == 2
    single = Path(__file__).resolve().parents[1] / "data" / "checkpoints" / "x2_single.pt"
    assert cli.main(["evaluate", "--images", "Set5", "--scale", "3", "--model", str(single)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 4 and "Traceback" not in err
    assert err.count("is a file; name a folder") == 3 and "lies under" in err and "trained for ×2" in err
    assert a_file.read_text() == "keep me"


def test_cli_demo_writes_a_figure_and_a_table(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--no-models"]) == 0
    table = json.loads((tmp_path / "demo_x2.json").read_text())
    assert {r["kernel_group"] for r in table["rows"]} == {"seen", "unseen"}
    assert (tmp_path / "demo_x2.png").stat().st_size > 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_demo_reads_the_checkpoint_folder_named_by_the_environment(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "no_checkpoints"
    empty.mkdir()
    monkeypatch.setenv("TUTORIAL_CHECKPOINT_DIR", str(empty))
    assert cli.main(["demo", "--out", str(tmp_path / "out")]) == 0
    table = json.loads((tmp_path / "out" / "demo_x2.json").read_text())
    assert {r["method"] for r in table["rows"]} == {"bicubic"}  # no checkpoints there: bicubic only
    assert "bicubic only" in capsys.readouterr().err  # and the demo says so
    monkeypatch.setenv("TUTORIAL_CHECKPOINT_DIR", str(tmp_path / "missing"))
    assert cli.main(["demo", "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "TUTORIAL_CHECKPOINT_DIR" in err and "Traceback" not in err
    assert not (tmp_path / "out2").exists()
    monkeypatch.delenv("TUTORIAL_CHECKPOINT_DIR")  # the option, like the variable, must name a folder
    assert cli.main(["demo", "--checkpoints", str(tmp_path / "missing"), "--out", str(tmp_path / "out3")]) == 2
    err = capsys.readouterr().err
    assert "--checkpoints" in err and "is not a folder" in err and not (tmp_path / "out3").exists()


def test_cli_train_the_readme_job_on_a_tiny_folder(tmp_path, capsys):
    """``python -m tutorial_lib train``: one model per variant, its sidecar, and the evaluation
    it reports equal to evaluating the saved checkpoint again."""
    from PIL import Image

    from tutorial_lib.checkpoints import load_checkpoint
    from tutorial_lib.evaluation import model_method

    folder = tmp_path / "eval"
    folder.mkdir()
    Image.fromarray((bundled_images("test")["camera"][:48, :40] * 255).round().astype(np.uint8)).save(folder / "a.png")
    out = tmp_path / "run"
    assert cli.main(["train", "--scale", "2", "--budget", "smoke", "--data", "bundled", "--variant", "uniform",
                     "--out", str(out), "--evaluate-on", str(folder), "--device", "cpu", "--seed", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["variant"] == "uniform" and summary["data"] == "bundled-train" and summary["steps"] == 30
    model, sidecar = load_checkpoint(out / "x2_uniform.pt", expected_kind="mixture", scale=2)
    assert sidecar["prior"] == "uniform" and sidecar["seed"] == 3 and sidecar["budget"] == "smoke"
    assert sidecar["metrics"] == summary["metrics"]
    again = evaluate(load_folder(folder), 2, "unseen", model_method(model.eval(), 2))
    assert summary["metrics"][str(folder)]["unseen"]["psnr"] == pytest.approx(again.psnr, abs=1e-3)
    # --resume continues one model; with the default variant "all" it is refused in one line
    assert cli.main(["train", "--scale", "2", "--budget", "smoke", "--out", str(out),
                     "--resume", str(out / "x2_uniform.pt")]) == 2
    assert "--resume continues one model" in capsys.readouterr().err


def test_cli_train_an_encoder_evaluates_it_as_train_all_does(tmp_path, capsys, monkeypatch):
    """``--variant encoder`` measures whole-image accuracy on the budget's centre crops, as the
    sidecars of ``train_all`` do, so one encoder gets one number whichever way it was trained."""
    from PIL import Image

    from tutorial_lib import training

    folder = tmp_path / "eval"
    folder.mkdir()
    Image.fromarray((bundled_images("test")["camera"][:120, :130] * 255).round().astype(np.uint8)).save(folder / "a.png")
    crops = []
    measure = training.encoder_metrics

    def recording(*args, **kwargs):
        crops.append(kwargs.get("max_side"))
        return measure(*args, **kwargs)

    monkeypatch.setattr(training, "encoder_metrics", recording)
    assert cli.main(["train", "--scale", "2", "--budget", "smoke", "--data", "bundled", "--variant", "encoder",
                     "--out", str(tmp_path / "run"), "--evaluate-on", str(folder), "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert crops == [training.get_training_budget("smoke").eval_max_side] and crops[0] is not None
    assert set(summary["metrics"][str(folder)]) == {"top1", "top3", "top1_distinct"}


def test_cli_train_that_fails_before_saving_leaves_no_new_folder(tmp_path, capsys):
    """A run refused after its --out folder was made (a checkpoint of another kind to resume, an
    interrupt) removes the folders it created while they are empty; a folder that was there stays."""
    from tutorial_lib import training

    single = Path(__file__).resolve().parents[1] / "data" / "checkpoints" / "x2_single.pt"
    out = tmp_path / "runs" / "x2"
    assert cli.main(["train", "--scale", "2", "--budget", "smoke", "--data", "bundled", "--variant", "mixture",
                     "--resume", str(single), "--out", str(out)]) == 2
    assert "expected 'mixture'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert cli.main(["train", "--scale", "2", "--budget", "smoke", "--data", "bundled", "--experts", "0",
                     "--variant", "mixture", "--out", str(kept)]) == 2
    assert "M (number of latent states) must be >= 1" in capsys.readouterr().err
    assert kept.is_dir()  # it was there before the run
    with pytest.raises(KeyboardInterrupt), training._run_folder(tmp_path / "a" / "b") as folder:
        assert folder.is_dir()
        raise KeyboardInterrupt
    assert not (tmp_path / "a").exists()
    with pytest.raises(RuntimeError), training._run_folder(tmp_path / "c") as folder:
        (folder / "x2_single.pt").write_bytes(b"saved")
        raise RuntimeError("after a checkpoint was saved")
    assert (tmp_path / "c" / "x2_single.pt").is_file()


def test_cli_train_saves_the_mixtures_prior_and_resumes_with_it(tmp_path, capsys, monkeypatch):
    from tutorial_lib import training
    from tutorial_lib.checkpoints import load_checkpoint

    out = tmp_path / "run"
    common = ["train", "--scale", "2", "--budget", "smoke", "--data", "bundled", "--variant", "mixture",
              "--out", str(out), "--device", "cpu"]
    assert cli.main(common) == 0
    capsys.readouterr()
    _, sidecar = load_checkpoint(out / "x2_encoder.pt", expected_kind="encoder", scale=2)
    assert sidecar["steps"] == training.get_training_budget("smoke").pretrain_steps

    def no_pretraining(*args, **kwargs):
        raise AssertionError("E-Net was pre-trained again")

    monkeypatch.setattr(training, "pretrain_encoder", no_pretraining)  # the saved prior must be used
    assert cli.main([*common, "--resume", str(out / "x2_mixture.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2 * training.get_training_budget("smoke").joint_steps


@pytest.mark.parametrize("tf32", [True, False])
def test_model_method_leaves_the_tf32_setting_as_it_found_it(tf32):
    from tutorial_lib.evaluation import model_method
    from tutorial_lib.models import Expert

    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        method = model_method(Expert(2, channels=4, n_blocks=1), 2)
        out = method(torch.rand(2, 1, 12, 12))
        assert out.shape == (2, 1, 24, 24) and out.dtype == torch.float64
        assert torch.backends.cudnn.allow_tf32 is tf32
    finally:
        torch.backends.cudnn.allow_tf32 = before


def test_hard_and_average_outputs_refuse_the_experts_as_named():
    from tutorial_lib.degradations import bicubic_upsample
    from tutorial_lib.evaluation import model_method
    from tutorial_lib.models import BlindSR, ENet, MixtureOfExperts
    from tutorial_lib.training import evaluate_model

    torch.manual_seed(0)
    model = BlindSR(ENet(3), MixtureOfExperts(3, 2, channels=4, n_blocks=1)).eval()
    with torch.no_grad():  # experts that differ clearly, and a posterior far from uniform
        for conv in model.mixture.reconstruct, model.mixture.head:
            conv.weight.mul_(20.0)
        model.enet.fc.weight.mul_(50.0)
    lr = torch.rand(4, 1, 16, 16)
    base = bicubic_upsample(lr, 2)
    with torch.no_grad():
        out = model(lr, base)
    q, experts = out["q"], out["experts"]
    assert (q.max(dim=1).values < 0.999).any() and (q.max(dim=1).values > 0.5).any()
    hard = experts[torch.arange(4), q.argmax(dim=1)]  # the expert of largest q
    average = experts.mean(dim=1)
    results = {name: model_method(model, 2, output=name)(lr) for name in ("fused", "hard", "average")}
    torch.testing.assert_close(results["fused"].float(), out["fused"], rtol=0, atol=1e-6)
    torch.testing.assert_close(results["hard"].float(), hard, rtol=0, atol=1e-6)
    torch.testing.assert_close(results["average"].float(), average, rtol=0, atol=1e-6)
    assert (results["hard"] - results["fused"]).abs().max() > 1e-3
    assert (results["average"] - results["fused"]).abs().max() > 1e-3
    # evaluate_model(output=...) scores those same images
    images = {"a": bundled_images("test")["camera"][:40, :44]}
    for name in ("hard", "average"):
        scored = evaluate_model(model, images, 2, kernels="seen", output=name)["seen"]["psnr"]
        expected = evaluate(images, 2, "seen", model_method(model, 2, output=name)).psnr
        assert scored == pytest.approx(expected, abs=6e-5)  # evaluate_model rounds to 4 digits


def test_cli_evaluate_a_mixture_with_q_from_tiles(tmp_path, capsys):
    from PIL import Image

    from tutorial_lib.checkpoints import save_checkpoint
    from tutorial_lib.models import BlindSR, ENet, Expert, MixtureOfExperts

    torch.manual_seed(0)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(images / "noise.png")
    mixture = BlindSR(ENet(2), MixtureOfExperts(2, 2, channels=4, n_blocks=1))
    with torch.no_grad():  # experts that differ and a posterior that moves from tile to tile
        mixture.mixture.reconstruct.weight.mul_(20.0)
        mixture.enet.fc.weight.mul_(50.0)
    save_checkpoint(mixture, tmp_path / "mix.pt")
    save_checkpoint(Expert(2, channels=4, n_blocks=1), tmp_path / "single.pt")
    common = ["evaluate", "--images", str(images), "--scale", "2", "--kernels", "unseen_clean", "--json"]
    assert cli.main([*common, "--model", str(tmp_path / "mix.pt"), "--posterior-tile", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"].endswith("q from 8x8 tiles") and out["n_kernels"] == 26
    from tutorial_lib.checkpoints import load_checkpoint
    from tutorial_lib.evaluation import model_method
    model = load_checkpoint(tmp_path / "mix.pt")[0]
    whole = evaluate(load_folder(images), 2, "unseen_clean", model_method(model, 2)).psnr
    model.posterior_tile = 8  # the tiles' q, evaluated here directly: the same numbers (the JSON rounds to 4 digits)
    tiles = evaluate(load_folder(images), 2, "unseen_clean", model_method(model, 2)).psnr
    assert out["psnr"] == pytest.approx(tiles, abs=6e-5) and abs(tiles - whole) > 1e-3
    assert cli.main([*common, "--model", str(tmp_path / "single.pt"), "--posterior-tile", "8"]) == 2
    assert cli.main([*common, "--posterior-tile", "8"]) == 2  # bicubic
    assert cli.main([*common, "--model", str(tmp_path / "mix.pt"), "--posterior-tile", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and "Traceback" not in err
    assert "--posterior-tile must be None (whole image) or an integer tile side >= 8" in err

    # --method: bicubic alone, the fusions with a model (a single network: fused only)
    for args, message in ((["--model", str(tmp_path / "mix.pt"), "--method", "bicubic"], "--method bicubic uses no model"),
                          (["--model", str(tmp_path / "single.pt"), "--method", "hard"],
                           "--method hard combines the experts of a mixture"),
                          (["--method", "average"], "--method average needs --model"),
                          (["--device", "banana"], "device must be 'cpu' or 'cuda'")):  # checked without a model too
        assert cli.main([*common, *args]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and message in err, err
    assert cli.main([*common, "--model", str(tmp_path / "mix.pt"), "--method", "average"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "mixture:mix.pt:average"
    with pytest.raises(SystemExit):  # not a method at all: argparse lists the choices
        cli.main([*common, "--method", "foo"])
    assert "invalid choice: 'foo'" in capsys.readouterr().err


def test_cli_evaluate_runs_the_model_on_the_device_asked(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from tutorial_lib.checkpoints import save_checkpoint
    from tutorial_lib.models import Expert

    torch.manual_seed(0)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / "a.png")
    save_checkpoint(Expert(2, channels=4, n_blocks=1), tmp_path / "single.pt")
    common = ["evaluate", "--images", str(images), "--scale", "2", "--kernels", "seen", "--json",
              "--model", str(tmp_path / "single.pt")]
    monkeypatch.setenv("TUTORIAL_DEVICE", "cpu")
    assert cli.main(common) == 0
    default = json.loads(capsys.readouterr().out)
    assert cli.main([*common, "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["psnr"] == default["psnr"]
    if not torch.cuda.is_available():
        assert cli.main([*common, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "CUDA is not available" in err
    assert cli.main([*common, "--device", "tpu"]) == 2
    assert "device must be" in capsys.readouterr().err


def _without_write_permission(command: list[str]) -> list[str] | None:
    """``command`` run so that folder permissions apply: as is for a normal user; for root
    (CI containers) with the capabilities that override them dropped (``setpriv``)."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    drop = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}", *command]


def test_cli_train_refuses_a_folder_it_cannot_write_before_training(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for out in (locked, locked / "runs" / "a"):
            command = _without_write_permission([sys.executable, "-m", "tutorial_lib", "train", "--scale", "2",
                                                 "--budget", "smoke", "--variant", "single", "--out", str(out)])
            if command is None:
                pytest.skip("running as root without setpriv: folder permissions cannot be tested")
            done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                                  env={**os.environ, "TUTORIAL_BUDGET": "smoke"})
            assert done.returncode == 2, done.stderr
            assert "cannot be written to" in done.stderr and "Traceback" not in done.stderr
            assert "train single network" not in done.stderr  # refused before any step
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_cli_train_refuses_a_too_small_evaluation_set_before_training(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from tutorial_lib import training

    folder = tmp_path / "tiny"
    folder.mkdir()
    Image.fromarray(np.full((8, 40), 128, np.uint8)).save(folder / "a.png")
    monkeypatch.setattr(training, "train_single", lambda *a, **k: pytest.fail("trained before checking"))
    assert cli.main(["train", "--scale", "2", "--budget", "smoke", "--variant", "single", "--evaluate-on",
                     str(folder), "--out", str(tmp_path / "run")]) == 2
    assert "image 'a' of size 8x40 is too small to evaluate at scale 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_ctrl_c_ends_the_cli_with_one_line_and_status_130(tmp_path, capsys, monkeypatch):
    from tutorial_lib import training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_from_cli", interrupted)
    assert cli.main(["train", "--scale", "2", "--budget", "smoke", "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert "interrupted: train stopped" in err and "Traceback" not in err
