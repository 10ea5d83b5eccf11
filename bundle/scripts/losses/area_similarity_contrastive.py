from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .modality_inputs import check_modality_inputs

__all__ = ["AreaSimilarityContrastiveLoss"]


class AreaSimilarityContrastiveLoss(nn.Module):
    """
    Area-similarity contrastive (ASC) loss between the predictions of different modalities, from:

        Zhang, Shuo, et al. "Multi-modal contrastive mutual learning and pseudo-label re-learning for semi-supervised
        medical image segmentation." Medical Image Analysis 83 (2023): 102656.

    The samples are the ``B * M`` probability maps of ``B`` unlabeled cases predicted from ``M`` modalities. The
    similarity of two maps ``p`` and ``q`` is their soft Dice ("area similarity"), taken over all (kept) classes and
    voxels at once::

        s(p, q) = 2 * sum(p * q) / (sum(p) + sum(q) + smooth)

    For an anchor (case ``i``, modality ``a``) the positives are the maps of the same case from every other modality
    ``b != a``; the negatives are all the maps of the other cases ``j != i`` (any modality), i.e. ``M (B - 1)``
    maps. Each (anchor, positive) pair contributes the NT-Xent term::

        l = -log( exp(s+ / tau) / (exp(s+ / tau) + sum_neg exp(s_neg / tau)) )

    and the loss is the mean over all ``B M (M - 1)`` (anchor, positive) pairs. The other positives of an anchor
    (when ``M > 2``) appear in neither the numerator nor the denominator of a term.

    With ``B == 1`` there are no negatives: every term is ``-log(1) = 0`` and the loss is zero (still attached to the
    graph, with zero gradients). The loss is then uninformative, so use a batch of at least two unlabeled cases.

    Only a ``(BM x BM)`` similarity matrix is built, so the memory is ``O((BM)^2 + BM N)`` for ``N`` voxels.

    Example::

        loss = AreaSimilarityContrastiveLoss(temperature=None)
        value = loss([probs_t1, probs_t2])  # each (B, K, H, W, D), already softmaxed
    """

    def __init__(
        self, include_background: bool = False, temperature: float | None = None, smooth: float = 1e-5
    ) -> None:
        """
        Args:
            include_background: if False, channel 0 (the background class) is dropped before the similarities are
                computed (ignored for single-channel inputs). Defaults to False.
            temperature: the temperature ``tau`` that divides the similarities; must be > 0. ``None`` (the
                default) means no temperature, i.e. ``tau = 1``.
            smooth: a small non-negative constant added to the denominator of the Dice, avoiding ``0 / 0`` for
                empty maps. Defaults to 1e-5.

        Raises:
            ValueError: when ``temperature`` is given and not positive, or ``smooth`` is negative.
        """
        super().__init__()
        if temperature is not None and not temperature > 0:
            raise ValueError(f"temperature must be positive or None, got {temperature}.")
        if smooth < 0:
            raise ValueError(f"smooth must be non-negative, got {smooth}.")
        self.include_background = include_background
        self.temperature = 1.0 if temperature is None else float(temperature)
        self.smooth = float(smooth)

    def forward(self, probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            probabilities: ``M >= 2`` per-modality probability maps (already softmaxed) of the same ``B`` cases,
                each of shape ``(B, K, *spatial)`` and all of the same shape.

        Returns:
            a scalar tensor, the mean NT-Xent term over all (anchor, positive) pairs.

        Raises:
            ValueError: when fewer than two inputs are given, or their shapes differ or are not ``(B, K, ...)``.
        """
        n_mod = len(probabilities)
        shape = check_modality_inputs(probabilities, "probabilities", "(B, K, *spatial)")

        batch, device = shape[0], probabilities[0].device
        dtype = torch.promote_types(probabilities[0].dtype, torch.float32)
        start = 0 if self.include_background or shape[1] == 1 else 1
        # sample r = m * B + i is case i seen through modality m; (BM, K' N)
        samples = torch.cat([p[:, start:].reshape(batch, -1).to(dtype) for p in probabilities], dim=0)

        volumes = samples.sum(dim=1)
        similarity = 2.0 * (samples @ samples.t()) / (volumes[:, None] + volumes[None, :] + self.smooth)
        logits = similarity / self.temperature  # (BM, BM)

        case = torch.arange(batch, device=device).repeat(n_mod)
        same_case = case[:, None] == case[None, :]
        positive = same_case & ~torch.eye(batch * n_mod, dtype=torch.bool, device=device)
        # log-sum-exp over the negatives of each anchor; an empty set (B == 1) gives the finite minimum, i.e. exp -> 0
        negatives = torch.logsumexp(logits.masked_fill(same_case, torch.finfo(dtype).min), dim=1, keepdim=True)
        terms = torch.logaddexp(logits, negatives) - logits  # -log(e^s+ / (e^s+ + sum_neg e^s_neg)) for every pair
        return terms[positive].mean()
