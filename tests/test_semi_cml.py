"""Semi-CML: decoupled network, mutual-learning losses, PReL pseudo-labels, teacher building and state."""

from __future__ import annotations

import io
import logging
import math
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from monai.losses import DiceCELoss
from torch import nn

import method_references as ref
from scripts.engine.modality_validation import ModalityValidationHandler
from scripts.losses import AreaSimilarityContrastiveLoss, MultiHeadSupervisedLoss, MutualConsistencyLoss, SoftDiceCELoss
from scripts.methods import SemiCMLMethod, average_state_dicts, stochastic_pseudo_labels, strongest_modality
from scripts.methods.rampup import ConstantWeight, SigmoidRampUp
from scripts.networks import DecoupledMultiModalNet

TINY = {"channels": (4, 8), "strides": (2,), "num_res_units": 1}


def tiny_net(num_modalities=3, out_channels=3, spatial_dims=2, **kwargs):
    return DecoupledMultiModalNet(spatial_dims, num_modalities, out_channels, **{**TINY, **kwargs})


def make_method(mutual_epochs=1.0, teacher_checkpoints=2, **kwargs):
    return SemiCMLMethod(
        supervised_loss=MultiHeadSupervisedLoss(),
        asc_loss=AreaSimilarityContrastiveLoss(),
        mutual_loss=MutualConsistencyLoss(),
        pseudo_label_loss=SoftDiceCELoss(),
        asc_schedule=ConstantWeight(0.5),
        mse_schedule=ConstantWeight(0.5),
        mutual_epochs=mutual_epochs,
        teacher_checkpoints=teacher_checkpoints,
        **kwargs,
    )


def fill_modality(net, modality, value):
    """Set every parameter of one modality network to `value` (a recognisable snapshot)."""
    with torch.no_grad():
        for p in net.modality_network(modality).parameters():
            p.fill_(value)


def first_param(module):
    return next(module.parameters()).detach().clone()


# --------------------------------------------------------------------------------------------------------------------
# DecoupledMultiModalNet
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims,size", [(2, (16, 16)), (3, (8, 8, 8))])
def test_decoupled_net_shapes(spatial_dims, size):
    net = tiny_net(num_modalities=3, out_channels=4, spatial_dims=spatial_dims)
    x = torch.randn(2, 3, *size)
    assert net(x).shape == (2, 4, *size)
    logits, features = net.forward_modalities(x)
    assert len(logits) == 3 and all(t.shape == (2, 4, *size) for t in logits)
    assert features == []
    assert torch.allclose(net(x), torch.stack(logits).mean(0), atol=1e-6)


def test_decoupled_net_modalities_are_independent():
    net = tiny_net().eval()
    x = torch.randn(1, 3, 16, 16)
    for m in range(3):
        assert torch.allclose(net.forward_modalities(x)[0][m], net.modality_network(m)(x[:, m : m + 1]))
    y = x.clone()
    y[:, 1] = torch.randn(16, 16)
    before, after = net.forward_modalities(x)[0], net.forward_modalities(y)[0]
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
    assert not torch.allclose(before[1], after[1])


def test_decoupled_net_available_modalities_subset():
    full = tiny_net().eval()
    subset = tiny_net(available_modalities=[0, 2]).eval()
    subset.load_state_dict(full.state_dict())
    x = torch.randn(2, 3, 16, 16)
    heads, _ = full.forward_modalities(x)
    assert torch.allclose(subset(x), (heads[0] + heads[2]) / 2, atol=1e-6)
    # the missing modality's channel is never read: zeros or noise give the same segmentation
    zero_filled = x.clone()
    zero_filled[:, 1] = 0
    noisy = x.clone()
    noisy[:, 1] = 100 * torch.randn(16, 16)
    assert torch.equal(subset(zero_filled), subset(noisy))


def test_decoupled_net_torchscript():
    for available in (None, [1]):
        net = tiny_net(available_modalities=available).eval()
        scripted = torch.jit.script(net)
        x = torch.randn(2, 3, 16, 16)
        assert torch.allclose(scripted(x), net(x), atol=1e-6)


def test_decoupled_net_validation():
    with pytest.raises(ValueError):
        tiny_net(available_modalities=[])
    with pytest.raises(ValueError):
        tiny_net(available_modalities=[0, 3])
    with pytest.raises(ValueError):
        tiny_net(available_modalities=[1, 1])
    with pytest.raises(ValueError):
        tiny_net(dropout=1.0)
    with pytest.raises(ValueError):
        tiny_net(spatial_dims=1)
    net = tiny_net()
    with pytest.raises(ValueError, match="input channels"):
        net(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 3, 15, 16))
    with pytest.raises(IndexError):
        net.modality_network(3)


def test_decoupled_net_default_has_dropout_when_asked():
    net = DecoupledMultiModalNet(2, 2, 3, dropout=0.1)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.1 for m in net.modality_network(0).modules())


# --------------------------------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------------------------------


def test_mutual_consistency_is_the_mean_pairwise_mse():
    probs = [torch.softmax(torch.randn(2, 3, 4, 4), 1).requires_grad_() for _ in range(3)]
    expected = sum(float(((probs[a] - probs[b]) ** 2).mean().detach()) for a, b in combinations(range(3), 2)) / 3
    value = MutualConsistencyLoss()(probs)
    assert math.isclose(float(value), expected, rel_tol=1e-6)
    value.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in probs)  # nothing detached
    assert float(MutualConsistencyLoss()([probs[0], probs[0]])) == 0.0
    with pytest.raises(ValueError):
        MutualConsistencyLoss()([probs[0]])


def test_soft_dice_ce_cross_entropy_with_probability_targets():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.softmax(torch.randn(2, 3, 4, 4), 1)
    ce_only = SoftDiceCELoss(lambda_dice=0.0)
    expected = float((-(target * torch.log_softmax(logits, 1)).sum(1)).mean())
    assert math.isclose(float(ce_only(logits, target)), expected, rel_tol=1e-5)
    # soft-label Dice is zero when the prediction equals the soft target
    dice_only = SoftDiceCELoss(lambda_ce=0.0)
    assert float(dice_only(logits, torch.softmax(logits, 1))) < 1e-5


def test_soft_dice_ce_matches_monai_dice_ce_on_hard_labels():
    logits = torch.randn(2, 4, 8, 8)
    index = torch.randint(0, 4, (2, 1, 8, 8))
    one_hot = F.one_hot(index[:, 0], 4).permute(0, 3, 1, 2).float()
    ours = SoftDiceCELoss(soft_label=False)(logits, one_hot)
    monai = DiceCELoss(to_onehot_y=True, softmax=True)(logits, index)
    assert torch.allclose(ours, monai, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# pure PReL functions
# --------------------------------------------------------------------------------------------------------------------


class CountingTeacher(nn.Module):
    """Deterministic fake teacher: pass t (from 1) returns t * base logits."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.calls * self.base


def test_pseudo_labels_are_the_mean_of_the_passes():
    base = torch.randn(2, 4, 6, 6)
    teacher = CountingTeacher(base)
    pseudo = stochastic_pseudo_labels(teacher, torch.zeros(2, 1, 6, 6), passes=3, noise_std=0.0)
    expected = sum(torch.softmax(t * base, 1) for t in (1, 2, 3)) / 3
    assert teacher.calls == 3
    assert torch.allclose(pseudo, expected, atol=1e-6)
    assert pseudo.min() >= 0 and pseudo.max() <= 1
    assert torch.allclose(pseudo.sum(1), torch.ones(2, 6, 6), atol=1e-5)
    assert not pseudo.requires_grad


def test_pseudo_labels_use_independent_gaussian_input_noise():
    image = torch.randn(1, 1, 5, 5)

    def teacher(x):  # two-class logits that depend on the input
        return torch.cat([x, -2 * x], dim=1)

    torch.manual_seed(7)
    pseudo = stochastic_pseudo_labels(teacher, image, passes=4, noise_std=0.3)
    torch.manual_seed(7)
    expected = sum(torch.softmax(teacher(image + 0.3 * torch.randn_like(image)), 1) for _ in range(4)) / 4
    assert torch.allclose(pseudo, expected, atol=1e-6)
    assert not torch.allclose(pseudo, torch.softmax(teacher(image), 1))
    with pytest.raises(ValueError):
        stochastic_pseudo_labels(teacher, image, passes=0, noise_std=0.1)


def test_average_state_dicts_is_the_hand_computed_mean():
    sds = [
        {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0), "n": torch.tensor(5)},
        {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor(-3.0), "n": torch.tensor(7)},
        {"w": torch.tensor([5.0, 1.0]), "b": torch.tensor(0.0), "n": torch.tensor(9)},
    ]
    avg = average_state_dicts(sds)
    assert torch.equal(avg["w"], torch.tensor([3.0, 3.0]))
    assert torch.equal(avg["b"], torch.tensor(0.0))
    assert avg["n"].item() == 5 and avg["n"].dtype == torch.int64  # non-float entries: from the first
    sds[0]["w"] += 1  # the result is a copy
    assert torch.equal(avg["w"], torch.tensor([3.0, 3.0]))
    with pytest.raises(ValueError):
        average_state_dicts([])
    with pytest.raises(ValueError):
        average_state_dicts([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])


def test_strongest_modality_follows_validation_dice():
    assert strongest_modality([0.6, 0.8, 0.7]) == 1
    assert strongest_modality([0.9, 0.8, 0.7]) == 0
    assert strongest_modality([0.5, 0.7, 0.7]) == 1  # ties: the lowest index
    assert strongest_modality([math.nan, 0.3]) == 1  # NaN never wins
    assert strongest_modality([math.nan, math.nan]) == 0


# --------------------------------------------------------------------------------------------------------------------
# SemiCMLMethod
# --------------------------------------------------------------------------------------------------------------------


def test_setup_requires_a_decoupled_network():
    from scripts.networks import CMCNet

    with pytest.raises(TypeError, match="modality_network"):
        make_method().setup(CMCNet(2, 2, 3, channels=(4, 8)))
    with pytest.raises(ValueError):
        make_method().setup(tiny_net(num_modalities=1))
    with pytest.raises(ValueError):
        make_method(teacher_checkpoints=0)
    with pytest.raises(ValueError):
        make_method(prel_passes=0)


def test_top_k_snapshots_and_stage_switch_build_the_teacher_from_the_strongest_modality():
    net = tiny_net()
    method = make_method(mutual_epochs=1.0, teacher_checkpoints=2)
    method.setup(net)
    assert method.stage == "mutual" and method.teacher_modality == -1
    # modality m at round r has every weight = 10 m + r; modality 1 is the strongest (best Dice 0.9)
    dice = {1: [0.3, 0.5, 0.2], 2: [0.4, 0.9, 0.7], 3: [0.1, 0.6, 0.6]}
    for r in (1, 2, 3):
        for m in range(3):
            fill_modality(net, m, 10.0 * m + r)
        method.record_validation(r, dice[r], net)
    assert [s["epoch"] for s in method.snapshots[1]] == [2, 3]  # the two best of 0.5, 0.9, 0.6
    assert [s["score"] for s in method.snapshots[1]] == [0.9, 0.6]
    assert [s["epoch"] for s in method.snapshots[2]] == [2, 3]  # 0.2, 0.7, 0.6 -> 0.7 (2), 0.6 (3)
    assert [s["epoch"] for s in method.snapshots[0]] == [2, 1]  # 0.3, 0.4, 0.1: best first
    assert method.best_scores() == [0.4, 0.9, 0.7]

    x = torch.randn(2, 3, 16, 16)
    label = torch.randint(0, 3, (2, 1, 16, 16))
    method.step(net, x, label, torch.randn(2, 3, 16, 16), epoch=0.5)
    assert method.stage == "mutual"
    out = method.step(net, x, label, torch.randn(2, 3, 16, 16), epoch=1.0)
    assert method.stage == "prel" and method.teacher_modality == 1
    # teacher = mean of modality 1's snapshots of rounds 2 and 3: (12 + 13) / 2
    for p in method.teacher.parameters():
        assert torch.allclose(p, torch.full_like(p, 12.5))
    assert "loss_prel" in out.terms and "loss_mse" not in out.terms
    # snapshots are no longer recorded once the teacher is built
    method.record_validation(4, [1.0, 1.0, 1.0], net)
    assert [s["epoch"] for s in method.snapshots[1]] == [2, 3]


def test_teacher_without_validation_is_the_current_modality_0_network(caplog):
    net = tiny_net()
    method = make_method(mutual_epochs=0)
    method.setup(net)
    fill_modality(net, 0, 0.25)
    with caplog.at_level(logging.WARNING):
        method.step(net, torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 1, 16, 16)), None, epoch=0.0)
    assert "no per-modality validation" in caplog.text
    assert method.stage == "prel" and method.teacher_modality == 0
    assert all(torch.all(p == 0.25) for p in method.teacher.parameters())


def test_method_state_round_trips_into_a_fresh_method():
    net = tiny_net()
    method = make_method(mutual_epochs=1.0)
    method.setup(net)
    for r, dice in enumerate(([0.2, 0.5, 0.1], [0.3, 0.4, 0.6]), start=1):
        for m in range(3):
            fill_modality(net, m, float(r + m))
        method.record_validation(r, dice, net)
    method.build_teacher(net)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # what MONAI's CheckpointLoader does

    fresh = make_method(mutual_epochs=1.0)
    fresh.setup(tiny_net())
    fresh.load_state_dict(state)
    assert fresh.stage == "prel" and fresh.teacher_modality == method.teacher_modality == 2  # best Dice 0.3, 0.5, 0.6
    for a, b in zip(fresh.teacher.state_dict().values(), method.teacher.state_dict().values()):
        assert torch.equal(a, b)
    assert len(fresh.snapshots) == 3
    for kept_a, kept_b in zip(fresh.snapshots, method.snapshots):
        assert [(s["epoch"], s["score"]) for s in kept_a] == [(s["epoch"], s["score"]) for s in kept_b]
        for sa, sb in zip(kept_a, kept_b):
            assert sa["state"].keys() == sb["state"].keys()
            assert all(torch.equal(sa["state"][k], sb["state"][k]) for k in sa["state"])
    # a resumed prel stage does not rebuild the teacher
    teacher_before = first_param(fresh.teacher)
    image, unlabeled = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    fresh.step(tiny_net(), image, torch.randint(0, 3, (2, 1, 16, 16)), unlabeled, epoch=1.5)
    assert torch.equal(first_param(fresh.teacher), teacher_before)


def _modality_grads(net):
    return [
        sum(float(p.grad.abs().sum()) for p in net.modality_network(m).parameters() if p.grad is not None)
        for m in range(net.num_modalities)
    ]


@pytest.mark.parametrize(
    "stage_epoch,terms", [(0.0, ("loss_sup", "loss_asc", "loss_mse")), (1.0, ("loss_sup", "loss_asc", "loss_prel"))]
)
def test_every_term_trains_every_modality_network(stage_epoch, terms):
    torch.manual_seed(0)
    net = tiny_net(dropout=0.1)
    method = make_method(mutual_epochs=1.0)
    method.setup(net)
    method.record_validation(1, [0.1, 0.3, 0.2], net)
    image, unlabeled = torch.randn(2, 3, 16, 16), torch.randn(3, 3, 16, 16)
    label = torch.randint(0, 3, (2, 1, 16, 16))
    out = method.step(net, image, label, unlabeled, epoch=stage_epoch)
    assert out.pred.shape == (2, 3, 16, 16)
    for term in terms:
        net.zero_grad()
        out.terms[term].backward(retain_graph=True)
        assert all(g > 0 for g in _modality_grads(net)), term
    assert all(p.grad is None for p in method.teacher.parameters())
    assert all(not p.requires_grad for p in method.teacher.parameters())


def test_without_unlabeled_data_only_the_supervised_term_is_trained():
    net = tiny_net()
    method = make_method()
    method.setup(net)
    out = method.step(net, torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 1, 16, 16)), None, epoch=0.0)
    assert set(out.terms) == {"loss_sup"}
    assert torch.equal(out.loss, out.terms["loss_sup"])


# --------------------------------------------------------------------------------------------------------------------
# ModalityValidationHandler
# --------------------------------------------------------------------------------------------------------------------


class _LabelCopy(nn.Module):
    """Predicts the class index stored in its input channel (perfect when the channel is the label)."""

    def forward(self, x):
        return F.one_hot(x[:, 0].round().long().clamp(0, 2), 3).movedim(-1, 1).float()


class _FakeDecoupled(nn.Module):
    num_modalities = 2

    def __init__(self):
        super().__init__()
        self.nets = nn.ModuleList([_LabelCopy(), _LabelCopy()])

    def modality_network(self, m):
        return self.nets[m]


class _Recorder:
    def __init__(self):
        self.calls = []

    def record_validation(self, epoch, scores, network):
        self.calls.append((epoch, scores))


class _Engine:
    def __init__(self, network, method):
        self.network, self.method = network, method
        self.state = type("State", (), {"epoch": 4, "device": torch.device("cpu")})()


def test_modality_validation_scores_each_modality_network_separately(caplog):
    label = torch.zeros(1, 1, 8, 8)
    label[:, :, 2:5, 2:6] = 1
    label[:, :, 5:7, 1:3] = 2
    # modality 0 sees the label itself (perfect), modality 1 sees zeros (predicts background only)
    loader = [{"image": torch.cat([label, torch.zeros_like(label)], dim=1), "label": label}]
    handler = ModalityValidationHandler(loader, SimpleInferer(), num_classes=3, modality_names=["t1", "t2"])
    recorder = _Recorder()
    with caplog.at_level(logging.INFO):
        handler(_Engine(_FakeDecoupled(), recorder))
    assert recorder.calls == [(4, [1.0, 0.0])]
    assert handler.history == [(4, [1.0, 0.0])]
    assert "t1 1.0000, t2 0.0000" in caplog.text
    # each modality's evaluator logs on its own child of the handler's logger, warnings only: the
    # handler's line above carries the scores
    assert [e.logger.name for e in handler.evaluators(_FakeDecoupled(), "cpu")] == [
        "ModalityValidation.t1",
        "ModalityValidation.t2",
    ]
    assert not any(r.name.startswith("ModalityValidation.") for r in caplog.records)
    assert strongest_modality(recorder.calls[0][1]) == 0
    with pytest.raises(ValueError):
        ModalityValidationHandler(loader, SimpleInferer(), num_classes=3, interval=0)


def _two_labels():
    """Two different 3-class labels (1, 1, 8, 8): one per modality."""
    first, second = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    first[:, :, 2:5, 2:6], first[:, :, 5:7, 1:3] = 1, 2
    second[:, :, 0:3, 4:8], second[:, :, 6:8, 0:5] = 2, 1
    return first, second


def _foreground_dice(pred, label):
    """Mean Dice of classes 1 and 2, by hand."""
    dice = [
        2 * float(((pred == c) & (label == c)).sum()) / float((pred == c).sum() + (label == c).sum()) for c in (1, 2)
    ]
    return sum(dice) / 2


def test_modality_validation_scores_network_m_against_label_channel_m():
    first, second = _two_labels()
    # each modality's image is its own label: a perfect score only against its own label channel
    loader = [{"image": torch.cat([first, second], 1), "label": torch.cat([first, second], 1)}] * 2
    handler = ModalityValidationHandler(loader, SimpleInferer(), num_classes=3)
    assert handler.evaluate(_FakeDecoupled(), "cpu") == [1.0, 1.0]
    # the same image against a single label: modality 1 is scored against `first` (Dice by hand)
    single = [{"image": torch.cat([first, second], 1), "label": first}]
    scores = ModalityValidationHandler(single, SimpleInferer(), num_classes=3).evaluate(_FakeDecoupled(), "cpu")
    expected = _foreground_dice(second, first)
    assert scores[0] == 1.0 and scores[1] == pytest.approx(expected, abs=1e-6) and expected < 0.5


class _ModeSpy(nn.Module):
    """_LabelCopy that records the mode and gradient state of each call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return _LabelCopy()(x)


def test_modality_validation_runs_monai_evaluators_in_eval_mode_and_restores_training():
    net = _FakeDecoupled()
    net.nets = nn.ModuleList([_ModeSpy(), _ModeSpy()])
    first, second = _two_labels()
    loader = [{"image": torch.cat([first, second], 1), "label": first}] * 3
    handler = ModalityValidationHandler(loader, SimpleInferer(), num_classes=3, amp=True)
    # the trainer's (wrapped) network, as under DDP
    assert handler.evaluate(nn.DataParallel(net), "cpu", epoch=2)[0] == 1.0
    assert all(spy.calls == [(False, False)] * 3 for spy in net.nets)
    assert net.training and all(module.training for module in net.modules())
    evaluators = handler.evaluators(net, "cpu")
    assert len(evaluators) == 2 and all(type(e) is SupervisedEvaluator for e in evaluators)
    assert [e.network for e in evaluators] == list(net.nets)
    assert not any(e.amp for e in evaluators)  # CUDA autocast only on a GPU
    # reused while the network stays the same: each one tracks its modality's best score
    handler.evaluate(net, "cpu", epoch=4)
    assert handler.evaluators(net, "cpu") == evaluators
    best = [(e.state.best_metric, e.state.best_metric_epoch) for e in evaluators]
    assert best == [(1.0, 2), (pytest.approx(_foreground_dice(second, first), abs=1e-6), 2)]
    assert handler.evaluators(_FakeDecoupled(), "cpu") != evaluators
    with pytest.raises(TypeError, match="modality_network"):
        handler.evaluate(nn.Conv2d(2, 3, 1), "cpu")
    with pytest.raises(ValueError, match="no batch"):
        ModalityValidationHandler([], SimpleInferer(), num_classes=3).evaluate(net, "cpu")


def test_modality_validation_every_interval_epochs_on_the_trainer():
    label = torch.zeros(1, 1, 8, 8)
    label[:, :, 2:5, 2:6] = 1
    loader = [{"image": torch.cat([label, torch.zeros_like(label)], dim=1), "label": label}]
    trainer = Engine(lambda engine, batch: None)
    trainer.network, trainer.method = _FakeDecoupled(), _Recorder()
    trainer.state.device = torch.device("cpu")
    handler = ModalityValidationHandler(loader, SimpleInferer(), num_classes=3, interval=2)
    handler.attach(trainer)
    trainer.run([0], max_epochs=5)
    assert trainer.method.calls == handler.history == [(2, [1.0, 0.0]), (4, [1.0, 0.0])]


# --------------------------------------------------------------------------------------------------------------------
# the total loss of both stages and the pseudo-labels against independent computations (float64)
# --------------------------------------------------------------------------------------------------------------------


def _double_batch():
    g = torch.Generator().manual_seed(4)
    image = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    label = torch.randint(0, 3, (2, 1, 16, 16), generator=g)
    unlabeled = torch.randn(3, 3, 16, 16, generator=g, dtype=torch.float64)
    return image, label, unlabeled


def _no_dropout(module):
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mutual_stage_total_loss_matches_independently_computed_terms(reduction):
    torch.manual_seed(0)
    net = tiny_net(dropout=0.0).double()
    method = SemiCMLMethod(
        supervised_loss=MultiHeadSupervisedLoss(reduction=reduction),
        asc_loss=AreaSimilarityContrastiveLoss(),
        mutual_loss=MutualConsistencyLoss(),
        pseudo_label_loss=SoftDiceCELoss(),
        asc_schedule=ConstantWeight(0.8),
        mse_schedule=SigmoidRampUp(20.0, length=4.0),
        mutual_epochs=10.0,
    )
    method.setup(net)
    image, label, unlabeled = _double_batch()
    out = method.step(net, image, label, unlabeled, epoch=1.0)
    w_asc, w_mse = 0.8, 20.0 * math.exp(-5 * 0.75**2)  # t = 1 / 4
    assert out.terms["weight_asc"] == pytest.approx(w_asc) and out.terms["weight_mse"] == pytest.approx(w_mse)
    with torch.no_grad():
        logits, _ = net.forward_modalities(torch.cat([image, unlabeled]))
        sup = ref.supervised([x[:2] for x in logits], label, reduction=reduction)
        probabilities = [torch.softmax(x[2:], dim=1) for x in logits]
        asc = ref.reference_asc(probabilities)
        mse = ref.mutual_mse(probabilities)
    ref.assert_weighted_sum(out.loss, {"sup": sup, "asc": w_asc * asc, "mse": w_mse * mse})


def _prel_method(**kwargs):
    return make_method(mutual_epochs=1.0, teacher_checkpoints=1, **kwargs)


@pytest.mark.parametrize(
    "options,weights",
    [
        ({"prel_alpha": 0.3, "prel_weight": 2.0}, (2.0, 0.3)),  # independent weights (the bundle's form)
        ({"prel_alpha": 0.3, "prel_weight": 2.0, "prel_convex": True, "prel_noise_clip": (0.0, 0.2)}, (1.4, 0.6)),
    ],
)
def test_prel_stage_total_loss_matches_independently_computed_terms(options, weights):
    torch.manual_seed(0)
    net = tiny_net(dropout=0.3).double()
    method = _prel_method(prel_passes=3, prel_noise_std=0.1, **options)
    method.setup(net)
    method.record_validation(1, [0.1, 0.9, 0.2], net)  # modality 1 is the teacher
    _no_dropout(net)  # a deterministic student; the teacher keeps its dropout
    image, label, unlabeled = _double_batch()
    torch.manual_seed(3)
    out = method.step(net, image, label, unlabeled, epoch=1.0)
    assert method.stage == "prel" and method.teacher_modality == 1
    w_prel, w_asc = weights
    assert out.terms["weight_prel"] == pytest.approx(w_prel) and out.terms["weight_asc"] == pytest.approx(w_asc)
    replica = ref.mc_dropout_copy(method.teacher, dropout=True)
    torch.manual_seed(3)  # the same random draws: the student's forward, then the teacher's noise and dropout
    with torch.no_grad():
        logits, _ = net.forward_modalities(torch.cat([image, unlabeled]))
        pseudo = ref.pseudo_label(replica, unlabeled[:, 1:2], 3, 0.1, options.get("prel_noise_clip"))
        sup = ref.supervised([x[:2] for x in logits], label)
        prel = sum(ref.soft_dice_ce(x[2:], pseudo) for x in logits) / 3
        asc = ref.reference_asc([torch.softmax(x[2:], dim=1) for x in logits])
    ref.assert_weighted_sum(out.loss, {"sup": sup, "prel": w_prel * prel, "asc": w_asc * asc})


def test_pseudo_labels_read_the_teacher_modality_with_dropout_on():
    torch.manual_seed(0)
    net = tiny_net(dropout=0.3).double()
    method = _prel_method(prel_passes=4, prel_noise_std=0.0)  # no input noise: dropout is the only randomness
    method.setup(net)
    method.record_validation(1, [0.1, 0.9, 0.2], net)
    method.build_teacher(net)
    assert method.teacher_modality == 1
    unlabeled = _double_batch()[2]
    torch.manual_seed(5)
    pseudo = method.pseudo_labels(unlabeled)

    def expected(channel, dropout):
        torch.manual_seed(5)
        return ref.pseudo_label(ref.mc_dropout_copy(method.teacher, dropout), unlabeled[:, channel : channel + 1], 4, 0.0)

    # the teacher's dropout provably changes its output: two Monte-Carlo passes differ
    replica = ref.mc_dropout_copy(method.teacher, dropout=True)
    with torch.no_grad():
        x = unlabeled[:, 1:2]
        assert not torch.allclose(replica(x), replica(x))
    assert pseudo.dtype == torch.float32
    assert torch.allclose(pseudo, expected(1, dropout=True), rtol=0, atol=1e-7)
    for channel, dropout in ((1, False), (0, True), (0, False)):
        assert (pseudo - expected(channel, dropout)).abs().max() > 1e-4, (channel, dropout)
    # normalisation layers with running statistics are left in eval mode
    assert not method.teacher.training


def test_pseudo_label_noise_is_clamped():
    image = torch.randn(1, 1, 6, 6, dtype=torch.float64)

    def teacher(x):
        return torch.cat([x, -2 * x], dim=1)

    torch.manual_seed(8)
    pseudo = stochastic_pseudo_labels(teacher, image, passes=3, noise_std=0.3, noise_clip=(0.0, 0.2))
    torch.manual_seed(8)
    noises = [(0.3 * torch.randn_like(image)).clamp(0.0, 0.2) for _ in range(3)]
    expected = sum(torch.softmax(teacher(image + n).float(), 1) for n in noises) / 3
    assert torch.allclose(pseudo, expected, rtol=0, atol=1e-7)
    torch.manual_seed(8)
    unclamped = stochastic_pseudo_labels(teacher, image, passes=3, noise_std=0.3)
    assert (pseudo - unclamped).abs().max() > 1e-3
    with pytest.raises(ValueError):
        stochastic_pseudo_labels(teacher, image, passes=1, noise_std=0.1, noise_clip=(0.2, 0.0))
    with pytest.raises(ValueError):
        _prel_method(prel_convex=True, prel_alpha=1.5)
    with pytest.raises(ValueError):
        _prel_method(prel_noise_clip=(1.0, 0.0))


class _BatchSizes(torch.nn.Module):
    """A loss stand-in that records the batch size of its inputs and returns their mean."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, probabilities, *rest):
        first = probabilities[0] if isinstance(probabilities, list) else probabilities
        self.sizes.append(int(first.shape[0]))
        return first.mean()


def test_cases_lacking_a_sequence_leave_the_cross_modal_terms():
    """Issue 23: unlabeled cases without sequence 1 or 2 (zeroed) are left out of ASC and the mutual MSE;
    network m re-learns (PReL) only on the cases that hold both the teacher's sequence and sequence m."""
    torch.manual_seed(0)
    net = tiny_net(dropout=0.1)
    asc, mse, prel = _BatchSizes(), _BatchSizes(), _BatchSizes()
    method = make_method(mutual_epochs=1.0)
    method.asc_loss, method.mutual_loss, method.pseudo_label_loss = asc, mse, prel
    method.setup(net)
    image, unlabeled = torch.randn(2, 3, 16, 16), torch.randn(5, 3, 16, 16)
    unlabeled[1, 1] = 0.0
    unlabeled[3, 2] = 0.0
    label = torch.randint(0, 3, (2, 1, 16, 16))
    method.step(net, image, label, unlabeled, epoch=0.0)
    assert asc.sizes == [3] and mse.sizes == [3]
    method.record_validation(1, [0.1, 0.3, 0.2], net)  # the teacher reads sequence 1, which case 1 lacks
    method.step(net, image, label, unlabeled, epoch=1.0)
    # network 0 and the teacher's own network 1: cases 0, 2, 3, 4; network 2 also loses case 3
    assert method.teacher_modality == 1 and prel.sizes == [4, 4, 3]
