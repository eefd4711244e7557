"""Tests of tutorial_lib.models: shapes, parameter counts, initialisation, batched == loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tutorial_lib import models
from tutorial_lib.models import (
    BlindSR,
    EncoderWithClassifier,
    ENet,
    Expert,
    KernelClassifier,
    LoopMixture,
    MixtureOfExperts,
    _bicubic,
    _expert_parameter_count,
    count_parameters,
)

torch.set_num_threads(2)

# Small experts (16 channels) wherever the test is about wiring rather than the real size.
SMALL = {"channels": 16}


def _lr(b: int = 2, h: int = 12, w: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 1, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------- E-Net


def test_enet_shapes_softmax_and_parameter_count():
    torch.manual_seed(0)
    enet = ENet(M=4).eval()
    lr = _lr(3, 24, 20)
    scores = enet(lr)
    assert scores.shape == (3, 4)
    q = enet.posterior(lr)
    assert q.shape == (3, 4)
    assert torch.allclose(q.sum(dim=1), torch.ones(3))
    assert torch.allclose(enet.log_posterior(lr).exp(), q, atol=1e-6)
    # Authors' ClsBranch: bias-free convs + BatchNorm, 1x1 conv 256 -> 4 (the authors' count: 389,348).
    assert count_parameters(enet) == 389_348


def test_enet_dropout_only_in_training_mode():
    torch.manual_seed(0)
    enet = ENet(M=4, dropout=0.5)
    lr = _lr(4, 16, 16)
    enet.eval()
    assert torch.equal(enet(lr), enet(lr))
    enet.train()
    assert enet(lr).shape == (4, 4)
    assert not torch.equal(enet(lr), enet(lr))  # a new dropout mask per pass
    plain = ENet(M=4, dropout=0.0).train()
    assert torch.equal(plain(lr), plain(lr))  # training-mode BatchNorm alone is deterministic


def test_architectures_are_checked_by_name():
    assert Expert(np.int64(2), channels=4, n_blocks=1).scale == 2  # a NumPy integer is an integer
    with pytest.raises(ValueError, match="channels must be an integer >= 1"):
        Expert(2, channels=0)
    with pytest.raises(ValueError, match="M \\(number of experts\\) must be an integer >= 1, got 2.5"):
        MixtureOfExperts(2.5, 2)
    with pytest.raises(ValueError, match="scale"):
        MixtureOfExperts(4, 1)


def test_enet_rejects_bad_input():
    enet = ENet()
    with pytest.raises(ValueError, match="one Y channel"):
        enet(torch.rand(2, 3, 16, 16))
    with pytest.raises(TypeError, match="floating-point"):
        enet(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))
    # float64, as torch.from_numpy gives for the library's arrays: named, with the fix
    lr64 = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    mixture = BlindSR(ENet(4), MixtureOfExperts(4, 2, channels=4, n_blocks=1))
    for network in (enet, Expert(2, channels=4, n_blocks=1), mixture):
        with pytest.raises(TypeError, match=r"lr is torch.float64 but the network's weights are torch.float32"):
            network(lr64)
    assert Expert(2, channels=4, n_blocks=1).double()(lr64).dtype == torch.float64  # matching dtypes are fine


def test_the_autocast_check_works_with_the_per_device_functions_of_pytorch_before_2_4(monkeypatch):
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda: False)  # no device argument, means CUDA
    monkeypatch.setattr(torch, "is_autocast_cpu_enabled", lambda: True, raising=False)
    assert models._autocast_enabled("cpu") is True
    assert models._autocast_enabled("cuda") is False
    assert models._autocast_enabled("meta") is False
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda: True)
    assert models._autocast_enabled("cuda") is True


def test_encoder_with_classifier_logits():
    torch.manual_seed(0)
    model = EncoderWithClassifier(ENet(M=4), KernelClassifier(M=4, K=29, hidden=64)).eval()
    logits = model(_lr(2, 16, 16))
    assert logits.shape == (2, 29)
    assert count_parameters(model.classifier) == 4 * 64 + 64 + 64 * 29 + 29
    with pytest.raises(ValueError, match="M=3"):
        EncoderWithClassifier(ENet(M=4), KernelClassifier(M=3))


# ---------------------------------------------------------------------------------- Expert


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_expert_output_shape_and_parameter_count(scale):
    torch.manual_seed(0)
    expert = Expert(scale)
    lr = _lr(2, 12, 10)
    assert expert.residual(lr).shape == (2, 1, 12 * scale, 10 * scale)
    assert expert(lr).shape == (2, 1, 12 * scale, 10 * scale)
    n = count_parameters(expert)
    assert n == _expert_parameter_count(scale)
    assert n == {2: 304_337, 3: 308_945, 4: 314_577}[scale]  # x4: the authors' count


def test_expert_forward_is_base_plus_residual():
    torch.manual_seed(0)
    expert = Expert(2, **SMALL)
    lr = _lr()
    base = _bicubic(lr, 2)
    assert torch.allclose(expert(lr), base + expert.residual(lr))
    assert torch.allclose(expert(lr, base), expert(lr))
    with pytest.raises(ValueError, match="base must"):
        expert(lr, torch.zeros(2, 1, 23, 24))


@pytest.mark.parametrize("scale", [2, 4])
def test_expert_init_is_bounded_and_plain_kaiming_is_not(scale):
    torch.manual_seed(0)
    lr = _lr(2, 16, 16)
    bounded = Expert(scale)
    stream = bounded.stream_magnitudes(lr)
    assert len(stream) == 1 + 7 + 1
    assert max(stream) < 5.0
    assert max(stream) / stream[0] < 2.0  # no growth block after block
    assert bounded.residual(lr).abs().mean().item() < 0.05  # starts close to bicubic
    torch.manual_seed(0)
    plain = Expert(scale, block_init_scale=1.0, output_init_scale=1.0)  # authors' Kaiming init
    plain_stream = plain.stream_magnitudes(lr)
    assert plain_stream[-1] > 10 * plain_stream[0]
    assert plain.residual(lr).abs().mean().item() > 1.0


def test_expert_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    expert = Expert(2)
    lr, hr = _lr(2, 12, 12), torch.rand(2, 1, 24, 24)
    loss = (expert(lr) - hr).square().mean()
    loss.backward()
    for name, p in expert.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_expert_channels_last():
    torch.manual_seed(0)
    expert = Expert(3, **SMALL)
    lr = _lr()
    ref = expert(lr)
    expert_cl = expert.to(memory_format=torch.channels_last)
    out = expert_cl(lr.to(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-5)


# ------------------------------------------------------------------------ batched mixture


@pytest.mark.parametrize("M", [1, 2, 4])
@pytest.mark.parametrize("scale", [2, 3])
def test_batched_mixture_equals_loop_over_experts(M, scale):
    torch.manual_seed(M * 10 + scale)
    experts = [Expert(scale, **SMALL) for _ in range(M)]
    # Perturb biases so that a mis-sliced bias would be caught too.
    with torch.no_grad():
        for e in experts:
            for mod in e.modules():
                if hasattr(mod, "bias") and mod.bias is not None:
                    mod.bias.normal_(0, 0.05)
    batched = MixtureOfExperts.from_experts(experts)
    loop = LoopMixture.from_experts(experts)
    lr = _lr(3, 12, 12, seed=M)
    expected = torch.stack([e.residual(lr) for e in experts], dim=1)
    assert batched.residuals(lr).shape == (3, M, 1, 12 * scale, 12 * scale)
    assert torch.allclose(batched.residuals(lr), expected, atol=1e-5)
    assert torch.allclose(loop.residuals(lr), expected, atol=1e-6)
    q = torch.softmax(torch.randn(3, M), dim=1)
    out_b, out_l = batched(lr, q), loop(lr, q)
    assert torch.allclose(out_b["experts"], out_l["experts"], atol=1e-5)
    assert torch.allclose(out_b["fused"], out_l["fused"], atol=1e-5)
    for i, e in enumerate(experts):  # expert(i) round-trips exactly
        extracted = batched.expert(i)
        for (name, p), p_ref in zip(extracted.named_parameters(), e.parameters()):
            assert torch.equal(p, p_ref), name
    assert count_parameters(batched) == M * count_parameters(experts[0])


def test_mixture_parameter_count_matches_m_experts():
    assert count_parameters(MixtureOfExperts(4, 4)) == 4 * 314_577
    assert count_parameters(MixtureOfExperts(4, 4)) + count_parameters(ENet(4)) == 1_647_656  # ~1.65 M


def test_mixture_fresh_init_is_bounded():
    torch.manual_seed(0)
    mixture = MixtureOfExperts(4, 2)
    r = mixture.residuals(_lr(2, 16, 16))
    assert r.abs().mean().item() < 0.05
    # Each group starts different (independent experts), not copies of one another.
    assert not torch.allclose(r[:, 0], r[:, 1])


def test_expert_residual_is_the_documented_computation():
    """head = conv_in(L - 0.5); x = head + relu(head); each block x = relu(x) + conv(relu(x));
    x = x + tail(x); R = conv_out(deconv(x + head)): the formulas of _residual_forward's docstring,
    written out here (the batched mixture shares that code, so comparing the two cannot see them)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = Expert(2, channels=8, n_blocks=2).eval()
    lr = torch.rand(1, 1, 10, 10)
    with torch.no_grad():
        head = net.head(lr - net.input_offset)
        x = head + F.relu(head)
        for conv in net.body:
            r = F.relu(x)
            x = r + conv(r)
        x = x + net.tail(x)
        expected = net.reconstruct(net.upsample(x + head))
        torch.testing.assert_close(net.residual(lr), expected)


def test_enet_scores_are_a_linear_map_of_dropped_out_average_pooled_features():
    """E-Net: features -> global *average* pooling -> dropout on the pooled features -> fc, in both modes."""
    torch.manual_seed(0)
    enet = ENet(4)
    lr = torch.rand(4, 1, 24, 24)
    with torch.no_grad():
        for mode in (False, True):
            enet.train(mode)
            torch.manual_seed(1)
            scores = enet(lr)
            torch.manual_seed(1)
            pooled = enet.features(lr - enet.input_offset).mean(dim=(2, 3))
            torch.testing.assert_close(scores, enet.fc(enet.dropout(pooled)))


def test_fused_is_q_weighted_sum_of_experts():
    torch.manual_seed(0)
    mixture = MixtureOfExperts(3, 2, **SMALL)
    lr = _lr(4, 12, 12)
    q = torch.softmax(torch.randn(4, 3), dim=1)
    out = mixture(lr, q)
    assert out["experts"].shape == (4, 3, 1, 24, 24)
    assert torch.allclose(out["fused"], (q[:, :, None, None, None] * out["experts"]).sum(1), atol=1e-6)
    # each expert predicts a residual over the bicubic upsampling (residual learning)
    expected = _bicubic(lr, 2)[:, None] + mixture.residuals(lr)
    assert torch.allclose(out["experts"], expected, atol=1e-6)
    with pytest.raises(ValueError, match="q must have shape"):
        mixture(lr, torch.ones(4, 2) / 2)


# ---------------------------------------------------------------------------- full model


def test_blindsr_modes():
    torch.manual_seed(0)
    model = BlindSR(ENet(M=3), MixtureOfExperts(3, 2, **SMALL)).eval()
    lr = _lr(4, 16, 16)
    base = _bicubic(lr, 2)
    soft = model(lr, base)
    assert soft["fused"].shape == (4, 1, 32, 32)
    assert torch.allclose(soft["q"].sum(1), torch.ones(4))
    assert torch.allclose(soft["fused"], (soft["q"][:, :, None, None, None] * soft["experts"]).sum(1), atol=1e-6)

    hard = model(lr, base, mode="hard")
    chosen = soft["q"].argmax(dim=1)
    assert torch.allclose(hard["fused"], soft["experts"][torch.arange(4), chosen], atol=1e-6)

    avg = model(lr, base, mode="average")
    assert avg["scores"] is None
    assert torch.allclose(avg["fused"], soft["experts"].mean(dim=1), atol=1e-6)

    no_enet = BlindSR(None, model.mixture, mode="average")
    assert torch.allclose(no_enet(lr, base)["fused"], avg["fused"])
    with pytest.raises(ValueError, match="needs an E-Net"):
        BlindSR(None, model.mixture)
    with pytest.raises(ValueError, match="mode must be"):
        model(lr, mode="soft")


def test_blindsr_posterior_from_tiles():
    torch.manual_seed(0)
    enet = ENet(M=3).eval()
    model = BlindSR(enet, MixtureOfExperts(3, 2, channels=8, n_blocks=1), posterior_tile=8).eval()
    whole = BlindSR(enet, model.mixture).eval()
    with torch.no_grad():
        # an image of one tile (a training patch): the same as the whole image
        patch = _lr(2, 8, 8)
        assert torch.allclose(model(patch)["fused"], whole(patch)["fused"])
        # a larger image: q is the mean of the tiles' posteriors (the 3 leftover columns are not used)
        lr = _lr(2, 16, 19, seed=1)
        out = model(lr)
        tiles = [lr[:, :, r:r + 8, c:c + 8] for r in (0, 8) for c in (0, 8)]
        expected = torch.stack([torch.softmax(enet(t), dim=1) for t in tiles]).mean(dim=0)
        assert torch.allclose(out["q"], expected, atol=1e-6)
        assert torch.allclose(out["q"].sum(dim=1), torch.ones(2), atol=1e-6)
        assert torch.allclose(torch.softmax(out["scores"], dim=1), out["q"], atol=1e-6)
        assert torch.allclose(out["fused"], model.mixture(lr, out["q"])["fused"], atol=1e-6)
        assert not torch.allclose(out["q"], whole(lr)["q"], atol=1e-3)  # pooling over the whole image differs
        hard = model(lr, mode="hard")["fused"]
        assert torch.allclose(hard, out["experts"][torch.arange(2), out["q"].argmax(dim=1)], atol=1e-6)
        # an image smaller than one tile goes through whole
        small = _lr(1, 6, 12)
        assert torch.allclose(model(small)["q"], whole(small)["q"])
    for bad in (0, 4, 8.0, True, "24"):
        with pytest.raises(ValueError, match="posterior_tile"):
            BlindSR(enet, model.mixture, posterior_tile=bad)


def test_blindsr_with_loop_mixture_matches_batched():
    torch.manual_seed(0)
    experts = [Expert(2, **SMALL) for _ in range(2)]
    enet = ENet(M=2).eval()
    lr = _lr(2, 16, 16)
    a = BlindSR(enet, MixtureOfExperts.from_experts(experts))(lr)
    b = BlindSR(enet, LoopMixture.from_experts(experts))(lr)
    assert torch.allclose(a["fused"], b["fused"], atol=1e-5)
