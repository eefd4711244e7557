"""Tests of tutorial_lib.checkpoints: round trips, sidecars, hashes, atomic writes, clear
errors for bad files, and resuming training."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from tutorial_lib import checkpoints, training
from tutorial_lib.checkpoints import (
    CheckpointError,
    file_sha256,
    load_checkpoint,
    load_optimizer_state,
    optimizer_state_path,
    save_checkpoint,
    save_optimizer_state,
    sidecar_path,
)
from tutorial_lib.data import bundled_images
from tutorial_lib.models import (
    BlindSR,
    EncoderWithClassifier,
    ENet,
    Expert,
    KernelClassifier,
    MixtureOfExperts,
)

torch.set_num_threads(2)

SMALL = {"channels": 8, "n_blocks": 2}
MIB = 1 << 20


def _mixture(scale: int = 2, enet: bool = True, mode: str = "fused") -> BlindSR:
    torch.manual_seed(0)
    return BlindSR(ENet(4) if enet else None, MixtureOfExperts(4, scale, **SMALL), mode=mode)


def _models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "mixture": _mixture(),
        "single": Expert(3, **SMALL),
        "encoder": EncoderWithClassifier(ENet(4), KernelClassifier(4, 29)),
    }


def _edit_sidecar(path, edit) -> None:
    """Apply ``edit`` (changes the dict in place) to the sidecar of ``path``, as a user's editor would."""
    side = json.loads(sidecar_path(path).read_text())
    edit(side)
    sidecar_path(path).write_text(json.dumps(side))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind", ["mixture", "single", "encoder"])
def test_round_trip(tmp_path, kind):
    model = _models()[kind]
    path = tmp_path / f"{kind}.pt"
    meta = {"budget": "smoke", "device": "cpu", "steps": 7, "wall_time_s": 1.5,
            "kernel_split": {"train": "seen"}, "training_data": {"images": ["astronaut"]},
            "metrics": {"bundled": {"unseen": {"psnr": np.float64(30.1)}}}}
    config = {"scale": 2} if kind == "encoder" else None
    sidecar = save_checkpoint(model, path, kind=kind, config=config, metadata=meta)
    assert path.is_file() and sidecar_path(path).is_file()
    on_disk = json.loads(sidecar_path(path).read_text())
    assert on_disk == sidecar
    for key in ("kind", "architecture", "scale", "sha256", "bytes", "versions", "budget", "device", "steps",
                "wall_time_s", "kernel_split", "training_data", "metrics"):
        assert key in on_disk, key
    assert on_disk["sha256"] == file_sha256(path) and on_disk["bytes"] == path.stat().st_size
    assert set(on_disk["versions"]) >= {"torch", "numpy", "tutorial_lib"}
    assert on_disk["metrics"]["bundled"]["unseen"]["psnr"] == 30.1  # NumPy value made JSON

    loaded, side = load_checkpoint(path, expected_kind=kind)
    assert type(loaded) is type(model) and not loaded.training
    assert _same_weights(loaded, model)
    assert side["steps"] == 7


@pytest.mark.parametrize("kind", ["mixture", "single"])
def test_round_trip_keeps_a_non_default_architecture(tmp_path, kind):
    """The settings that change what the network computes without changing its weights' shapes."""
    torch.manual_seed(0)
    settings = {"deconv_relu": True, "input_offset": 0.25}
    if kind == "mixture":
        model = BlindSR(ENet(4, input_offset=0.0), MixtureOfExperts(4, 2, **SMALL, **settings))
    else:
        model = Expert(2, **SMALL, **settings)
    model.eval()
    save_checkpoint(model, tmp_path / "m.pt", kind=kind)
    loaded, _ = load_checkpoint(tmp_path / "m.pt", expected_kind=kind, scale=2)
    nets = (model.mixture, loaded.mixture) if kind == "mixture" else (model, loaded)
    for net in nets:
        assert net.deconv_relu is True and net.input_offset == 0.25
    if kind == "mixture":
        assert loaded.enet.input_offset == 0.0
    lr = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if kind == "mixture":
            torch.testing.assert_close(loaded(lr)["fused"], model(lr)["fused"], rtol=0, atol=0)
        else:
            torch.testing.assert_close(loaded(lr), model(lr), rtol=0, atol=0)


def test_round_trip_of_ablation_mixtures(tmp_path):
    average = _mixture(enet=False, mode="average")
    save_checkpoint(average, tmp_path / "avg.pt")
    loaded, _ = load_checkpoint(tmp_path / "avg.pt", expected_kind="mixture", scale=2)
    assert loaded.enet is None and loaded.mode == "average" and _same_weights(loaded, average)
    hard = _mixture(mode="hard")
    save_checkpoint(hard, tmp_path / "hard.pt")
    assert load_checkpoint(tmp_path / "hard.pt")[0].mode == "hard"


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    model = _models()["single"]
    path = tmp_path / "single.pt"
    save_checkpoint(model, path)
    save_checkpoint(model, path)  # overwrite in place
    save_optimizer_state(torch.optim.Adam(model.parameters()), path, step=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["single.json", "single.opt.pt", "single.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0600 of a temporary file


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model = _models()["single"]
    path = tmp_path / "single.pt"
    save_checkpoint(model, path)
    before = path.read_bytes(), sidecar_path(path).read_text()

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a fi")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(Expert(3, **SMALL), path)
    assert (path.read_bytes(), sidecar_path(path).read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["single.json", "single.pt"]


@pytest.mark.parametrize("bad_metadata", [{"created_on": __import__("datetime").date(2026, 1, 1)},
                                          {"notes": {1, 2}}])
def test_metadata_json_cannot_hold_is_refused_and_the_old_checkpoint_stays(tmp_path, bad_metadata):
    model = _models()["single"]
    path = tmp_path / "single.pt"
    save_checkpoint(model, path, metadata={"steps": 1})
    before = path.read_bytes(), sidecar_path(path).read_text()
    with pytest.raises(CheckpointError, match="metadata and config must hold JSON values"):
        save_checkpoint(Expert(3, **SMALL), path, metadata={"steps": 2, **bad_metadata})
    assert (path.read_bytes(), sidecar_path(path).read_text()) == before  # weights and sidecar both old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["single.json", "single.pt"]
    assert _same_weights(load_checkpoint(path)[0], model)


def test_a_failed_move_leaves_the_old_checkpoint_and_no_temporary_files(tmp_path, monkeypatch):
    model = _models()["single"]
    path = tmp_path / "single.pt"
    save_checkpoint(model, path, metadata={"steps": 1})
    before = path.read_bytes(), sidecar_path(path).read_text()

    def full_disk(tmp, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "_publish", full_disk)  # both temporary files are written by then
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(Expert(3, **SMALL), path, metadata={"steps": 2})
    with pytest.raises(OSError, match="No space"):
        checkpoints.rewrite_sidecar(path, lambda side: side.update(note="edited"))
    assert (path.read_bytes(), sidecar_path(path).read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["single.json", "single.pt"]


def test_non_finite_numbers_are_stored_as_null(tmp_path):
    path = tmp_path / "single.pt"
    metrics = {"psnr": np.float64(np.inf), "per_image": np.array([np.nan, 30.5]), "t": torch.tensor([np.inf])}
    sidecar = save_checkpoint(_models()["single"], path, metadata={"metrics": metrics})
    stored = json.loads(sidecar_path(path).read_text(), parse_constant=lambda name: pytest.fail(name))
    assert stored["metrics"] == sidecar["metrics"] == {"psnr": None, "per_image": [None, 30.5], "t": [None]}


@pytest.mark.parametrize("edit, message", [
    ({"bytes": "13493"}, "'bytes' must be an integer"),
    ({"architecture": None}, "'architecture' must be an object"),
    ({"kind": "gan"}, "'kind' must be one of"),
    ({"sha256": 123}, "'sha256' must be a string"),
    ({"scale": 2.0}, "'scale' must be an integer"),
    ({"scale": 3}, "'scale' is 3 but 'architecture.scale' is 2"),
    ({"architecture": {"n_blocks": 1_000_000}}, r"'architecture.n_blocks' must be an integer in \[1, 256\]"),
    ({"architecture": {"channels": 0}}, r"'architecture.channels' must be an integer in \[1, 1024\]"),
    ({"architecture": {"hidden": 100_000_000}}, r"'architecture.hidden' must be an integer in \[1, 4096\]"),
    ({"architecture": {"K": 1_000_000}}, r"'architecture.K' must be an integer in \[1, 1024\]"),
])
def test_malformed_sidecar_fields_are_reported(tmp_path, edit, message):
    path = tmp_path / "x2_single.pt"
    save_checkpoint(Expert(2, **SMALL), path)

    def apply(side: dict) -> None:
        if isinstance(edit.get("architecture"), dict):  # one field of the architecture changed
            side["architecture"].update(edit["architecture"])
        else:
            side.update(edit)

    _edit_sidecar(path, apply)
    with pytest.raises(CheckpointError, match="malformed: " + message):
        load_checkpoint(path, scale=2)


def test_a_scale_that_is_not_an_integer_is_refused(tmp_path):
    path = tmp_path / "x2_single.pt"
    save_checkpoint(Expert(2, **SMALL), path)
    with pytest.raises(CheckpointError, match=r"scale must be an integer \(2, 3 or 4\), got 2.5"):
        load_checkpoint(path, scale=2.5)


def test_tampered_file_fails_the_hash(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(_models()["single"], path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path)


def test_truncated_file_is_reported(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(_models()["mixture"], path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"is truncated: \d+ bytes, its sidecar records \d+"):
        load_checkpoint(path)


def test_corrupt_file_with_a_matching_sidecar_is_reported(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(_models()["single"], path)
    path.write_bytes(b"not a torch file at all")
    _edit_sidecar(path, lambda side: side.update(sha256=file_sha256(path), bytes=path.stat().st_size))
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(path)


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pt")
    path = tmp_path / "m.pt"
    save_checkpoint(_models()["single"], path)
    with pytest.raises(CheckpointError, match="is the sidecar of a checkpoint; pass the weights file m.pt"):
        load_checkpoint(sidecar_path(path))  # the .json beside it, an easy slip
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="no sidecar"):
        load_checkpoint(path)


def test_kind_and_scale_mismatch_are_reported(tmp_path):
    path = tmp_path / "x2_mixture.pt"
    save_checkpoint(_mixture(scale=2), path)
    with pytest.raises(CheckpointError, match="trained for ×2, requested ×3"):
        load_checkpoint(path, scale=3)
    with pytest.raises(CheckpointError, match="holds a 'mixture' network, expected 'single'"):
        load_checkpoint(path, expected_kind="single")
    assert load_checkpoint(path, expected_kind="mixture", scale=2)[1]["scale"] == 2
    with pytest.raises(CheckpointError, match="model is a 'single' network"):
        save_checkpoint(Expert(2, **SMALL), tmp_path / "s.pt", kind="mixture")
    with pytest.raises(CheckpointError, match=r"'\.pt'"):
        save_checkpoint(Expert(2, **SMALL), tmp_path / "s.pth")
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(Expert(2, **SMALL), tmp_path / "s.pt", metadata={"sha256": "x"})


def test_weights_that_do_not_fit_are_reported(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(Expert(2, **SMALL), path)
    _edit_sidecar(path, lambda side: side["architecture"].update(channels=16))  # now another network
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


def test_optimizer_state_round_trip(tmp_path):
    model = Expert(2, **SMALL)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    path = tmp_path / "m.pt"
    assert load_optimizer_state(path) is None
    save_optimizer_state(optimizer, path, step=1)
    assert optimizer_state_path(path).name == "m.opt.pt"
    payload = load_optimizer_state(path)
    assert payload["classes"] == ["Adam"] and payload["step"] == 1
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    fresh.load_state_dict(payload["states"][0])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


# ------------------------------------------------------------------------------ resume
@pytest.fixture(scope="module")
def tiny_images():
    images = bundled_images("train")
    return {name: images[name][:64, :64].copy() for name in ("coffee", "brick")}


def test_resume_continues_the_step_count(tmp_path, tiny_images):
    budget = training.with_overrides("smoke", joint_steps=4, pretrain_steps=3)
    model, history = training.train_single(tiny_images, 2, budget, progress=False)
    path = training.save_trained(model, tmp_path / "x2_single.pt", "single", history, budget, seed=0)
    assert json.loads(sidecar_path(path).read_text())["steps"] == 4
    assert optimizer_state_path(path).is_file()
    resumed, again = training.train_single(tiny_images, 2, budget, progress=False, resume_from=path)
    assert again["step"] == [5, 6, 7, 8] and again.meta["steps"] == 8 and again.meta["start_step"] == 4
    assert not _same_weights(resumed, model)  # it trained on
    # from the saved weights and optimiser, not from a fresh start: at learning rate 0 the weights stay the
    # saved ones, and Adam's step count goes on from the saved state's 4
    frozen, kept = training.train_single(tiny_images, 2, training.with_overrides(budget, mixture_lr=0.0),
                                         progress=False, resume_from=path)
    assert _same_weights(frozen, model)
    steps = {float(s["step"]) for s in kept.optimizer_state["states"][0]["state"].values()}
    assert steps == {8.0}
    with pytest.raises(CheckpointError, match="trained for ×2, requested ×3"):
        training.train_single(tiny_images, 3, budget, progress=False, resume_from=path)
    with pytest.raises(CheckpointError, match="expected 'mixture'"):
        training.train_mixture(tiny_images, 2, budget, variant="average", progress=False, resume_from=path)


def test_resume_a_mixture_and_an_encoder(tmp_path, tiny_images):
    budget = training.with_overrides("smoke", joint_steps=3, pretrain_steps=3)
    encoder, h_pre = training.pretrain_encoder(tiny_images, 2, budget, progress=False)
    enc_path = training.save_trained(encoder, tmp_path / "x2_encoder.pt", "encoder", h_pre, budget, 0, config={"scale": 2})
    _, h = training.pretrain_encoder(tiny_images, 2, budget, progress=False, resume_from=enc_path)
    assert h["step"][0] == 4
    mixture, h_mix = training.train_mixture(tiny_images, 2, budget, encoder=encoder, progress=False)
    mix_path = training.save_trained(mixture, tmp_path / "x2_mixture.pt", "mixture", h_mix, budget, 0)
    _, h2 = training.train_mixture(tiny_images, 2, budget, encoder=encoder, progress=False, resume_from=mix_path)
    assert h2["step"] == [4, 5, 6]
    with pytest.raises(CheckpointError, match="cannot resume variant 'hard'"):
        training.train_mixture(tiny_images, 2, budget, encoder=encoder, variant="hard", progress=False,
                               resume_from=mix_path)


def test_a_resume_keeps_the_prior_and_pretrains_only_what_it_needs(tmp_path, tiny_images):
    budget = training.with_overrides("smoke", joint_steps=2, pretrain_steps=2)
    uniform, h_uniform = training.train_mixture(tiny_images, 2, budget, prior="uniform", progress=False)
    path = training.save_trained(uniform, tmp_path / "x2_uniform.pt", "mixture", h_uniform, budget, 0)
    with pytest.raises(CheckpointError, match="trained with prior 'uniform'; cannot resume it with prior 'pretrained'"):
        training.train_mixture(tiny_images, 2, budget, progress=False, resume_from=path)
    _, again = training.train_mixture(tiny_images, 2, budget, prior="uniform", progress=False, resume_from=path)
    assert again["step"] == [3, 4] and again.pretrain is None
    # hard selection keeps its own E-Net when resumed (no prior in its loss): nothing is pre-trained again
    hard, h_hard = training.train_mixture(tiny_images, 2, budget, variant="hard", progress=False)
    assert h_hard.pretrain is not None  # a fresh run starts E-Net from pre-training
    hard_path = training.save_trained(hard, tmp_path / "x2_hard.pt", "mixture", h_hard, budget, 0)
    _, h_resumed = training.train_mixture(tiny_images, 2, budget, variant="hard", progress=False,
                                          resume_from=hard_path)
    assert h_resumed.pretrain is None and h_resumed.meta["start_step"] == 2
    # the E-Net pre-trained inside train_mixture records the same data as the mixture
    for meta in (h_hard.pretrain.meta, h_hard.meta):
        assert meta["training_images"] == list(tiny_images) and meta["kernels"] == "seen"


def test_a_resume_is_checked_before_anything_trains_and_the_cli_resumes_with_the_saved_prior(
        tmp_path, tiny_images, monkeypatch, capsys):
    budget = training.with_overrides("smoke", joint_steps=3, pretrain_steps=3)
    encoder, h_pre = training.pretrain_encoder(tiny_images, 2, budget, progress=False)
    training.save_trained(encoder, tmp_path / "x2_encoder.pt", "encoder", h_pre, budget, 0, config={"scale": 2})
    single, h_single = training.train_single(tiny_images, 2, budget, progress=False)
    single_path = training.save_trained(single, tmp_path / "x2_single.pt", "single", h_single, budget, 0)
    mixture, h_mix = training.train_mixture(tiny_images, 2, budget, encoder=encoder, progress=False)
    mix_path = training.save_trained(mixture, tmp_path / "x2_mixture.pt", "mixture", h_mix, budget, 0)

    def no_pretraining(*args, **kwargs):
        raise AssertionError("E-Net was pre-trained")

    monkeypatch.setattr(training, "pretrain_encoder", no_pretraining)
    with pytest.raises(CheckpointError, match="expected 'mixture'"):  # not after a pre-training
        training.train_mixture(tiny_images, 2, budget, progress=False, resume_from=single_path)
    # the CLI resumes a mixture with x2_encoder.pt beside it as the prior: nothing is pre-trained again
    from tutorial_lib import cli, data

    monkeypatch.setattr(data, "load_images", lambda source: tiny_images)
    assert cli.main(["train", "--scale", "2", "--budget", "smoke", "--variant", "mixture", "--out", str(tmp_path),
                     "--resume", str(mix_path), "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 + training.get_training_budget("smoke").joint_steps


def test_checkpoint_dir_is_the_shipped_folder_unless_the_variable_names_another(tmp_path, monkeypatch):
    monkeypatch.delenv(checkpoints.CHECKPOINT_DIR_VARIABLE, raising=False)
    shipped = checkpoints.checkpoint_dir()
    assert shipped.parts[-2:] == ("data", "checkpoints") and (shipped / "x2_mixture.json").is_file()
    monkeypatch.setenv(checkpoints.CHECKPOINT_DIR_VARIABLE, str(tmp_path))
    assert checkpoints.checkpoint_dir() == tmp_path
    monkeypatch.setenv(checkpoints.CHECKPOINT_DIR_VARIABLE, str(tmp_path / "missing"))
    with pytest.raises(CheckpointError, match="TUTORIAL_CHECKPOINT_DIR.*is not a folder"):
        checkpoints.checkpoint_dir()


def test_sidecars_record_the_images_a_run_used(tmp_path, tiny_images):
    """An image smaller than one HR patch is left out of training, with a warning, and every
    sidecar of ``train_all`` lists the images used and the one left out, by name."""
    budget = training.with_overrides("smoke", joint_steps=2, pretrain_steps=2)
    images = {"coffee": tiny_images["coffee"], "crumb": tiny_images["brick"][:20, :20].copy()}  # 20 < 2 * 12
    with pytest.warns(UserWarning, match="1 of 2 training images are smaller than one HR patch .* not used: crumb"):
        result = training.train_all(images, 2, budget, tmp_path, progress=False)
    for kind, path in result["paths"].items():
        record = json.loads(sidecar_path(path).read_text())["training_data"]
        assert record["images"] == ["coffee"] and record["images_too_small"] == ["crumb"], kind


def test_file_sha256_hashes_the_whole_file(tmp_path):
    """The hash covers every byte, not only the first chunk read."""
    blob = np.random.default_rng(0).bytes(3 * MIB + 123)
    path = tmp_path / "big.bin"
    path.write_bytes(blob)
    assert file_sha256(path) == hashlib.sha256(blob).hexdigest()


def test_a_change_past_the_first_mebibyte_of_a_checkpoint_fails_the_hash(tmp_path):
    """The shipped checkpoints are 1.2 to 6.6 MB; a byte changed after the first MiB must
    still be caught before the weights are used."""
    torch.manual_seed(0)
    path = tmp_path / "x2_single.pt"
    save_checkpoint(Expert(2), path)  # the default expert: about 1.2 MB of weights
    data = bytearray(path.read_bytes())
    assert len(data) > MIB + 4096
    data[MIB + 2048] ^= 0xFF  # same size, one byte after the first MiB changed
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path)


@pytest.mark.parametrize("kind", ["single", "mixture"])
def test_a_sidecar_naming_more_blocks_than_the_weights_hold_is_refused(tmp_path, kind):
    """Weights are loaded strictly: a non-strict load would build n_blocks + 1 blocks and
    leave the extra one at its random initialisation, silently."""
    torch.manual_seed(0)
    model = Expert(2, **SMALL) if kind == "single" else BlindSR(ENet(4), MixtureOfExperts(4, 2, **SMALL))
    path = tmp_path / "m.pt"
    save_checkpoint(model, path)
    _edit_sidecar(path, lambda side: side["architecture"].update(n_blocks=3))  # weights hold 2 blocks
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


def _refuse_to_build(*args, **kwargs):
    raise AssertionError("a network was built from a sidecar whose sizes were not checked")


@pytest.mark.parametrize("field, value, limit", [("M", 1_000_000, 64), ("up_channels", 1_000_000, 1024),
                                                 ("scale", 1000, 8), ("M", 0, 64)])
def test_every_architecture_size_in_a_sidecar_is_bounded(tmp_path, monkeypatch, field, value, limit):
    """Every size field is bounded ("M", "up_channels" and "scale" as well as the others). The
    sidecar is not covered by the weights' hash; an edited size would hang or exhaust memory."""
    torch.manual_seed(0)
    path = tmp_path / "x2_mixture.pt"
    save_checkpoint(BlindSR(ENet(4), MixtureOfExperts(4, 2, **SMALL)), path)

    def edit(side):
        side["architecture"][field] = value
        if field == "scale":
            side["scale"] = value  # keep the two scale fields consistent: only the bound can refuse it

    _edit_sidecar(path, edit)
    monkeypatch.setattr(checkpoints, "build_model", _refuse_to_build)
    with pytest.raises(CheckpointError, match=rf"malformed: 'architecture.{field}' must be an integer in \[1, {limit}\]"):
        load_checkpoint(path)


def test_a_sidecar_without_a_sha256_is_refused(tmp_path):
    """A sidecar without a hash is refused, not loaded unverified."""
    path = tmp_path / "m.pt"
    save_checkpoint(Expert(2, **SMALL), path)
    _edit_sidecar(path, lambda side: side.pop("sha256"))
    with pytest.raises(CheckpointError, match="records no sha256"):
        load_checkpoint(path)


UNPICKLED: list[str] = []


def _record(tag: str) -> int:
    UNPICKLED.append(tag)
    return 0


class _Trap:
    """Unpickling this calls _record: the code a hostile pickle would run."""

    def __reduce__(self):
        return (_record, ("ran",))


def test_a_checkpoint_with_pickled_code_is_refused_even_with_a_matching_sidecar(tmp_path):
    """load_checkpoint reads with ``weights_only=True``: the sha256 only says the file is the one
    the sidecar describes, not that it is safe."""
    UNPICKLED.clear()
    path = tmp_path / "m.pt"
    model = Expert(2, **SMALL)
    save_checkpoint(model, path)
    torch.save({**model.state_dict(), "trap": _Trap()}, path)
    _edit_sidecar(path, lambda side: side.update(sha256=file_sha256(path), bytes=path.stat().st_size))
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(path)
    assert UNPICKLED == []


def test_optimizer_state_with_pickled_code_is_refused(tmp_path):
    """load_optimizer_state reads with ``weights_only=True`` too."""
    UNPICKLED.clear()
    path = tmp_path / "m.pt"
    torch.save({"classes": ["Adam"], "states": [], "trap": _Trap()}, optimizer_state_path(path))
    with pytest.raises(CheckpointError, match="could not be read"):
        load_optimizer_state(path)
    assert UNPICKLED == []


def test_save_refuses_a_config_that_contradicts_the_model(tmp_path):
    """A config that contradicts the model is refused: otherwise the sidecar of an x2 network would
    say x3, and load_checkpoint(scale=3) would accept it."""
    path = tmp_path / "x3_single.pt"
    with pytest.raises(CheckpointError, match=r"config\['scale'\] = 3 disagrees with the model \(2\)"):
        save_checkpoint(Expert(2, **SMALL), path, config={"scale": 3})
    assert not path.exists() and not sidecar_path(path).exists()
