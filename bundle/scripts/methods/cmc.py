# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..data.missing_modalities import complete_cases, modality_presence
from ..engine.method import SemiSupervisedMethod, StepOutput

__all__ = ["CMCMethod"]


class CMCMethod(SemiSupervisedMethod):
    """Cross Modality Collaboration (CMC) semi-supervised training step.

    Zhou et al., "Robust Semi-supervised Multimodal Medical Image Segmentation via Cross Modality
    Collaboration", MICCAI 2024.

    One iteration minimises

        L = L_sup(labeled) + w_csc(epoch) * L_csc(bottleneck features)
                           + w_cac(epoch) * L_cac(predictions on unlabeled)

    - ``L_sup``: the supervised loss of every modality head (``MultiHeadSupervisedLoss``).
    - ``L_csc``: channel-wise semantic consistency between the modalities' bottleneck features
      (``ChannelSemanticConsistencyLoss``, an NT-Xent over channels: it has negatives), on the
      labeled and unlabeled images (``csc_on="all"``, the default) or on the unlabeled images only
      (``"unlabeled"``, as the authors' code). Which features (after or before the channel
      attention) is the network's choice (``CMCNet(feature_source=...)``). When the labeled and
      unlabeled batches differ in spatial size, CSC is computed on each batch and the two values
      are averaged with weights proportional to the batch sizes (for the mean-reduced CSC this is
      what one pass over the stacked batches gives).
    - ``L_cac``: cross-modal anatomical consistency on unlabeled images
      (``AnatomicalConsistencyLoss``): ``1 -`` soft Dice between every pair of modalities'
      probability maps. The paper calls this part "contrastive consistent learning", but the loss
      has no negatives: it is a pairwise agreement (consistency) loss, zero when the heads agree.

    Both semi-supervised terms are computed with autograd enabled, so they train the encoders,
    attention and fusion; CAC is a loss (1 - soft Dice), not a similarity.

    The network must provide ``forward_modalities(image) -> (logits per modality, features per
    modality)`` (see ``scripts.networks.CMCNet``).

    Args:
        supervised_loss: loss over the per-modality heads, ``loss(list_of_logits, label)``.
        csc_loss: loss over the list of per-modality bottleneck features.
        cac_loss: loss over the list of per-modality logits of unlabeled images.
        csc_schedule: schedule ``epoch -> weight`` of the CSC term (the authors' code: a sigmoid
            ramp-up over the whole training, ``SigmoidRampUp``).
        cac_schedule: schedule ``epoch -> weight`` of the CAC term (the authors' code: a cosine
            ramp-down over the whole training, ``CosineRampDown``).
        semi_start_epoch: before this (fractional) epoch only the supervised term is computed and
            unlabeled images are not forwarded.
        csc_on: ``"all"`` (default): CSC on the features of the labeled and unlabeled images;
            ``"unlabeled"``: on the unlabeled images only (no CSC term without an unlabeled batch).
    """

    def __init__(
        self,
        supervised_loss: nn.Module,
        csc_loss: nn.Module,
        cac_loss: nn.Module,
        csc_schedule: Callable[[float], float],
        cac_schedule: Callable[[float], float],
        semi_start_epoch: float = 0.0,
        csc_on: str = "all",
    ) -> None:
        super().__init__()
        if semi_start_epoch < 0:
            raise ValueError(f"semi_start_epoch must be >= 0, got {semi_start_epoch}.")
        if csc_on not in ("all", "unlabeled"):
            raise ValueError(f'csc_on must be "all" or "unlabeled", got {csc_on!r}.')
        self.csc_on = csc_on
        self.supervised_loss = supervised_loss
        self.csc_loss = csc_loss
        self.cac_loss = cac_loss
        self.csc_schedule = csc_schedule
        self.cac_schedule = cac_schedule
        self.semi_start_epoch = float(semi_start_epoch)

    def uses_unlabeled_at(self, epoch: float) -> bool:
        return epoch >= self.semi_start_epoch

    def step(self, network, image, label, unlabeled, epoch) -> StepOutput:
        semi = epoch >= self.semi_start_epoch  # not the hook: a subclass may need unlabeled data earlier
        labeled_logits, unlabeled_logits, labeled_features, unlabeled_features = self.forward_joint(
            network, image, unlabeled if semi else None
        )
        sup = self.supervised_loss(labeled_logits, label)
        terms: dict[str, torch.Tensor | float] = {"loss_sup": sup}
        loss = sup
        if semi:
            # CSC and CAC compare the sequences of one case: cases lacking a sequence (missing sequences;
            # on own grids every case) leave them, as they leave Semi-CML's cross-modal terms
            unlabeled_complete = None if unlabeled is None else modality_presence(unlabeled).all(dim=1)
            labeled_features = complete_cases(labeled_features, modality_presence(image).all(dim=1))
            unlabeled_features = None if unlabeled is None else complete_cases(unlabeled_features, unlabeled_complete)
            csc = self._csc(labeled_features, unlabeled_features)
            if csc is not None:
                w_csc = float(self.csc_schedule(epoch))
                loss = loss + w_csc * csc
                terms.update(loss_csc=csc, weight_csc=w_csc)
            paired = None if unlabeled is None else complete_cases(unlabeled_logits, unlabeled_complete)
            if paired:
                w_cac = float(self.cac_schedule(epoch))
                cac = self.cac_loss(paired)
                loss = loss + w_cac * cac
                terms.update(loss_cac=cac, weight_cac=w_cac)
        return StepOutput(loss=loss, terms=terms, pred=self.mean_of_heads(network, labeled_logits))

    def _csc(
        self, labeled_features: list[torch.Tensor], unlabeled_features: list[torch.Tensor] | None
    ) -> torch.Tensor | None:
        """CSC over the selected batches (``None`` when there is no feature to compare)."""
        groups = [unlabeled_features] if self.csc_on == "unlabeled" else [labeled_features, unlabeled_features]
        groups = [g for g in groups if g]
        if not groups:
            return None
        if len(groups) == 1:
            return self.csc_loss(groups[0])
        if all(a.shape[1:] == b.shape[1:] for a, b in zip(groups[0], groups[1], strict=False)):
            return self.csc_loss([torch.cat(parts, dim=0) for parts in zip(*groups, strict=False)])
        # bottlenecks of different spatial sizes cannot be stacked: one CSC per batch, batch-size weighted
        sizes = [g[0].shape[0] for g in groups]
        return sum(n * self.csc_loss(g) for n, g in zip(sizes, groups, strict=False)) / sum(sizes)
