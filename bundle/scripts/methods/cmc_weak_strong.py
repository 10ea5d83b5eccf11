# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..engine.method import StepOutput
from .cmc import CMCMethod
from .weak_strong import WeakStrongConsistencyMethod

__all__ = ["CMCWeakStrongMethod"]


class CMCWeakStrongMethod(CMCMethod):
    """
    CMC (:class:`~scripts.methods.cmc.CMCMethod`, unchanged: supervised heads, CSC, CAC) plus the
    weak-to-strong term of :class:`~scripts.methods.weak_strong.WeakStrongConsistencyMethod`: the
    fused prediction (mean of the present heads) of the weak view gives confident hard pseudo-labels,
    and every modality head must reproduce them on a strong view of the batch (per-sequence intensity,
    misalignment, sequence dropout, CutMix)::

        L = L_CMC + w_ws(epoch) * mean_heads L_u(head(strong_view(u)), y_u, c)

    CMC's own unlabeled terms compare the heads on the same, unperturbed input, which the fused
    network satisfies early (its heads read one fused bottleneck); the strong views give the unlabeled
    batch something to teach (FixMatch / UniMatch). Not part of the published method.

    Args:
        weak_strong: the weak-to-strong term (its pseudo-label loss, strong view, schedule, threshold,
            views, feature perturbation and EMA teacher); its own supervised loss is not used.
        cmc: the arguments of :class:`~scripts.methods.cmc.CMCMethod`.
    """

    def __init__(self, weak_strong: WeakStrongConsistencyMethod, **cmc: Any) -> None:
        super().__init__(**cmc)
        if not isinstance(weak_strong, WeakStrongConsistencyMethod):
            raise TypeError(f"weak_strong must be a WeakStrongConsistencyMethod, got {type(weak_strong).__name__}.")
        self.weak_strong = weak_strong

    def setup(self, network: nn.Module) -> None:
        self.weak_strong.setup(network)

    def after_optimizer_step(self, network: nn.Module, epoch: float) -> None:
        self.weak_strong.after_optimizer_step(network, epoch)

    def uses_unlabeled_at(self, epoch: float) -> bool:
        return super().uses_unlabeled_at(epoch) or self.weak_strong.uses_unlabeled_at(epoch)

    def step(self, network, image, label, unlabeled, epoch) -> StepOutput:
        cmc_unlabeled = unlabeled if super().uses_unlabeled_at(epoch) else None
        out = super().step(network, image, label, cmc_unlabeled, epoch)
        weight = float(self.weak_strong.unsupervised_schedule(epoch)) if unlabeled is not None else 0.0
        if weight == 0.0:
            return out
        ws = self.weak_strong
        pseudo_label, mask, views = ws.strong_views(network, unlabeled)
        strong_logits, _ = self.forward_heads(network, torch.cat([v[0] for v in views], dim=0))
        unsup, terms = ws.unlabeled_loss(network, unlabeled, pseudo_label, mask, views, strong_logits)
        terms = {**out.terms, **terms, "weight_unsup": weight}  # no name in common with CMC's terms
        return StepOutput(loss=out.loss + weight * unsup, terms=terms, pred=out.pred)
