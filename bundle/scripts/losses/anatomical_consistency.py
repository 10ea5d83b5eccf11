from __future__ import annotations

import warnings
from collections.abc import Sequence
from itertools import combinations

import torch
from monai.losses import DiceLoss
from torch import nn

from .modality_inputs import check_modality_inputs

__all__ = ["AnatomicalConsistencyLoss"]


class AnatomicalConsistencyLoss(nn.Module):
    """
    Cross-modal anatomical consistency (CAC) loss on unlabeled data, from:

        Zhou, Xiaogen, et al. "Robust Semi-supervised Multimodal Medical Image Segmentation via Cross Modality
        Collaboration." MICCAI 2024.

    The segmentation probability maps predicted from different modalities of the same case should describe the same
    anatomy. For every pair of modalities ``(a, b)``, batch element and class ``k`` the loss is one minus the soft
    Dice with a squared denominator (Milletari et al., V-Net, 3DV 2016)::

        l = 1 - (2 * sum(p_a * p_b) + smooth) / (sum(p_a ** 2) + sum(p_b ** 2) + smooth)

    where the sums run over the voxels. ``l`` is zero when ``p_a == p_b``, also for soft (non one-hot) maps, and
    positive otherwise. It is averaged over the classes, the batch and the ``M (M - 1) / 2`` modality pairs.
    No ground truth is needed; gradients flow to the predictions of every modality.

    Example::

        loss = AnatomicalConsistencyLoss(softmax=True)
        value = loss([logits_t1, logits_t2])  # each (B, K, H, W, D)
    """

    def __init__(self, include_background: bool = True, softmax: bool = True, smooth: float = 1e-5) -> None:
        """
        Args:
            include_background: if False, channel 0 (the background class) is left out of the average.
                Ignored, with a warning, for single-channel predictions. Defaults to True.
            softmax: if True, the inputs are logits and a softmax over the channel dimension (dim 1) is applied
                first; if False, the inputs must already be probabilities. Defaults to True.
            smooth: a small non-negative constant added to both the numerator and the denominator of the Dice, so
                that empty classes give a Dice of one (zero loss) instead of ``0 / 0``. Defaults to 1e-5.

        Raises:
            ValueError: when ``smooth`` is negative.
        """
        super().__init__()
        if smooth < 0:
            raise ValueError(f"smooth must be non-negative, got {smooth}.")
        self.include_background = include_background
        self.softmax = softmax
        self.smooth = float(smooth)
        self.dice = DiceLoss(
            include_background=include_background,
            squared_pred=True,
            smooth_nr=self.smooth,
            smooth_dr=self.smooth,
            reduction="none",
        )

    def forward(self, predictions: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            predictions: ``M >= 2`` per-modality predictions of the same cases, each of shape ``(B, K, *spatial)``
                and all of the same shape: logits if ``softmax=True``, probabilities otherwise.

        Returns:
            a scalar tensor, the mean of ``1 - Dice`` over modality pairs, batch and classes.

        Raises:
            ValueError: when fewer than two predictions are given, or their shapes differ or are not
                ``(B, K, ...)``.
        """
        shape = check_modality_inputs(predictions, "predictions", "(B, K, *spatial)")

        n_classes = shape[1]
        probs = list(predictions)
        if self.softmax:
            if n_classes == 1:
                warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=2)
            else:
                probs = [torch.softmax(p, dim=1) for p in probs]
        # 1 - soft Dice with the squared denominator, per case and class: MONAI's DiceLoss with the second
        # map as a soft target (it keeps the target's gradient); the softmax is applied here, to both maps
        losses = [self.dice(probs[a], probs[b]).flatten(1) for a, b in combinations(range(len(probs)), 2)]
        return torch.stack(losses).mean()
