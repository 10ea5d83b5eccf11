"""Mean Teacher: EMA update, frozen teacher, consistency that trains the student only."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

import method_references as ref
from scripts.losses import MultiHeadSupervisedLoss
from scripts.methods import MeanTeacherMethod
from scripts.methods.rampup import ConstantWeight, SigmoidRampUp
from scripts.networks import CMCNet


def tiny_cmc():
    return CMCNet(spatial_dims=2, num_modalities=2, out_channels=3, channels=(4, 8))


def make_method(**kwargs):
    return MeanTeacherMethod(MultiHeadSupervisedLoss(), consistency_weight=ConstantWeight(1.0), **kwargs)


def batch():
    return torch.randn(2, 2, 8, 8), torch.randint(0, 3, (2, 1, 8, 8)), torch.randn(3, 2, 8, 8)


def test_ema_update_formula_on_hand_made_weights():
    student = nn.Linear(2, 1)
    method = make_method(ema_decay=0.9)
    method.setup(student)
    with torch.no_grad():
        method.teacher.module.weight.copy_(torch.tensor([[1.0, 2.0]]))
        method.teacher.module.bias.fill_(4.0)
        student.weight.copy_(torch.tensor([[3.0, -2.0]]))
        student.bias.fill_(0.0)
    method.ema_updates.fill_(100)  # past the warm-up: a = min(1 - 1/101, 0.9) = 0.9
    method.after_optimizer_step(student, epoch=1.0)
    assert torch.allclose(method.teacher.module.weight, torch.tensor([[0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * -2]]))
    assert torch.allclose(method.teacher.module.bias, torch.tensor([3.6]))
    assert int(method.ema_updates) == 101


def test_ema_warm_up_starts_from_the_student():
    student = nn.Linear(2, 1)
    method = make_method(ema_decay=0.99)
    method.setup(student)
    with torch.no_grad():
        method.teacher.module.weight.fill_(10.0)
    method.after_optimizer_step(student, epoch=0.0)  # t = 0: a = min(0, 0.99) = 0
    assert torch.equal(method.teacher.module.weight, student.weight)
    with torch.no_grad():
        student.weight.fill_(1.0)
        method.teacher.module.weight.fill_(0.0)
    method.after_optimizer_step(student, epoch=0.0)  # t = 1: a = min(1/2, 0.99)
    assert torch.allclose(method.teacher.module.weight, torch.full_like(student.weight, 0.5))


def test_teacher_is_a_frozen_copy_with_no_grad():
    net = tiny_cmc()
    method = make_method()
    method.setup(net)
    assert method.teacher is not net
    assert all(not p.requires_grad for p in method.teacher.parameters())
    for a, b in zip(method.teacher.parameters(), net.parameters()):
        assert torch.equal(a, b)
    image, label, unlabeled = batch()
    method.step(net, image, label, unlabeled, epoch=1.0).loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())


def test_consistency_term_trains_the_student_only():
    torch.manual_seed(0)
    net = tiny_cmc()
    method = make_method(noise_std=0.1)
    method.setup(net)
    with torch.no_grad():  # a teacher that differs from the student
        for p in method.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    teacher_before = [p.clone() for p in method.teacher.parameters()]
    image, label, unlabeled = batch()
    out = method.step(net, image, label, unlabeled, epoch=1.0)
    assert set(out.terms) == {"loss_sup", "loss_consistency", "weight_consistency"}
    assert out.pred.shape == (2, 3, 8, 8)
    out.terms["loss_consistency"].backward()
    assert sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in method.teacher.parameters())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(method.teacher.parameters(), teacher_before))


def test_consistency_weight_follows_the_ramp_up_and_falls_back_without_unlabeled():
    net = tiny_cmc()
    method = MeanTeacherMethod(MultiHeadSupervisedLoss(), consistency_weight=SigmoidRampUp(0.1, length=10))
    method.setup(net)
    image, label, unlabeled = batch()
    assert method.step(net, image, label, unlabeled, epoch=10.0).terms["weight_consistency"] == pytest.approx(0.1)
    out = method.step(net, image, label, None, epoch=10.0)
    assert set(out.terms) == {"loss_sup"}


def test_plain_network_without_heads():
    net = nn.Conv2d(2, 3, 3, padding=1)
    method = make_method()
    method.setup(net)
    image, label, unlabeled = batch()
    out = method.step(net, image, label, unlabeled, epoch=1.0)
    assert out.pred.shape == (2, 3, 8, 8)


def test_teacher_and_counter_round_trip_through_state_dict():
    net = tiny_cmc()
    method = make_method()
    method.setup(net)
    method.after_optimizer_step(net, 0.0)
    method.after_optimizer_step(net, 0.0)
    with torch.no_grad():
        next(method.teacher.parameters()).add_(1.0)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    fresh = make_method()
    fresh.setup(tiny_cmc())
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert int(fresh.ema_updates) == 2
    for a, b in zip(fresh.teacher.parameters(), method.teacher.parameters()):
        assert torch.equal(a, b)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        make_method(ema_decay=1.5)
    with pytest.raises(ValueError):
        make_method(noise_std=-0.1)
    with pytest.raises(RuntimeError):
        make_method().step(tiny_cmc(), *batch(), epoch=0.0)


# ---------------------------------------------------------------------------------------------------------------------
# the total loss and the EMA against hand computations (float64, known weights, epoch and random draws)
# ---------------------------------------------------------------------------------------------------------------------


def _double_setup(ema_decay=0.9, noise_std=0.2, weight=None):
    torch.manual_seed(0)
    net = tiny_cmc().double()
    method = MeanTeacherMethod(
        MultiHeadSupervisedLoss(),
        consistency_weight=weight or SigmoidRampUp(8.0, length=4.0),
        ema_decay=ema_decay,
        noise_std=noise_std,
    )
    method.setup(net)
    with torch.no_grad():  # a teacher that clearly differs from the student
        for p in method.teacher.parameters():
            p.add_(0.5 * torch.randn_like(p))
    g = torch.Generator().manual_seed(2)
    image = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64)
    label = torch.randint(0, 3, (2, 1, 8, 8), generator=g)
    unlabeled = torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64)
    return net, method, image, label, unlabeled


def test_total_loss_matches_independently_computed_terms():
    net, method, image, label, unlabeled = _double_setup()
    teacher = copy.deepcopy(method.teacher)
    torch.manual_seed(11)
    out = method.step(net, image, label, unlabeled, epoch=2.0)
    weight = 8.0 * math.exp(-5 * 0.5**2)  # sigmoid ramp-up at t = 2 / 4
    assert out.terms["weight_consistency"] == pytest.approx(weight)
    torch.manual_seed(11)  # the student's noise is drawn first, then the teacher's
    student_noise = 0.2 * torch.randn_like(unlabeled)
    teacher_noise = 0.2 * torch.randn_like(unlabeled)
    with torch.no_grad():
        logits, _ = net.forward_modalities(torch.cat([image, unlabeled + student_noise]))
        sup = ref.supervised([x[:2] for x in logits], label)
        student = torch.softmax(torch.stack([x[2:] for x in logits]).mean(0), dim=1)
        target = torch.softmax(teacher(unlabeled + teacher_noise), dim=1)
        consistency = ((student - target) ** 2).mean()
    ref.assert_weighted_sum(out.loss, {"sup": sup, "consistency": weight * consistency})


def test_teacher_weights_after_two_training_steps_match_the_hand_computed_ema():
    net, method, image, label, unlabeled = _double_setup(ema_decay=0.8, noise_std=0.1, weight=ConstantWeight(2.0))
    method.ema_updates.fill_(10)  # past the warm-up: a = min(1 - 1/11, 0.8) = 0.8 at both updates
    teacher_0 = [p.detach().clone() for p in method.teacher.parameters()]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    students = []
    for it in range(2):
        optimizer.zero_grad()
        method.step(net, image, label, unlabeled, epoch=float(it)).loss.backward()
        assert all(p.grad is None for p in method.teacher.parameters())
        optimizer.step()
        method.after_optimizer_step(net, float(it))
        students.append([p.detach().clone() for p in net.parameters()])
    # t1 = 0.8 t0 + 0.2 s1; t2 = 0.8 t1 + 0.2 s2 = 0.64 t0 + 0.16 s1 + 0.2 s2
    for t, t0, s1, s2 in zip(method.teacher.parameters(), teacher_0, *students):
        assert torch.allclose(t, 0.64 * t0 + 0.16 * s1 + 0.2 * s2, rtol=0, atol=1e-12)
    assert int(method.ema_updates) == 12
    assert any(not torch.equal(a, b) for a, b in zip(*students))  # the student did move between the updates


def test_warm_up_teacher_is_the_plain_average_of_the_students():
    # updates 0, 1, 2: a = 0, 1/2, 2/3, so the teacher is (s1 + s2 + s3) / 3 after three steps
    net, method, image, label, unlabeled = _double_setup(ema_decay=0.99, noise_std=0.0, weight=ConstantWeight(1.0))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    students = []
    for it in range(3):
        optimizer.zero_grad()
        method.step(net, image, label, unlabeled, epoch=float(it)).loss.backward()
        optimizer.step()
        method.after_optimizer_step(net, float(it))
        students.append([p.detach().clone() for p in net.parameters()])
    for t, *s in zip(method.teacher.parameters(), *students):
        assert torch.allclose(t, sum(s) / 3, rtol=0, atol=1e-12)
