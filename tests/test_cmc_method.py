"""The CMC training step: which terms it computes, and that each semi-supervised term trains the encoder."""

from __future__ import annotations

import pytest
import torch

from scripts.losses import AnatomicalConsistencyLoss, ChannelSemanticConsistencyLoss, MultiHeadSupervisedLoss
from scripts.methods import CMCMethod, SupervisedMethod
from scripts.methods.rampup import ConstantWeight
from scripts.networks import CMCNet


def _method(csc=1.0, cac=1.0, start=0.0):
    return CMCMethod(
        supervised_loss=MultiHeadSupervisedLoss(),
        csc_loss=ChannelSemanticConsistencyLoss(temperature=0.5),
        cac_loss=AnatomicalConsistencyLoss(),
        csc_weight=ConstantWeight(csc, start=start),
        cac_weight=ConstantWeight(cac, start=start),
        semi_start_epoch=start,
    )


def _net(share_encoder=True):
    torch.manual_seed(0)
    return CMCNet(spatial_dims=2, num_modalities=3, out_channels=4, channels=(8, 16, 32), share_encoder=share_encoder)


def _batch():
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, 32, 32, generator=g)
    label = torch.randint(0, 4, (2, 1, 32, 32), generator=g).float()
    unlabeled = torch.randn(3, 3, 32, 32, generator=g)
    return image, label, unlabeled


def _encoder_grad_norm(net):
    return sum(float(p.grad.abs().sum()) for p in net.encoders.parameters() if p.grad is not None)


@pytest.mark.parametrize("share_encoder", [True, False])
@pytest.mark.parametrize("term", ["loss_csc", "loss_cac"])
def test_each_semi_supervised_term_reaches_the_encoder(term, share_encoder):
    net = _net(share_encoder)
    image, label, unlabeled = _batch()
    out = _method().step(net, image, label, unlabeled, epoch=0.0)
    assert out.terms[term].requires_grad, f"{term} is detached from the graph"
    net.zero_grad()
    out.terms[term].backward()
    assert _encoder_grad_norm(net) > 0, f"{term} sends no gradient to the encoder"
    # and to the channel attention of the bottleneck
    gammas = [p for n, p in net.named_parameters() if n.endswith("gamma")]
    assert gammas and all(p.grad is not None for p in gammas)


def test_total_loss_is_weighted_sum_of_terms():
    net = _net()
    image, label, unlabeled = _batch()
    out = _method(csc=0.3, cac=0.7).step(net, image, label, unlabeled, epoch=1.0)
    expected = out.terms["loss_sup"] + 0.3 * out.terms["loss_csc"] + 0.7 * out.terms["loss_cac"]
    assert torch.allclose(out.loss, expected)
    assert out.terms["weight_csc"] == 0.3 and out.terms["weight_cac"] == 0.7
    assert out.pred.shape == (2, 4, 32, 32)


def test_no_unlabeled_batch_means_no_cac_term():
    net = _net()
    image, label, _ = _batch()
    out = _method().step(net, image, label, None, epoch=1.0)
    assert "loss_cac" not in out.terms
    assert "loss_csc" in out.terms  # CSC still applies to the labeled images' features


def test_semi_supervised_terms_wait_for_start_epoch():
    net = _net()
    image, label, unlabeled = _batch()
    out = _method(start=2.0).step(net, image, label, unlabeled, epoch=1.5)
    assert set(out.terms) == {"loss_sup"}
    assert torch.allclose(out.loss, out.terms["loss_sup"])


def test_supervised_method_ignores_unlabeled_and_matches_cmc_supervised_term():
    net = _net()
    image, label, unlabeled = _batch()
    sup = SupervisedMethod(MultiHeadSupervisedLoss())
    assert sup.uses_unlabeled is False
    a = sup.step(net, image, label, unlabeled, epoch=0.0)
    b = _method(start=10.0).step(net, image, label, None, epoch=0.0)
    assert torch.allclose(a.loss, b.loss)


def test_per_modality_labels_supervise_their_own_head():
    loss = MultiHeadSupervisedLoss()
    g = torch.Generator().manual_seed(3)
    logits = [torch.randn(2, 4, 16, 16, generator=g) for _ in range(3)]
    labels = torch.randint(0, 4, (2, 3, 16, 16), generator=g).float()
    expected = sum(loss.loss(logits[m], labels[:, m : m + 1]) for m in range(3)) / 3
    assert torch.allclose(loss(logits, labels), expected)
    shared = sum(loss.loss(logits[m], labels[:, :1]) for m in range(3)) / 3
    assert torch.allclose(loss(logits, labels[:, :1]), shared)
    with pytest.raises(ValueError, match="channels"):
        loss(logits, labels[:, :2])


def test_unlabeled_batch_of_another_size_is_still_used():
    # labeled crops and unlabeled images of different spatial sizes: two passes instead of one
    net = _net()
    image, label, _ = _batch()
    unlabeled = torch.randn(2, 3, 48, 48)
    out = _method().step(net, image, label, unlabeled, epoch=1.0)
    assert "loss_cac" in out.terms and out.terms["loss_cac"].requires_grad
    joint = _method()
    labeled_logits, unlabeled_logits, features = joint.forward_joint(net, image, unlabeled)
    assert labeled_logits[0].shape[-1] == 32 and unlabeled_logits[0].shape[-1] == 48
    assert features[0].shape[0] == image.shape[0]  # bottlenecks of other sizes are not stacked
