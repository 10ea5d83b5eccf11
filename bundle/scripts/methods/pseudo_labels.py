# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Hard pseudo-labels with a confidence threshold, for the weak-to-strong methods (the loss that learns
from them is ``scripts.losses.confidence_masked.ConfidenceMaskedPseudoLabelLoss``)."""

from __future__ import annotations

import torch

__all__ = ["confident_pseudo_labels"]


def confident_pseudo_labels(probs: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Hard pseudo-labels and their confidence mask (FixMatch, Sohn et al., NeurIPS 2020).

    Args:
        probs: class probabilities (B, K, *spatial).
        threshold: a voxel is kept when its largest probability is ``>= threshold``.

    Returns:
        ``(labels, mask)``, both (B, 1, *spatial) float tensors: the argmax class and 1.0 where the
        largest probability reaches the threshold, 0.0 elsewhere.
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
    confidence, labels = probs.max(dim=1, keepdim=True)
    return labels.to(probs.dtype), (confidence >= threshold).to(probs.dtype)
