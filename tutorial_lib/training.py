r"""Training within a budget: E-Net pre-training (Eq. 11), joint training of E-Net and the
mixture (Eq. 12), the ablations of Table 3, and the single-network baseline.

Read top to bottom:

1. :class:`Budget` and :data:`BUDGETS`: every number a training run uses, per budget
   (``smoke`` / ``cpu`` / ``gpu``, chosen by :func:`tutorial_lib.config.get_budget`).
2. The loop shared by every stage (:func:`_train_loop`): learning-rate schedule, stopping by
   steps or wall clock, history, progress bar.
3. :func:`pretrain_encoder` and :func:`encoder_accuracy`: the kernel classifier of Sec. 3.3.1
   and its accuracy on whole images.
4. :func:`train_mixture` (Eq. 12, the ablation variants, and experts started as copies of one
   network, ``init_experts``, a budget experiment) and :func:`train_single`.
5. :func:`train_all` and :func:`train_from_cli`: the three models of a run, saved as
   checkpoints with their metrics.

The loss scale and lambda
-------------------------
Eq. (12) is trained here on the paper's scale: the squared error is **summed over the HR
pixels** of a patch (images in [0, 1]) and averaged over the batch, with ``lambda = 0.05``
as in the paper, and gradients are clipped element-wise to [-0.6, 0.6] as in the paper
(Sec. 3.3.3). For a 48x48 HR patch the sum is ``N = 2304`` times the per-pixel mean, so this
``lambda`` is ``0.05 / 2304 ≈ 2.2e-5`` on the mean-over-pixels scale (see
:mod:`tutorial_lib.objectives`); a well-trained expert has a per-pixel error of about 1e-3,
i.e. a summed error of about 2, against ``0.05 * KL`` with a KL of order 1: the KL term is a
gentle pull, as the paper intends, not the dominant term it would be with ``lambda = 0.05``
on the mean scale. Histories log ``recon`` on this summed scale and ``mse`` (= recon / N)
and ``psnr`` (of that ``mse``, in dB, unrounded) per pixel.

Optimisers. The joint stage and the single network use Adam (mixture lr 1e-3, E-Net lr 1e-4,
the paper's 100:1 ratio replaced by 10:1), E-Net pre-training uses SGD (lr 1e-2, momentum
0.9), which beat Adam there (an independent measurement on 2 CPU cores: 33 % against 12 %
whole-image top-1 after 150 s). Measured on 2 CPU cores (``cpu`` budget, 150 s of joint
training from the same pre-trained E-Net, Set5 x2 on 8 of the 29 unseen kernels): Adam
33.9 dB; the paper's SGD (lr 1e-2 / 1e-4, momentum 0.9, same summed loss and clip) diverged
(training PSNR down to 14 dB, Set5 24.4 dB, below bicubic, with ``q`` collapsed onto one
expert); the paper does not say on which pixel scale its learning rate and clip apply, and
a smaller SGD rate would be slower still in a few minutes. Adam is invariant to
the scale of the loss, so the element-wise clip at 0.6 of the summed-scale gradient equals a
clip at 0.6/N on the mean scale; it bounds the largest entries (``grad_max`` in the history,
the largest |entry| before clipping, is about 5–7 at the start of a ``cpu`` run and about 1
at its end) without setting the step size. The paper's joint-training optimiser is
``with_overrides(budget, optimizer='sgd', mixture_lr=1e-2, schedule='step',
warmup_fraction=0.0)`` (SGD 1e-2 for the experts and 1e-4 for E-Net, with the budget's momentum 0.9,
divided by 10 in steps: here at a third and at two thirds of the stage, where the paper waits for the
validation loss to level off); ``optimizer='sgd'`` alone keeps the budget's learning rate
(1e-3) and cosine decay. Pre-training is SGD 1e-2 in every budget, with a weight decay of
1e-4 the paper does not mention.

Why the ``cpu`` budget looks as it does (2 CPU cores, torch 2.13, measured with
:func:`tutorial_lib.bench.run_benchmark`): the paper-size mixture (M = 4 experts of 64
channels and 7 blocks) trains at about 40 LR patches (24 x 24) per second, forward and
backward, so 8 minutes would show it only ~20 k patches; experts of 32 channels and 4 blocks
train at about 160 patches/s (batched; 175 as a loop; 2 threads, forward and backward) and
reach far more in the same time. With E-Net pre-training for 90 s (6 k to 9 k steps) and
joint training for 480 s (2.6 k and, in later runs, up to 5.0 k steps of 16 patches) on the
nine bundled training photographs, the mixture reached 33.8 to 34.2 dB on Set5 x2 with the
unseen kernels over five runs (bicubic 28.85 dB), 34.5 to 34.6 dB with the seen ones, and 33.6 /
33.7 dB on the bundled test photographs (bicubic 30.0 dB). A shared machine is slower: when
other processes keep the cores busy, two PyTorch threads can be several times slower than
one (``torch.set_num_threads(1)``), and a time budget then trains fewer steps.

The ``gpu`` budget (paper-size experts, batch 64; E-Net on batches of 256): E-Net 40 s,
mixture 150 s, single network 150 s. Measured on one NVIDIA H200 (torch 2.11, bf16, T91,
x2): 7.8 k E-Net steps (whole-image top-1 on Set5 x 29 seen kernels 24.8 %, top-3 56.5 %),
13.9 k mixture steps (about 6 k patches/s with sampling, E-Net and the optimiser) and
23.5 k single-network steps; Set5 x2 seen / unseen: mixture 35.52 / 34.75 dB, single
network 35.39 / 34.82 dB (the same 35.39 / 34.83 dB when it trains for the mixture's
13.9 k steps only). ``python -m tutorial_lib bench`` on the same card: 23.7 k patches/s for
the batched mixture alone (forward and backward, batch 256), 2.9 ms for a 512 x 512 output.
A longer run on one NVIDIA H100 (E-Net 60 s, then 240 s for the mixture and 240 s for the
single network, x2, T91; ``data/checkpoints/h100_240s/``): 15.3 k E-Net steps (whole-image
top-1 37.2 %, top-3 75.9 %), 27.2 k mixture steps, 51.4 k single-network steps; Set5 x2
seen / unseen: mixture 35.32 / 34.27 dB, single network 35.41 / 34.84 dB. With ``q`` from
E-Net on 24 x 24 tiles instead of the whole image (:class:`~tutorial_lib.models.BlindSR`,
``posterior_tile``) the same mixture gives 35.75 / 35.07 dB (README, *Checkpoints*).

E-Net and BatchNorm: E-Net is trained on patches (BatchNorm normalises with batch
statistics and keeps running averages) but applied to whole images. :func:`encoder_accuracy`
uses eval mode, i.e. the running averages from patch training. Recomputing the statistics
on whole training images (:func:`recalibrate_batchnorm`) was measured not to help (whole
images of Set5 and the bundled test split, 29 seen kernels, 24 x 24 pre-training patches:
top-1 17 % with the running averages, 12 % recalibrated; with 48 x 48 patches 12.5 % and
11 %), so the budgets keep ``recalibrate_bn=False`` and pre-train on 24 x 24 patches. For
the stronger ``gpu``-budget x2 encoder the same recalibration did help (bundled test
photographs, whole images: 19.5 % -> 31.0 % top-1; notebook 03), and averaging the class
probabilities of its 24 x 24 tiles helped more (40.2 %): the fix depends on the encoder and
has to be measured. The shipped mixtures were trained and evaluated without it.

Determinism: every stage seeds Python/NumPy/torch (:func:`tutorial_lib.config.seed_everything`)
and the patch sampler's own generator; the ``smoke`` budget stops after fixed step counts
(its wall-clock limits are only a safety cap), so two runs on the CPU give identical
histories. The ``cpu`` and ``gpu`` budgets are *time* budgets: each stage runs until its
step count or its seconds run out, and the learning-rate schedule follows whichever is
further along, so a slower machine trains fewer steps but always finishes its decay.

Resuming: ``resume_from=path`` (every training function) loads a checkpoint's weights and
its step count, and the optimiser state when the ``.opt.pt`` beside it exists (written by
:func:`train_all` and :func:`train_from_cli`); the run then trains the budget's steps (or
seconds) *more*, numbering steps on from the checkpoint, with the learning-rate schedule
started again from the top (a warm restart). The checkpoint's architecture wins over the
budget's width and depth.

On a GPU (``device.type == 'cuda'``) patches are sampled on the GPU, the forward pass runs
under bfloat16 autocast with channels-last tensors, and ``compile=True`` wraps the model in
``torch.compile``; on the CPU none of that is used. On both, the optimisers use PyTorch's
fused kernels where they exist (histories and sidecars say whether as ``fused_optimizer``),
and on a GPU the gradient maximum logged as ``grad_max`` is one multi-tensor kernel: fewer
launches per step, for the small per-step work that limits GPU training at batch 64. The
H200 figures above predate both; the H100 run ran with them, where PyTorch has them
(113 mixture steps/s against 93 on the H200, but on another card, so not a measurement of
their effect alone). ``torch.compile`` is not used by the budgets: on the H100 it sped up
the batched mixture's forward and backward by 8 % at batch 64 (README, *Speed*). On the
CPU (Linux with glibc) importing ``tutorial_lib`` applies
:func:`tutorial_lib.config.tune_cpu_allocator`, which keeps freed activation memory in the
process instead of handing it back to the kernel after every step (measured: system time down
from 4-8 s to 0.2 s per 30 s of mixture training, steps up by a few per cent, within the
run-to-run spread); histories and sidecars record it as ``cpu_allocator``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from . import kernels as kernel_lib
from .checkpoints import (
    CheckpointError,
    check_output_folder,
    load_checkpoint,
    load_optimizer_state,
    save_checkpoint,
    save_optimizer_state,
)
from .config import (
    check_integer,
    device_name,
    get_budget,
    get_device,
    seed_everything,
    tune_cpu_allocator,
)
from .degradations import (
    PatchSampler,
    _check_image,
    bicubic_upsample,
    centre_crop,
    degrade_with_kernels,
    modcrop,
)
from .models import (
    BlindSR,
    EncoderWithClassifier,
    ENet,
    Expert,
    KernelClassifier,
    MixtureOfExperts,
    _check_tile,
    device_of,
    enet_of,
)
from .objectives import (
    average_ensemble_loss,
    elbo_loss,
    hard_selection_losses,
    pretrain_loss,
    squared_error,
)

__all__ = [
    "BUDGETS",
    "Budget",
    "TrainingHistory",
    "encoder_accuracy",
    "encoder_metrics",
    "evaluate_fusions",
    "evaluate_model",
    "evaluate_trained",
    "get_training_budget",
    "lr_factor",
    "pretrain_encoder",
    "recalibrate_batchnorm",
    "save_trained",
    "train_all",
    "train_from_cli",
    "train_mixture",
    "train_single",
    "update_sidecar_metrics",
    "with_overrides",
]

Variant = Literal["elbo", "average", "hard"]
Prior = Literal["pretrained", "uniform"]


# ======================================================================================
# 1. Budgets
# ======================================================================================


@dataclass(frozen=True)
class Budget:
    """Every number a training run uses. Stages stop at ``*_steps`` or ``*_seconds``,
    whichever comes first (``None`` seconds: no time limit).

    ``clock``: ``'steps'`` — the learning-rate schedule follows the step count and the
    seconds are only a safety cap (deterministic runs); ``'time'`` — the schedule follows
    ``max(steps done / steps, seconds used / seconds)``, so a time-limited run still decays.
    """

    name: str
    clock: Literal["steps", "time"]
    # E-Net pre-training (Eq. 11)
    pretrain_steps: int
    pretrain_seconds: float | None
    pretrain_batch: int
    enet_patch: int  # LR patch side seen by E-Net in pre-training
    pretrain_lr: float  # SGD
    pretrain_momentum: float
    pretrain_weight_decay: float
    # joint training (Eq. 12), its ablations, and the single network
    joint_steps: int
    joint_seconds: float | None
    batch_size: int
    lr_patch: int  # LR patch side of the experts (HR side = scale * lr_patch)
    channels: int  # expert width
    n_blocks: int  # residual blocks per expert
    optimizer: Literal["adam", "sgd"]
    mixture_lr: float
    enet_lr: float
    momentum: float  # SGD only
    lam: float  # lambda of Eq. (12), on the summed-over-pixels scale (module doc)
    clip_value: float  # element-wise gradient clip, summed-over-pixels scale
    hard_stage_steps: int  # "hard selection with training": steps per stage before switching
    # schedule
    schedule: Literal["cosine", "step", "constant"]
    final_lr_factor: float  # cosine: lr at the end / initial lr
    warmup_fraction: float  # linear warm-up from 10 % of the lr over this fraction of the run
    # logging and evaluation
    log_every: int
    eval_max_side: int | None  # evaluation images are centre-cropped to this side (None: whole)
    recalibrate_bn: bool  # recompute E-Net BatchNorm statistics on whole images after training
    compile: bool = False  # torch.compile on CUDA

    def __post_init__(self) -> None:
        """Refuse a setting no run could use, naming it (also for :func:`with_overrides`)."""
        choices = {"clock": ("steps", "time"), "optimizer": ("adam", "sgd"),
                   "schedule": ("cosine", "step", "constant")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"budget {name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("pretrain_steps", "pretrain_batch", "enet_patch", "joint_steps", "batch_size", "lr_patch",
                     "channels", "n_blocks", "hard_stage_steps", "log_every"):
            check_integer(f"budget {name}", getattr(self, name))
        numbers = ("pretrain_seconds", "joint_seconds", "pretrain_lr", "mixture_lr", "enet_lr", "lam",
                   "pretrain_momentum", "momentum", "pretrain_weight_decay", "final_lr_factor", "warmup_fraction",
                   "clip_value")
        for name in numbers:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"budget {name} must be a number, got {value!r}")
        for name in ("pretrain_seconds", "joint_seconds"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"budget {name} must be a positive number of seconds or None, got {value!r}")
        for name in numbers[2:-1]:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"budget {name} must be a finite number >= 0, got {value!r}")
        if not 0 <= self.final_lr_factor <= 1:  # the schedule decays; > 1 would make it grow
            raise ValueError(f"budget final_lr_factor must lie in [0, 1], got {self.final_lr_factor!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"budget warmup_fraction must lie in [0, 1), got {self.warmup_fraction!r}")
        for name in ("recalibrate_bn", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"budget {name} must be True or False, got {getattr(self, name)!r}")  # noqa: TRY004 (as every budget check)
        if not self.clip_value > 0:  # inf: no clipping
            raise ValueError(f"budget clip_value must be a positive number (inf: no clipping), got {self.clip_value!r}")
        if self.eval_max_side is not None:
            check_integer("budget eval_max_side", self.eval_max_side)

    def summary(self) -> dict[str, Any]:
        """The budget as a plain dict (for sidecars and notebooks)."""
        return asdict(self)


BUDGETS: dict[str, Budget] = {
    # CI and the tests: seconds in total, tiny networks, fixed step counts (deterministic).
    "smoke": Budget(
        name="smoke", clock="steps",
        pretrain_steps=30, pretrain_seconds=60.0, pretrain_batch=16, enet_patch=16,
        pretrain_lr=1e-2, pretrain_momentum=0.9, pretrain_weight_decay=1e-4,
        joint_steps=30, joint_seconds=60.0, batch_size=8, lr_patch=12, channels=8, n_blocks=2,
        optimizer="adam", mixture_lr=1e-3, enet_lr=1e-4, momentum=0.9, lam=0.05, clip_value=0.6,
        hard_stage_steps=5, schedule="cosine", final_lr_factor=0.1, warmup_fraction=0.0,
        log_every=1, eval_max_side=64, recalibrate_bn=False,
    ),
    # A laptop, 2 CPU cores: E-Net 90 s + mixture 480 s <= 10 min (the single network gets
    # the mixture's 480 s again). Experts 32 wide, 4 blocks: the module doc says why.
    "cpu": Budget(
        name="cpu", clock="time",
        pretrain_steps=20_000, pretrain_seconds=90.0, pretrain_batch=32, enet_patch=24,
        pretrain_lr=1e-2, pretrain_momentum=0.9, pretrain_weight_decay=1e-4,
        joint_steps=100_000, joint_seconds=480.0, batch_size=16, lr_patch=24, channels=32, n_blocks=4,
        optimizer="adam", mixture_lr=1e-3, enet_lr=1e-4, momentum=0.9, lam=0.05, clip_value=0.6,
        hard_stage_steps=50, schedule="cosine", final_lr_factor=0.02, warmup_fraction=0.01,
        log_every=20, eval_max_side=None, recalibrate_bn=False,
    ),
    # One GPU, paper-size networks: E-Net 40 s + mixture 150 s (under the 5 minutes per scale
    # that pre-training and joint training may take), the single network the mixture's 150 s
    # again; large batches for E-Net.
    "gpu": Budget(
        name="gpu", clock="time",
        pretrain_steps=200_000, pretrain_seconds=40.0, pretrain_batch=256, enet_patch=24,
        pretrain_lr=1e-2, pretrain_momentum=0.9, pretrain_weight_decay=1e-4,
        joint_steps=1_000_000, joint_seconds=150.0, batch_size=64, lr_patch=24, channels=64, n_blocks=7,
        optimizer="adam", mixture_lr=1e-3, enet_lr=1e-4, momentum=0.9, lam=0.05, clip_value=0.6,
        hard_stage_steps=100, schedule="cosine", final_lr_factor=0.02, warmup_fraction=0.01,
        log_every=50, eval_max_side=None, recalibrate_bn=False,
    ),
}


def get_training_budget(budget: str | Budget | None = None) -> Budget:
    """A :class:`Budget`: returned as is, or looked up by name (``None``: :func:`get_budget`)."""
    if isinstance(budget, Budget):
        return budget
    return BUDGETS[get_budget(budget)]


# ======================================================================================
# 2. The shared loop
# ======================================================================================


class TrainingHistory(dict):
    """A dict of equally long lists, one entry per logged interval, for plots.

    Keys always present: ``step`` (last step of the interval), ``loss``, ``lr`` (of the
    first parameter group), ``patches_per_s`` (training patches per second over the
    interval), ``time`` (seconds since the stage began); each stage adds its own (``recon``,
    ``kl``, ``mse``, ``psnr``, ``accuracy``, ``usage``, ...), averaged over the interval.

    Attributes (not list entries): ``meta`` (steps, wall time, stopping reason, budget,
    device, ...), ``optimizer_state`` (to save beside a checkpoint and resume),
    ``pretrain`` (the E-Net pre-training history when a stage ran it itself) and
    ``pretrained_encoder`` (the encoder that pre-training produced, the mixture's prior).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meta: dict[str, Any] = {}
        self.optimizer_state: dict[str, Any] | None = None
        self.pretrain: TrainingHistory | None = None
        self.pretrained_encoder: EncoderWithClassifier | None = None


def lr_factor(progress: float, schedule: str = "cosine", final: float = 0.02, warmup: float = 0.0) -> float:
    """Multiplier of the initial learning rate at ``progress`` in [0, 1] of a stage.

    ``cosine``: from 1 down to ``final``; ``step``: x0.1 after a third and again after two
    thirds (the paper's pre-training: /10 every 20 of 60 epochs); ``constant``: 1. A linear
    warm-up from 0.1 to 1 over the first ``warmup`` of the stage multiplies any of them.
    """
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        factor = final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "step":
        factor = 0.1 ** min(int(3 * progress), 2)
    elif schedule == "constant":
        factor = 1.0
    else:
        raise ValueError(f"schedule must be 'cosine', 'step' or 'constant', got {schedule!r}")
    if warmup > 0 and progress < warmup:
        factor *= 0.1 + 0.9 * progress / warmup
    return factor


class _Clock:
    """Stops a stage at ``steps`` or ``seconds`` and tells the schedule how far along it is."""

    def __init__(self, steps: int, seconds: float | None, by_time: bool) -> None:
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.steps, self.seconds, self.by_time = steps, seconds, by_time
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def progress(self, done: int) -> float:
        p = done / self.steps if self.steps else 1.0
        if self.by_time and self.seconds:
            p = max(p, self.elapsed() / self.seconds)
        return min(p, 1.0)

    def stop_reason(self, done: int) -> str | None:
        if done >= self.steps:
            return "steps"
        if self.seconds is not None and self.elapsed() >= self.seconds:
            return "time"
        return None


def _make_optimizer(groups: list[tuple[list[nn.Parameter], float]], kind: str, momentum: float = 0.9,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam or SGD over ``(parameters, lr)`` groups; each group remembers its ``base_lr``.

    The fused implementation (one kernel for all parameters) is used where this PyTorch has it
    for the parameters' device (:func:`_fused_steps`), else the default one: the update is the
    same. On 2 CPU cores an Adam step over the ``cpu``-budget mixture and E-Net took 0.4 ms
    fused against 2.8 ms, an SGD step of the E-Net pre-training 0.1 ms against 0.3 ms; on a
    GPU it saves launches.
    """
    param_groups = [{"params": params, "lr": lr, "base_lr": lr} for params, lr in groups]
    if kind == "adam":
        cls, options = torch.optim.Adam, {"weight_decay": weight_decay}
    elif kind == "sgd":
        cls, options = torch.optim.SGD, {"momentum": momentum, "weight_decay": weight_decay}
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {kind!r}")
    first = next((p for params, _ in groups for p in params), None)
    if first is not None and _fused_steps(cls, options, first.device, first.dtype):
        try:
            return cls(param_groups, fused=True, **options)
        except (RuntimeError, TypeError, ValueError):  # e.g. parameters on several devices
            pass
    return cls(param_groups, **options)


_FUSED_STEPS: dict[tuple[type, str, torch.dtype], bool] = {}


def _fused_steps(cls: type[torch.optim.Optimizer], options: dict, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``cls(..., fused=True)`` can take a step on parameters of ``device`` and ``dtype``.

    Tried once per process on a one-element parameter: PyTorch before 2.4 accepts
    ``fused=True`` for CPU parameters and only fails at the first step (no fused CPU kernel),
    so constructing the optimiser is not enough of a check.
    """
    key = (cls, device.type, dtype)
    if key not in _FUSED_STEPS:
        probe = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))
        probe.grad = torch.ones_like(probe)
        try:
            cls([probe], lr=1e-3, fused=True, **options).step()
        except (RuntimeError, TypeError, ValueError):  # NotImplementedError is a RuntimeError
            _FUSED_STEPS[key] = False
        else:
            _FUSED_STEPS[key] = True
    return _FUSED_STEPS[key]


def _restore_optimizers(optimizers: list[torch.optim.Optimizer], resume_from: str | Path | None) -> bool:
    """Load the ``.opt.pt`` state beside a checkpoint into ``optimizers`` when it matches.

    The learning rates stay those of the current budget (the schedule restarts on resume).
    Returns whether a state was loaded.
    """
    if resume_from is None:
        return False
    payload = load_optimizer_state(resume_from)
    if payload is None:
        return False
    classes = [type(o).__name__ for o in optimizers]
    if list(payload["classes"]) != classes:
        warnings.warn(f"optimiser state beside {resume_from} is for {payload['classes']}, this run uses "
                      f"{classes}: starting the optimiser afresh", stacklevel=3)
        return False
    for optimizer, state in zip(optimizers, payload["states"]):
        base_lrs = [g["base_lr"] for g in optimizer.param_groups]
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError) as err:
            warnings.warn(f"optimiser state beside {resume_from} does not fit ({err}): starting afresh",
                          stacklevel=3)
            return False
        for group, base_lr in zip(optimizer.param_groups, base_lrs):
            group["base_lr"] = base_lr
    return True


def _optimizer_payload(optimizers: list[torch.optim.Optimizer]) -> dict[str, Any]:
    return {"classes": [type(o).__name__ for o in optimizers],
            "states": [copy.deepcopy(o.state_dict()) for o in optimizers]}


_GET_TOTAL_NORM = getattr(torch.nn.utils, "get_total_norm", None)  # PyTorch >= 2.6


def _clip_gradients(params: Sequence[nn.Parameter], clip_value: float, multi_tensor: bool | None = None
                    ) -> torch.Tensor:
    """Clip every gradient entry to [-clip_value, clip_value] (the paper's clipping);
    returns the largest |entry| *before* clipping (a 0-d tensor).

    ``multi_tensor`` (default: on CUDA) computes that maximum with one multi-tensor kernel
    (``torch.nn.utils.get_total_norm`` with the infinity norm) instead of two small kernels
    per parameter; on the CPU the per-parameter loop was faster (0.4 vs 1.1 ms for the
    ``cpu``-budget mixture and E-Net).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if multi_tensor is None:
        multi_tensor = grads[0].device.type == "cuda"
    if multi_tensor and _GET_TOTAL_NORM is not None:
        grad_max = _GET_TOTAL_NORM([g.detach() for g in grads], norm_type=math.inf)
    else:
        grad_max = torch.stack([g.detach().abs().max() for g in grads]).max()
    torch.nn.utils.clip_grad_value_(params, clip_value)
    return grad_max


def _autocast(device: torch.device):
    """bfloat16 autocast on CUDA, nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device_layout(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Channels-last on CUDA (faster convolutions with bf16), unchanged on the CPU."""
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def _prepare(model: nn.Module, device: torch.device, compile_model: bool) -> tuple[nn.Module, nn.Module]:
    """Move ``model`` to ``device`` (channels-last on CUDA); return ``(model, runner)`` where
    ``runner`` is what the loop calls (``torch.compile``'d when asked, on CUDA only)."""
    model.to(device)
    if device.type != "cuda":
        if compile_model:
            warnings.warn("compile=True is used on CUDA only; training eagerly on the CPU", stacklevel=3)
        return model, model
    torch.backends.cudnn.benchmark = True
    model.to(memory_format=torch.channels_last)
    runner = torch.compile(model) if compile_model else model
    return model, runner


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _ProgressBar:
    """A tqdm bar over the steps, or over the seconds when a time budget decides.

    Under a time budget the step limit is only a cap far away (100,000 steps for a few
    minutes), so a bar over steps would predict hours; this one counts seconds of the budget
    and shows the steps done beside the loss.
    """

    def __init__(self, desc: str, steps: int, seconds: float | None, by_time: bool) -> None:
        from tqdm.auto import tqdm

        self.by_time = bool(by_time and seconds)
        if self.by_time:
            self.bar = tqdm(total=float(seconds), desc=f"{desc} ({seconds:g} s)", leave=False,
                            dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:g} s [{elapsed}<{remaining}{postfix}]")
        else:
            self.bar = tqdm(total=steps, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, done: int, new_steps: int, elapsed: float, loss: float) -> None:
        # the postfix first, so that the redraw of update() shows this log's numbers
        if self.by_time:
            self.bar.set_postfix(steps=done, loss=f"{loss:.4g}", refresh=False)
            self.bar.update(min(elapsed, self.bar.total) - self.bar.n)
        else:
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            self.bar.update(new_steps)

    def close(self) -> None:
        self.bar.close()


def _train_loop(
    step_fn: Callable[[int], dict[str, torch.Tensor | float]],
    *,
    optimizers: list[torch.optim.Optimizer],
    steps: int,
    seconds: float | None,
    budget: Budget,
    schedule: str,
    patches_per_step: int,
    log_every: int,
    desc: str,
    progress: bool,
    start_step: int,
    device: torch.device,
) -> TrainingHistory:
    """Run ``step_fn(global_step)`` until the clock stops it; return the history.

    Before each step the learning rate of every parameter group is set to
    ``base_lr * lr_factor(progress)``. ``step_fn`` returns detached scalars (or small
    tensors, e.g. per-expert usage), averaged here over each logging interval.
    """
    allocator = tune_cpu_allocator() if device.type == "cpu" else None
    clock = _Clock(steps, seconds, by_time=budget.clock == "time")
    history = TrainingHistory(step=[], loss=[], lr=[], patches_per_s=[], time=[])
    sums: dict[str, Any] = {}
    count = 0
    last_time, last_step = 0.0, 0
    bar = _ProgressBar(desc, steps, seconds, clock.by_time) if progress else None
    done = 0
    stop = clock.stop_reason(0)
    while stop is None:
        factor = lr_factor(clock.progress(done), schedule, budget.final_lr_factor, budget.warmup_fraction)
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
        metrics = step_fn(start_step + done + 1)
        done += 1
        for key, value in metrics.items():
            value = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            sums[key] = sums[key] + value if key in sums else value.clone()
        count += 1
        stop = clock.stop_reason(done)
        if done % log_every == 0 or stop is not None:
            _sync(device)
            now = clock.elapsed()
            history["step"].append(start_step + done)
            history["lr"].append(optimizers[0].param_groups[0]["lr"])
            history["patches_per_s"].append(patches_per_step * (done - last_step) / max(now - last_time, 1e-9))
            history["time"].append(now)
            for key, total in sums.items():
                mean = (total / count).cpu()
                history.setdefault(key, []).append(mean.item() if mean.numel() == 1 else mean.tolist())
            if "mse" in sums:
                history.setdefault("psnr", []).append(-10.0 * math.log10(max(history["mse"][-1], 1e-12)))
            if bar is not None:
                bar.update(done, done - last_step, now, history["loss"][-1])
            sums, count, last_time, last_step = {}, 0, now, done
    if bar is not None:
        bar.close()
    history.meta.update(steps=start_step + done, steps_this_run=done, start_step=start_step,
                        wall_time_s=clock.elapsed(), stopped_by=stop, budget=budget.name, device=str(device),
                        device_name=device_name(device))
    if allocator is not None:
        history.meta["cpu_allocator"] = allocator["reason"]
    # whether PyTorch took its fused optimiser kernels (_make_optimizer falls back where there are none)
    history.meta["fused_optimizer"] = all(bool(o.defaults.get("fused")) for o in optimizers)
    history.optimizer_state = _optimizer_payload(optimizers)
    return history


# ======================================================================================
# 3. E-Net pre-training (Eq. 11) and kernel accuracy
# ======================================================================================


def _as_image_list(images: Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """``{name: Y}``, a list of Y images or one Y image -> (list of float64 (H, W), names)."""
    if isinstance(images, Mapping):
        names = [str(n) for n in images]
        arrays = [np.asarray(images[n]) for n in images]
    elif isinstance(images, np.ndarray) and images.ndim == 2:
        names, arrays = ["image_0"], [images]
    else:
        arrays = [np.asarray(img) for img in images]
        names = [f"image_{i}" for i in range(len(arrays))]
    if not arrays:
        raise ValueError("images must hold at least one HR image (H, W) in [0, 1]")
    return [_check_image(img, f"image {name!r}") for name, img in zip(names, arrays)], names


def _kernel_array(kernels: str | np.ndarray) -> tuple[np.ndarray, str]:
    if isinstance(kernels, str):
        return kernel_lib.kernel_set(kernels), kernels
    array = np.asarray(kernels, dtype=np.float64)
    if array.ndim != 3:
        raise ValueError(f"kernels must be a kernel-set name or an array (K, k, k), got shape {array.shape}")
    return array, "custom"


def _sampler(images: list[np.ndarray], names: list[str], kernels: np.ndarray, scale: int, lr_patch: int,
             device: torch.device, seed: int) -> tuple[PatchSampler, list[str]]:
    """The patch sampler of a stage (on the GPU when training there, else on the CPU), and the
    names of the images it samples from.

    Images smaller than one HR patch (``scale * lr_patch``, e.g. the smallest T91 images
    at x4) cannot hold a training pair and are left out with a warning; the names returned
    (which the checkpoint records) are those of the images used.
    """
    side = scale * lr_patch
    keep = [i for i, img in enumerate(images) if min(img.shape[:2]) >= side]
    if not keep:
        raise ValueError(f"no training image is at least {side}x{side} pixels (one HR patch at "
                         f"x{scale} with {lr_patch}x{lr_patch} LR patches)")
    if len(keep) < len(images):
        left_out = [name for name, img in zip(names, images) if min(img.shape[:2]) < side]
        warnings.warn(f"{len(left_out)} of {len(images)} training images are smaller than one HR patch "
                      f"({side}x{side}) and are not used: {', '.join(left_out[:5])}"
                      f"{', ...' if len(left_out) > 5 else ''}", stacklevel=3)
    sampler = PatchSampler([images[i] for i in keep], kernels, scale, lr_patch=lr_patch, device=device, seed=seed)
    return sampler, [names[i] for i in keep]


def _data_record(names: list[str], used: list[str], kernel_name: str, kernel_array: np.ndarray) -> dict[str, Any]:
    """What a stage trained on: the images used (and those too small to hold one patch)."""
    record: dict[str, Any] = {"training_images": used, "kernels": kernel_name, "n_kernels": len(kernel_array)}
    if len(used) < len(names):
        kept = set(used)
        record["images_too_small"] = [n for n in names if n not in kept]
    return record


def pretrain_encoder(
    images: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    scale: int,
    budget: str | Budget | None = None,
    M: int = 4,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    log_every: int | None = None,
    *,
    kernels: str | np.ndarray = "seen",
    hidden: int = 64,
    resume_from: str | Path | None = None,
    compile: bool | None = None,
) -> tuple[EncoderWithClassifier, TrainingHistory]:
    """Pre-train E-Net with the kernel classifier on top, Eq. (11).

    Each step draws ``budget.pretrain_batch`` LR patches of side ``budget.enet_patch``, each
    from a random image, rotation/flip, position and one of the ``K`` kernels (29 seen
    kernels by default), and minimises the cross-entropy of the kernel index. SGD (lr
    ``budget.pretrain_lr``, momentum 0.9, weight decay 1e-4) with the budget's schedule
    (cosine by default), gradients clipped to ``budget.clip_value``.

    Args:
        images: HR training images, float (H, W) in [0, 1] (a ``{name: Y}`` dict or a list).
        scale: upscaling factor ``u``: LR patches are made as Eq. (1) at this scale.
        budget: a :class:`Budget` or its name (``None``: :func:`tutorial_lib.config.get_budget`).
        M: number of latent states (E-Net scores).
        kernels: the classes, a kernel-set name or an array (K, k, k).
        resume_from: an ``'encoder'`` checkpoint to continue from (weights, step count, and
            the optimiser state when its ``.opt.pt`` is there; the schedule restarts).

    Returns:
        ``(model, history)``: the :class:`EncoderWithClassifier` in eval mode on ``device``
        (its ``enet`` is the pre-trained E-Net) and the history (``loss``, ``accuracy``
        on the training patches, ``lr``, ...).
    """
    budget = get_training_budget(budget)
    device = get_device(device)
    arrays, names = _as_image_list(images)
    kernel_array, kernel_name = _kernel_array(kernels)
    seed_everything(seed)
    model = EncoderWithClassifier(ENet(M), KernelClassifier(M, len(kernel_array), hidden))
    start_step = 0
    if resume_from is not None:
        model, sidecar = load_checkpoint(resume_from, expected_kind="encoder", scale=scale)
        if not isinstance(model, EncoderWithClassifier) or model.enet.M != M or model.classifier.K != len(kernel_array):
            raise CheckpointError(f"{resume_from} is not an encoder with M={M} states and K={len(kernel_array)} "
                                  "classes; cannot resume pre-training from it")
        start_step = int(sidecar.get("steps", 0))
    model, runner = _prepare(model, device, budget.compile if compile is None else compile)
    model.train()
    sampler, used = _sampler(arrays, names, kernel_array, scale, budget.enet_patch, device, seed)
    optimizer = _make_optimizer([(list(model.parameters()), budget.pretrain_lr)], "sgd",
                                budget.pretrain_momentum, budget.pretrain_weight_decay)
    _restore_optimizers([optimizer], resume_from)
    params = list(model.parameters())

    def step(global_step: int) -> dict[str, torch.Tensor]:
        batch = sampler.sample(budget.pretrain_batch)
        lr = _to_device_layout(batch["lr"], device)
        with _autocast(device):
            logits = runner(lr)
        loss = pretrain_loss(logits.float(), batch["kernel_index"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_max = _clip_gradients(params, budget.clip_value)
        optimizer.step()
        accuracy = (logits.detach().argmax(dim=1) == batch["kernel_index"]).float().mean()
        return {"loss": loss.detach(), "accuracy": accuracy, "grad_max": grad_max}

    history = _train_loop(step, optimizers=[optimizer], steps=budget.pretrain_steps,
                          seconds=budget.pretrain_seconds, budget=budget, schedule=budget.schedule,
                          patches_per_step=budget.pretrain_batch, log_every=log_every or budget.log_every,
                          desc="pre-train E-Net", progress=progress, start_step=start_step, device=device)
    history.meta.update(stage="pretrain", M=M, scale=scale, seed=seed, **_data_record(names, used, kernel_name, kernel_array))
    return model.eval(), history


def _whole_image_batches(images: Sequence[np.ndarray], kernels: np.ndarray, scale: int, max_side: int | None = None):
    """For each HR image: its LR versions under every kernel, (K, 1, h, w) float32 (CPU)."""
    for hr in images:
        hr = _centre_crop(modcrop(np.asarray(hr, dtype=np.float64), scale), max_side, scale)
        yield degrade_with_kernels(hr, kernels, scale).float()


def _centre_crop(img: np.ndarray, max_side: int | None, scale: int) -> np.ndarray:
    """Centre crop to at most ``max_side`` (rounded down to a multiple of ``scale``)."""
    return img if max_side is None else centre_crop(img, max_side, scale)


@torch.no_grad()
def recalibrate_batchnorm(
    enet: ENet | EncoderWithClassifier | BlindSR,
    images: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    scale: int,
    kernels: str | np.ndarray = "seen",
    max_side: int | None = None,
) -> nn.Module:
    """Recompute E-Net's BatchNorm running statistics on *whole* LR images (in place), or on
    their HR centre crops of side ``max_side`` when it is given (a faster approximation).

    During training BatchNorm normalises with the statistics of the current batch of
    patches and keeps exponential running averages, which eval mode uses. Whole images
    differ from patches only at the borders (zero padding of each stride-2 conv) and in
    content mix, so the running averages are usually close; this function replaces them by
    the exact average over every image x kernel (``momentum=None``: cumulative mean), for
    comparison. Returns the module, in eval mode.
    """
    module = enet.enet if isinstance(enet, (EncoderWithClassifier, BlindSR)) else enet
    if module is None:
        raise ValueError("this model has no E-Net (averaged ensemble): nothing to recalibrate")
    arrays, _ = _as_image_list(images)
    kernel_array, _ = _kernel_array(kernels)
    device = device_of(module)
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    for lr in _whole_image_batches(arrays, kernel_array, scale, max_side):
        module(lr.to(device))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    enet.eval()
    return enet


@torch.no_grad()
def encoder_accuracy(
    enet_or_classifier: EncoderWithClassifier | ENet | BlindSR,
    images: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    scale: int,
    kernels: str | np.ndarray = "seen",
    max_side: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Kernel-classification accuracy on whole images: every image x every kernel.

    Each HR image is degraded (Eq. 1) by each of the ``K`` kernels, the *whole* LR image goes
    through the network in eval mode (BatchNorm running statistics from patch training, no
    dropout; the module doc explains why they are not recomputed), and the prediction is
    compared with the kernel's index.

    - For an :class:`EncoderWithClassifier` (K-way classifier, ``K == len(kernels)``):
      ``top1``, ``top3`` as usual, and ``top1_distinct``, which also counts a prediction of
      a kernel identical to the true one (the seen set holds 3 duplicate pairs, so ``top1``
      cannot exceed 26/29 while ``top1_distinct`` can reach 1).
    - For a bare :class:`ENet`, or a mixture's (``M`` states, no kernel classes): each kernel's label is the
      state most of its images fall into, and ``top1``/``top3`` measure how consistently
      images of a kernel land in that state (1 = every kernel is one cluster).

    Returns:
        dict with ``top1``, ``top3``, ``top1_distinct`` (floats in [0, 1]), ``confusion``
        (K, K) or (K, M) int array of counts (row: true kernel, column: prediction),
        ``n_cases`` and ``kind`` (``'kernel'`` or ``'state'``).
    """
    arrays, _ = _as_image_list(images)
    kernel_array, _ = _kernel_array(kernels)
    model = enet_or_classifier if isinstance(enet_or_classifier, EncoderWithClassifier) \
        else enet_of(enet_or_classifier)  # an ENet, or the E-Net of a mixture
    if device is None:
        device = device_of(model)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    is_classifier = isinstance(model, EncoderWithClassifier)
    n_kernels = len(kernel_array)
    if is_classifier and model.classifier.K != n_kernels:
        raise ValueError(f"the classifier has K={model.classifier.K} classes but {n_kernels} kernels were given")
    outputs = []
    for lr in _whole_image_batches(arrays, kernel_array, scale, max_side):
        outputs.append(model(lr.to(device)).float().cpu())  # (K, K) logits or (K, M) scores
    model.train(was_training)
    logits = torch.stack(outputs)  # (n_images, K, C)
    target = torch.arange(n_kernels).expand(logits.shape[0], n_kernels)
    if not is_classifier:
        states = logits.argmax(dim=2)  # (n_images, K)
        target = torch.mode(states, dim=0).values.expand_as(states)  # majority state per kernel
    ranked = logits.argsort(dim=2, descending=True)
    top1 = (ranked[..., 0] == target).float().mean().item()
    top3 = (ranked[..., :3] == target[..., None]).any(dim=2).float().mean().item()
    n_classes = logits.shape[2]
    confusion = np.zeros((n_kernels, n_classes), dtype=np.int64)
    np.add.at(confusion, (np.arange(n_kernels)[None].repeat(logits.shape[0], 0).ravel(),
                          ranked[..., 0].numpy().ravel()), 1)
    if is_classifier:
        flat = kernel_array.reshape(n_kernels, -1)
        same = np.abs(flat[:, None] - flat[None]).max(axis=2) < 1e-12  # identical kernels
        top1_distinct = float((confusion * same).sum() / confusion.sum())
    else:
        top1_distinct = top1
    return {"top1": top1, "top3": top3, "top1_distinct": top1_distinct, "confusion": confusion,
            "n_cases": int(confusion.sum()), "kind": "kernel" if is_classifier else "state"}


# ======================================================================================
# 4. Joint training (Eq. 12), the ablations, and the single network
# ======================================================================================


_MODE_OF_VARIANT = {"elbo": "fused", "hard": "hard", "average": "average"}


def train_mixture(
    images: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    scale: int,
    budget: str | Budget | None = None,
    encoder: EncoderWithClassifier | ENet | None = None,
    M: int = 4,
    lam: float | None = None,
    prior: Prior = "pretrained",
    variant: Variant = "elbo",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    log_every: int | None = None,
    *,
    kernels: str | np.ndarray = "seen",
    resume_from: str | Path | None = None,
    compile: bool | None = None,
    init_experts: Expert | None = None,
) -> tuple[BlindSR, TrainingHistory]:
    r"""Train E-Net and the mixture of ``M`` experts jointly, Eq. (12), or an ablation.

    Variants (Sec. 4.2, Table 3):

    - ``variant='elbo', prior='pretrained'`` (the method): E-Net starts from the pre-trained
      ``encoder`` (pre-trained here first when ``encoder`` is ``None``), the prior ``q^`` of
      the KL term is a frozen copy of it (eval mode), and the loss is
      ``sum_z q_z ||H - F_z||^2 + lam * KL(q || q^)``.
    - ``variant='elbo', prior='uniform'`` ("without pre-training"): a fresh E-Net and
      ``q^ = 1/M``; ``encoder`` is not used.
    - ``variant='average'`` ("averaged ensemble"): no E-Net, the loss of the mean of the
      experts (:func:`~tutorial_lib.objectives.average_ensemble_loss`).
    - ``variant='hard'`` ("hard selection with training"): E-Net from the pre-trained
      encoder; stages of ``budget.hard_stage_steps`` steps alternate between training the
      experts on the error of the expert E-Net picks (E-Net fixed, eval mode) and training
      E-Net on the first term of Eq. (12) (experts fixed), via
      :func:`~tutorial_lib.objectives.hard_selection_losses`.
    - "Hard selection" *without* training is not a training variant: evaluate the ``'elbo'``
      model with ``mode='hard'``.

    Scales and optimiser (module doc): squared errors are summed over the HR pixels of a
    patch (images in [0, 1]) and averaged over the batch; ``lam`` (default
    ``budget.lam = 0.05``, the paper's value) weighs the KL on that scale; gradients are
    clipped element-wise to ``budget.clip_value`` (0.6, the paper's). The mixture trains with
    ``budget.mixture_lr`` and E-Net with ``budget.enet_lr`` (Adam 1e-3 / 1e-4 in the
    shipped budgets; the paper's SGD 1e-2 / 1e-4 is ``optimizer='sgd', mixture_lr=1e-2``), both decayed by the
    budget's schedule. E-Net keeps dropout 0.5 during training, as the paper.

    Args:
        images: HR training images, float (H, W) in [0, 1].
        scale: upscaling factor ``u``.
        budget: a :class:`Budget` or its name.
        encoder: the pre-trained E-Net (or the EncoderWithClassifier around it).
        M: number of experts.
        resume_from: a ``'mixture'`` checkpoint of the same variant to continue from (its
            weights and step count, and its optimiser state when the ``.opt.pt`` is there);
            the learning-rate schedule restarts (a warm restart). It is checked before
            anything trains. The prior ``q_hat`` is not part of a mixture checkpoint: pass the
            pre-trained ``encoder`` it was trained with (``train_all`` saves it as
            ``x{u}_encoder.pt``), else E-Net is pre-trained again here.
        init_experts: start every expert as a copy of this network (for example a single
            network from :func:`train_single` with the same budget) instead of at random, as
            the paper does. Not a paper setting: a budget experiment (README, notebook 04).
            The ``M`` copies are identical at the first step and drift apart because each
            expert's gradient is weighted by its own ``q_z``. Recorded in the history's
            ``meta['init_experts']``.

    Returns:
        ``(model, history)``: :class:`BlindSR` in eval mode (``mode`` ``'fused'``,
        ``'hard'`` or ``'average'``) and the history: ``loss``, ``recon`` (summed scale),
        ``kl``, ``mse`` and ``psnr`` (per pixel, of the expected error), ``usage`` (mean
        ``q`` per expert), ``q_entropy`` (nats), ``grad_max`` (before clipping), ``lr``, ...
        ``history.pretrain`` holds the pre-training history when it ran here.
    """
    budget = get_training_budget(budget)
    device = get_device(device)
    if variant not in _MODE_OF_VARIANT:
        raise ValueError(f"variant must be one of {tuple(_MODE_OF_VARIANT)}, got {variant!r}")
    if prior not in ("pretrained", "uniform"):
        raise ValueError(f"prior must be 'pretrained' or 'uniform', got {prior!r}")
    lam = budget.lam if lam is None else float(lam)
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    arrays, names = _as_image_list(images)
    kernel_array, kernel_name = _kernel_array(kernels)
    uses_pretrained = variant != "average" and prior == "pretrained"
    if init_experts is not None and resume_from is not None:
        raise ValueError("init_experts and resume_from exclude each other: a resumed run keeps its experts")
    resumed = None
    if resume_from is not None:  # checked before any pre-training time is spent
        resumed = load_checkpoint(resume_from, expected_kind="mixture", scale=scale)
        resumed_model, sidecar = resumed
        recorded = sidecar.get("variant", {"fused": "elbo"}.get(sidecar["architecture"].get("mode"), variant))
        if recorded != variant or resumed_model.mixture.M != M:
            raise CheckpointError(f"{resume_from} holds a {recorded!r} mixture of M={resumed_model.mixture.M}; "
                                  f"cannot resume variant {variant!r} with M={M} from it")
        if variant != "average" and sidecar.get("prior") not in (None, prior):
            raise CheckpointError(f"{resume_from} was trained with prior {sidecar['prior']!r}; "
                                  f"cannot resume it with prior {prior!r}")

    # A resumed run keeps its own E-Net: a pre-trained one is then needed only as Eq. (12)'s prior.
    needs_encoder = uses_pretrained and (resumed is None or variant == "elbo")
    pretrain_history = None
    if needs_encoder and encoder is None:
        encoder, pretrain_history = pretrain_encoder(dict(zip(names, arrays)), scale, budget, M=M, seed=seed,
                                                     device=device, progress=progress, kernels=kernels)
    pretrained_enet = enet_of(encoder) if uses_pretrained and encoder is not None else None
    if pretrained_enet is not None and pretrained_enet.M != M:
        raise ValueError(f"the encoder has M={pretrained_enet.M} states, but M={M} experts were asked for")

    seed_everything(seed)
    mixture = MixtureOfExperts(M, scale, channels=budget.channels, n_blocks=budget.n_blocks)
    if init_experts is not None:
        if variant == "average":
            raise ValueError("init_experts does not apply to variant 'average': the loss of the mean gives every "
                             "expert the same gradient, so identical copies would stay identical")
        if not isinstance(init_experts, Expert):
            raise TypeError(f"init_experts must be an Expert (a single network), got {type(init_experts).__name__}")
        if init_experts.config() != mixture.expert_config():
            raise ValueError(f"init_experts has architecture {init_experts.config()}, but budget "
                             f"{budget.name!r} trains experts {mixture.expert_config()}")
        mixture = MixtureOfExperts.from_experts([init_experts] * M).float().cpu()  # copies the weights
    if variant == "average":
        enet = None
    elif pretrained_enet is not None:
        enet = copy.deepcopy(pretrained_enet).cpu()
    else:
        enet = ENet(M)
    model = BlindSR(enet, mixture, mode=_MODE_OF_VARIANT[variant])
    start_step = 0
    if resumed is not None:
        model, sidecar = resumed
        start_step = int(sidecar.get("steps", 0))
    prior_enet = None
    if variant == "elbo" and prior == "pretrained":
        prior_enet = copy.deepcopy(pretrained_enet).to(device).eval().requires_grad_(False)

    compile_model = budget.compile if compile is None else compile
    model, runner = _prepare(model, device, compile_model)
    model.train()
    sampler, used = _sampler(arrays, names, kernel_array, scale, budget.lr_patch, device, seed + 1)
    n_pixels = (scale * budget.lr_patch) ** 2
    mixture_params = list(model.mixture.parameters())
    enet_params = list(model.enet.parameters()) if model.enet is not None else []
    if variant == "hard":  # two optimisers, one per alternating stage
        optimizers = [_make_optimizer([(mixture_params, budget.mixture_lr)], budget.optimizer, budget.momentum),
                      _make_optimizer([(enet_params, budget.enet_lr)], budget.optimizer, budget.momentum)]
    else:
        groups = [(mixture_params, budget.mixture_lr)] + ([(enet_params, budget.enet_lr)] if enet_params else [])
        optimizers = [_make_optimizer(groups, budget.optimizer, budget.momentum)]
    _restore_optimizers(optimizers, resume_from)
    all_params = mixture_params + enet_params

    def draw() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = sampler.sample(budget.batch_size)
        lr = _to_device_layout(batch["lr"], device)
        return lr, batch["hr"], bicubic_upsample(batch["lr"], scale)

    def usage_stats(q: torch.Tensor) -> dict[str, torch.Tensor]:
        q = q.detach().float()
        entropy = -(q * q.clamp_min(1e-12).log()).sum(dim=1).mean()
        return {"usage": q.mean(dim=0), "q_entropy": entropy}

    def step_elbo(global_step: int) -> dict[str, torch.Tensor]:
        lr, hr, base = draw()
        with _autocast(device):
            out = runner(lr, base)
        scores = None if out["scores"] is None else out["scores"].float()
        experts = out["experts"].float()
        if variant == "average":
            loss = average_ensemble_loss(experts, hr, reduction="sum")
            terms = {"loss": loss, "recon": loss, "kl": torch.zeros((), device=loss.device)}
            q = out["q"]
        else:
            q = torch.softmax(scores, dim=1)
            q_prior = None
            if prior_enet is not None:
                with torch.no_grad(), _autocast(device):
                    q_prior = torch.softmax(prior_enet(lr).float(), dim=1)
            terms = elbo_loss(experts, hr, q, q_prior, lam=lam, reduction="sum", scores=scores)
        optimizers[0].zero_grad(set_to_none=True)
        terms["loss"].backward()
        grad_max = _clip_gradients(all_params, budget.clip_value)
        optimizers[0].step()
        return {"loss": terms["loss"].detach(), "recon": terms["recon"].detach(), "kl": terms["kl"].detach(),
                "mse": terms["recon"].detach() / n_pixels, "grad_max": grad_max, **usage_stats(q)}

    def step_hard(global_step: int) -> dict[str, torch.Tensor]:
        lr, hr, base = draw()
        train_experts = ((global_step - 1) // budget.hard_stage_steps) % 2 == 0
        if train_experts:  # stage 1: E-Net fixed, the chosen expert learns
            model.enet.eval()
            with torch.no_grad(), _autocast(device):
                q = torch.softmax(model.enet(lr).float(), dim=1)
            with _autocast(device):
                experts = model.mixture(lr, q.to(lr.dtype), base)["experts"].float()
            losses = hard_selection_losses(experts, hr, q, reduction="sum")
            loss, optimizer, params = losses["expert_loss"], optimizers[0], mixture_params
        else:  # stage 2: experts fixed, E-Net learns the first term of Eq. (12)
            model.enet.train()
            with torch.no_grad(), _autocast(device):
                experts = model.mixture(lr, torch.full((lr.shape[0], M), 1.0 / M, device=lr.device), base)["experts"]
            with _autocast(device):
                q = torch.softmax(model.enet(lr).float(), dim=1)
            losses = hard_selection_losses(experts.float(), hr, q, reduction="sum")
            loss, optimizer, params = losses["encoder_loss"], optimizers[1], enet_params
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_max = _clip_gradients(params, budget.clip_value)
        optimizer.step()
        with torch.no_grad():
            chosen = experts[torch.arange(experts.shape[0], device=experts.device), losses["chosen"]]
            recon = squared_error(chosen.float(), hr, "sum").mean()
        return {"loss": loss.detach(), "recon": recon, "kl": torch.zeros((), device=recon.device),
                "mse": recon / n_pixels, "grad_max": grad_max,
                "stage": torch.tensor(0.0 if train_experts else 1.0), **usage_stats(q)}

    desc = {"elbo": f"train mixture ({prior} prior)", "average": "train averaged ensemble",
            "hard": "train hard selection"}[variant]
    history = _train_loop(step_hard if variant == "hard" else step_elbo, optimizers=optimizers,
                          steps=budget.joint_steps, seconds=budget.joint_seconds, budget=budget,
                          schedule=budget.schedule, patches_per_step=budget.batch_size,
                          log_every=log_every or budget.log_every, desc=desc, progress=progress,
                          start_step=start_step, device=device)
    history.meta.update(stage="mixture", variant=variant, prior=prior if variant != "average" else None, lam=lam,
                        M=M, scale=scale, seed=seed, loss_scale="sum over HR pixels, [0, 1] images",
                        init_experts="random" if init_experts is None else "copies of a given network",
                        **_data_record(names, used, kernel_name, kernel_array))
    history.pretrain = pretrain_history
    history.pretrained_encoder = encoder if pretrain_history is not None else None
    model.mode = _MODE_OF_VARIANT[variant]
    return model.eval(), history


def train_single(
    images: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    scale: int,
    budget: str | Budget | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    log_every: int | None = None,
    *,
    kernels: str | np.ndarray = "seen",
    resume_from: str | Path | None = None,
    compile: bool | None = None,
) -> tuple[Expert, TrainingHistory]:
    """The single-network baseline: one :class:`Expert` trained on all kernels.

    Same budget as the mixture's joint stage (steps or seconds, batch, patch size, width,
    depth, optimiser, learning rate, schedule, clipping, summed-over-pixels loss): it sees
    the same number of patches when the step count binds, and has ``1/M`` of the mixture's
    parameters. ``resume_from``: a ``'single'`` checkpoint (as :func:`train_mixture`).

    Returns ``(expert, history)`` with the expert in eval mode.
    """
    budget = get_training_budget(budget)
    device = get_device(device)
    arrays, names = _as_image_list(images)
    kernel_array, kernel_name = _kernel_array(kernels)
    seed_everything(seed)
    model = Expert(scale, channels=budget.channels, n_blocks=budget.n_blocks)
    start_step = 0
    if resume_from is not None:
        model, sidecar = load_checkpoint(resume_from, expected_kind="single", scale=scale)
        start_step = int(sidecar.get("steps", 0))
    model, runner = _prepare(model, device, budget.compile if compile is None else compile)
    model.train()
    sampler, used = _sampler(arrays, names, kernel_array, scale, budget.lr_patch, device, seed + 1)
    n_pixels = (scale * budget.lr_patch) ** 2
    params = list(model.parameters())
    optimizer = _make_optimizer([(params, budget.mixture_lr)], budget.optimizer, budget.momentum)
    _restore_optimizers([optimizer], resume_from)

    def step(global_step: int) -> dict[str, torch.Tensor]:
        batch = sampler.sample(budget.batch_size)
        lr = _to_device_layout(batch["lr"], device)
        base = bicubic_upsample(batch["lr"], scale)
        with _autocast(device):
            prediction = runner(lr, base)
        loss = squared_error(prediction.float(), batch["hr"], "sum").mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_max = _clip_gradients(params, budget.clip_value)
        optimizer.step()
        return {"loss": loss.detach(), "mse": loss.detach() / n_pixels, "grad_max": grad_max}

    history = _train_loop(step, optimizers=[optimizer], steps=budget.joint_steps, seconds=budget.joint_seconds,
                          budget=budget, schedule=budget.schedule, patches_per_step=budget.batch_size,
                          log_every=log_every or budget.log_every, desc="train single network",
                          progress=progress, start_step=start_step, device=device)
    history.meta.update(stage="single", scale=scale, seed=seed, loss_scale="sum over HR pixels, [0, 1] images",
                        **_data_record(names, used, kernel_name, kernel_array))
    return model.eval(), history


# ======================================================================================
# 5. A whole run: three models, checkpoints, metrics
# ======================================================================================


class _WithMode(nn.Module):
    """A BlindSR seen through one fusion mode: ``forward(lr, base)`` -> the model's outputs
    with ``mode`` (``'fused'``, ``'hard'`` or ``'average'``) whatever ``model.mode`` is."""

    def __init__(self, model: BlindSR, mode: str) -> None:
        super().__init__()
        self.model, self.mode, self.scale = model, mode, model.scale
        self.name = f"{type(model).__name__}[{mode}]"

    def forward(self, lr: torch.Tensor, base: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        return self.model(lr, base, mode=self.mode)


def evaluate_model(
    model: nn.Module | str,
    images: Mapping[str, np.ndarray],
    scale: int,
    kernels: Sequence[str] | str = ("seen", "unseen"),
    max_side: int | None = None,
    output: str | None = None,
    posterior_tile: int | None = None,
) -> dict[str, dict[str, float]]:
    """PSNR/SSIM (paper protocol, :func:`tutorial_lib.evaluation.evaluate`) of a trained
    model, or of ``'bicubic'``, for each kernel group: ``{group: {"psnr", "ssim"}}``.

    ``output``: for a :class:`BlindSR`, the fusion mode to evaluate (``'fused'`` Eq. 10,
    ``'hard'``, ``'average'``); ``None`` uses the model's own ``mode``. ``posterior_tile``:
    for a :class:`BlindSR`, E-Net's ``q`` from tiles of this side (see :class:`BlindSR`;
    ``None`` keeps the model's own setting, by default the whole image). ``max_side``
    centre-crops the images first (for quick checks; ``None`` = whole images).
    """
    if isinstance(kernels, str):  # one group given as a name
        kernels = (kernels,)
    if posterior_tile is not None:
        if not isinstance(model, BlindSR):
            raise ValueError("posterior_tile is for a mixture (BlindSR)")
        model = copy.copy(model)  # a shallow copy shares the weights; the caller's setting stays
        model.posterior_tile = _check_tile(posterior_tile)
    from .evaluation import evaluate, model_method

    if max_side is not None:
        check_integer("max_side (the side evaluation images are cropped to)", max_side)
        images = {n: _centre_crop(modcrop(np.asarray(img), scale), max_side, scale) for n, img in images.items()}
    if isinstance(model, str):
        if model != "bicubic":
            raise ValueError(f"model must be a network or 'bicubic', got {model!r}")
        method = "bicubic"
    elif isinstance(model, BlindSR) and output is not None:
        method = model_method(_WithMode(model, output), scale)
    else:
        method = model_method(model, scale)
    results = {}
    for group in kernels:
        result = evaluate(images, scale, kernels=group, method=method)
        results[group] = {"psnr": round(result.psnr, 4), "ssim": round(result.ssim, 5)}
    return results


FUSIONS = ("whole", "tiles", "average")


@torch.no_grad()
def evaluate_fusions(
    model: BlindSR,
    images: Mapping[str, np.ndarray],
    scale: int,
    kernels: Sequence[str] = ("seen", "unseen"),
    posterior_tile: int = 24,
    max_side: int | None = None,
    batch_size: int = 4,
) -> dict[str, dict[str, Any]]:
    """One mixture, its experts combined four ways, from one pass of the experts per image x
    kernel (paper protocol: Y, 8-bit, shave ``scale``; averaged over every image x kernel).

    - ``whole``: Eq. (10) with ``q`` from E-Net on the whole LR image (the paper; the same
      numbers as :func:`evaluate_model` for a mixture in the ``fused`` mode, the default);
    - ``tiles``: Eq. (10) with ``q`` the mean posterior of the ``posterior_tile`` tiles (see
      :class:`~tutorial_lib.models.BlindSR`);
    - ``average``: the plain mean of the experts (no E-Net: an ensemble);
    - ``oracle`` (PSNR only): the best single expert for each image x kernel, chosen with the
      ground truth, an upper bound for any choice of one expert; ``experts``: each expert's
      own PSNR.

    Returns ``{group: {"whole": {"psnr", "ssim"}, "tiles": ..., "average": ...,
    "oracle": {"psnr"}, "experts": [psnr per expert]}}``.
    """
    from .metrics import psnr_y, ssim_y

    if not isinstance(model, BlindSR) or model.enet is None:
        raise ValueError("evaluate_fusions needs a mixture with its E-Net (BlindSR)")
    tiled = copy.copy(model)  # shares the weights
    tiled.posterior_tile = _check_tile(posterior_tile)
    device = device_of(model)
    model.eval()
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # full float32, as model_method
    try:
        results: dict[str, dict[str, Any]] = {}
        for group in kernels:
            kernel_array = kernel_lib.kernel_set(group)
            psnr: dict[str, list[np.ndarray]] = {name: [] for name in (*FUSIONS, "oracle")}
            ssim: dict[str, list[np.ndarray]] = {name: [] for name in FUSIONS}
            expert_psnr: list[np.ndarray] = []
            for hr in images.values():
                hr = _centre_crop(modcrop(np.asarray(hr, dtype=np.float64), scale), max_side, scale)
                lr_all = degrade_with_kernels(hr, kernel_array, scale)
                for start in range(0, len(kernel_array), batch_size):
                    lr = lr_all[start:start + batch_size].to(device=device, dtype=torch.float32)
                    base = bicubic_upsample(lr, scale)
                    uniform = torch.full((lr.shape[0], model.mixture.M), 1.0 / model.mixture.M, device=device)
                    experts = model.mixture(lr, uniform, base)["experts"][:, :, 0].double()  # (b, M, H, W)
                    weights = {"whole": model._posterior(lr)[1].double(), "tiles": tiled._posterior(lr)[1].double(),
                               "average": uniform.double()}
                    reference = np.broadcast_to(hr, (lr.shape[0], *hr.shape))
                    for name, q in weights.items():
                        fused = torch.einsum("bm,bmhw->bhw", q, experts).cpu().numpy()
                        psnr[name].append(psnr_y(reference, fused, shave_border=scale))
                        ssim[name].append(ssim_y(reference, fused, shave_border=scale))
                    each = np.stack([psnr_y(reference, experts[:, z].cpu().numpy(), shave_border=scale)
                                     for z in range(experts.shape[1])], axis=1)  # (b, M)
                    expert_psnr.append(each)
                    psnr["oracle"].append(each.max(axis=1))
            results[group] = {name: {"psnr": round(float(np.concatenate(psnr[name]).mean()), 4),
                                     "ssim": round(float(np.concatenate(ssim[name]).mean()), 5)}
                              for name in FUSIONS}
            results[group]["oracle"] = {"psnr": round(float(np.concatenate(psnr["oracle"]).mean()), 4)}
            results[group]["experts"] = [round(float(v), 4) for v in np.concatenate(expert_psnr).mean(axis=0)]
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    return results


def _checkpoint_metadata(history: TrainingHistory, budget: Budget, seed: int, extra: Mapping[str, Any] | None = None
                         ) -> dict[str, Any]:
    meta = history.meta
    record = {
        "budget": budget.name,
        "budget_settings": budget.summary(),
        "device": meta.get("device"),
        "device_name": meta.get("device_name"),
        **({"cpu_allocator": meta["cpu_allocator"]} if "cpu_allocator" in meta else {}),
        **({"fused_optimizer": meta["fused_optimizer"]} if "fused_optimizer" in meta else {}),
        "steps": meta.get("steps"),
        "wall_time_s": round(float(meta.get("wall_time_s", 0.0)), 2),
        "stopped_by": meta.get("stopped_by"),
        "seed": seed,
        "kernel_split": {"train": meta.get("kernels"), "seen_indices": list(kernel_lib.SEEN_INDICES),
                         "unseen_indices": list(kernel_lib.UNSEEN_INDICES)},
        "training_data": {"images": meta.get("training_images"),
                          **({"images_too_small": meta["images_too_small"]} if meta.get("images_too_small") else {})},
        "metrics": {},
    }
    for key in ("variant", "prior", "lam", "loss_scale"):
        if key in meta:
            record[key] = meta[key]
    if extra:
        record.update(extra)
    return record


def save_trained(model: nn.Module, path: Path, kind: str, history: TrainingHistory, budget: Budget, seed: int,
                 extra: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None) -> Path:
    """Save a trained model with a sidecar built from its history (steps, wall time, budget,
    device, data, kernels, seed) plus ``extra``, and its optimiser state beside it (``.opt.pt``)
    when the history holds one, so that training can resume. Returns ``path``."""
    save_checkpoint(model, path, kind=kind, config=config, metadata=_checkpoint_metadata(history, budget, seed, extra))
    if history.optimizer_state is not None:
        save_optimizer_state(history.optimizer_state, path, step=history.meta.get("steps"))
    return path


def update_sidecar_metrics(path: Path, metrics: Mapping[str, Any]) -> None:
    """Rewrite a checkpoint's sidecar with ``metrics`` added (the weights are untouched)."""
    from .checkpoints import rewrite_sidecar

    rewrite_sidecar(path, lambda sidecar: sidecar.setdefault("metrics", {}).update(metrics))


def encoder_metrics(encoder: nn.Module, images: Mapping[str, np.ndarray], scale: int,
                    max_side: int | None = None) -> dict[str, float]:
    """The whole-image kernel accuracies a sidecar keeps for an encoder: ``top1``, ``top3`` and
    ``top1_distinct`` of :func:`encoder_accuracy` over the seen kernels, rounded to 4 digits."""
    accuracy = encoder_accuracy(encoder, images, scale, max_side=max_side)
    return {k: round(accuracy[k], 4) for k in ("top1", "top3", "top1_distinct")}


def evaluate_trained(
    encoder: nn.Module,
    mixture: nn.Module,
    single: nn.Module,
    eval_images: Mapping[str, Mapping[str, np.ndarray]],
    scale: int,
    eval_kernels: Sequence[str] = ("seen", "unseen"),
    max_side: int | None = None,
) -> dict[str, Any]:
    """The metrics of one scale's three models: E-Net whole-image kernel accuracy
    (``top1``, ``top3``, ``top1_distinct`` over the seen kernels) and the PSNR/SSIM of
    bicubic, the mixture and the single network, per evaluation set and kernel group:
    ``{"encoder": {set: ...}, "mixture": {set: {group: {"psnr", "ssim"}}}, "single": ...,
    "bicubic": ...}``."""
    metrics: dict[str, Any] = {"encoder": {}, "mixture": {}, "single": {}, "bicubic": {}}
    for set_name, set_images in eval_images.items():
        metrics["encoder"][set_name] = encoder_metrics(encoder, set_images, scale, max_side=max_side)
        for key, model in (("bicubic", "bicubic"), ("mixture", mixture), ("single", single)):
            metrics[key][set_name] = evaluate_model(model, set_images, scale, eval_kernels, max_side)
    return metrics


def train_all(
    images: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    scale: int,
    budget: str | Budget | None,
    out_dir: str | Path,
    M: int = 4,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    eval_images: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    eval_kernels: Sequence[str] = ("seen", "unseen"),
) -> dict[str, Any]:
    """Pre-train E-Net, train the mixture (Eq. 12) and the single network; save all three.

    Checkpoints ``x{u}_encoder.pt``, ``x{u}_mixture.pt``, ``x{u}_single.pt`` (+ sidecars
    and ``.opt.pt`` optimiser states) go to ``out_dir``. When ``eval_images`` is given
    (``{set name: {image name: Y}}``, e.g. ``{"bundled-test": ..., "Set5": ...}``), the
    E-Net's whole-image kernel accuracy and the PSNR/SSIM of bicubic, the mixture and the
    single network on each set and kernel group are computed and written into the sidecars.

    Returns a dict: ``paths`` (kind -> checkpoint path), ``metrics``, ``histories``,
    ``wall_time_s`` (per stage), ``budget``.
    """
    budget = get_training_budget(budget)
    device = get_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays, names = _as_image_list(images)
    named = dict(zip(names, arrays))  # every stage records the names of the images it used
    encoder, h_pre = pretrain_encoder(named, scale, budget, M=M, seed=seed, device=device, progress=progress)
    if budget.recalibrate_bn:
        recalibrate_batchnorm(encoder, arrays, scale)
    mixture, h_mix = train_mixture(named, scale, budget, encoder=encoder, M=M, seed=seed, device=device,
                                   progress=progress)
    single, h_single = train_single(named, scale, budget, seed=seed, device=device, progress=progress)
    paths = {
        "encoder": save_trained(encoder, out_dir / f"x{scale}_encoder.pt", "encoder", h_pre, budget, seed,
                                config={"scale": scale}),
        "mixture": save_trained(mixture, out_dir / f"x{scale}_mixture.pt", "mixture", h_mix, budget, seed),
        "single": save_trained(single, out_dir / f"x{scale}_single.pt", "single", h_single, budget, seed),
    }
    metrics = evaluate_trained(encoder, mixture, single, eval_images or {}, scale, eval_kernels,
                               budget.eval_max_side)
    for kind in ("encoder", "mixture", "single"):
        if metrics[kind]:
            update_sidecar_metrics(paths[kind], metrics[kind])
    return {
        "paths": {k: str(v) for k, v in paths.items()},
        "metrics": metrics,
        "histories": {"pretrain": h_pre, "mixture": h_mix, "single": h_single},
        "wall_time_s": {"pretrain": h_pre.meta["wall_time_s"], "mixture": h_mix.meta["wall_time_s"],
                        "single": h_single.meta["wall_time_s"]},
        "budget": budget.name,
    }


@contextlib.contextmanager
def _run_folder(out: Path):
    """Create ``out`` (and its missing parents) for a run's checkpoints; if the run fails
    before anything was saved there (bad arguments, an interrupt), remove the folders it created."""
    check_output_folder(out)
    missing = [folder for folder in (out, *out.parents) if not folder.exists()]
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        for folder in missing:  # the deepest first; stop at the first that holds something
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def train_from_cli(
    scale: int,
    budget: str | None,
    data: str,
    out: str | Path,
    variant: str = "all",
    M: int = 4,
    seed: int = 0,
    resume: str | None = None,
    evaluate_on: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """What ``python -m tutorial_lib train`` runs; returns a JSON-ready summary.

    ``data``: ``'bundled'`` means the bundled *training* photographs (``'bundled-train'``),
    else anything :func:`tutorial_lib.data.load_images` accepts. ``variant``: ``all``
    (encoder + mixture + single), ``encoder``, ``mixture``, ``single``, or an ablation
    ``average``, ``uniform`` (without pre-training), ``hard`` (hard selection with
    training). ``mixture`` also saves the E-Net it pre-trained (its prior) as
    ``x{scale}_encoder.pt``. ``resume`` continues one model (not with ``all``); a mixture
    resumes with the pre-trained E-Net ``x{scale}_encoder.pt`` beside the checkpoint as its
    prior when that file is there, else E-Net is pre-trained again. ``evaluate_on``: images
    to evaluate on afterwards (PSNR/SSIM on seen and unseen kernels).
    """
    from .data import load_images
    from .evaluation import check_evaluable

    budget_obj = get_training_budget(budget)
    source = "bundled-train" if str(data).strip().lower() == "bundled" else data
    images = load_images(source)
    eval_sets = {str(evaluate_on): load_images(evaluate_on)} if evaluate_on else None
    for name, image in (eval_sets or {}).get(str(evaluate_on), {}).items():  # refused now, not after training
        check_evaluable(image, scale, name=name)
    show = True
    with _run_folder(Path(out)) as folder:  # removed again if nothing was saved in it
        if variant == "all":
            if resume is not None:
                raise ValueError("--resume continues one model: pick --variant encoder, mixture, single, "
                                 "average, uniform or hard")
            result = train_all(images, scale, budget_obj, folder, M=M, seed=seed, device=device, progress=show,
                               eval_images=eval_sets)
            return {"budget": result["budget"], "data": str(source), "paths": result["paths"],
                    "metrics": result["metrics"], "wall_time_s": result["wall_time_s"],
                    "steps": {k: h.meta["steps"] for k, h in result["histories"].items()}}
        if variant == "encoder":
            model, history = pretrain_encoder(images, scale, budget_obj, M=M, seed=seed, device=device,
                                              progress=show, resume_from=resume)
            path = save_trained(model, folder / f"x{scale}_encoder.pt", "encoder", history, budget_obj, seed, config={"scale": scale})
            metrics = {name: encoder_metrics(model, imgs, scale, max_side=budget_obj.eval_max_side)
                       for name, imgs in (eval_sets or {}).items()}
        else:
            if variant == "single":
                model, history = train_single(images, scale, budget_obj, seed=seed, device=device, progress=show,
                                              resume_from=resume)
                kind, name = "single", "single"
            elif variant in ("mixture", "average", "uniform", "hard"):
                kwargs = {"mixture": {}, "average": {"variant": "average"}, "uniform": {"prior": "uniform"},
                          "hard": {"variant": "hard"}}[variant]
                beside = Path(resume).with_name(f"x{scale}_encoder.pt") if resume else None
                if beside is not None and beside.is_file() and variant == "mixture":
                    # the prior a resumed mixture was trained with, when train_all saved it beside the mixture
                    kwargs["encoder"] = load_checkpoint(beside, expected_kind="encoder", scale=scale)[0]
                model, history = train_mixture(images, scale, budget_obj, M=M, seed=seed, device=device, progress=show,
                                               resume_from=resume, **kwargs)
                kind, name = "mixture", variant
            else:
                raise ValueError(f"variant must be one of all, encoder, mixture, single, average, uniform, hard; "
                                 f"got {variant!r}")
            path = save_trained(model, folder / f"x{scale}_{name}.pt", kind, history, budget_obj, seed)
            if variant == "mixture" and history.pretrained_encoder is not None:  # its prior, to resume with
                save_trained(history.pretrained_encoder, folder / f"x{scale}_encoder.pt", "encoder", history.pretrain,
                             budget_obj, seed, config={"scale": scale})
            metrics = {set_name: evaluate_model(model, imgs, scale, max_side=budget_obj.eval_max_side)
                       for set_name, imgs in (eval_sets or {}).items()}
        if metrics:
            update_sidecar_metrics(path, metrics)
    return {"budget": budget_obj.name, "data": str(source), "variant": variant, "path": str(path),
            "steps": history.meta["steps"], "wall_time_s": round(history.meta["wall_time_s"], 2),
            "metrics": metrics}


def with_overrides(budget: str | Budget | None, **changes: Any) -> Budget:
    """A copy of a budget with some fields changed, e.g. ``with_overrides('cpu', channels=24)``."""
    return replace(get_training_budget(budget), **changes)
