# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""The masked loss that learns from confident hard pseudo-labels (``scripts.methods.pseudo_labels`` makes them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import MaskedDiceLoss
from torch import nn

__all__ = ["ConfidenceMaskedPseudoLabelLoss"]


class ConfidenceMaskedPseudoLabelLoss(nn.Module):
    """
    Cross-entropy plus soft Dice against hard pseudo-labels, counted only where the pseudo-label is
    confident (the unsupervised loss of FixMatch, Sohn et al., NeurIPS 2020, with the Dice term that
    UniMatch, Yang et al., CVPR 2023, adds for medical images).

    With ``p`` the softmax of the logits, ``y`` the one-hot pseudo-label and ``w`` the mask::

        ce   = sum_v w_v * (-log p_{v, y_v}) / (number of voxels, confident or not)
        dice = 1 - mean_k (2 sum_v w_v p_vk y_vk + smooth) / (sum_v w_v p_vk + sum_v w_v y_vk + smooth)
        loss = ce_weight * ce + dice_weight * dice

    The CE is divided by all voxels (not only the confident ones), so that a batch with few confident
    voxels contributes little. The Dice sums run over the whole batch, per class, background included.

    Args:
        ce_weight, dice_weight: the weights of the two terms (non-negative, not both 0).
        smooth: added to the Dice's numerator and denominator (>= 0).

    Shapes: ``logits`` (B, K, *spatial); ``pseudo_label`` and ``mask`` (B, 1, *spatial).
    """

    def __init__(self, ce_weight: float = 0.5, dice_weight: float = 0.5, smooth: float = 1e-5) -> None:
        super().__init__()
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ValueError(f"ce_weight and dice_weight must be >= 0 and not both 0, got {ce_weight}, {dice_weight}.")
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}.")
        self.ce_weight, self.dice_weight, self.smooth = float(ce_weight), float(dice_weight), float(smooth)
        # the Dice over the confident voxels: MONAI's MaskedDiceLoss (softmax before the mask; binary masks,
        # so masking both maps counts each confident voxel once), summed over the batch per class. The target
        # is made one-hot before the mask: a masked label map would turn the masked voxels into background
        self.dice = MaskedDiceLoss(
            include_background=True,
            to_onehot_y=False,
            softmax=True,
            batch=True,
            smooth_nr=self.smooth,
            smooth_dr=self.smooth,
        )

    def forward(self, logits: torch.Tensor, pseudo_label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if pseudo_label.shape[1] != 1 or mask.shape != pseudo_label.shape or logits.shape[2:] != pseudo_label.shape[2:]:
            raise ValueError(
                f"expected logits (B, K, *spatial) and pseudo_label, mask (B, 1, *spatial); got {tuple(logits.shape)}, "
                f"{tuple(pseudo_label.shape)}, {tuple(mask.shape)}."
            )
        logits = logits.float()
        target = pseudo_label[:, 0].long()
        weight = mask[:, 0].float()
        # (by hand: a CE over all voxels with the unconfident ones zeroed, which MONAI's losses do not offer)
        ce = (F.cross_entropy(logits, target, reduction="none") * weight).sum() / weight.numel()
        onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
        dice = self.dice(logits, onehot, mask)
        return self.ce_weight * ce + self.dice_weight * dice
