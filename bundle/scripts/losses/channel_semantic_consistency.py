from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from .modality_inputs import check_modality_inputs

__all__ = ["ChannelSemanticConsistencyLoss"]


class ChannelSemanticConsistencyLoss(nn.Module):
    """
    Channel-wise semantic consistency (CSC) loss between the bottleneck features of different modalities, from:

        Zhou, Xiaogen, et al. "Robust Semi-supervised Multimodal Medical Image Segmentation via Cross Modality
        Collaboration." MICCAI 2024.

    The loss is an NT-Xent (normalised temperature-scaled cross entropy, Chen et al., SimCLR, ICML 2020) whose
    samples are the feature *channels*. For one batch element and one pair of modalities ``(a, b)``, every channel
    is flattened over space and L2-normalised, giving ``2C`` unit vectors. Channel ``c`` of ``a`` and channel ``c`` of
    ``b`` form a positive pair; the other ``2C - 2`` channels are the negatives of that anchor. For anchor ``i``
    with positive ``p(i)`` and cosine similarities ``s``::

        l_i = -log( exp(s_{i,p(i)} / tau) / sum_{k != i} exp(s_{i,k} / tau) )

    ``l_i`` is averaged over the ``2C`` anchors, then over the ``M (M - 1) / 2`` modality pairs and the batch.

    Only a ``(2C x 2C)`` similarity matrix per batch element and modality pair is built, so the memory is
    ``O(B C^2 + B C N)`` for ``N`` voxels; nothing of size ``N x N`` is ever formed.

    Example::

        loss = ChannelSemanticConsistencyLoss(temperature=0.5)
        value = loss([feat_t1, feat_t2])  # each (B, C, H, W, D)
    """

    def __init__(self, temperature: float = 0.5, reduction: str = "mean") -> None:
        """
        Args:
            temperature: the NT-Xent temperature ``tau`` that divides the cosine similarities; must be > 0.
                Smaller values sharpen the softmax over the candidates. Defaults to 0.5.
            reduction: how the per-(batch element, modality pair) losses are reduced:

                - ``"mean"``: mean over the batch and the modality pairs (a scalar, the default).
                - ``"sum"``: sum over the batch and the modality pairs (a scalar).
                - ``"none"``: no reduction; a tensor of shape ``(B, P)`` with ``P = M (M - 1) / 2`` modality pairs
                  in the order of ``itertools.combinations(range(M), 2)``, each already averaged over its ``2C``
                  anchors.

        Raises:
            ValueError: when ``temperature`` is not positive.
            ValueError: when ``reduction`` is not one of ``"mean"``, ``"sum"``, ``"none"``.
        """
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f'reduction must be one of "mean", "sum", "none", got {reduction!r}.')
        self.temperature = float(temperature)
        self.reduction = reduction

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: ``M >= 2`` per-modality bottleneck features, each of shape ``(B, C, *spatial)`` (at least
                one spatial dimension) and all of the same shape.

        Raises:
            ValueError: when fewer than two features are given, or their shapes differ or are not ``(B, C, ...)``.
        """
        shape = check_modality_inputs(features, "features", "(B, C, *spatial)")

        batch, channels = shape[0], shape[1]
        # (B, C, N) unit vectors, one per channel; computed in at least float32 for a stable softmax
        dtype = torch.promote_types(features[0].dtype, torch.float32)
        embeddings = [F.normalize(f.reshape(batch, channels, -1).to(dtype), dim=-1) for f in features]

        eye = torch.eye(2 * channels, dtype=torch.bool, device=features[0].device)
        # the positive of anchor i is i + C for the first modality and i - C for the second
        target = torch.arange(2 * channels, device=features[0].device).roll(channels)
        target = target.repeat(batch)
        fill = torch.finfo(dtype).min

        pair_losses = []
        for a, b in combinations(range(len(embeddings)), 2):
            reps = torch.cat([embeddings[a], embeddings[b]], dim=1)  # (B, 2C, N)
            logits = torch.bmm(reps, reps.transpose(1, 2)) / self.temperature  # (B, 2C, 2C)
            logits = logits.masked_fill(eye, fill)  # an anchor is never its own candidate
            per_anchor = F.cross_entropy(logits.reshape(-1, 2 * channels), target, reduction="none")
            pair_losses.append(per_anchor.reshape(batch, 2 * channels).mean(dim=1))
        loss = torch.stack(pair_losses, dim=1)  # (B, P)

        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss
