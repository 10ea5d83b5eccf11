# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Teachers: the one way the methods build a frozen copy of a network and an exponential moving
average (EMA) of it.

- :func:`frozen_copy`: a deep copy of a module with no gradients (Semi-CML's PReL teacher, which is
  then loaded with fixed weights: an average of best snapshots, not an EMA);
- :func:`ema_teacher` / :func:`update_teacher`: a ``torch.optim.swa_utils.AveragedModel`` of the
  (unwrapped) network that follows the student after every optimizer step (Mean Teacher, and
  weak-to-strong consistency with ``ema_decay``). Its ``n_averaged`` counts the updates; the method
  holds it as its ``teacher`` submodule, so that it is part of the method's ``state_dict``
  (``teacher.n_averaged``, ``teacher.module.<name>``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..networks.wrapped_network import unwrap_network

__all__ = ["ema_teacher", "frozen_copy", "update_teacher", "warmup_ema_avg_fn"]


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters do not require gradients."""
    return copy.deepcopy(module).requires_grad_(False)


def warmup_ema_avg_fn(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``AveragedModel``'s ``avg_fn`` of the EMA with the warm-up of the Mean Teacher implementation::

        teacher <- a * teacher + (1 - a) * student,  a = min(1 - 1 / (t + 1), decay)

    where ``t`` is the number of updates so far (``n_averaged``): early on the teacher is close to the
    plain average of the student's weights.
    """

    def average(teacher: torch.Tensor, student: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        a = min(1.0 - 1.0 / (float(updates) + 1.0), decay)
        return a * teacher + (1.0 - a) * student

    return average


def ema_teacher(network: nn.Module, decay: float, warmup: bool = False, average_buffers: bool = True) -> AveragedModel:
    """A frozen EMA teacher of ``network`` (of the plain network under a DDP wrapper, which holds no
    weights of its own: the teacher's parameters pair one to one with the unwrapped student's).

    The first :func:`update_teacher` copies the student's weights; every later one averages them in.

    Args:
        network: the student.
        decay: the EMA decay in [0, 1].
        warmup: ``True``: the decay is ``min(1 - 1 / (t + 1), decay)`` at update ``t``
            (:func:`warmup_ema_avg_fn`, Mean Teacher); ``False``: the constant ``decay``
            (``torch.optim.swa_utils.get_ema_multi_avg_fn``).
        average_buffers: ``True``: the buffers (e.g. BatchNorm running statistics) are averaged like the
            weights (``use_buffers=True``); ``False``: they are copied from the student at every update.
    """
    averaging = {"avg_fn": warmup_ema_avg_fn(float(decay))} if warmup else {"multi_avg_fn": get_ema_multi_avg_fn(decay)}
    # AveragedModel deep-copies the module it is given
    return AveragedModel(unwrap_network(network), use_buffers=average_buffers, **averaging).requires_grad_(False)


@torch.no_grad()
def update_teacher(teacher: AveragedModel, network: nn.Module) -> None:
    """One EMA update of ``teacher`` (from :func:`ema_teacher`) from the student's current weights."""
    teacher.update_parameters(unwrap_network(network))
