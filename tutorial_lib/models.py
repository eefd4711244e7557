"""The networks of the paper: E-Net, the expert SR network and the batched mixture (Sec. 3.2).

Read top to bottom:

1. :class:`ENet` infers the posterior ``q(z | L)`` over the ``M`` states of the latent
   variable (Table 1); :class:`KernelClassifier` and :class:`EncoderWithClassifier` add the
   pre-training head of Sec. 3.3.1 (Eq. 11).
2. :class:`Expert` is one network of the mixture (Table 2): it maps the LR image ``L`` to a
   residual ``R(L, z)`` that is added to the bicubic upsampling ``L~`` of ``L``.
3. :class:`MixtureOfExperts` evaluates all ``M`` experts in one batched pass (grouped
   convolutions); :class:`LoopMixture` is its plain Python-loop twin, the reference for tests
   and benchmarks.
4. :class:`BlindSR` puts E-Net and the mixture together: ``H* = L~ + sum_z q_z R(L, z)``
   (Eq. 10), with the ``hard`` and ``average`` fusions used in the ablations.

Conventions: images are float tensors in [0, 1] holding the Y channel; the LR input ``L`` is
``(B, 1, h, w)``, the HR output ``(B, 1, u*h, u*w)`` for the upscaling factor ``u``. The
bicubic base ``L~`` is normally computed outside the networks by
``tutorial_lib.degradations.bicubic_upsample`` and passed as ``base``; when ``base`` is
``None`` the networks compute it with :func:`_bicubic`, which matches PIL ``BICUBIC`` (the
authors' evaluation code) to about 2e-7.

Architecture as the authors' public code (``SRBranch`` and ``ClsBranch``), which differs a
little from the paper's tables:

- The expert has 8 mapping convolutions (7 "ReLU, conv" blocks and one plain conv), not the 9
  of Table 2, and no ReLU after the deconvolution (Table 2 has one; ``deconv_relu=True``
  adds it; the parameter count does not change). Parameters: 304,337 / 308,945 / 314,577
  per expert at x2 / x3 / x4.
- E-Net: 4 stride-2 convs without bias, each BatchNorm + LeakyReLU(0.1); global average
  pooling; a 1x1 conv (here the equivalent ``nn.Linear``) to ``M`` scores. 389,348
  parameters for ``M = 4``. The paper's dropout (0.5) on the pooled feature is added here.
- Both networks see ``L - 0.5`` (``input_offset``): images here are in [0, 1], the authors'
  inputs in [0, 255] (their ``Net`` has ``input_range=255.0``) without a shift. For E-Net the BatchNorm after its
  first conv leaves the shift mattering only through the zero padding at the borders; the
  expert's first conv sees a centred input, so its activations start centred too.

Initialisation (our choice, documented in :class:`Expert`): the authors' plain Kaiming
initialisation lets the residual stream grow block by block (for this class at x2 on
natural-image crops, six seeds: mean |activation| 7.5-20 after the last block, a mean
|residual| of 1.7-4.7 on [0, 1] images at init). Here the last conv of every
residual block starts at 0.1 x Kaiming and the output conv at 0.1 x Kaiming, so the stream
stays O(1) and the initial residual is about 1e-2, while every parameter receives a
gradient from the first step on.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_integer

__all__ = [
    "BlindSR",
    "ENet",
    "EncoderWithClassifier",
    "Expert",
    "FusionMode",
    "KernelClassifier",
    "LoopMixture",
    "MixtureOfExperts",
    "SingleNetwork",
    "count_parameters",
    "device_of",
    "enet_of",
]

FusionMode = Literal["fused", "hard", "average"]
_FUSION_MODES = ("fused", "hard", "average")


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (BatchNorm running statistics are buffers,
    not parameters, and are not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def device_of(module: nn.Module) -> torch.device:
    """The device of ``module``'s parameters (the CPU for a module without any).

    Models trained on a GPU stay there; the analysis helpers send their inputs to this
    device and bring the results back to the CPU, so that one call works for both.
    """
    parameter = next(module.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


def _bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling ``(B, C, h, w) -> (B, C, scale*h, scale*w)`` that matches PIL
    ``BICUBIC`` (a = -0.5) to ~2e-7; used only when no ``base`` is passed in."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False, antialias=True)


def _check_lr(lr: torch.Tensor, name: str = "lr", like: torch.Tensor | None = None) -> None:
    """Raise a clear error unless ``lr`` is a float tensor of shape (B, 1, h, w), of the
    dtype of the weights ``like`` when given (autocast casts inside the network itself)."""
    if not isinstance(lr, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 1, h, w), got {type(lr).__name__}")
    if not lr.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor with values in [0, 1], got dtype {lr.dtype}")
    if like is not None and lr.dtype != like.dtype and not _autocast_enabled(lr.device.type):
        raise TypeError(f"{name} is {lr.dtype} but the network's weights are {like.dtype}: pass "
                        f"{name}.to({like.dtype}) (evaluation.model_method does this for you)")
    if lr.ndim != 4 or lr.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, h, w) (one Y channel), got {tuple(lr.shape)}")


def _autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``; PyTorch before 2.4 has one function per device."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # PyTorch < 2.4: no argument, and the function means CUDA
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return device_type == "cuda" and torch.is_autocast_enabled()


def _check_scale(scale: int) -> int:
    return check_integer("scale (the upscaling factor)", scale, least=2)


def _check_widths(channels: int, n_blocks: int, up_channels: int, M: int = 1) -> None:
    """Positive integer widths (``n_blocks`` may be 0: no residual block)."""
    for name, value, least in (("channels", channels, 1), ("n_blocks", n_blocks, 0), ("up_channels", up_channels, 1),
                               ("M (number of experts)", M, 1)):
        check_integer(name, value, least)


def _resolve_base(lr: torch.Tensor, base: torch.Tensor | None, scale: int) -> torch.Tensor:
    """Return the bicubic base ``(B, 1, u*h, u*w)``: ``base`` after a shape check, or
    :func:`_bicubic` of ``lr``."""
    b, _, h, w = lr.shape
    if base is None:
        return _bicubic(lr, scale)
    expected = (b, 1, scale * h, scale * w)
    if tuple(base.shape) != expected:
        raise ValueError(
            f"base must be the bicubic upsampling of lr with shape {expected} (scale {scale}), got {tuple(base.shape)}"
        )
    return base


def _check_weights(q: torch.Tensor, batch: int, n_experts: int, name: str = "q") -> None:
    if q.ndim != 2 or q.shape[0] != batch or q.shape[1] != n_experts:
        raise ValueError(f"{name} must have shape (B, M) = ({batch}, {n_experts}), got {tuple(q.shape)}")


# --------------------------------------------------------------------------------------
# E-Net (Sec. 3.2.1, Table 1) and the pre-training classifier (Sec. 3.3.1)
# --------------------------------------------------------------------------------------


class ENet(nn.Module):
    """Encoder network: LR image -> scores ``s`` of the ``M`` latent states (Table 1).

    Four blocks of (3x3 conv stride 2 padding 1 without bias, BatchNorm2d, LeakyReLU(0.1))
    with channels 1 -> 32 -> 64 -> 128 -> 256, global average pooling, dropout, and a fully
    connected layer 256 -> ``M`` (the authors' 1x1 conv; same parameters).

    The input ``lr`` is a float tensor (B, 1, h, w) in [0, 1]; E-Net subtracts
    ``input_offset = 0.5`` to centre it (BatchNorm follows the first conv, so this only
    matters through zero padding at the borders, but it keeps border pixels neutral).

    Any ``h, w`` work in eval mode (global pooling). In training mode BatchNorm needs more
    than one value per channel: at batch size 1 that takes ``h, w >= 17`` (four stride-2
    convs bring 16 down to 1).
    """

    def __init__(self, M: int = 4, dropout: float = 0.5, input_offset: float = 0.5) -> None:
        super().__init__()
        if M < 1:
            raise ValueError(f"M (number of latent states) must be >= 1, got {M}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.M = M
        self.input_offset = input_offset
        channels = (1, 32, 64, 128, 256)
        blocks: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(channels):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.LeakyReLU(0.1),
            ]
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels[-1], M)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1, nonlinearity="leaky_relu")
        nn.init.kaiming_normal_(self.fc.weight, nonlinearity="linear")
        nn.init.zeros_(self.fc.bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """Scores ``s``: (B, 1, h, w) in [0, 1] -> (B, M), unnormalised log-probabilities."""
        _check_lr(lr, like=next(self.parameters()))
        x = self.features(lr - self.input_offset)
        x = x.mean(dim=(2, 3))  # global average pooling -> (B, 256)
        return self.fc(self.dropout(x))

    def posterior(self, lr: torch.Tensor) -> torch.Tensor:
        """``q(z | L) = softmax(s)``: (B, 1, h, w) -> (B, M), rows summing to 1."""
        return torch.softmax(self(lr), dim=1)

    def log_posterior(self, lr: torch.Tensor) -> torch.Tensor:
        """``log q(z | L)`` computed stably with ``log_softmax``: (B, 1, h, w) -> (B, M)."""
        return torch.log_softmax(self(lr), dim=1)


class KernelClassifier(nn.Module):
    """Pre-training head (Sec. 3.3.1): two FC layers over the ``M`` scores -> ``K`` kernel
    logits, ``Linear(M, hidden), ReLU, Linear(hidden, K)``. The softmax of Eq. (11) lives in
    the loss (:func:`tutorial_lib.objectives.pretrain_loss`)."""

    def __init__(self, M: int = 4, K: int = 29, hidden: int = 64) -> None:
        super().__init__()
        self.M, self.K = M, K
        self.net = nn.Sequential(nn.Linear(M, hidden), nn.ReLU(), nn.Linear(hidden, K))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, M) scores -> (B, K) kernel logits."""
        if scores.ndim != 2 or scores.shape[1] != self.M:
            raise ValueError(f"scores must have shape (B, {self.M}), got {tuple(scores.shape)}")
        return self.net(scores)


class EncoderWithClassifier(nn.Module):
    """E-Net followed by the classification module, trained end to end with Eq. (11).
    After pre-training, keep ``self.enet`` and discard ``self.classifier``."""

    def __init__(self, enet: ENet, classifier: KernelClassifier) -> None:
        super().__init__()
        if classifier.M != enet.M:
            raise ValueError(f"classifier expects M={classifier.M} scores but enet produces M={enet.M}")
        self.enet = enet
        self.classifier = classifier

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) in [0, 1] -> (B, K) kernel logits."""
        return self.classifier(self.enet(lr))


# --------------------------------------------------------------------------------------
# The expert network (Sec. 3.2.2, Table 2) and its batched mixture
# --------------------------------------------------------------------------------------


def _residual_forward(
    net: Expert | MixtureOfExperts,
    lr: torch.Tensor,
    trace: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The expert computation, shared by :class:`Expert` (one group) and
    :class:`MixtureOfExperts` (``M`` groups of channels, grouped convolutions).

    Every non-linearity is element-wise, so the same code runs one expert or ``M`` experts
    stacked along the channel axis. This is what the authors' ``SRBranch`` computes (their
    in-place ReLU makes each block ``x <- relu(x) + conv(relu(x))``)::

        head = conv_in(L - 0.5)                      # (B, M*64, h, w)
        x    = head + relu(head)
        7 x: r = relu(x);  x = r + conv_k(r)         # residual blocks
        x    = x + conv_tail(x)
        up   = deconv(x + head)                      # global skip, then x u
        R    = conv_out(up)            (relu(up) if deconv_relu)

    ``trace``, when given a list, receives the stream ``x`` after the head and after every
    block (for the initialisation diagnostics).
    """
    head = net.head(lr - net.input_offset)
    x = head + F.relu(head)
    if trace is not None:
        trace.append(x.detach())
    for conv in net.body:
        r = F.relu(x)
        x = r + conv(r)
        if trace is not None:
            trace.append(x.detach())
    x = x + net.tail(x)
    if trace is not None:
        trace.append(x.detach())
    up = net.upsample(x + head)
    if net.deconv_relu:
        up = F.relu(up)
    return net.reconstruct(up)


def _init_expert_layers(net: Expert | MixtureOfExperts, block_init_scale: float, output_init_scale: float) -> None:
    """Kaiming-normal (fan-in) convs, scaled where they feed a residual add or the output;
    deconvolution N(0, 0.01) as in the paper (Sec. 3.3.3); all biases zero.

    For grouped weights ``(M*C_out, C_in, k, k)`` the fan-in is ``C_in*k*k``, the same as for
    one expert, so the grouped stack has the same initial distribution as ``M`` experts.
    """
    nn.init.kaiming_normal_(net.head.weight, nonlinearity="relu")
    for conv in list(net.body) + [net.tail]:
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        with torch.no_grad():
            conv.weight.mul_(block_init_scale)
    nn.init.normal_(net.upsample.weight, mean=0.0, std=0.01)
    nn.init.kaiming_normal_(net.reconstruct.weight, nonlinearity="relu")
    with torch.no_grad():
        net.reconstruct.weight.mul_(output_init_scale)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
            nn.init.zeros_(m.bias)


class Expert(nn.Module):
    """One network of the mixture: LR image -> HR residual ``R(L, z)`` (Table 2, authors' code).

    Layers (channels ``C = 64``, all 3x3 convs with padding 1, in LR space until the deconv):
    ``head`` conv 1 -> C; ``body``: ``n_blocks = 7`` convs C -> C, each in a residual block
    ``x <- relu(x) + conv(relu(x))``; ``tail`` conv C -> C with ``x <- x + tail(x)``; global
    skip ``x + head``; ``upsample`` = ConvTranspose2d(C, 8, u+2, stride=u, padding=1), whose
    output is exactly ``u*h`` since ``(h-1)u - 2 + (u+2) = u h``; ``reconstruct`` conv 8 -> 1.

    The input is centred (``lr - 0.5``) before the head conv.

    Initialisation: with plain Kaiming init (``block_init_scale = output_init_scale = 1``, the
    authors' choice) every residual add roughly doubles the second moment of the stream, so
    activations and the initial residual are large (x2, natural-image crops, six seeds: mean
    |x| 7.5-20 after the last block, mean |residual| 1.7-4.7; with the defaults below 0.2-0.4
    and 0.006-0.016).
    By default the convs that feed a residual add (``body`` and ``tail``) start at
    ``block_init_scale = 0.1`` x Kaiming (as in Fixup / "SkipInit"), which keeps the stream
    O(1), and ``reconstruct`` at ``output_init_scale = 0.1`` x Kaiming, which makes the
    initial residual ~1e-2 (so ``forward`` starts close to bicubic). Nothing is zero, so every
    parameter receives a non-zero gradient at the first step. The deconvolution is N(0, 0.01).

    Parameters: 304,337 (x2), 308,945 (x3), 314,577 (x4), the authors' counts.
    """

    def __init__(
        self,
        scale: int,
        channels: int = 64,
        n_blocks: int = 7,
        up_channels: int = 8,
        deconv_relu: bool = False,
        block_init_scale: float = 0.1,
        output_init_scale: float = 0.1,
        input_offset: float = 0.5,
    ) -> None:
        super().__init__()
        self.scale = _check_scale(scale)
        _check_widths(channels, n_blocks, up_channels)
        self.channels, self.n_blocks, self.up_channels = int(channels), int(n_blocks), int(up_channels)
        self.deconv_relu = deconv_relu
        self.input_offset = input_offset
        self.head = nn.Conv2d(1, channels, 3, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(n_blocks))
        self.tail = nn.Conv2d(channels, channels, 3, padding=1)
        self.upsample = nn.ConvTranspose2d(channels, up_channels, scale + 2, stride=scale, padding=1)
        self.reconstruct = nn.Conv2d(up_channels, 1, 3, padding=1)
        _init_expert_layers(self, block_init_scale, output_init_scale)

    def config(self) -> dict:
        """Constructor arguments that fix the architecture (not the init)."""
        return {
            "scale": self.scale,
            "channels": self.channels,
            "n_blocks": self.n_blocks,
            "up_channels": self.up_channels,
            "deconv_relu": self.deconv_relu,
            "input_offset": self.input_offset,
        }

    def residual(self, lr: torch.Tensor) -> torch.Tensor:
        """Residual ``R(L)``: (B, 1, h, w) in [0, 1] -> (B, 1, u*h, u*w), unbounded."""
        _check_lr(lr, like=self.head.weight)
        return _residual_forward(self, lr)

    def forward(self, lr: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """Prediction ``F(L) = L~ + R(L)``: (B, 1, h, w) -> (B, 1, u*h, u*w).

        ``base`` is the bicubic upsampling ``L~`` (B, 1, u*h, u*w); computed if ``None``.
        The output is not clipped (evaluation clips to [0, 1] before rounding).
        """
        _check_lr(lr, like=self.head.weight)
        return _resolve_base(lr, base, self.scale) + _residual_forward(self, lr)

    @torch.no_grad()
    def stream_magnitudes(self, lr: torch.Tensor) -> list[float]:
        """Mean |x| of the residual stream after the head and after each of the
        ``n_blocks + 1`` blocks: a diagnostic for how the initialisation behaves."""
        _check_lr(lr, like=self.head.weight)
        trace: list[torch.Tensor] = []
        _residual_forward(self, lr, trace)
        return [t.abs().mean().item() for t in trace]


SingleNetwork = Expert
"""The "single network" baseline: one :class:`Expert` trained on all kernels."""


class MixtureOfExperts(nn.Module):
    """``M`` experts evaluated in one batched pass with grouped convolutions.

    Expert ``i`` owns channels ``[i*C, (i+1)*C)`` of every layer:

    - ``head``: Conv2d(1, M*C), weight (M*C, 1, 3, 3). Every expert sees the same input, so
      this is exactly a grouped conv on the input replicated M times, without the copy.
    - ``body`` / ``tail``: Conv2d(M*C, M*C, groups=M), weight (M*C, C, 3, 3).
    - ``upsample``: ConvTranspose2d(M*C, M*8, groups=M), weight (M*C, 8, u+2, u+2).
    - ``reconstruct``: Conv2d(M*8, M, groups=M), weight (M, 8, 3, 3): one channel per expert.

    :meth:`from_experts` and :meth:`expert` convert to and from ``M`` standalone
    :class:`Expert` s; :class:`LoopMixture` is the same model as a Python loop.
    """

    def __init__(
        self,
        M: int,
        scale: int,
        channels: int = 64,
        n_blocks: int = 7,
        up_channels: int = 8,
        deconv_relu: bool = False,
        block_init_scale: float = 0.1,
        output_init_scale: float = 0.1,
        input_offset: float = 0.5,
    ) -> None:
        super().__init__()
        _check_widths(channels, n_blocks, up_channels, M)
        self.M = int(M)
        self.scale = _check_scale(scale)
        self.channels, self.n_blocks, self.up_channels = int(channels), int(n_blocks), int(up_channels)
        self.deconv_relu = deconv_relu
        self.input_offset = input_offset
        mc = M * channels
        self.head = nn.Conv2d(1, mc, 3, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(mc, mc, 3, padding=1, groups=M) for _ in range(n_blocks))
        self.tail = nn.Conv2d(mc, mc, 3, padding=1, groups=M)
        self.upsample = nn.ConvTranspose2d(mc, M * up_channels, scale + 2, stride=scale, padding=1, groups=M)
        self.reconstruct = nn.Conv2d(M * up_channels, M, 3, padding=1, groups=M)
        _init_expert_layers(self, block_init_scale, output_init_scale)

    def expert_config(self) -> dict:
        """Constructor arguments of one :class:`Expert` of this mixture."""
        return {
            "scale": self.scale,
            "channels": self.channels,
            "n_blocks": self.n_blocks,
            "up_channels": self.up_channels,
            "deconv_relu": self.deconv_relu,
            "input_offset": self.input_offset,
        }

    def _layer_pairs(self, expert: Expert) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (self.head, expert.head),
            *zip(self.body, expert.body),
            (self.tail, expert.tail),
            (self.upsample, expert.upsample),
            (self.reconstruct, expert.reconstruct),
        ]

    @classmethod
    def from_experts(cls, experts: Sequence[Expert]) -> MixtureOfExperts:
        """Stack the weights of ``M`` experts (same architecture) into one batched mixture."""
        experts = list(experts)
        if not experts:
            raise ValueError("experts must be a non-empty sequence of Expert")
        config = experts[0].config()
        for i, e in enumerate(experts):
            if not isinstance(e, Expert):
                raise TypeError(f"experts[{i}] must be an Expert, got {type(e).__name__}")
            if e.config() != config:
                raise ValueError(f"experts[{i}] has architecture {e.config()}, expected {config}")
        ref = experts[0].head.weight
        mixture = cls(len(experts), **config).to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for i, e in enumerate(experts):
                for grouped, single in mixture._layer_pairs(e):
                    n_w, n_b = single.weight.shape[0], single.bias.shape[0]
                    grouped.weight[i * n_w : (i + 1) * n_w].copy_(single.weight)
                    grouped.bias[i * n_b : (i + 1) * n_b].copy_(single.bias)
        return mixture

    def expert(self, i: int) -> Expert:
        """A standalone copy of expert ``i`` (weights copied, not shared)."""
        if not 0 <= i < self.M:
            raise IndexError(f"expert index must lie in [0, {self.M}), got {i}")
        ref = self.head.weight
        single = Expert(**self.expert_config()).to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for grouped, one in self._layer_pairs(single):
                n_w, n_b = one.weight.shape[0], one.bias.shape[0]
                one.weight.copy_(grouped.weight[i * n_w : (i + 1) * n_w])
                one.bias.copy_(grouped.bias[i * n_b : (i + 1) * n_b])
        return single

    def to_experts(self) -> list[Expert]:
        """All ``M`` experts as standalone copies."""
        return [self.expert(i) for i in range(self.M)]

    def residuals(self, lr: torch.Tensor) -> torch.Tensor:
        """Each expert's residual: (B, 1, h, w) in [0, 1] -> (B, M, 1, u*h, u*w)."""
        _check_lr(lr, like=self.head.weight)
        return _residual_forward(self, lr).unsqueeze(2)

    def forward(self, lr: torch.Tensor, q: torch.Tensor, base: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Experts' predictions and their fusion with weights ``q`` (Eq. 10).

        Args:
            lr: (B, 1, h, w) in [0, 1].
            q: (B, M) fusion weights, normally the posterior of E-Net (rows sum to 1).
            base: bicubic upsampling of ``lr``, (B, 1, u*h, u*w); computed if ``None``.

        Returns:
            dict with ``q`` (B, M) as given, ``experts`` (B, M, 1, u*h, u*w) = ``base + R_z``,
            and ``fused`` (B, 1, u*h, u*w) = ``base + sum_z q_z R_z``.
        """
        return _fuse(self.residuals(lr), q, _resolve_base(lr, base, self.scale))


class LoopMixture(nn.Module):
    """The same model as :class:`MixtureOfExperts`, written as a Python loop over an
    ``nn.ModuleList`` of :class:`Expert` s: the readable reference and benchmark twin."""

    def __init__(self, M: int, scale: int, **expert_kwargs) -> None:
        super().__init__()
        self.M = check_integer("M (number of experts)", M)
        self.scale = _check_scale(scale)
        self.experts = nn.ModuleList(Expert(scale, **expert_kwargs) for _ in range(M))

    @classmethod
    def from_experts(cls, experts: Sequence[Expert]) -> LoopMixture:
        """Wrap (without copying) a list of experts."""
        experts = list(experts)
        if not experts:
            raise ValueError("experts must be a non-empty sequence of Expert")
        mixture = cls.__new__(cls)
        nn.Module.__init__(mixture)
        mixture.M, mixture.scale = len(experts), experts[0].scale
        mixture.experts = nn.ModuleList(experts)
        return mixture

    def expert(self, i: int) -> Expert:
        """Expert ``i`` itself (shared, not a copy)."""
        return self.experts[i]

    def residuals(self, lr: torch.Tensor) -> torch.Tensor:
        """Each expert's residual: (B, 1, h, w) -> (B, M, 1, u*h, u*w)."""
        return torch.stack([e.residual(lr) for e in self.experts], dim=1)

    def forward(self, lr: torch.Tensor, q: torch.Tensor, base: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Same interface and result as :meth:`MixtureOfExperts.forward`."""
        return _fuse(self.residuals(lr), q, _resolve_base(lr, base, self.scale))


def _fuse(residuals: torch.Tensor, q: torch.Tensor, base: torch.Tensor) -> dict[str, torch.Tensor]:
    """``experts = base + R_z`` and ``fused = base + sum_z q_z R_z`` (Eq. 10)."""
    b, m = residuals.shape[:2]
    _check_weights(q, b, m)
    q = q.to(residuals.dtype)
    fused = base + torch.einsum("bm,bmchw->bchw", q, residuals)
    return {"q": q, "experts": base.unsqueeze(1) + residuals, "fused": fused}


# --------------------------------------------------------------------------------------
# The full model
# --------------------------------------------------------------------------------------


class BlindSR(nn.Module):
    """E-Net + mixture of experts: the blind SR model of Fig. 2.

    ``mode`` selects how the experts are combined (the ablations of Sec. 4.2):

    - ``"fused"`` (default): soft weights ``q = softmax(E-Net(L))``, Eq. (10);
    - ``"hard"``: only the expert with the largest ``q_z`` (one-hot weights);
    - ``"average"``: uniform weights ``1/M`` ("averaged ensemble"; E-Net is not run, and
      ``enet`` may be ``None``).

    ``posterior_tile`` selects how E-Net sees an image at test time:

    - ``None`` (default, the paper and the authors' code): the whole LR image goes through
      E-Net, whose global average pooling then averages features over the whole image;
    - ``p`` (e.g. 24, the side of the patches E-Net and the mixture are trained on): the image
      is cut into non-overlapping ``p x p`` tiles (the remainder at the right and bottom is
      left out), and ``q`` is the mean of the tiles' posteriors; ``scores`` is then
      ``log q``. An image smaller than one tile goes through whole. A training patch of
      side ``p`` is one tile, so training is the same either way.

    E-Net is trained on small patches only; on whole images its pooled features (and its
    BatchNorm statistics) are not what it was trained on. Measured on Set5 x2, unseen kernels:
    the shipped ``gpu``-budget mixture gives 34.75 dB with the whole image and 34.93 dB with
    24 x 24 tiles; a longer run (E-Net 60 s, mixture 240 s) 34.27 dB and 35.07 dB (README,
    notebook 04).
    """

    def __init__(self, enet: ENet | None, mixture: MixtureOfExperts | LoopMixture, mode: FusionMode = "fused",
                 posterior_tile: int | None = None) -> None:
        super().__init__()
        if enet is not None and enet.M != mixture.M:
            raise ValueError(f"enet has M={enet.M} states but the mixture has M={mixture.M} experts")
        self.enet = enet
        self.mixture = mixture
        self.mode = self._check_mode(mode)
        self.posterior_tile = _check_tile(posterior_tile)

    @property
    def scale(self) -> int:
        return self.mixture.scale

    def _posterior(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, q)`` of E-Net for ``lr``, from the whole image or from tiles (class doc)."""
        tile = _check_tile(self.posterior_tile)
        h, w = lr.shape[-2:]
        if tile is None or min(h, w) < tile or (h, w) == (tile, tile):
            scores = self.enet(lr)
            return scores, torch.softmax(scores, dim=1)
        tiles = _tiles(lr, tile)
        b, n = tiles.shape[:2]
        q = torch.softmax(self.enet(tiles.reshape(b * n, 1, tile, tile)).float(), dim=1)
        q = q.reshape(b, n, -1).mean(dim=1).to(lr.dtype)
        return q.clamp_min(torch.finfo(q.dtype).tiny).log(), q

    def _check_mode(self, mode: str) -> str:
        if mode not in _FUSION_MODES:
            raise ValueError(f"mode must be one of {_FUSION_MODES}, got {mode!r}")
        if mode != "average" and self.enet is None:
            raise ValueError(f"mode {mode!r} needs an E-Net; with enet=None only 'average' is possible")
        return mode

    def forward(
        self, lr: torch.Tensor, base: torch.Tensor | None = None, mode: FusionMode | None = None
    ) -> dict[str, torch.Tensor | None]:
        """Blind SR of a batch.

        Args:
            lr: (B, 1, h, w) in [0, 1].
            base: bicubic upsampling of ``lr`` (B, 1, u*h, u*w); computed if ``None``.
            mode: overrides ``self.mode`` for this call.

        Returns:
            dict with ``scores`` (B, M) E-Net scores (``None`` in ``average`` mode), ``q`` (B, M)
            the posterior ``softmax(scores)`` (uniform in ``average`` mode), ``weights`` (B, M)
            the weights actually used to fuse, ``experts`` (B, M, 1, u*h, u*w) and ``fused``
            (B, 1, u*h, u*w).
        """
        mode = self._check_mode(self.mode if mode is None else mode)
        _check_lr(lr, like=next(self.parameters()))
        b, m = lr.shape[0], self.mixture.M
        if mode == "average":
            scores = None
            q = lr.new_full((b, m), 1.0 / m)
        else:
            scores, q = self._posterior(lr)
        if mode == "hard":
            weights = F.one_hot(q.argmax(dim=1), m).to(q.dtype)
        else:
            weights = q
        out = self.mixture(lr, weights, base)
        return {"scores": scores, "q": q, "weights": weights, "experts": out["experts"], "fused": out["fused"]}


def enet_of(model: nn.Module) -> ENet:
    """The E-Net of an :class:`EncoderWithClassifier`, a :class:`BlindSR` or a bare :class:`ENet`.

    Raises ``ValueError`` for a model without one (the averaged ensemble, a single expert).
    """
    if isinstance(model, ENet):
        return model
    if isinstance(model, (EncoderWithClassifier, BlindSR)):
        if model.enet is None:
            raise ValueError("this model has no E-Net (the averaged ensemble): it has no posterior")
        return model.enet
    raise ValueError(f"model must be an ENet, an EncoderWithClassifier or a BlindSR, got {type(model).__name__}")


def _check_tile(tile: int | None, name: str = "posterior_tile") -> int | None:
    if tile is not None and (not isinstance(tile, int) or isinstance(tile, bool) or tile < 8):
        raise ValueError(f"{name} must be None (whole image) or an integer tile side >= 8, got {tile!r}")
    return tile


def _tiles(lr: torch.Tensor, tile: int) -> torch.Tensor:
    """Non-overlapping ``tile x tile`` tiles (remainder dropped): (B, 1, h, w) -> (B, n, 1, tile, tile)."""
    b, _, h, w = lr.shape
    rows, cols = h // tile, w // tile
    tiles = lr[:, :, :rows * tile, :cols * tile].reshape(b, 1, rows, tile, cols, tile)
    return tiles.permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, 1, tile, tile)


def _expert_parameter_count(scale: int, channels: int = 64, n_blocks: int = 7, up_channels: int = 8) -> int:
    """Closed form of :func:`count_parameters` for one :class:`Expert` (used in tests/docs)."""

    def conv(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k + c_out

    k_up = scale + 2
    return (
        conv(1, channels, 3)
        + (n_blocks + 1) * conv(channels, channels, 3)
        + conv(channels, up_channels, k_up)
        + conv(up_channels, 1, 3)
    )
