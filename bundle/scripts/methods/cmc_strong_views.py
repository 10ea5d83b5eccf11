# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..data.missing_modalities import modality_presence
from ..engine.method import StepOutput
from .cmc import CMCMethod
from .strong_views import StrongView

__all__ = ["CMCStrongViewMethod"]


class CMCStrongViewMethod(CMCMethod):
    """
    CMC (:class:`~scripts.methods.cmc.CMCMethod`, unchanged) plus anatomical consistency between
    views: every modality head's prediction on a strong view of the unlabeled batch must agree with
    every head's prediction on the weak view (the unlabeled batch as loaded)::

        L = L_CMC + w_strong(epoch) * mean_{a, b} L_cac(strong_a, weak_b)

    where ``strong_a`` are head ``a``'s logits on ``strong_view(u)`` and ``weak_b`` head ``b``'s logits
    on ``u`` (no gradient, network in eval mode), moved with the strong view (CutMix boxes), so that
    both describe the same voxels. ``L_cac`` is CMC's own consistency loss (``1 -`` soft Dice of the
    probability maps). The weak view is the target, as in FixMatch; the pairs ``a == b`` ask a head to
    be invariant to the perturbation, the pairs ``a != b`` ask the modalities to agree across views.
    Sequence dropout and misalignment in the strong view make the heads of the remaining sequences
    carry the anatomy alone.

    Args:
        strong_view: builds the strong view and moves the weak predictions with it.
        strong_schedule: schedule ``epoch -> weight`` of the cross-view term.
        cmc: the arguments of :class:`~scripts.methods.cmc.CMCMethod` (``supervised_loss``, ``csc_loss``,
            ``cac_loss``, ``csc_schedule``, ``cac_schedule``, ``semi_start_epoch``, ``csc_on``).
    """

    def __init__(self, strong_view: StrongView, strong_schedule: Callable[[float], float], **cmc: Any) -> None:
        super().__init__(**cmc)
        self.strong_view = strong_view
        self.strong_schedule = strong_schedule

    def cross_view_consistency(
        self, strong: list[torch.Tensor], weak: list[torch.Tensor], present: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean CAC over every (strong head ``a``, weak head ``b``) pair, each on the cases that hold both
        sequences ``a`` and ``b`` (``present`` (B, M); None: every case): a head whose sequence is missing
        does not vote, as in the fused prediction (on own grids only the pairs ``a == b`` remain)."""
        losses = []
        for a, s in enumerate(strong):
            for b, w in enumerate(weak):
                keep = None if present is None else present[:, a] & present[:, b]
                if keep is None or bool(keep.all()):
                    losses.append(self.cac_loss([s, w]))
                elif bool(keep.any()):
                    losses.append(self.cac_loss([s[keep], w[keep]]))
        return torch.stack(losses).mean()

    def step(self, network, image, label, unlabeled, epoch) -> StepOutput:
        out = super().step(network, image, label, unlabeled, epoch)
        weight = float(self.strong_schedule(epoch)) if unlabeled is not None and epoch >= self.semi_start_epoch else 0.0
        if weight == 0.0:
            return out
        weak = self.predict_heads(network, unlabeled)
        strong_image, *weak_moved = self.strong_view(unlabeled, *weak)
        strong, _ = self.forward_heads(network, strong_image)
        cross = self.cross_view_consistency(strong, weak_moved, modality_presence(unlabeled))
        terms = dict(out.terms, loss_cac_strong=cross, weight_cac_strong=weight)
        return StepOutput(loss=out.loss + weight * cross, terms=terms, pred=out.pred)
