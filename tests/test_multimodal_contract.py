"""The multimodal network contract (scripts.networks.multimodal) and the method hooks that rely on it (issue 25)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scripts.evaluation.head_outputs import evaluated_heads
from scripts.engine.method import SemiSupervisedMethod
from scripts.losses.multi_head import MultiHeadSupervisedLoss
from scripts.methods.supervised import SupervisedMethod
from scripts.networks import CMCNet, DecoupledMultiModalNet
from scripts.networks import multimodal
from scripts.networks.modality_heads import ModalityHeadsWrapper
from scripts.networks.modality_presence import modality_presence
from scripts.networks.multimodal import MultimodalNetwork, PerModalityNetworks, is_multimodal, require_multimodal


def _cmc():
    torch.manual_seed(0)
    return CMCNet(2, 3, 2, channels=(4, 8))


def _decoupled(available=None):
    torch.manual_seed(0)
    return DecoupledMultiModalNet(2, 3, 2, channels=(4, 8), strides=(2,), available_modalities=available)


class _NoAverage(nn.Module):
    """Heads and the `heads` keyword, but no average_heads: half of the contract."""

    num_modalities = 2

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)

    def forward_modalities(self, image):
        return [self.conv(image[:, m : m + 1]) for m in range(2)], []

    def forward(self, image, heads=False):
        logits, features = self.forward_modalities(image)
        return (logits, features) if heads else torch.stack(logits).mean(0)


def _hand_logits():
    """Three heads of constant logits 1, 2, 4 (class 0) and 0 (class 1): their means are easy to tell apart."""
    return [torch.cat([torch.full((2, 1, 4, 4), v), torch.zeros(2, 1, 4, 4)], dim=1) for v in (1.0, 2.0, 4.0)]


def _image_missing(case: int, modality: int):
    image = torch.randn(2, 3, 4, 4)
    image[case, modality] = 0.0  # a missing sequence: zero-filled after normalisation
    return image


# ---------------------------------------------------------------- the contract
def test_the_bundle_networks_satisfy_the_contract():
    cmc, decoupled = _cmc(), _decoupled()
    assert isinstance(cmc, MultimodalNetwork) and isinstance(decoupled, MultimodalNetwork)
    assert isinstance(decoupled, PerModalityNetworks) and not isinstance(cmc, PerModalityNetworks)
    assert is_multimodal(cmc) and is_multimodal(decoupled)
    assert not is_multimodal(nn.Conv2d(3, 2, 1))  # one network reading every sequence: no heads
    for net in (cmc, decoupled):
        assert multimodal.contract_gaps(net) == []
        torch.jit.script(net)  # the contract adds no base class: the networks still script


def test_a_network_that_breaks_the_contract_is_refused_with_what_it_lacks():
    half = _NoAverage()
    message = r"needs a network that satisfies scripts\.networks\.multimodal\.MultimodalNetwork .*_NoAverage lacks `average_heads`"
    with pytest.raises(TypeError, match=message):
        is_multimodal(half)  # not silently taken for a single network: its heads would be dropped
    with pytest.raises(TypeError, match="`average_heads`"):
        ModalityHeadsWrapper(half)
    with pytest.raises(TypeError, match="`average_heads`"):
        evaluated_heads(half, ["a", "b"])
    with pytest.raises(TypeError, match="`average_heads`"):
        SupervisedMethod(MultiHeadSupervisedLoss()).step(
            nn.DataParallel(half), torch.randn(2, 2, 4, 4), torch.zeros(2, 1, 4, 4), None, 0.0
        )
    with pytest.raises(TypeError, match=r"SemiCMLMethod needs .*PerModalityNetworks .*CMCNet lacks `modality_network`"):
        require_multimodal(_cmc(), "SemiCMLMethod", PerModalityNetworks)


def test_the_heads_keyword_is_checked_once_per_class(monkeypatch):
    calls = []
    signature = multimodal.inspect.signature
    monkeypatch.setattr(multimodal.inspect, "signature", lambda f: calls.append(f) or signature(f))
    multimodal._forward_takes_heads.cache_clear()
    net = _decoupled()
    for _ in range(3):
        SemiSupervisedMethod.forward_heads(net, torch.randn(1, 3, 8, 8))
    assert [f for f in calls if f is DecoupledMultiModalNet.forward] == [DecoupledMultiModalNet.forward]


def test_evaluated_heads_follow_the_contract():
    assert evaluated_heads(_cmc(), ["t1", "t2", "flair"]) == ["fused", "t1", "t2", "flair"]
    assert evaluated_heads(nn.Conv2d(3, 2, 1), ["t1", "t2", "flair"]) == ["fused"]


# ---------------------------------------------------------------- one average of heads
@pytest.mark.parametrize("wrap", [False, True])
def test_mean_of_heads_is_the_networks_average_heads(wrap):
    logits = _hand_logits()
    image = _image_missing(case=0, modality=1)
    cmc = _cmc()
    network = nn.DataParallel(cmc) if wrap else cmc
    got = SemiSupervisedMethod.mean_of_heads(network, logits, image)
    torch.testing.assert_close(got, cmc.average_heads(logits, modality_presence(image)))
    # case 0 lacks sequence 1: heads 0 and 2 vote; case 1 has all three
    assert float(got[0, 0, 0, 0]) == pytest.approx((1 + 4) / 2)
    assert float(got[1, 0, 0, 0]) == pytest.approx((1 + 2 + 4) / 3)
    # without the image every sequence counts as present
    assert float(SemiSupervisedMethod.mean_of_heads(network, logits)[0, 0, 0, 0]) == pytest.approx(7 / 3)


def test_mean_of_heads_respects_available_modalities():
    logits = _hand_logits()
    net = _decoupled(available=[0, 2])
    got = SemiSupervisedMethod.mean_of_heads(net, logits)
    torch.testing.assert_close(got, net.average_heads(logits))
    assert float(got[0, 0, 0, 0]) == pytest.approx((1 + 4) / 2)  # head 1 is not available: it never votes
    image = _image_missing(case=0, modality=2)
    got = SemiSupervisedMethod.mean_of_heads(net, logits, image)
    torch.testing.assert_close(got, net.average_heads(logits, modality_presence(image)))
    assert float(got[0, 0, 0, 0]) == pytest.approx(1.0)  # case 0: only head 0 is both available and present
    assert float(got[1, 0, 0, 0]) == pytest.approx((1 + 4) / 2)


def test_mean_of_heads_is_what_forward_predicts():
    image = torch.randn(2, 3, 8, 8)
    image[1, 0] = 0.0
    for net in (_cmc().eval(), _decoupled(available=[1, 2]).eval()):
        with torch.no_grad():
            heads, _ = net.forward_modalities(image)
            torch.testing.assert_close(SemiSupervisedMethod.mean_of_heads(net, heads, image), net(image))


def test_mean_of_heads_of_a_single_network_is_its_one_head():
    single = nn.Conv2d(3, 2, 1)
    x = torch.randn(2, 2, 4, 4)
    assert SemiSupervisedMethod.mean_of_heads(single, [x]) is x
    with pytest.raises(ValueError, match="not multimodal"):
        SemiSupervisedMethod.mean_of_heads(single, [x, x])


# ---------------------------------------------------------------- the validation hook
def test_record_validation_is_a_hook_of_every_method():
    from scripts.engine.modality_validation import ModalityValidationHandler

    assert SupervisedMethod(MultiHeadSupervisedLoss()).record_validation(3, [0.5, 0.5, 0.5], _decoupled()) is None

    class Engine:
        method = SupervisedMethod(MultiHeadSupervisedLoss())  # the base class's no-op hook
        network = _decoupled()
        state = type("State", (), {"epoch": 2, "device": torch.device("cpu")})()

    label = torch.zeros(1, 1, 8, 8)
    label[:, :, 2:6, 2:6] = 1
    handler = ModalityValidationHandler([{"image": torch.randn(1, 3, 8, 8), "label": label}], lambda x, n: n(x), 2)
    handler(Engine())
    assert [epoch for epoch, _ in handler.history] == [2] and len(handler.history[0][1]) == 3
