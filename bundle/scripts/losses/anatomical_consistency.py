from __future__ import annotations

import warnings
from collections.abc import Sequence
from itertools import combinations

import torch
from torch import nn

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
        if len(predictions) < 2:
            raise ValueError(f"at least two modality predictions are required, got {len(predictions)}.")
        shape = predictions[0].shape
        if len(shape) < 3:
            raise ValueError(f"predictions must have shape (B, K, *spatial), got {tuple(shape)}.")
        for p in predictions[1:]:
            if p.shape != shape:
                raise ValueError(f"all predictions must have the same shape, got {tuple(shape)} and {tuple(p.shape)}.")

        n_classes = shape[1]
        probs = list(predictions)
        if self.softmax:
            if n_classes == 1:
                warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=2)
            else:
                probs = [torch.softmax(p, dim=1) for p in probs]
        if not self.include_background:
            if n_classes == 1:
                warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=2)
            else:
                probs = [p[:, 1:] for p in probs]

        reduce_dims = tuple(range(2, len(shape)))
        losses = []
        for a, b in combinations(range(len(probs)), 2):
            intersection = torch.sum(probs[a] * probs[b], dim=reduce_dims)
            denominator = torch.sum(probs[a] ** 2, dim=reduce_dims) + torch.sum(probs[b] ** 2, dim=reduce_dims)
            dice = (2.0 * intersection + self.smooth) / (denominator + self.smooth)  # (B, K)
            losses.append(1.0 - dice)
        return torch.stack(losses).mean()
