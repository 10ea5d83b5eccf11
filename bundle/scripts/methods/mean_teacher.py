# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..engine.method import SemiSupervisedMethod, StepOutput
from .teacher import ema_teacher, update_teacher

__all__ = ["MeanTeacherMethod"]


class MeanTeacherMethod(SemiSupervisedMethod):
    """Mean Teacher: consistency with an exponential-moving-average (EMA) teacher.

    Tarvainen, A. and Valpola, H. "Mean teachers are better role models: Weight-averaged consistent
    targets improve semi-supervised deep learning results." NeurIPS 2017.

    One iteration minimises::

        L = L_sup(labeled) + w(epoch) * MSE(softmax(student(u + n_s)), softmax(teacher(u + n_t)))

    on the unlabeled batch ``u``, with independent Gaussian input noise ``n_s, n_t ~ N(0, noise_std^2)``
    and a sigmoid ramp-up ``w``. The teacher's prediction is computed without gradients, so the
    consistency term trains the student only. After every optimizer step the teacher follows the
    student::

        theta_teacher <- a * theta_teacher + (1 - a) * theta_student,  a = min(1 - 1 / (t + 1), ema_decay)

    where ``t`` counts the updates from 0 (the warm-up of the original implementation: early on the
    teacher is close to the plain average of the student's weights). The teacher is the
    ``torch.optim.swa_utils.AveragedModel`` of :func:`~scripts.methods.teacher.ema_teacher` with that
    warm-up; its ``n_averaged`` is ``t`` (:attr:`ema_updates`). Buffers (e.g. BatchNorm running
    statistics) are copied from the student.

    With a multimodal network that exposes ``forward_modalities`` (``CMCNet``,
    ``DecoupledMultiModalNet``) the supervised term covers every modality head
    (``supervised_loss(list_of_logits, label)``, e.g. ``MultiHeadSupervisedLoss``) and the
    predictions compared by the consistency term are the mean logits of the heads (what
    ``network(image)`` returns); any other network is used through ``network(image)``.

    Under ``DistributedDataParallel`` the student is called through the wrapper (gradients are
    synchronised) and the teacher is a deep copy of the *unwrapped* network (a plain module: it has
    no gradients to synchronise, and its parameters pair one to one with the unwrapped student's in
    the EMA update); every rank applies the same EMA update to the same synchronised weights, so the
    teachers stay identical across ranks.

    The teacher is created in :meth:`setup` (a deep copy of the network, frozen) and is part of the
    method's ``state_dict`` together with the update counter, so training resumes exactly; to load a
    checkpoint into a fresh method, call :meth:`setup` with the network first.

    Args:
        supervised_loss: ``loss(list_of_logits, label)``, e.g. ``MultiHeadSupervisedLoss``.
        consistency_weight: schedule ``epoch -> weight`` of the consistency term (sigmoid ramp-up).
        ema_decay: the teacher's EMA decay ``a`` in [0, 1]. Defaults to 0.99.
        noise_std: standard deviation of the Gaussian noise added to the unlabeled images (drawn
            separately for student and teacher), >= 0. Defaults to 0.1.
    """

    def __init__(
        self,
        supervised_loss: nn.Module,
        consistency_weight: Callable[[float], float],
        ema_decay: float = 0.99,
        noise_std: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {ema_decay}.")
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}.")
        self.supervised_loss = supervised_loss
        self.consistency_weight = consistency_weight
        self.ema_decay = float(ema_decay)
        self.noise_std = float(noise_std)
        self.register_module("teacher", None)

    def setup(self, network: nn.Module) -> None:
        """Create the teacher: an ``AveragedModel`` of a frozen deep copy of the (unwrapped) network."""
        if self.teacher is None:
            # buffers copied from the student at every update, not averaged
            self.teacher = ema_teacher(network, self.ema_decay, warmup=True, average_buffers=False)

    @property
    def ema_updates(self) -> torch.Tensor:
        """The number of EMA updates so far (``t``; the teacher's ``n_averaged``)."""
        if self.teacher is None:
            raise RuntimeError("MeanTeacherMethod.setup(network) must be called first.")
        return self.teacher.n_averaged

    def _perturb(self, image: torch.Tensor) -> torch.Tensor:
        return image + self.noise_std * torch.randn_like(image) if self.noise_std > 0 else image

    def step(self, network, image, label, unlabeled, epoch) -> StepOutput:
        if self.teacher is None:
            raise RuntimeError("MeanTeacherMethod.setup(network) must be called before training.")
        student_input = None if unlabeled is None else self._perturb(unlabeled)
        labeled_logits, unlabeled_logits, _, _ = self.forward_joint(network, image, student_input)
        sup = self.supervised_loss(labeled_logits, label)
        terms: dict[str, torch.Tensor | float] = {"loss_sup": sup}
        loss = sup
        if unlabeled_logits is not None:
            student = torch.softmax(self.mean_of_heads(network, unlabeled_logits), dim=1)
            with torch.no_grad():
                teacher = torch.softmax(self.teacher(self._perturb(unlabeled)), dim=1)
            weight = float(self.consistency_weight(epoch))
            consistency = torch.mean((student - teacher.to(student.dtype)) ** 2)
            loss = loss + weight * consistency
            terms.update(loss_consistency=consistency, weight_consistency=weight)
        return StepOutput(loss=loss, terms=terms, pred=self.mean_of_heads(network, labeled_logits))

    def after_optimizer_step(self, network: nn.Module, epoch: float) -> None:
        """EMA update of the teacher from the student's current weights (and a copy of its buffers)."""
        if self.teacher is not None:
            update_teacher(self.teacher, network)

    def extra_repr(self) -> str:
        return f"ema_decay={self.ema_decay}, noise_std={self.noise_std}"
