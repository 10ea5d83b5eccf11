# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch
from torch import nn

from .modality_inputs import check_modality_inputs

__all__ = ["MutualConsistencyLoss"]


class MutualConsistencyLoss(nn.Module):
    """
    Mutual-learning consistency between the predictions of several modality networks: the mean,
    over all unordered modality pairs ``(a, b)``, of the mean squared error between their
    probability maps::

        L = mean_{a < b} mean_voxels,classes,batch (p_a - p_b)^2

    No prediction is detached: each network is pulled towards the others and is also a target for
    them (symmetric mutual learning, as in Semi-CML's mutual-learning stage).

    Reference:
        Zhang et al., "Multi-modal contrastive mutual learning and pseudo-label re-learning for
        semi-supervised medical image segmentation", Medical Image Analysis 83 (2023) 102656.

    Example::

        loss = MutualConsistencyLoss()
        value = loss([probs_t1, probs_t2, probs_flair])  # each (B, K, *spatial), already softmaxed
    """

    def forward(self, probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            probabilities: ``M >= 2`` probability maps (already softmaxed) of the same cases, one per
                modality, each of shape ``(B, K, *spatial)`` and all of the same shape.

        Returns:
            a scalar tensor.

        Raises:
            ValueError: when fewer than two maps are given or their shapes differ.
        """
        n_mod = len(probabilities)
        check_modality_inputs(probabilities, "probabilities", "(B, K, *spatial)")
        pairs = list(combinations(range(n_mod), 2))
        total = probabilities[0].new_zeros(())
        for a, b in pairs:
            total = total + torch.mean((probabilities[a] - probabilities[b]) ** 2)
        return total / len(pairs)
