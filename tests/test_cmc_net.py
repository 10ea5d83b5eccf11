"""Unit tests for scripts.networks.cmc_net (CMC multimodal segmentation network)."""

from __future__ import annotations

import io
import re
import warnings

import pytest
import torch
from monai.inferers import sliding_window_inference

from scripts.networks.cmc_net import ChannelAttention, CMCNet, ModalityFusion


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# (spatial_dims, num_modalities, share_encoder, share_decoder, channels, spatial size)
SHAPE_CASES = [
    (2, 2, True, False, (8, 16, 32), (32, 32)),
    (2, 4, False, False, (8, 16, 32), (32, 48)),
    (2, 2, True, True, (8, 16, 32), (32, 32)),
    (2, 1, True, False, (8, 16, 32), (16, 16)),
    (3, 2, True, False, (4, 8, 16), (16, 16, 16)),
    (3, 4, False, True, (4, 8, 16), (16, 8, 16)),
]


@pytest.mark.parametrize("spatial_dims,num_mod,share_enc,share_dec,channels,size", SHAPE_CASES)
def test_output_and_feature_shapes(spatial_dims, num_mod, share_enc, share_dec, channels, size):
    torch.manual_seed(0)
    net = CMCNet(
        spatial_dims,
        num_mod,
        out_channels=3,
        channels=channels,
        share_encoder=share_enc,
        share_decoder=share_dec,
    )
    assert len(net.encoders) == (1 if share_enc else num_mod)
    assert len(net.decoders) == (1 if share_dec else num_mod)
    x = torch.randn(2, num_mod, *size)
    with torch.no_grad():
        out = net(x)
        logits, feats = net.forward_modalities(x)
    assert out.shape == (2, 3, *size)
    assert len(logits) == num_mod and len(feats) == num_mod
    down = 2 ** (len(channels) - 1)
    for lg, ft in zip(logits, feats):
        assert lg.shape == (2, 3, *size)
        assert ft.shape == (2, channels[-1], *[s // down for s in size])
    # forward is the mean of the modality heads
    torch.testing.assert_close(out, torch.stack(logits).mean(0), rtol=0, atol=1e-6)


def test_default_model_shapes_and_anisotropic_strides():
    net = CMCNet(2, 3, 4)
    assert net.bottleneck_channels == 128 and net.size_divisor == [8, 8]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, feats = net.forward_modalities(x)
    assert logits[0].shape == (2, 4, 64, 64)
    assert feats[0].shape == (2, 128, 8, 8)

    net3 = CMCNet(3, 2, 2, channels=(4, 8, 16), strides=((2, 2, 1), 2))
    assert net3.size_divisor == [4, 4, 2]
    with torch.no_grad():
        logits, feats = net3.forward_modalities(torch.randn(1, 2, 16, 16, 6))
    assert logits[1].shape == (1, 2, 16, 16, 6)
    assert feats[1].shape == (1, 16, 4, 4, 3)


def test_channel_attention_identity_at_init():
    att = ChannelAttention()
    assert att.gamma.item() == 0.0
    for shape in [(2, 5, 4, 3), (1, 3, 2, 3, 4)]:
        x = torch.randn(*shape)
        torch.testing.assert_close(att(x), x, rtol=0, atol=0)


def test_channel_attention_formula():
    att = ChannelAttention()
    with torch.no_grad():
        att.gamma.fill_(1.0)
    # hand-made (B=1, C=2, 2x2) features
    x = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.5, -1.0], [2.0, 0.0]]]])
    flat = x.reshape(2, 4)
    # energy[i, j] = <x_i, x_j>: c0.c0 = 2, c0.c1 = 0.5, c1.c1 = 0.25 + 1 + 4 = 5.25
    energy = torch.tensor([[2.0, 0.5], [0.5, 5.25]])
    torch.testing.assert_close(flat @ flat.T, energy)
    energy_new = energy.max(dim=1, keepdim=True).values - energy  # [[0, 1.5], [4.75, 0]]
    attention = torch.exp(energy_new) / torch.exp(energy_new).sum(dim=1, keepdim=True)
    expected = (attention @ flat + flat).reshape(1, 2, 2, 2)
    torch.testing.assert_close(att(x), expected, rtol=1e-6, atol=1e-6)
    # gamma scales the attention term
    with torch.no_grad():
        att.gamma.fill_(0.5)
    torch.testing.assert_close(att(x), (0.5 * attention @ flat + flat).reshape(1, 2, 2, 2), rtol=1e-6, atol=1e-6)


def test_modality_fusion():
    fusion = ModalityFusion(2, 3, 8)
    feats = [torch.randn(2, 8, 4, 4) for _ in range(3)]
    assert fusion(feats).shape == (2, 8, 4, 4)
    with pytest.raises(ValueError):
        fusion(feats[:2])
    with pytest.raises(ValueError):
        ModalityFusion(2, 0, 8)


def test_parameter_counts():
    kw = dict(spatial_dims=2, num_modalities=3, out_channels=4, channels=(8, 16, 32))
    shared = CMCNet(**kw)
    sep_enc = CMCNet(**kw, share_encoder=False)
    shared_dec = CMCNet(**kw, share_decoder=True)
    assert _n_params(sep_enc) > _n_params(shared)
    assert _n_params(sep_enc) - _n_params(shared) == 2 * _n_params(shared.encoders[0])
    assert _n_params(shared_dec) < _n_params(shared)
    assert _n_params(shared) - _n_params(shared_dec) == 2 * _n_params(shared.decoders[0])
    # default model stays light for CPU training
    assert _n_params(CMCNet(2, 3, 4)) < 2_000_000


@pytest.mark.parametrize("share_encoder", [True, False])
def test_heads_interact_only_through_fusion(share_encoder):
    torch.manual_seed(0)
    net = CMCNet(2, 2, 3, channels=(8, 16, 32), share_encoder=share_encoder).eval()
    x = torch.randn(2, 2, 32, 32)
    x_pert = x.clone()
    x_pert[:, 1] = torch.randn(2, 32, 32)
    with torch.no_grad():
        logits_a, _ = net.forward_modalities(x)
        logits_b, _ = net.forward_modalities(x_pert)
    # perturbing modality 2 changes head 1 (via the fusion) ...
    assert (logits_a[0] - logits_b[0]).abs().max() > 1e-4
    assert (logits_a[1] - logits_b[1]).abs().max() > 1e-4
    # ... and only via the fusion: with a constant fused feature head 1 is unaffected
    with torch.no_grad():
        for p in net.fusion.parameters():
            p.zero_()
        logits_a, _ = net.forward_modalities(x)
        logits_b, _ = net.forward_modalities(x_pert)
    torch.testing.assert_close(logits_a[0], logits_b[0], rtol=0, atol=0)
    assert (logits_a[1] - logits_b[1]).abs().max() > 1e-4


@pytest.mark.parametrize("share_encoder,share_decoder", [(True, False), (False, True)])
def test_torchscript_matches_eager(share_encoder, share_decoder):
    torch.manual_seed(0)
    net = CMCNet(2, 3, 4, channels=(8, 16, 32), share_encoder=share_encoder, share_decoder=share_decoder)
    with torch.no_grad():
        for enc in net.encoders:
            enc.attention.gamma.fill_(0.3)  # exercise the attention path
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=1e-5)
        s_logits, s_feats = scripted.forward_modalities(x)
        e_logits, e_feats = net.forward_modalities(x)
    for a, b in zip(s_logits + s_feats, e_logits + e_feats):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_trace_and_export_match_eager():
    torch.manual_seed(0)
    net = CMCNet(2, 2, 3, channels=(8, 16, 32)).eval()
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        ref = net(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(net, x)
        torch.testing.assert_close(traced(x), ref, rtol=0, atol=1e-5)
    exported = torch.export.export(net, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), ref, rtol=0, atol=1e-5)


def test_onnx_export():
    pytest.importorskip("onnx")
    net = CMCNet(2, 2, 3, channels=(8, 16, 32)).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 2, 32, 32),), buf, dynamo=False, opset_version=17)
    assert len(buf.getvalue()) > 0


def test_sliding_window_inference():
    net = CMCNet(2, 2, 3, channels=(8, 16, 32)).eval()
    with torch.no_grad():
        out = sliding_window_inference(torch.randn(1, 2, 45, 37), (32, 32), 2, net, overlap=0.25)
    assert out.shape == (1, 3, 45, 37)


def test_gradients_reach_encoder_from_features():
    torch.manual_seed(0)
    net = CMCNet(2, 2, 3, channels=(8, 16, 32), share_encoder=False).train()
    _, feats = net.forward_modalities(torch.randn(2, 2, 32, 32))
    loss = sum((f**2).mean() for f in feats) + (feats[0] * feats[1]).mean()
    loss.backward()
    for name, p in net.encoders.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    for enc in net.encoders:
        assert enc.blocks[0].conv1.conv.weight.grad.abs().sum() > 0
        assert enc.attention.gamma.grad.abs().sum() > 0
    # the features are taken before fusion / decoding: those get no gradient from this loss
    assert all(p.grad is None for p in net.decoders.parameters())
    assert all(p.grad is None for p in net.fusion.parameters())


def test_train_step_reduces_loss():
    torch.manual_seed(0)
    net = CMCNet(2, 2, 2, channels=(8, 16, 32))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(4, 2, 32, 32)
    y = (x[:, :1] > 0).long().squeeze(1)
    losses = []
    for _ in range(5):
        logits, _ = net.forward_modalities(x)
        loss = sum(torch.nn.functional.cross_entropy(lg, y) for lg in logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(spatial_dims=1, num_modalities=2, out_channels=2),
        dict(spatial_dims=2, num_modalities=0, out_channels=2),
        dict(spatial_dims=2, num_modalities=2, out_channels=0),
        dict(spatial_dims=2, num_modalities=2, out_channels=2, channels=(16,)),
        dict(spatial_dims=2, num_modalities=2, out_channels=2, channels=(16, 0)),
        dict(spatial_dims=2, num_modalities=2, out_channels=2, channels=(8, 16, 32), strides=(2,)),
        dict(spatial_dims=2, num_modalities=2, out_channels=2, channels=(8, 16), strides=((2, 2, 2),)),
        dict(spatial_dims=2, num_modalities=2, out_channels=2, channels=(8, 16), strides=(0,)),
        dict(spatial_dims=2, num_modalities=2, out_channels=2, dropout=1.5),
    ],
)
def test_invalid_args(kwargs):
    with pytest.raises(ValueError):
        CMCNet(**kwargs)


def test_invalid_inputs():
    net = CMCNet(2, 2, 2, channels=(8, 16, 32))
    with pytest.raises(ValueError, match="input channels"):
        net(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 2, 30, 32))
    with pytest.raises(ValueError, match="spatial dims"):
        net(torch.randn(1, 2, 32, 32, 32))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3"),
        ({"num_modalities": 0}, "num_modalities must be an integer >= 1"),
        ({"out_channels": 1.5}, "out_channels must be an integer >= 1"),
        ({"channels": [16]}, "channels must have at least 2 positive levels"),
        ({"channels": [16, 0]}, "channels must have at least 2 positive levels"),
        ({"strides": [2]}, "strides must have len(channels) - 1 = 2 entries"),
        ({"strides": [2, [2, 2, 2]]}, "each stride must be a positive int or 2 positive ints"),
        ({"strides": [2, 0]}, "each stride must be a positive int or 2 positive ints"),
    ],
)
def test_both_multimodal_networks_reject_bad_levels_by_name(kwargs, message):
    from scripts.networks.decoupled_net import DecoupledMultiModalNet

    args = {"spatial_dims": 2, "num_modalities": 2, "out_channels": 3, "channels": [8, 16, 32]} | kwargs
    for network in (CMCNet, DecoupledMultiModalNet):
        with pytest.raises(ValueError, match=re.escape(message)):
            network(**args)


def test_network_levels_are_normalised_per_axis():
    from scripts.networks.input_checks import check_network_levels

    channels, strides = check_network_levels(3, 2, 4, (8.0, 16, 32), [2, (1, 2, 2)])
    assert channels == [8, 16, 32] and all(type(c) is int for c in channels)
    assert strides == [[2, 2, 2], [1, 2, 2]]
    assert check_network_levels(2, 1, 2, [4, 8, 16, 32], None)[1] == [[2, 2]] * 3
