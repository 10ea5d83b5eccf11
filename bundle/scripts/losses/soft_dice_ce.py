# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

__all__ = ["SoftDiceCELoss"]


class SoftDiceCELoss(nn.Module):
    """
    Dice + cross-entropy against a *soft* target (a probability map, e.g. averaged pseudo-labels)::

        L = lambda_dice * Dice(softmax(logits), target) + lambda_ce * CE(logits, target)

    with ``CE = mean_voxels( -sum_k target_k * log_softmax(logits)_k )`` (PyTorch's cross-entropy
    with class-probability targets) and MONAI ``DiceLoss(softmax=True, to_onehot_y=False)``.

    MONAI ``DiceCELoss`` would accept such a target too, but it exposes no ``soft_label`` option: its
    classical soft Dice ``1 - 2 sum(p t) / (sum(p) + sum(t))`` is not zero when the prediction equals
    a non-binary target and pushes predictions towards hard labels. With ``soft_label=True`` (the
    default) MONAI's soft-label formulation (Wang & Blaschko, "Dice semimetric losses", MICCAI 2023)
    is used instead, which is minimal exactly at ``p == target``.

    Args:
        include_background: whether the Dice term includes channel 0. Defaults to True (as the
            supervised ``DiceCELoss`` of the bundle).
        soft_label: use the soft-label Dice formulation (see above). Defaults to True.
        lambda_dice: weight of the Dice term, >= 0.
        lambda_ce: weight of the cross-entropy term, >= 0.
        smooth_nr: small constant added to the Dice numerator.
        smooth_dr: small constant added to the Dice denominator.

    Example::

        loss = SoftDiceCELoss()
        value = loss(logits, pseudo_label)  # (B, K, *spatial) each; pseudo_label sums to 1 over K
    """

    def __init__(
        self,
        include_background: bool = True,
        soft_label: bool = True,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__()
        if lambda_dice < 0 or lambda_ce < 0:
            raise ValueError(f"lambda_dice and lambda_ce must be >= 0, got {lambda_dice} and {lambda_ce}.")
        self.dice = DiceLoss(
            include_background=include_background,
            softmax=True,
            soft_label=soft_label,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
        )
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: ``(B, K, *spatial)`` unnormalised scores, ``K >= 2``.
            target: ``(B, K, *spatial)`` class probabilities (non-negative, summing to 1 over ``K``).

        Returns:
            a scalar tensor.
        """
        if logits.shape != target.shape:
            raise ValueError(
                f"logits and target must have the same shape, got {tuple(logits.shape)} and {tuple(target.shape)}."
            )
        if logits.shape[1] < 2:
            raise ValueError(f"SoftDiceCELoss needs at least 2 classes, got {logits.shape[1]}.")
        target = target.to(logits.dtype)
        ce = F.cross_entropy(logits, target)
        return self.lambda_dice * self.dice(logits, target) + self.lambda_ce * ce
