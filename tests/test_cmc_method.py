"""The CMC training step: which terms it computes, and that each semi-supervised term trains the encoder."""

from __future__ import annotations

import math

import pytest
import torch

import method_references as ref
from scripts.losses import AnatomicalConsistencyLoss, ChannelSemanticConsistencyLoss, MultiHeadSupervisedLoss
from scripts.methods import CMCMethod, SupervisedMethod
from scripts.methods.rampup import ConstantWeight, CosineRampDown, SigmoidRampUp
from scripts.networks import CMCNet


def _method(csc=1.0, cac=1.0, start=0.0):
    return CMCMethod(
        supervised_loss=MultiHeadSupervisedLoss(),
        csc_loss=ChannelSemanticConsistencyLoss(temperature=0.5),
        cac_loss=AnatomicalConsistencyLoss(),
        csc_schedule=ConstantWeight(csc, start=start),
        cac_schedule=ConstantWeight(cac, start=start),
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
    assert gammas and all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in gammas)


# ---------------------------------------------------------------------------------------------------------------------
# the total loss against independently computed terms (float64, hand-made inputs, known weights and epoch)
# ---------------------------------------------------------------------------------------------------------------------


def _double_net(gamma=0.5, **kwargs):
    """A tiny float64 CMCNet whose channel attention is switched on (gamma != 0), so that the features before
    and after it differ."""
    torch.manual_seed(0)
    net = CMCNet(spatial_dims=2, num_modalities=3, out_channels=4, channels=(4, 8), **kwargs).double()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gamma"):
                p.fill_(gamma)
    return net


def _double_batch(unlabeled_size=16):
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    label = torch.randint(0, 4, (2, 1, 16, 16), generator=g).double()
    unlabeled = torch.randn(3, 3, unlabeled_size, unlabeled_size, generator=g, dtype=torch.float64)
    return image, label, unlabeled


def _schedule_method(**kwargs):
    # at epoch 2: w_csc = 0.3 (constant), w_cac = 0.7 * exp(-5 * (1 - 2/4)^2) (sigmoid ramp-up)
    return CMCMethod(
        supervised_loss=MultiHeadSupervisedLoss(),
        csc_loss=ChannelSemanticConsistencyLoss(temperature=0.5),
        cac_loss=AnatomicalConsistencyLoss(),
        csc_schedule=ConstantWeight(0.3),
        cac_schedule=SigmoidRampUp(0.7, length=4.0),
        **kwargs,
    )


W_CSC, W_CAC = 0.3, 0.7 * math.exp(-5 * 0.25)


def test_total_loss_matches_independently_computed_terms():
    net = _double_net()
    image, label, unlabeled = _double_batch()
    out = _schedule_method().step(net, image, label, unlabeled, epoch=2.0)
    assert out.terms["weight_csc"] == pytest.approx(W_CSC) and out.terms["weight_cac"] == pytest.approx(W_CAC)
    with torch.no_grad():
        logits, _ = net.forward_modalities(torch.cat([image, unlabeled]))
        sup = ref.supervised([x[:2] for x in logits], label)
        # CSC on the attended bottlenecks of all 5 images, each computed block by block
        features = ref.cmc_bottlenecks(net, torch.cat([image, unlabeled]), attended=True)
        csc = ref.reference_csc(features, 0.5)
        cac = ref.cac([torch.softmax(x[2:], dim=1) for x in logits])
    ref.assert_weighted_sum(out.loss, {"sup": sup, "csc": W_CSC * csc, "cac": W_CAC * cac})
    assert out.pred.shape == (2, 4, 16, 16)


@pytest.mark.parametrize("csc_on", ["all", "unlabeled"])
@pytest.mark.parametrize("feature_source", ["attended", "encoder"])
def test_csc_options_and_unlabeled_crops_of_another_size(csc_on, feature_source):
    # labeled 16x16, unlabeled 32x32: the bottlenecks cannot be stacked, and the unlabeled ones must still count
    net = _double_net(feature_source=feature_source)
    image, label, unlabeled = _double_batch(unlabeled_size=32)
    out = _schedule_method(csc_on=csc_on).step(net, image, label, unlabeled, epoch=2.0)
    attended = feature_source == "attended"
    with torch.no_grad():
        labeled_logits, _ = net.forward_modalities(image)
        unlabeled_logits, _ = net.forward_modalities(unlabeled)
        sup = ref.supervised(labeled_logits, label)
        csc_unlabeled = ref.reference_csc(ref.cmc_bottlenecks(net, unlabeled, attended), 0.5)
        csc_labeled = ref.reference_csc(ref.cmc_bottlenecks(net, image, attended), 0.5)
        cac = ref.cac([torch.softmax(x, dim=1) for x in unlabeled_logits])
    csc = csc_unlabeled if csc_on == "unlabeled" else (2 * csc_labeled + 3 * csc_unlabeled) / 5
    ref.assert_weighted_sum(out.loss, {"sup": sup, "csc": W_CSC * csc, "cac": W_CAC * cac})
    # the features before and after the attention differ here, so the choice is visible in CSC
    other = ref.reference_csc(ref.cmc_bottlenecks(net, unlabeled, not attended), 0.5)
    assert abs(other - csc_unlabeled) > 1e-6


def test_csc_on_unlabeled_only_has_no_csc_without_unlabeled_images():
    net = _double_net()
    image, label, _ = _double_batch()
    out = _schedule_method(csc_on="unlabeled").step(net, image, label, None, epoch=2.0)
    assert set(out.terms) == {"loss_sup"}
    with pytest.raises(ValueError, match="csc_on"):
        _schedule_method(csc_on="labeled")


def test_paper_schedule_weights_at_a_known_epoch():
    # the authors' schedule over 10 epochs, semi-supervised terms from epoch 7: at epoch 8.5
    # w_csc = exp(-5 (1 - 0.85)^2), w_cac = 0.5 (cos(0.85 pi) + 1)
    net = _double_net(feature_source="encoder", share_decoder=True)
    image, label, unlabeled = _double_batch()
    method = CMCMethod(
        supervised_loss=MultiHeadSupervisedLoss(),
        csc_loss=ChannelSemanticConsistencyLoss(temperature=0.5),
        cac_loss=AnatomicalConsistencyLoss(),
        csc_schedule=SigmoidRampUp(1.0, length=10.0),
        cac_schedule=CosineRampDown(1.0, length=10.0),
        semi_start_epoch=7.0,
        csc_on="unlabeled",
    )
    assert set(method.step(net, image, label, unlabeled, epoch=6.5).terms) == {"loss_sup"}
    out = method.step(net, image, label, unlabeled, epoch=8.5)
    w_csc, w_cac = math.exp(-5 * 0.15**2), 0.5 * (math.cos(0.85 * math.pi) + 1)
    with torch.no_grad():
        logits, _ = net.forward_modalities(torch.cat([image, unlabeled]))
        sup = ref.supervised([x[:2] for x in logits], label)
        csc = ref.reference_csc(ref.cmc_bottlenecks(net, unlabeled, attended=False), 0.5)
        cac = ref.cac([torch.softmax(x[2:], dim=1) for x in logits])
    ref.assert_weighted_sum(out.loss, {"sup": sup, "csc": w_csc * csc, "cac": w_cac * cac})


def test_supervised_method_loss_is_the_independent_supervised_term():
    net = _double_net()
    image, label, unlabeled = _double_batch()
    out = SupervisedMethod(MultiHeadSupervisedLoss()).step(net, image, label, unlabeled, epoch=0.0)
    with torch.no_grad():
        logits, _ = net.forward_modalities(image)
    ref.assert_weighted_sum(out.loss, {"sup": ref.supervised(logits, label)})


def test_forward_joint_keeps_both_batches_features():
    net = _net()
    image, _, _ = _batch()
    unlabeled = torch.randn(2, 3, 48, 48)
    ll, ul, lf, uf = _method().forward_joint(net, image, unlabeled)
    assert ll[0].shape[-1] == 32 and ul[0].shape[-1] == 48
    assert lf[0].shape[0] == 2 and uf[0].shape[0] == 2 and uf[0].shape[-1] == 12  # 48 / 4
    ll, ul, lf, uf = _method().forward_joint(net, image, None)
    assert ul is None and uf is None and lf[0].shape[0] == 2


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
    labeled_logits, unlabeled_logits, labeled_features, unlabeled_features = joint.forward_joint(net, image, unlabeled)
    assert labeled_logits[0].shape[-1] == 32 and unlabeled_logits[0].shape[-1] == 48
    assert labeled_features[0].shape[0] == image.shape[0]  # bottlenecks of other sizes are kept apart
    assert unlabeled_features[0].shape[-1] == 12


def test_network_feature_source_chooses_the_bottleneck_before_or_after_attention():
    image = _double_batch()[0]
    attended_net = _double_net()
    encoder_net = _double_net(feature_source="encoder")
    encoder_net.load_state_dict(attended_net.state_dict())  # same weights; the option adds no parameter
    logits_a, features_a = attended_net.forward_modalities(image)
    logits_e, features_e = encoder_net.forward_modalities(image)
    assert all(torch.equal(a, b) for a, b in zip(logits_a, logits_e))  # the segmentation does not change
    with torch.no_grad():
        for got, want in zip(features_a, ref.cmc_bottlenecks(attended_net, image, attended=True)):
            assert torch.allclose(got, want, rtol=0, atol=1e-12)
        for got, want in zip(features_e, ref.cmc_bottlenecks(encoder_net, image, attended=False)):
            assert torch.allclose(got, want, rtol=0, atol=1e-12)
    assert (features_a[0] - features_e[0]).abs().max() > 1e-3
    scripted = torch.jit.script(encoder_net.eval())
    assert torch.allclose(scripted(image), encoder_net(image), atol=1e-10)
    with pytest.raises(ValueError, match="feature_source"):
        CMCNet(spatial_dims=2, num_modalities=2, out_channels=2, feature_source="fused")


def test_unlabeled_batches_are_asked_for_from_semi_start_epoch_on():
    method = _method(start=2.0)
    assert not method.uses_unlabeled_at(0.0) and not method.uses_unlabeled_at(1.99)
    assert method.uses_unlabeled_at(2.0) and method.uses_unlabeled_at(5.0)
    assert _method().uses_unlabeled_at(0.0)


# ---------------------------------------------------------------- missing sequences and own grids
class _Recorder(torch.nn.Module):
    """A loss stand-in that records the batch size of the tensors it is given and returns their mean."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, tensors):
        self.sizes.append([int(t.shape[0]) for t in tensors])
        return torch.stack([t.mean() for t in tensors]).mean()


def test_csc_and_cac_leave_cases_that_lack_a_sequence():
    """A case with a zeroed sequence (missing, or own grids: every case) is compared with nothing."""
    net, (image, label, unlabeled) = _net(), _batch()
    method = _method()
    method.csc_loss, method.cac_loss = _Recorder(), _Recorder()
    image, unlabeled = image.clone(), unlabeled.clone()
    image[1, 2] = 0.0
    unlabeled[0, 1] = 0.0
    out = method.step(net, image, label, unlabeled, epoch=0.0)
    complete_unlabeled = unlabeled.shape[0] - 1
    # CSC: the complete labeled case and the complete unlabeled ones, stacked; CAC: the complete unlabeled
    assert method.csc_loss.sizes == [[1 + complete_unlabeled] * 3]
    assert method.cac_loss.sizes == [[complete_unlabeled] * 3]
    assert "loss_cac" in out.terms
    # one sequence per case (own grids): no pair anywhere, only the supervised term
    one = torch.zeros_like(unlabeled)
    one[:, 0] = unlabeled[:, 0]
    lone = torch.zeros_like(image)
    lone[:, 1] = image[:, 1]
    method.csc_loss, method.cac_loss = _Recorder(), _Recorder()
    out = method.step(net, lone, label, one, epoch=0.0)
    assert method.csc_loss.sizes == [] and method.cac_loss.sizes == []
    assert set(out.terms) == {"loss_sup"}
