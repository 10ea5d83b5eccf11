"""Weak-to-strong consistency: pseudo-labels, strong views, the masked loss, the method's total loss, bundle runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bundle_runner import run_bundle, tiny_train_args
from scripts.data.modality_subset import DropSequencesd
from scripts.methods.strong_views import (
    BatchModalityMisalignment,
    BoxCutMix,
    SequenceDropout,
    SequenceIntensityPerturbation,
    StrongView,
)
from scripts.losses import MultiHeadSupervisedLoss
from scripts.losses.confidence_masked import ConfidenceMaskedPseudoLabelLoss
from scripts.methods.pseudo_labels import confident_pseudo_labels
from scripts.methods.rampup import SigmoidRampUp
from scripts.methods.weak_strong import WeakStrongConsistencyMethod
from scripts.networks import CMCNet


# ---------------------------------------------------------------- pseudo-labels
def test_pseudo_labels_threshold_and_mask_on_hand_made_probabilities():
    # 1 case, 3 classes, 4 voxels: max probabilities 0.96, 0.95 (exactly the threshold), 0.94, 0.5
    probs = torch.tensor([[[0.96, 0.02, 0.03, 0.5],
                           [0.02, 0.95, 0.94, 0.2],
                           [0.02, 0.03, 0.03, 0.3]]]).view(1, 3, 2, 2)
    labels, mask = confident_pseudo_labels(probs, threshold=0.95)
    assert labels.shape == mask.shape == (1, 1, 2, 2)
    assert labels.flatten().tolist() == [0, 1, 1, 0]
    assert mask.flatten().tolist() == [1.0, 1.0, 0.0, 0.0]  # >= threshold is kept
    assert confident_pseudo_labels(probs, 0.0)[1].flatten().tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="threshold"):
        confident_pseudo_labels(probs, 1.5)


# ---------------------------------------------------------------- strong views
def test_cutmix_mixes_images_and_pseudo_labels_with_the_same_box():
    torch.manual_seed(0)
    b, m, h, w = 4, 3, 16, 20
    image = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, m, h, w) + 10  # case i: value 10 + i
    target = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, h, w).clone()  # case i: value i
    mask = torch.ones(b, 1, h, w)
    mask[:, :, :, :5] = 0  # confidence differs across the image, so mixing it is observable
    mixed_image, mixed_target, mixed_mask = BoxCutMix(prob=1.0, min_area=0.1, max_area=0.3)(image, target, mask)
    partner = BoxCutMix.partner(b)
    assert partner.tolist() == [1, 2, 3, 0]
    for i in range(b):
        changed_image = (mixed_image[i] != image[i]).all(dim=0)  # every channel changes inside the box
        changed_target = mixed_target[i, 0] != target[i, 0]
        assert changed_image.any(), "prob=1: every case is mixed"
        assert torch.equal(changed_image, changed_target), "image and pseudo-label must be mixed with the same box"
        assert torch.equal(mixed_image[i][:, changed_image], image[partner[i]][:, changed_image])
        assert torch.equal(mixed_target[i, 0][changed_target], target[partner[i], 0][changed_target])
        assert torch.equal(mixed_mask[i, 0][changed_image], mask[partner[i], 0][changed_image])
        # one axis-aligned box covering 10-30% of the image (up to rounding of its sides)
        rows, cols = changed_image.nonzero(as_tuple=True)
        box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(box_area) == int(changed_image.sum())
        assert 0.05 <= int(box_area) / (h * w) <= 0.4
    # prob 0: nothing changes
    same = BoxCutMix(prob=0.0)(image, target)
    assert torch.equal(same[0], image) and torch.equal(same[1], target)


def test_sequence_dropout_zeroes_exactly_the_chosen_channels():
    torch.manual_seed(0)
    image = torch.randn(6, 3, 8, 8) + 5  # no zero voxel anywhere
    dropped = torch.tensor([[True, False, False], [False, True, True], [False] * 3,
                            [False, False, True], [True, True, False], [False, True, False]])
    out = SequenceDropout.apply(image, dropped)
    for i in range(6):
        for c in range(3):
            if dropped[i, c]:
                assert torch.count_nonzero(out[i, c]) == 0
            else:
                assert torch.equal(out[i, c], image[i, c])
    # sampled masks: prob 1 drops between 1 and M - 1 sequences of every case, never all of them
    masks = SequenceDropout(prob=1.0).sample(200, 3)
    counts = masks.sum(dim=1)
    assert int(counts.min()) >= 1 and int(counts.max()) == 2
    assert set(counts.tolist()) == {1, 2}
    assert all(masks[:, c].any() for c in range(3)), "every sequence can be dropped"
    assert SequenceDropout(prob=1.0, max_dropped=1).sample(50, 3).sum(dim=1).eq(1).all()
    assert not SequenceDropout(prob=0.0).sample(50, 3).any()
    assert not SequenceDropout(prob=1.0).sample(5, 1).any(), "a single sequence is never dropped"


def test_sequence_dropout_never_drops_a_kept_sequence():
    names = ["pre", "flair", "post"]
    torch.manual_seed(0)
    masks = SequenceDropout(prob=1.0, always_keep=["flair"], modalities=names).sample(400, 3)
    assert not masks[:, 1].any(), "the kept sequence is never dropped"
    # with flair kept, both other sequences may go at once (flair stays), and each case loses one or two
    assert set(masks.sum(dim=1).tolist()) == {1, 2} and masks[:, 0].any() and masks[:, 2].any()
    # a case without its kept sequence still keeps one of the sequences it has
    present = torch.tensor([[True, False, True]] * 200)
    masks = SequenceDropout(prob=1.0, always_keep=["flair"], modalities=names).sample(200, 3, present=present)
    assert masks.sum(dim=1).eq(1).all() and not masks[:, 1].any()
    # only a kept sequence beside one other: the other may go
    present = torch.tensor([[False, True, True]] * 50)
    masks = SequenceDropout(prob=1.0, always_keep=["flair"], modalities=names).sample(50, 3, present=present)
    assert masks[:, 2].all() and not masks[:, :2].any()
    # with nothing kept the draws are the same as before the option existed (a resumed run continues them)
    torch.manual_seed(3)
    plain = SequenceDropout(prob=0.5).sample(64, 3)
    torch.manual_seed(3)
    assert torch.equal(SequenceDropout(prob=0.5, always_keep=[], modalities=names).sample(64, 3), plain)
    with pytest.raises(ValueError, match="t1ce"):
        SequenceDropout(always_keep=["t1ce"], modalities=names)


def test_intensity_perturbation_is_independent_per_sequence():
    torch.manual_seed(0)
    image = torch.randn(2, 3, 16, 16)
    out = SequenceIntensityPerturbation(prob=1.0, noise_std=0.0, gamma=1.0)(image)
    # without gamma and noise every channel is an affine map a * x + b of itself, with its own a, b
    slopes = []
    for i in range(2):
        for c in range(3):
            x, y = image[i, c].flatten(), out[i, c].flatten()
            a, b = np.polyfit(x.numpy(), y.numpy(), 1)
            assert np.allclose(y.numpy(), a * x.numpy() + b, atol=1e-5)
            assert 0.7 - 1e-6 <= a <= 1.3 + 1e-6
            slopes.append(a)
    assert len({round(s, 6) for s in slopes}) == 6, "each case and sequence gets its own contrast"
    assert torch.equal(SequenceIntensityPerturbation(prob=0.0)(image), image)


def test_drop_sequences_transform_zeroes_the_named_channels_only():
    image = torch.randn(3, 4, 4) + 5
    out = DropSequencesd("image", [1])({"image": image})["image"]
    assert torch.count_nonzero(out[1]) == 0 and torch.equal(out[[0, 2]], image[[0, 2]])
    assert torch.count_nonzero(image[1]) > 0, "the input is not modified"
    with pytest.raises(ValueError, match="no sequence"):
        DropSequencesd("image", [3])({"image": image})


def test_batch_misalignment_keeps_the_reference_sequence():
    torch.manual_seed(0)
    image = torch.zeros(2, 3, 32, 32)
    image[:, :, 12:20, 12:20] = 1.0
    moved = BatchModalityMisalignment(spacing=[1.5, 1.5], prob=1.0, max_shift_mm=6.0, max_rotation_deg=0.0)(image)
    assert torch.equal(moved[:, 0], image[:, 0]), "the reference sequence (and a label on its grid) never moves"
    assert not torch.equal(moved[:, 1:], image[:, 1:])
    # the same global seed gives the same motions (resumable, reproducible)
    torch.manual_seed(0)
    again = BatchModalityMisalignment(spacing=[1.5, 1.5], prob=1.0, max_shift_mm=6.0, max_rotation_deg=0.0)(image)
    assert torch.equal(moved, again)


# ---------------------------------------------------------------- strong views and missing sequences
def _own_grid_batch():
    """4 cases of 2 sequences, each case holding one (own grids): MR, US, MR, US; the absent one is 0."""
    torch.manual_seed(0)
    image = torch.zeros(4, 2, 8, 8)
    for i in range(4):
        image[i, i % 2] = torch.randn(8, 8)
    return image


def test_intensity_perturbation_leaves_missing_sequences_at_zero():
    image = _own_grid_batch()
    out = SequenceIntensityPerturbation(prob=1.0)(image)
    for i in range(4):
        assert torch.equal(out[i, 1 - i % 2], torch.zeros(8, 8))  # absent: still exactly zero
        assert not torch.allclose(out[i, i % 2], image[i, i % 2])  # present: perturbed


def test_sequence_dropout_drops_only_present_sequences_and_keeps_one():
    torch.manual_seed(0)
    image = torch.randn(64, 3, 4, 4)
    image[:32, 1] = 0  # the first half lacks sequence 1
    dropout = SequenceDropout(prob=1.0)
    present = torch.ones(64, 3, dtype=torch.bool)
    present[:32, 1] = False
    dropped = dropout.sample(64, 3, present=present)
    assert not dropped[:32, 1].any()  # a missing sequence is never "dropped" (it would count as one)
    assert ((present & ~dropped).sum(dim=1) >= 1).all()
    assert dropped[:32].sum(dim=1).eq(1).all()  # two present: exactly one goes
    assert torch.equal(dropout(_own_grid_batch()), _own_grid_batch())  # one present: untouched


def test_misalignment_leaves_cases_without_their_reference_sequence():
    image = _own_grid_batch()
    moved = BatchModalityMisalignment(prob=1.0, max_shift_mm=3.0, max_rotation_deg=0.0)(image)
    for i in (1, 3):  # ultrasound only: the reference (channel 0) is missing, nothing moves
        assert torch.equal(moved[i], image[i])
    complete = torch.randn(2, 2, 16, 16)
    assert not torch.equal(BatchModalityMisalignment(prob=1.0, max_shift_mm=3.0)(complete)[:, 1], complete[:, 1])


def test_cutmix_partners_share_their_sequences():
    present = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    assert BoxCutMix.partner(5, present).tolist() == [2, 3, 0, 1, 4]  # case 4 has no partner: itself
    assert BoxCutMix.partner(4).tolist() == [1, 2, 3, 0]
    image = _own_grid_batch()
    torch.manual_seed(1)
    mixed, target = BoxCutMix(prob=1.0, min_area=0.3, max_area=0.3)(image, image[:, :1].clone())
    assert torch.equal(mixed[:, 0][[1, 3]], torch.zeros(2, 8, 8))  # no MR content entered an US case
    assert torch.equal(mixed[:, 1][[0, 2]], torch.zeros(2, 8, 8))
    assert not torch.equal(mixed, image)


def test_strong_view_keeps_each_case_sequences():
    image = _own_grid_batch()
    view = StrongView(SequenceIntensityPerturbation(prob=1.0), BatchModalityMisalignment(prob=1.0),
                      SequenceDropout(prob=1.0), BoxCutMix(prob=1.0))
    from scripts.data.missing_modalities import modality_presence

    for seed in range(5):
        torch.manual_seed(seed)
        strong, _ = view(image, torch.zeros(4, 1, 8, 8))
        assert torch.equal(modality_presence(strong), modality_presence(image))


# ---------------------------------------------------------------- the masked loss, against a loop over voxels
def _masked_loss_by_hand(logits, pseudo_label, mask, ce_weight=0.5, dice_weight=0.5, smooth=1e-5):
    x = logits.double().numpy()
    y = pseudo_label[:, 0].long().numpy()
    w = mask[:, 0].double().numpy()
    b, k = x.shape[:2]
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p = p / p.sum(axis=1, keepdims=True)
    ce = 0.0
    for idx in np.ndindex(y.shape):
        ce += w[idx] * -math.log(p[(idx[0], y[idx], *idx[1:])])
    ce /= y.size
    dices = []
    for c in range(k):
        inter = den_p = den_y = 0.0
        for idx in np.ndindex(y.shape):
            pc = p[(idx[0], c, *idx[1:])]
            yc = float(y[idx] == c)
            inter += w[idx] * pc * yc
            den_p += w[idx] * pc
            den_y += w[idx] * yc
        dices.append((2 * inter + smooth) / (den_p + den_y + smooth))
    return ce_weight * ce + dice_weight * (1 - np.mean(dices))


def test_masked_pseudo_label_loss_matches_the_formula():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 5, 4, generator=g)
    pseudo = torch.randint(0, 3, (2, 1, 5, 4), generator=g).float()
    mask = (torch.rand(2, 1, 5, 4, generator=g) > 0.4).float()
    loss = ConfidenceMaskedPseudoLabelLoss(ce_weight=0.3, dice_weight=0.7)(logits, pseudo, mask)
    assert float(loss) == pytest.approx(_masked_loss_by_hand(logits, pseudo, mask, 0.3, 0.7), rel=1e-5)
    # unconfident voxels do not count: changing the logits there leaves the loss unchanged
    changed = logits + 5.0 * (1 - mask) * torch.randn(2, 3, 5, 4, generator=g)
    assert float(ConfidenceMaskedPseudoLabelLoss()(changed, pseudo, mask)) == pytest.approx(
        float(ConfidenceMaskedPseudoLabelLoss()(logits, pseudo, mask)), rel=1e-6)
    with pytest.raises(ValueError, match="not both 0"):
        ConfidenceMaskedPseudoLabelLoss(0.0, 0.0)


# ---------------------------------------------------------------- the method's step
class _PixelNet(nn.Module):
    """A 1x1 convolution: the simplest single network taking the sequences as input channels."""

    def __init__(self, in_channels=2, classes=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(in_channels, classes, 1)
        self.dropout = nn.Dropout(0.5)  # active in train mode only: the teacher pass must run in eval mode

    def forward(self, x):
        return self.dropout(self.conv(x))


def _sup_by_hand(logits, label):
    """DiceCE (MONAI defaults: softmax, one-hot, mean CE, Dice per case and class, smooth 1e-5) by hand."""
    x = logits.double()
    p = torch.softmax(x, dim=1)
    onehot = torch.nn.functional.one_hot(label[:, 0].long(), x.shape[1]).movedim(-1, 1).double()
    ce = -(onehot * torch.log_softmax(x, dim=1)).sum(dim=1).mean()
    inter = (p * onehot).sum(dim=(2, 3))
    dice = 1 - ((2 * inter + 1e-5) / (p.sum(dim=(2, 3)) + onehot.sum(dim=(2, 3)) + 1e-5)).mean()
    return float((ce + dice).detach())


def _ws_method(weight=0.7, threshold=0.4, view=None, **kwargs):
    return WeakStrongConsistencyMethod(
        supervised_loss=MultiHeadSupervisedLoss(),
        pseudo_label_loss=ConfidenceMaskedPseudoLabelLoss(),
        strong_view=view if view is not None else StrongView(),
        unsupervised_schedule=SigmoidRampUp(weight, length=0),
        threshold=threshold,
        **kwargs,
    )


def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 2, 6, 6, generator=g), torch.randint(0, 3, (2, 1, 6, 6), generator=g).float(),
            torch.randn(3, 2, 6, 6, generator=g))


def test_total_loss_is_the_weighted_sum_of_independently_computed_terms():
    net = _PixelNet()
    net.train()
    image, label, unlabeled = _batch()
    method = _ws_method(weight=0.7, threshold=0.4)
    torch.manual_seed(5)
    out = method.step(net, image, label, unlabeled, epoch=1.0)

    # independent computation: the dropout of the labeled pass draws from the same generator state
    with torch.no_grad():
        teacher_probs = torch.softmax(net.conv(unlabeled), dim=1)  # eval mode: no dropout
    pseudo = teacher_probs.argmax(dim=1, keepdim=True).float()
    mask = (teacher_probs.max(dim=1, keepdim=True).values >= 0.4).float()
    assert 0 < float(mask.mean()) < 1, "the test needs both confident and unconfident voxels"
    torch.manual_seed(5)
    joint = net(torch.cat([image, unlabeled]))  # the method forwards labeled and strong images together
    sup = _sup_by_hand(joint[:2], label)
    unsup = _masked_loss_by_hand(joint[2:].detach(), pseudo, mask)
    expected = sup + 0.7 * unsup

    assert float(out.terms["loss_sup"]) == pytest.approx(sup, rel=1e-5)
    assert float(out.terms["loss_unsup"]) == pytest.approx(unsup, rel=1e-5)
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)
    assert float(out.terms["stat_confident"]) == pytest.approx(float(mask.mean()))
    # a flipped or dropped term gives another value: the comparison above would catch it
    for wrong in (sup - 0.7 * unsup, -sup + 0.7 * unsup, sup, 0.7 * unsup, sup + unsup):
        assert abs(float(out.loss) - wrong) > 1e-3
    # before the unsupervised term starts: supervised only, unlabeled images not forwarded
    late = WeakStrongConsistencyMethod(MultiHeadSupervisedLoss(), ConfidenceMaskedPseudoLabelLoss(), StrongView(),
                                       SigmoidRampUp(1.0, length=0, start=5.0))
    early = late.step(net, image, label, unlabeled, epoch=1.0)
    assert set(early.terms) == {"loss_sup"}
    # and the trainer is told not to load unlabeled batches before the schedule starts
    assert not late.uses_unlabeled_at(4.99) and late.uses_unlabeled_at(5.0)


def test_pseudo_labels_come_from_the_teacher_in_eval_mode():
    net = _PixelNet()
    net.train()
    _, _, unlabeled = _batch()
    method = _ws_method(threshold=0.0)
    torch.manual_seed(0)
    train_mode = torch.softmax(net(unlabeled), dim=1).argmax(dim=1, keepdim=True).float()
    eval_mode = torch.softmax(net.conv(unlabeled), dim=1).argmax(dim=1, keepdim=True).float()
    assert not torch.equal(train_mode, eval_mode), "the dropout must change the prediction for this check to mean anything"
    labels, mask = method.pseudo_labels(net, unlabeled)
    assert torch.equal(labels, eval_mode)
    assert net.training, "the network is back in train mode"


def test_strong_view_and_pseudo_labels_move_together_in_the_step():
    """With CutMix always on and an identity network, every voxel's pseudo-label is its own input's argmax."""
    net = nn.Identity()
    image = torch.randn(2, 3, 8, 8)
    label = image.argmax(dim=1, keepdim=True).float()
    unlabeled = 4 * torch.randn(4, 3, 8, 8)
    seen = {}

    class Loss(nn.Module):
        def forward(self, logits, pseudo_label, mask):
            seen["consistent"] = torch.equal(logits.argmax(dim=1, keepdim=True).float(), pseudo_label)
            return (logits * 0).sum()

    method = WeakStrongConsistencyMethod(MultiHeadSupervisedLoss(), Loss(), StrongView(cutmix=BoxCutMix(prob=1.0)),
                                         SigmoidRampUp(1.0, length=0), threshold=0.0)
    method.step(net, image, label, unlabeled, epoch=0.0)
    assert seen["consistent"]


def test_feature_perturbation_and_ema_teacher():
    torch.manual_seed(0)
    net = CMCNet(spatial_dims=2, num_modalities=2, out_channels=3, channels=(4, 8))
    image, label, unlabeled = torch.randn(2, 2, 8, 8), torch.randint(0, 3, (2, 1, 8, 8)).float(), torch.randn(2, 2, 8, 8)
    method = _ws_method(threshold=0.0, feature_dropout=0.5, feature_module="fusion", ema_decay=0.9)
    method.setup(net)
    out = method.step(net, image, label, unlabeled, epoch=0.0)
    # the unsupervised term averages the strong view and the feature-perturbed stream
    assert float(out.terms["loss_unsup"]) == pytest.approx(
        (float(out.terms["loss_strong"]) + float(out.terms["loss_feature_perturbed"])) / 2, rel=1e-5)
    out.loss.backward()
    assert net.fusion.proj.conv.weight.grad is not None and float(net.fusion.proj.conv.weight.grad.abs().sum()) > 0
    # EMA teacher after two optimizer steps: the first update copies the weights, the second averages
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    opt.step()
    first = {k: v.clone() for k, v in net.state_dict().items()}
    method.after_optimizer_step(net, 0.0)
    opt.step()  # the same gradients again: the weights move once more
    second = {k: v.clone() for k, v in net.state_dict().items()}
    method.after_optimizer_step(net, 0.0)
    teacher = method.teacher.module.state_dict()
    name = "fusion.proj.conv.weight"
    assert not torch.equal(first[name], second[name])
    assert torch.allclose(teacher[name], 0.9 * first[name] + 0.1 * second[name], atol=1e-6)
    with pytest.raises(ValueError, match="feature_module"):
        _ws_method(feature_dropout=0.5)
    with pytest.raises(AttributeError):
        _ws_method(feature_dropout=0.5, feature_module="nope").setup(net)


# ---------------------------------------------------------------- bundle runs
@pytest.mark.parametrize("configs", [("train.yaml", "weak_strong.yaml"), ("train.yaml", "unet.yaml", "weak_strong.yaml")])
def test_two_iteration_bundle_run(tmp_path, configs):
    args = tiny_train_args(tmp_path, *configs, iterations=2)
    args += ["--ws_threshold", "0.0", "--ws_num_strong_views", "2"]
    proc = run_bundle(args)
    text = proc.stdout + proc.stderr
    assert "loss_unsup" in text and "stat_confident" in text
    assert (tmp_path / "models" / "model.pt").is_file()


# ---------------------------------------------------------------- CMC with strong views
def _cmc_strong(strong_weight=0.3, view=None):
    from scripts.losses import AnatomicalConsistencyLoss, ChannelSemanticConsistencyLoss
    from scripts.methods.cmc_strong_views import CMCStrongViewMethod

    return CMCStrongViewMethod(
        supervised_loss=MultiHeadSupervisedLoss(), csc_loss=ChannelSemanticConsistencyLoss(temperature=0.5),
        cac_loss=AnatomicalConsistencyLoss(), csc_schedule=SigmoidRampUp(0.1, length=0),
        cac_schedule=SigmoidRampUp(0.5, length=0), strong_view=view if view is not None else StrongView(),
        strong_schedule=SigmoidRampUp(strong_weight, length=0),
    )


def _soft_dice_loss_by_hand(a_logits, b_logits):
    a, b = torch.softmax(a_logits.double(), 1), torch.softmax(b_logits.double(), 1)
    inter = (a * b).sum(dim=(2, 3))
    return float((1 - (2 * inter + 1e-5) / ((a**2).sum(dim=(2, 3)) + (b**2).sum(dim=(2, 3)) + 1e-5)).mean())


def test_cmc_strong_views_adds_the_weighted_cross_view_term():
    torch.manual_seed(0)
    net = CMCNet(spatial_dims=2, num_modalities=2, out_channels=3, channels=(4, 8))
    image, label, unlabeled = torch.randn(2, 2, 8, 8), torch.randint(0, 3, (2, 1, 8, 8)).float(), torch.randn(2, 2, 8, 8)
    view = StrongView(intensity=SequenceIntensityPerturbation(prob=1.0))
    method = _cmc_strong(0.3, view)
    torch.manual_seed(7)
    out = method.step(net, image, label, unlabeled, epoch=1.0)
    # independent computation: plain CMC, then the same strong view (same draws) and the pair losses
    torch.manual_seed(7)
    plain = super(type(method), method).step(net, image, label, unlabeled, epoch=1.0)
    net.eval()
    with torch.no_grad():
        weak, _ = net.forward_modalities(unlabeled)
    net.train()
    strong_image = view(unlabeled)[0]
    with torch.no_grad():
        strong, _ = net.forward_modalities(strong_image)
    cross = np.mean([_soft_dice_loss_by_hand(s, w) for s in strong for w in weak])
    assert float(out.terms["loss_cac_strong"]) == pytest.approx(cross, rel=1e-4)
    assert float(out.loss) == pytest.approx(float(plain.loss) + 0.3 * cross, rel=1e-4)
    for wrong in (float(plain.loss) - 0.3 * cross, float(plain.loss), 0.3 * cross):
        assert abs(float(out.loss) - wrong) > 1e-4
    assert {"loss_sup", "loss_csc", "loss_cac", "loss_cac_strong"} <= set(out.terms)
    out.loss.backward()
    assert float(net.fusion.proj.conv.weight.grad.abs().sum()) > 0


def test_cmc_cross_view_pairs_only_the_sequences_a_case_has():
    torch.manual_seed(0)
    strong = [torch.randn(3, 3, 8, 8) for _ in range(2)]
    weak = [torch.randn(3, 3, 8, 8) for _ in range(2)]
    present = torch.tensor([[True, True], [True, False], [False, True]])  # complete, MR only, US only
    got = float(_cmc_strong().cross_view_consistency(strong, weak, present))
    pairs = []
    for a in range(2):
        for b in range(2):
            cases = [i for i in range(3) if present[i, a] and present[i, b]]
            pairs.append(_soft_dice_loss_by_hand(strong[a][cases], weak[b][cases]))
    assert got == pytest.approx(float(np.mean(pairs)), rel=1e-5)
    everything = float(_cmc_strong().cross_view_consistency(strong, weak))
    assert everything != pytest.approx(got, rel=1e-3)


def test_cmc_strong_views_bundle_run(tmp_path):
    proc = run_bundle(tiny_train_args(tmp_path, "train.yaml", "cmc_strong_views.yaml", iterations=2))
    assert "loss_cac_strong" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- CMC with the weak-to-strong term
def _cmc_weak_strong(ws_weight=0.4, view=None, threshold=0.5, start=0.0):
    from scripts.losses import AnatomicalConsistencyLoss, ChannelSemanticConsistencyLoss
    from scripts.methods.cmc_weak_strong import CMCWeakStrongMethod

    ws = WeakStrongConsistencyMethod(
        supervised_loss=MultiHeadSupervisedLoss(), pseudo_label_loss=ConfidenceMaskedPseudoLabelLoss(),
        strong_view=view if view is not None else StrongView(),
        unsupervised_schedule=SigmoidRampUp(ws_weight, length=0, start=start), threshold=threshold,
    )
    return CMCWeakStrongMethod(
        weak_strong=ws, supervised_loss=MultiHeadSupervisedLoss(),
        csc_loss=ChannelSemanticConsistencyLoss(temperature=0.5), cac_loss=AnatomicalConsistencyLoss(),
        csc_schedule=SigmoidRampUp(0.1, length=0), cac_schedule=SigmoidRampUp(0.5, length=0),
    )


def test_cmc_weak_strong_adds_the_weighted_pseudo_label_term_of_the_fused_weak_prediction():
    torch.manual_seed(0)
    net = CMCNet(spatial_dims=2, num_modalities=2, out_channels=3, channels=(4, 8))
    image, label, unlabeled = torch.randn(2, 2, 8, 8), torch.randint(0, 3, (2, 1, 8, 8)).float(), torch.randn(2, 2, 8, 8)
    view = StrongView(intensity=SequenceIntensityPerturbation(prob=1.0))
    method = _cmc_weak_strong(0.4, view, threshold=0.5)
    torch.manual_seed(7)
    out = method.step(net, image, label, unlabeled, epoch=1.0)
    # independent computation: plain CMC; the fused prediction of the weak view (the network's own
    # forward in eval mode); the same strong view (same draws); every head against the pseudo-label
    torch.manual_seed(7)
    from scripts.methods.cmc import CMCMethod

    plain = CMCMethod.step(method, net, image, label, unlabeled, epoch=1.0)
    net.eval()
    with torch.no_grad():
        probs = torch.softmax(net(unlabeled), dim=1)
    net.train()
    pseudo, mask = probs.argmax(1, keepdim=True), (probs.max(1, keepdim=True).values >= 0.5).float()
    assert 0 < float(mask.mean()) < 1, "the threshold must matter on these inputs"
    strong_image = view(unlabeled)[0]
    heads, _ = net.forward_modalities(strong_image)
    loss = ConfidenceMaskedPseudoLabelLoss()
    term = float(torch.stack([loss(h, pseudo, mask) for h in heads]).mean())
    assert float(out.terms["loss_unsup"]) == pytest.approx(term, rel=1e-4)
    assert float(out.terms["stat_confident"]) == pytest.approx(float(mask.mean()))
    assert float(out.loss) == pytest.approx(float(plain.loss) + 0.4 * term, rel=1e-4)
    for wrong in (float(plain.loss) - 0.4 * term, float(plain.loss), 0.4 * term):
        assert abs(float(out.loss) - wrong) > 1e-4
    assert {"loss_sup", "loss_csc", "loss_cac", "loss_unsup", "weight_unsup"} <= set(out.terms)
    out.loss.backward()
    assert float(net.fusion.proj.conv.weight.grad.abs().sum()) > 0


def test_cmc_weak_strong_keeps_cmc_unchanged_before_the_weak_strong_term_starts():
    torch.manual_seed(0)
    net = CMCNet(spatial_dims=2, num_modalities=2, out_channels=3, channels=(4, 8))
    image, label, unlabeled = torch.randn(2, 2, 8, 8), torch.randint(0, 3, (2, 1, 8, 8)).float(), torch.randn(2, 2, 8, 8)
    method = _cmc_weak_strong(start=5.0)
    from scripts.methods.cmc import CMCMethod

    out = method.step(net, image, label, unlabeled, epoch=1.0)
    assert float(out.loss) == pytest.approx(float(CMCMethod.step(method, net, image, label, unlabeled, 1.0).loss))
    assert "loss_unsup" not in out.terms and method.uses_unlabeled_at(1.0)
    with pytest.raises(TypeError, match="WeakStrongConsistencyMethod"):
        type(method)(weak_strong=nn.Identity(), supervised_loss=MultiHeadSupervisedLoss(), csc_loss=None,
                     cac_loss=None, csc_schedule=None, cac_schedule=None)


def test_cmc_weak_strong_bundle_run_keeps_the_ema_teacher_in_the_checkpoint(tmp_path):
    args = tiny_train_args(tmp_path, "train.yaml", "cmc_weak_strong.yaml", iterations=2)
    proc = run_bundle(args + ["--ws_threshold", "0.0", "--ws_ema_decay", "0.9"])
    text = proc.stdout + proc.stderr
    assert "loss_unsup" in text and "loss_cac" in text and "loss_csc" in text
    state = torch.load(next((tmp_path / "out").glob("training_state*.pt")), map_location="cpu", weights_only=True)
    assert int(state["method"]["weak_strong.teacher.n_averaged"]) == 2  # followed every optimizer step
