"""Tests of tutorial_lib.training: budgets, schedules, every model kind end to end in the
smoke budget, determinism, loss decrease on a fixed batch, gradient clipping, accuracy."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from tutorial_lib import training
from tutorial_lib.data import bundled_images
from tutorial_lib.models import (
    BlindSR,
    EncoderWithClassifier,
    ENet,
    Expert,
    KernelClassifier,
    MixtureOfExperts,
)
from tutorial_lib.training import (
    BUDGETS,
    Budget,
    encoder_accuracy,
    get_training_budget,
    lr_factor,
    pretrain_encoder,
    train_mixture,
    train_single,
    with_overrides,
)

torch.set_num_threads(2)

SCALE = 2
# Short stages: the tests check wiring and properties, not quality.
QUICK = with_overrides("smoke", pretrain_steps=12, joint_steps=8)


@pytest.fixture(scope="module")
def tiny_images() -> dict[str, np.ndarray]:
    """Three bundled training photographs, cropped to 64 x 64 (enough for 24 x 24 HR patches)."""
    images = bundled_images("train")
    return {name: images[name][100:164, 100:164].copy() for name in ("astronaut", "coffee", "brick")}


@pytest.fixture(scope="module")
def test_images() -> dict[str, np.ndarray]:
    images = bundled_images("test")
    return {name: images[name][100:148, 100:148].copy() for name in ("camera", "chelsea")}


@pytest.fixture(scope="module")
def encoder(tiny_images):
    model, history = pretrain_encoder(tiny_images, SCALE, QUICK, progress=False)
    return model, history


def _comparable(history) -> dict[str, list]:
    """History entries that do not depend on the wall clock."""
    return {k: v for k, v in history.items() if k not in ("time", "patches_per_s")}


# ----------------------------------------------------------------------------- budgets
def test_budgets_are_frozen_and_named():
    assert set(BUDGETS) == {"smoke", "cpu", "gpu"}
    for name, budget in BUDGETS.items():
        assert isinstance(budget, Budget) and budget.name == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            budget.channels = 1  # type: ignore[misc]
    # the tests run under CI=true (conftest), which selects the deterministic smoke budget
    assert get_training_budget().name == "smoke"
    assert get_training_budget("cpu") is BUDGETS["cpu"]
    with pytest.raises(ValueError, match="budget must be one of"):
        get_training_budget("laptop")


def test_budget_profiles_fit_their_purpose():
    smoke, cpu, gpu = BUDGETS["smoke"], BUDGETS["cpu"], BUDGETS["gpu"]
    assert smoke.clock == "steps" and smoke.channels <= 16  # deterministic, tiny
    # cpu: pre-training + joint training within 10 minutes
    assert cpu.pretrain_seconds + cpu.joint_seconds <= 600
    assert cpu.channels < 64
    # gpu: the paper's experts
    assert (gpu.channels, gpu.n_blocks) == (64, 7)
    assert with_overrides("cpu", channels=24).channels == 24


def test_optimizers_use_fused_kernels_where_available():
    params = [torch.nn.Parameter(torch.randn(3, 3)), torch.nn.Parameter(torch.randn(3))]
    for kind, cls in (("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)):
        opt = training._make_optimizer([(params[:1], 1e-3), (params[1:], 1e-4)], kind, weight_decay=1e-4)
        assert isinstance(opt, cls) and [g["base_lr"] for g in opt.param_groups] == [1e-3, 1e-4]
        if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4):  # fused CPU kernels exist
            assert opt.defaults["fused"] is True
        for p in params:
            p.grad = torch.ones_like(p)
        before = [p.detach().clone() for p in params]
        opt.step()
        assert all(not torch.equal(b, p) for b, p in zip(before, params))
    with pytest.raises(ValueError, match="adam"):
        training._make_optimizer([(params, 1e-3)], "lbfgs")


class _FusedStepFails(torch.optim.SGD):
    """Accepts ``fused=True`` and fails at the first step, as PyTorch < 2.4 does on the CPU."""

    def step(self, closure=None):
        if self.defaults.get("fused"):
            raise NotImplementedError("Could not run 'aten::_fused_sgd_' with arguments from the 'CPU' backend")
        return super().step(closure)


def test_a_fused_kernel_that_fails_at_its_first_step_is_not_used(monkeypatch):
    monkeypatch.setattr(training, "_FUSED_STEPS", {})
    cpu, options = torch.device("cpu"), {"momentum": 0.9, "weight_decay": 0.0}
    assert training._fused_steps(_FusedStepFails, options, cpu, torch.float32) is False
    monkeypatch.setattr(torch.optim, "SGD", _FusedStepFails)  # what _make_optimizer builds for "sgd"
    param = torch.nn.Parameter(torch.ones(3))
    opt = training._make_optimizer([([param], 0.5)], "sgd")
    assert isinstance(opt, _FusedStepFails) and not opt.defaults.get("fused")
    param.grad = torch.ones_like(param)
    opt.step()  # the default implementation steps
    assert torch.allclose(param.detach(), torch.full((3,), 0.5))


def test_gradient_maximum_is_the_same_either_way():
    torch.manual_seed(0)
    for multi_tensor in (False, True):
        params = [torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(5))]
        params[0].grad = torch.linspace(-2.0, 0.5, 12).reshape(4, 3)
        params[1].grad = torch.tensor([0.1, -0.3, 0.2, 1.5, 0.0])
        grad_max = training._clip_gradients(params, 0.6, multi_tensor=multi_tensor)
        assert grad_max.item() == pytest.approx(2.0)  # before clipping
        assert max(p.grad.abs().max().item() for p in params) == pytest.approx(0.6)


def test_lr_factor_schedules():
    assert lr_factor(0.0, "cosine", final=0.1) == pytest.approx(1.0)
    assert lr_factor(1.0, "cosine", final=0.1) == pytest.approx(0.1)
    assert lr_factor(0.5, "cosine", final=0.0) == pytest.approx(0.5)
    values = [lr_factor(p / 10, "cosine", final=0.02) for p in range(11)]
    assert all(a >= b for a, b in itertools.pairwise(values))  # monotone decay
    assert [lr_factor(p, "step") for p in (0.0, 0.4, 0.9, 1.0)] == pytest.approx([1.0, 0.1, 0.01, 0.01])
    assert lr_factor(0.3, "constant") == 1.0
    assert lr_factor(0.0, "constant", warmup=0.1) == pytest.approx(0.1)  # warm-up starts at 10 %
    assert lr_factor(0.1, "constant", warmup=0.1) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0.5, "linear")


# ------------------------------------------------------------------------ end to end
def test_pretrain_encoder_returns_classifier_and_history(encoder):
    model, history = encoder
    assert isinstance(model, EncoderWithClassifier) and not model.training
    assert model.classifier.K == 29 and model.enet.M == 4
    assert history["step"] == list(range(1, QUICK.pretrain_steps + 1))  # smoke logs every step
    for key in ("loss", "accuracy", "lr", "patches_per_s", "time", "grad_max"):
        assert len(history[key]) == QUICK.pretrain_steps
    assert history.meta["stopped_by"] == "steps" and history.meta["steps"] == QUICK.pretrain_steps
    assert history["lr"][0] > history["lr"][-1]  # the schedule decays
    assert history.meta["cpu_allocator"]  # CPU training records whether malloc was tuned
    assert isinstance(history.meta["fused_optimizer"], bool)  # and whether the optimiser step was fused


@pytest.mark.parametrize(
    "kwargs, mode",
    [({}, "fused"), ({"prior": "uniform"}, "fused"), ({"variant": "average"}, "average"), ({"variant": "hard"}, "hard")],
    ids=["elbo", "uniform-prior", "average", "hard"],
)
def test_every_mixture_variant_trains(tiny_images, encoder, kwargs, mode):
    model, history = train_mixture(tiny_images, SCALE, QUICK, encoder=encoder[0], progress=False, **kwargs)
    assert isinstance(model, BlindSR) and model.mode == mode and not model.training
    assert (model.enet is None) == (mode == "average")
    steps = QUICK.joint_steps
    for key in ("step", "loss", "recon", "kl", "mse", "psnr", "lr", "usage", "q_entropy", "patches_per_s", "time"):
        assert len(history[key]) == steps, key
    assert all(math.isfinite(v) for v in history["loss"])
    assert history.meta["init_experts"] == "random"  # the paper's start
    assert all(len(u) == 4 and sum(u) == pytest.approx(1.0, abs=1e-5) for u in history["usage"])
    lr = torch.rand(2, 1, 10, 10)
    assert model(lr)["fused"].shape == (2, 1, 20, 20)
    if kwargs.get("variant") == "hard":  # stages of hard_stage_steps alternate
        k = QUICK.hard_stage_steps
        assert history["stage"] == ([0.0] * k + [1.0] * k)[:steps]


def test_the_jointly_trained_enet_starts_as_the_pretrained_encoder(tiny_images, encoder):
    """(The prior of Eq. 12 is the next test's.)"""
    enc = encoder[0]
    budget = with_overrides(QUICK, joint_steps=1, enet_lr=0.0)
    model, _ = train_mixture(tiny_images, SCALE, budget, encoder=enc, progress=False)
    for name, p in enc.enet.named_parameters():  # E-Net starts as the pre-trained one (lr 0: unchanged)
        assert torch.equal(p, dict(model.enet.named_parameters())[name])
    assert model.enet is not enc.enet  # a copy: the prior stays as it was


def test_the_kl_prior_is_the_given_pretrained_encoder(tiny_images, monkeypatch):
    """q_hat of Eq. (12) comes from the encoder passed in (frozen, eval mode), and is absent for the
    uniform prior: an E-Net whose last layer ignores its input gives one known posterior."""
    logits = torch.tensor([3.0, 1.0, 0.0, -1.0])
    enet = ENet(4)
    with torch.no_grad():
        enet.fc.weight.zero_()
        enet.fc.bias.copy_(logits)
    priors = []
    real = training.elbo_loss

    def spy(experts, hr, q, q_prior, **kwargs):
        priors.append(None if q_prior is None else q_prior.detach().clone())
        return real(experts, hr, q, q_prior, **kwargs)

    monkeypatch.setattr(training, "elbo_loss", spy)
    budget = with_overrides(QUICK, joint_steps=2)
    train_mixture(tiny_images, SCALE, budget, encoder=enet, progress=False)
    assert len(priors) == 2
    for q_prior in priors:
        torch.testing.assert_close(q_prior, torch.softmax(logits, 0).expand_as(q_prior))
    priors.clear()
    train_mixture(tiny_images, SCALE, budget, prior="uniform", progress=False)
    assert priors == [None, None]


def test_experts_can_start_as_copies_of_one_network(tiny_images, encoder):
    single, _ = train_single(tiny_images, SCALE, QUICK, progress=False)
    frozen = with_overrides(QUICK, joint_steps=1, mixture_lr=0.0)  # lr 0: the experts stay as they started
    model, history = train_mixture(tiny_images, SCALE, frozen, encoder=encoder[0], init_experts=single,
                                   progress=False)
    assert history.meta["init_experts"] == "copies of a given network"
    for i in range(model.mixture.M):
        for p, q in zip(model.mixture.expert(i).parameters(), single.parameters()):
            assert torch.equal(p, q)
    # with the same weights in every expert, the fusion is that network whatever q is
    lr = torch.rand(2, 1, 12, 12)
    torch.testing.assert_close(model(lr)["fused"], single(lr), rtol=1e-5, atol=1e-6)
    # trained, the copies drift apart: each expert's gradient is weighted by its own q_z
    model, _ = train_mixture(tiny_images, SCALE, QUICK, encoder=encoder[0], init_experts=single, progress=False)
    heads = [model.mixture.expert(i).head.weight for i in range(model.mixture.M)]
    assert all(not torch.allclose(a, b) for a, b in itertools.combinations(heads, 2))


def test_init_experts_refuses_what_it_cannot_use(tiny_images, encoder, tmp_path):
    wrong_width = Expert(SCALE, channels=QUICK.channels * 2, n_blocks=QUICK.n_blocks)
    with pytest.raises(ValueError, match="architecture"):
        train_mixture(tiny_images, SCALE, QUICK, encoder=encoder[0], init_experts=wrong_width, progress=False)
    with pytest.raises(TypeError, match="Expert"):
        train_mixture(tiny_images, SCALE, QUICK, encoder=encoder[0], init_experts=encoder[0].enet, progress=False)
    right = Expert(SCALE, channels=QUICK.channels, n_blocks=QUICK.n_blocks)
    with pytest.raises(ValueError, match="identical"):
        train_mixture(tiny_images, SCALE, QUICK, variant="average", init_experts=right, progress=False)
    with pytest.raises(ValueError, match="resume_from"):
        train_mixture(tiny_images, SCALE, QUICK, encoder=encoder[0], init_experts=right,
                      resume_from=tmp_path / "x.pt", progress=False)


def test_train_mixture_pretrains_when_no_encoder_is_given(tiny_images):
    budget = with_overrides(QUICK, pretrain_steps=3, joint_steps=2)
    _, history = train_mixture(tiny_images, SCALE, budget, progress=False)
    assert history.pretrain is not None and history.pretrain.meta["steps"] == 3


def test_train_single_returns_expert(tiny_images):
    model, history = train_single(tiny_images, SCALE, QUICK, progress=False)
    assert isinstance(model, Expert) and model.channels == QUICK.channels and not model.training
    assert len(history["loss"]) == QUICK.joint_steps
    assert history["psnr"][0] == pytest.approx(-10 * math.log10(history["mse"][0]))


def test_a_budget_no_run_could_use_is_refused_by_name():
    for change, name in (({"log_every": 0}, "log_every"), ({"batch_size": 0}, "batch_size"),
                         ({"joint_seconds": float("nan")}, "joint_seconds"), ({"schedule": "linear"}, "schedule"),
                         ({"mixture_lr": -1e-3}, "mixture_lr"), ({"clip_value": 0.0}, "clip_value"),
                         ({"warmup_fraction": 2.0}, "warmup_fraction"), ({"final_lr_factor": 5.0}, "final_lr_factor"),
                         ({"recalibrate_bn": "no"}, "recalibrate_bn"), ({"compile": "yes"}, "compile"),
                         ({"joint_seconds": "120"}, "joint_seconds"), ({"lam": "0.05"}, "lam"),
                         ({"eval_max_side": "64"}, "eval_max_side"), ({"eval_max_side": 64.5}, "eval_max_side"),
                         ({"eval_max_side": True}, "eval_max_side")):
        with pytest.raises(ValueError, match=f"budget {name}"):
            with_overrides(QUICK, **change)
    assert with_overrides(QUICK, clip_value=float("inf"), joint_seconds=None).clip_value == float("inf")
    assert with_overrides(QUICK, final_lr_factor=0.0, warmup_fraction=0.0).final_lr_factor == 0.0


def test_bad_arguments_are_named(tiny_images):
    with pytest.raises(ValueError, match="variant"):
        train_mixture(tiny_images, SCALE, QUICK, variant="soft", progress=False)
    with pytest.raises(ValueError, match="prior"):
        train_mixture(tiny_images, SCALE, QUICK, prior="learned", progress=False)
    with pytest.raises(ValueError, match="at least one"):
        train_single({}, SCALE, QUICK, progress=False)
    with pytest.raises(ValueError, match="HR patch"):
        train_single([np.zeros((10, 10))], SCALE, QUICK, progress=False)
    eight_bit = {name: (img * 255).round().astype(np.uint8) for name, img in tiny_images.items()}
    with pytest.raises(ValueError, match="dtype uint8"):  # would train on 0-255 data
        train_single(eight_bit, SCALE, QUICK, progress=False)
    with pytest.raises(ValueError, match="seed must be an integer in"):
        train_single(tiny_images, SCALE, QUICK, seed=-1, progress=False)
    with pytest.raises(ValueError, match="max_side .* must be an integer >= 1, got 0"):
        training.evaluate_model("bicubic", tiny_images, SCALE, max_side=0)


# --------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_histories(tiny_images, encoder):
    budget = with_overrides(QUICK, joint_steps=5)
    runs = [train_mixture(tiny_images, SCALE, budget, encoder=encoder[0], seed=3, progress=False) for _ in range(2)]
    assert _comparable(runs[0][1]) == _comparable(runs[1][1])
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(p, q)
    other = train_mixture(tiny_images, SCALE, budget, encoder=encoder[0], seed=4, progress=False)[1]
    assert other["loss"] != runs[0][1]["loss"]


def test_pretraining_is_deterministic(tiny_images):
    budget = with_overrides(QUICK, pretrain_steps=4)
    first = pretrain_encoder(tiny_images, SCALE, budget, seed=1, progress=False)[1]
    second = pretrain_encoder(tiny_images, SCALE, budget, seed=1, progress=False)[1]
    assert _comparable(first) == _comparable(second)


def test_time_budget_stops_by_the_clock(tiny_images, monkeypatch):
    import types

    now = [0.0]

    def fake_perf_counter() -> float:  # every reading is 10 ms later: the test does not depend on machine load
        now[0] += 0.01
        return now[0]

    monkeypatch.setattr(training, "time", types.SimpleNamespace(perf_counter=fake_perf_counter))
    budget = with_overrides(QUICK, clock="time", joint_steps=10_000, joint_seconds=0.3)
    _, history = train_single(tiny_images, SCALE, budget, progress=False, log_every=1)
    assert history.meta["stopped_by"] == "time"
    assert 5 < history.meta["steps"] < 100
    # the schedule followed the clock: it decayed to near its final factor, and never rose after the warm-up
    assert history["lr"][-1] < 0.2 * budget.mixture_lr
    peak = int(np.argmax(history["lr"]))
    assert all(a >= b for a, b in zip(history["lr"][peak:], history["lr"][peak + 1:]))


@pytest.mark.parametrize("lam", [None, 0.3])
def test_joint_training_weighs_the_kl_by_lambda(tiny_images, lam):
    budget = with_overrides(QUICK, joint_steps=3)
    _, history = train_mixture(tiny_images, SCALE, budget, prior="uniform", lam=lam, progress=False, log_every=1)
    expected = budget.lam if lam is None else lam
    assert history.meta["lam"] == expected
    assert max(history["kl"]) > 1e-4  # the KL term is not negligible, so lambda shows in the loss
    np.testing.assert_allclose(history["loss"], np.array(history["recon"]) + expected * np.array(history["kl"]),
                               rtol=1e-5)


def test_a_resumed_mixture_continues_from_its_saved_optimiser_state(tmp_path, tiny_images):
    """Resuming a mixture loads the .opt.pt beside it: Adam's step count goes on from the saved one."""
    from tutorial_lib.checkpoints import optimizer_state_path

    budget = with_overrides("smoke", pretrain_steps=3, joint_steps=3)
    model, history = train_mixture(tiny_images, SCALE, budget, variant="average", progress=False)
    path = training.save_trained(model, tmp_path / "x2_average.pt", "mixture", history, budget, seed=0)
    assert optimizer_state_path(path).is_file()
    _, again = train_mixture(tiny_images, SCALE, with_overrides(budget, mixture_lr=0.0), variant="average",
                             progress=False, resume_from=path)
    steps = {float(s["step"]) for s in again.optimizer_state["states"][0]["state"].values()}
    assert steps == {6.0}


@pytest.mark.parametrize("variant", ["elbo", "hard"])
def test_enet_runs_in_eval_mode_whenever_it_only_provides_fixed_weights(tiny_images, variant):
    """The frozen KL prior (elbo) and the fixed E-Net of the experts' stage (hard selection) run
    without gradients, and then in eval mode (no dropout, BatchNorm's running statistics)."""
    budget = with_overrides("smoke", pretrain_steps=3, joint_steps=4, hard_stage_steps=2)
    encoder, _ = pretrain_encoder(tiny_images, SCALE, budget, progress=False)
    calls: list[tuple[bool, bool]] = []
    encoder.enet.register_forward_hook(  # deep copies of the encoder keep the hook
        lambda module, inputs, output: calls.append((module.training, torch.is_grad_enabled())))
    train_mixture(tiny_images, SCALE, budget, encoder=encoder, variant=variant, progress=False)
    fixed = [training_mode for training_mode, grad in calls if not grad]
    assert fixed, "E-Net was never run without gradients"
    assert not any(fixed)
    assert any(training_mode for training_mode, grad in calls if grad)  # the E-Net that learns: train mode


def test_joint_training_draws_the_budgets_batch_and_patch_size(tiny_images, encoder, monkeypatch):
    """The joint stages use ``batch_size`` and ``lr_patch`` (not the pre-training batch or patch)."""
    from tutorial_lib.degradations import PatchSampler

    drawn = []
    original = PatchSampler.sample

    def spy(self, batch_size, *args, **kwargs):
        batch = original(self, batch_size, *args, **kwargs)
        drawn.append((batch_size, tuple(batch["lr"].shape[-2:])))
        return batch

    monkeypatch.setattr(PatchSampler, "sample", spy)
    budget = with_overrides(QUICK, joint_steps=2, batch_size=5, pretrain_batch=7, lr_patch=10, enet_patch=16)
    train_mixture(tiny_images, SCALE, budget, encoder=encoder[0], progress=False)
    train_single(tiny_images, SCALE, budget, progress=False)
    assert drawn == [(5, (10, 10))] * 4


def test_progress_bar_counts_seconds_under_a_time_budget_and_steps_otherwise(tiny_images, capsys):
    timed = with_overrides(QUICK, clock="time", joint_steps=100_000, joint_seconds=0.5)
    train_single(tiny_images, SCALE, timed, progress=True, log_every=1)
    text = capsys.readouterr().err.replace("\r", "\n")
    assert "train single network (0.5 s)" in text and "/0.5 s [" in text and "steps=" in text
    assert "100000" not in text  # the far-away step cap is not what the bar measures
    train_single(tiny_images, SCALE, with_overrides(QUICK, joint_steps=4), progress=True, log_every=1)
    text = capsys.readouterr().err
    assert "/4 [" in text and "steps=" not in text


# ------------------------------------------------------------- learning and clipping
class _FixedBatch:
    """Wraps a PatchSampler so that every call returns the first batch it drew."""

    def __init__(self, sampler):
        self.sampler, self.batch = sampler, None

    def sample(self, batch_size, kernel_index=None):
        if self.batch is None:
            self.batch = self.sampler.sample(batch_size, kernel_index)
        return self.batch


@pytest.fixture
def fixed_batches(monkeypatch):
    real = training._sampler

    def fixed(*args, **kwargs):
        sampler, used = real(*args, **kwargs)
        return _FixedBatch(sampler), used

    monkeypatch.setattr(training, "_sampler", fixed)


def test_loss_decreases_on_a_fixed_batch(tiny_images, encoder, fixed_batches):
    budget = with_overrides(QUICK, joint_steps=30, schedule="constant")
    _, history = train_mixture(tiny_images, SCALE, budget, encoder=encoder[0], progress=False)
    loss = history["loss"]  # about 0.5 x after 30 steps
    assert np.mean(loss[-5:]) < 0.75 * np.mean(loss[:5])
    _, history = train_single(tiny_images, SCALE, budget, progress=False)
    assert np.mean(history["loss"][-5:]) < 0.75 * np.mean(history["loss"][:5])


@pytest.mark.parametrize("kwargs", [{"variant": "average"}, {"prior": "uniform"}, {"variant": "hard"}],
                         ids=["average", "uniform-prior", "hard"])
def test_every_ablation_learns_a_fixed_batch(tiny_images, encoder, fixed_batches, kwargs):
    """The reconstruction term, what each variant trains its experts on, falls on a batch seen again and again
    (for 'hard', over the steps in which the experts train: every other stage of hard_stage_steps)."""
    budget = with_overrides(QUICK, joint_steps=30, schedule="constant")
    _, history = train_mixture(tiny_images, SCALE, budget, encoder=encoder[0], progress=False, **kwargs)
    recon = np.array(history["recon"])
    if kwargs.get("variant") == "hard":
        recon = recon[np.array(history["stage"]) == 0]
    assert np.mean(recon[-3:]) < 0.75 * np.mean(recon[:3]), recon


def test_pretraining_loss_decreases_on_a_fixed_batch(tiny_images, fixed_batches):
    budget = with_overrides(QUICK, pretrain_steps=25, schedule="constant")
    _, history = pretrain_encoder(tiny_images, SCALE, budget, progress=False)
    assert np.mean(history["loss"][-5:]) < 0.7 * np.mean(history["loss"][:5])


def test_gradients_are_clipped_by_value(tiny_images, encoder):
    clip = 1e-4
    budget = with_overrides(QUICK, joint_steps=3, clip_value=clip)
    model, history = train_mixture(tiny_images, SCALE, budget, encoder=encoder[0], progress=False)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, "the last step's gradients are kept on the model"
    assert max(g.abs().max().item() for g in grads) <= clip
    assert max(history["grad_max"]) > clip  # the clip did bind
    single, _ = train_single(tiny_images, SCALE, budget, progress=False)
    assert max(p.grad.abs().max().item() for p in single.parameters()) <= clip


# ---------------------------------------------------------------------- accuracy
def test_encoder_accuracy_on_whole_images(encoder, test_images):
    model = encoder[0]
    acc = encoder_accuracy(model, test_images, SCALE)
    assert acc["kind"] == "kernel" and acc["n_cases"] == 2 * 29
    assert acc["confusion"].shape == (29, 29) and acc["confusion"].sum() == 58
    assert (acc["confusion"].sum(axis=1) == 2).all()  # each kernel once per image
    assert 0 <= acc["top1"] <= acc["top3"] <= 1
    assert acc["top1"] <= acc["top1_distinct"] <= 1  # duplicate kernels count as right
    assert acc["top1"] == pytest.approx(np.trace(acc["confusion"]) / 58)  # the diagonal of its confusion
    assert not model.training

    state = encoder_accuracy(model.enet, test_images, SCALE)  # a bare E-Net: M-way states
    assert state["kind"] == "state" and state["confusion"].shape == (29, 4)
    assert 0.5 <= state["top1"] <= 1  # with two images, the majority state covers >= half
    mixture = BlindSR(model.enet, MixtureOfExperts(4, SCALE, channels=4, n_blocks=1))
    of_mixture = encoder_accuracy(mixture, test_images, SCALE)  # a mixture: its E-Net's states
    np.testing.assert_array_equal(of_mixture["confusion"], state["confusion"])


def test_encoder_accuracy_top3_counts_the_third_choice():
    class RankedThird(EncoderWithClassifier):
        def forward(self, lr: torch.Tensor) -> torch.Tensor:  # case k (kernel k): scores 3, 2, 1 on k+1, k+2, k
            k = torch.arange(lr.shape[0])
            scores = torch.zeros(lr.shape[0], 29)
            scores[k, (k + 1) % 29], scores[k, (k + 2) % 29], scores[k, k] = 3.0, 2.0, 1.0
            return scores

    model = RankedThird(ENet(4), KernelClassifier(4, 29))
    acc = encoder_accuracy(model, {"flat": np.full((48, 48), 0.5)}, SCALE)
    assert acc["top1"] == 0.0 and acc["top3"] == 1.0


def test_encoder_accuracy_of_an_enet_scores_the_majority_state_of_each_kernel():
    """For a bare E-Net the label of a kernel is the state most of its images fall into (ties: the
    lowest state); top-1 counts the cases in it. An E-Net with known outputs gives known numbers."""
    from collections import Counter

    n_kernels, m = 29, 4
    states = np.array([[k % m for k in range(n_kernels)],
                       [(k + 1) % m if k < 5 else k % m for k in range(n_kernels)],
                       [0] * n_kernels])  # (3 images, 29 kernels)

    class KnownStates(ENet):
        calls = 0

        def forward(self, lr):
            scores = torch.zeros(lr.shape[0], m)
            scores[torch.arange(lr.shape[0]), torch.from_numpy(states[KnownStates.calls])] = 1.0
            KnownStates.calls += 1
            return scores

    images = [np.full((40, 40), v) for v in (0.2, 0.5, 0.8)]
    result = encoder_accuracy(KnownStates(m), images, SCALE)
    majority = [min(s for s, c in Counter(states[:, k]).items() if c == max(Counter(states[:, k]).values()))
                for k in range(n_kernels)]
    assert result["kind"] == "state"
    assert result["top1"] == pytest.approx((states == np.array(majority)[None]).mean())
    expected = np.zeros((n_kernels, m), dtype=np.int64)
    for image in states:
        for k, state in enumerate(image):
            expected[k, state] += 1
    np.testing.assert_array_equal(result["confusion"], expected)


def test_encoder_accuracy_counts_twins_as_right():
    """A classifier that always answers the twin of a duplicate kernel scores top1 = 0 but
    top1_distinct = 1 on those kernels."""
    from tutorial_lib.kernels import SEEN_INDICES, duplicate_pairs

    seen = list(SEEN_INDICES)
    pairs = [(seen.index(i), seen.index(j)) for i, j in duplicate_pairs() if i in seen and j in seen]
    assert len(pairs) == 3
    _, b = pairs[0]  # kernel b has a twin

    class Swap(EncoderWithClassifier):
        def forward(self, lr):  # predicts kernel b for every input
            out = torch.zeros(lr.shape[0], 29)
            out[:, b] = 1.0
            return out

    model = Swap(ENet(4), training.KernelClassifier(4, 29))
    image = {"flat": np.full((48, 48), 0.5)}
    acc = encoder_accuracy(model, image, SCALE)
    assert acc["top1"] == pytest.approx(1 / 29)  # right only for kernel b itself
    assert acc["top1_distinct"] == pytest.approx(2 / 29)  # and for its twin a


def test_recalibrate_batchnorm_sets_whole_image_statistics(encoder, test_images):
    import copy

    model = copy.deepcopy(encoder[0])
    before = model.enet.features[1].running_mean.clone()
    training.recalibrate_batchnorm(model, test_images, SCALE)
    after = model.enet.features[1].running_mean
    assert not torch.equal(before, after) and not any(m.training for m in model.modules())  # eval, as documented
    assert model.enet.features[1].momentum == encoder[0].enet.features[1].momentum
    # the first BatchNorm's running mean is now the average, over the whole-image batches (one image x
    # every seen kernel each), of the mean response of the conv before it
    from tutorial_lib import kernels as K

    enet = model.enet
    with torch.no_grad():
        batch_means = [enet.features[0](lr - enet.input_offset).mean(dim=(0, 2, 3)) for lr in
                       training._whole_image_batches(list(test_images.values()), K.kernel_set("seen"), SCALE, None)]
    torch.testing.assert_close(after, torch.stack(batch_means).mean(dim=0), rtol=1e-4, atol=1e-6)


def test_evaluate_model_modes_and_bicubic(tiny_images, encoder, test_images):
    model, _ = train_mixture(tiny_images, SCALE, with_overrides(QUICK, joint_steps=2), encoder=encoder[0],
                             progress=False)
    own = training.evaluate_model(model, test_images, SCALE, kernels=("unseen",))
    fused = training.evaluate_model(model, test_images, SCALE, kernels=("unseen",), output="fused")
    hard = training.evaluate_model(model, test_images, SCALE, kernels=("unseen",), output="hard")
    assert own == fused and set(hard["unseen"]) == {"psnr", "ssim"}
    assert model.mode == "fused"  # evaluating another mode leaves the model as it was
    tiled = training.evaluate_model(model, test_images, SCALE, kernels=("unseen",), posterior_tile=QUICK.lr_patch)
    assert set(tiled["unseen"]) == {"psnr", "ssim"} and model.posterior_tile is None
    with pytest.raises(ValueError, match="mixture"):
        training.evaluate_model("bicubic", test_images, SCALE, posterior_tile=12)
    bicubic = training.evaluate_model("bicubic", test_images, SCALE, kernels=("seen", "unseen"), max_side=32)
    assert set(bicubic) == {"seen", "unseen"} and 15 < bicubic["seen"]["psnr"] < 50


def test_evaluate_fusions_agrees_with_evaluate_model(tiny_images, encoder, test_images):
    model, _ = train_mixture(tiny_images, SCALE, with_overrides(QUICK, joint_steps=2), encoder=encoder[0],
                             progress=False)
    with torch.no_grad():  # experts that differ clearly and a posterior far from uniform: fusions that differ
        for conv in model.mixture.reconstruct, model.mixture.head:
            conv.weight.mul_(20.0)
        model.enet.fc.weight.mul_(50.0)
    images = {name: img for name, img in list(test_images.items())[:2]}
    fusions = training.evaluate_fusions(model, images, SCALE, kernels=("unseen",), posterior_tile=12, max_side=48)
    result = fusions["unseen"]
    for a, b in itertools.combinations(("whole", "tiles", "average"), 2):  # far apart beside the tolerances below
        assert abs(result[a]["psnr"] - result[b]["psnr"]) > 0.05, (a, b)
        assert abs(result[a]["ssim"] - result[b]["ssim"]) > 1e-3, (a, b)
    # the paper's fusion is what evaluate_model measures; the others as their own modes
    for name, kwargs in (("whole", {}), ("tiles", {"posterior_tile": 12}), ("average", {"output": "average"})):
        own = training.evaluate_model(model, images, SCALE, kernels=("unseen",), max_side=48, **kwargs)["unseen"]
        assert result[name]["psnr"] == pytest.approx(own["psnr"], abs=2e-3), name
        assert result[name]["ssim"] == pytest.approx(own["ssim"], abs=2e-5), name
    assert len(result["experts"]) == model.mixture.M
    for i, psnr in enumerate(result["experts"]):  # expert i alone, as a network of its own
        alone = training.evaluate_model(model.mixture.expert(i), images, SCALE, kernels=("unseen",), max_side=48)
        assert psnr == pytest.approx(alone["unseen"]["psnr"], abs=2e-3), i
    assert result["oracle"]["psnr"] >= max(result["experts"]) - 1e-9  # the best expert per case
    assert model.posterior_tile is None
    with pytest.raises(ValueError, match="mixture"):
        training.evaluate_fusions(copy.deepcopy(model).mixture, images, SCALE)
