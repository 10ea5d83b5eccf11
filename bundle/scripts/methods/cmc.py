# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .base import SemiSupervisedMethod, StepOutput

__all__ = ["CMCMethod"]


class CMCMethod(SemiSupervisedMethod):
    """Cross Modality Collaboration (CMC) semi-supervised training step.

    Zhou et al., "Robust Semi-supervised Multimodal Medical Image Segmentation via Cross Modality
    Collaboration", MICCAI 2024.

    One iteration minimises

        L = L_sup(labeled) + w_csc(epoch) * L_csc(features of labeled and unlabeled)
                           + w_cac(epoch) * L_cac(predictions on unlabeled)

    - ``L_sup``: the supervised loss of every modality head (``MultiHeadSupervisedLoss``).
    - ``L_csc``: channel-wise semantic consistency between the modalities' attended bottleneck
      features (``ChannelSemanticConsistencyLoss``), on every image of the iteration.
    - ``L_cac``: contrastive anatomical consistency between the modalities' probability maps on
      unlabeled images (``AnatomicalConsistencyLoss``).

    Unlike the authors' public code, both semi-supervised terms are computed with autograd enabled,
    so they train the encoders, attention and fusion; CAC is a loss (1 - soft Dice), not a similarity.

    The network must provide ``forward_modalities(image) -> (logits per modality, features per
    modality)`` (see ``scripts.networks.CMCNet``).

    Args:
        supervised_loss: loss over the per-modality heads, ``loss(list_of_logits, label)``.
        csc_loss: loss over the list of per-modality bottleneck features.
        cac_loss: loss over the list of per-modality logits of unlabeled images.
        csc_weight: schedule ``epoch -> weight`` of the CSC term (a sigmoid ramp-up in the paper).
        cac_weight: schedule ``epoch -> weight`` of the CAC term.
        semi_start_epoch: before this (fractional) epoch only the supervised term is computed and
            unlabeled images are not forwarded.
    """

    def __init__(
        self,
        supervised_loss: nn.Module,
        csc_loss: nn.Module,
        cac_loss: nn.Module,
        csc_weight: Callable[[float], float],
        cac_weight: Callable[[float], float],
        semi_start_epoch: float = 0.0,
    ) -> None:
        super().__init__()
        if semi_start_epoch < 0:
            raise ValueError(f"semi_start_epoch must be >= 0, got {semi_start_epoch}.")
        self.supervised_loss = supervised_loss
        self.csc_loss = csc_loss
        self.cac_loss = cac_loss
        self.csc_weight = csc_weight
        self.cac_weight = cac_weight
        self.semi_start_epoch = float(semi_start_epoch)

    def step(self, network, image, label, unlabeled, epoch) -> StepOutput:
        semi = epoch >= self.semi_start_epoch
        labeled_logits, unlabeled_logits, features = self.forward_joint(network, image, unlabeled if semi else None)
        sup = self.supervised_loss(labeled_logits, label)
        terms: dict[str, torch.Tensor | float] = {"loss_sup": sup}
        loss = sup
        if semi:
            w_csc = float(self.csc_weight(epoch))
            csc = self.csc_loss(features)
            loss = loss + w_csc * csc
            terms.update(loss_csc=csc, weight_csc=w_csc)
            if unlabeled_logits is not None:
                w_cac = float(self.cac_weight(epoch))
                cac = self.cac_loss(unlabeled_logits)
                loss = loss + w_cac * cac
                terms.update(loss_cac=cac, weight_cac=w_cac)
        return StepOutput(loss=loss, terms=terms, pred=self.fused(labeled_logits))
