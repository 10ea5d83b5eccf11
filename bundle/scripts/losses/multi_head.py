# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceCELoss
from torch import nn

__all__ = ["MultiHeadSupervisedLoss"]


class MultiHeadSupervisedLoss(nn.Module):
    """Supervised loss over the per-modality heads of a multimodal network.

    Every head ``m`` is compared with its label by ``loss`` (default MONAI ``DiceCELoss`` with
    softmax and one-hot conversion of the label), and the M values are averaged (``reduction="mean"``,
    the CMC authors' ``(ct_loss + mri_loss) / 2``) or summed (``reduction="sum"``: every head's
    supervised term keeps weight 1 against the semi-supervised terms, as in Semi-CML's per-network
    objective, see ``configs/semicml_paper.yaml``).

    Two label layouts are accepted:

    - one label on the common grid, (B, 1, *spatial): co-registered modalities; every head is
      supervised by it;
    - one label per modality, (B, M, *spatial): misaligned or unpaired modalities (CMC's CT/MRI
      setting); head ``m`` is supervised by channel ``m``.

    Args:
        loss: the per-head loss, called as ``loss(logits, label)`` with logits (B, K, *spatial) and
            label (B, 1, *spatial). Default ``DiceCELoss(to_onehot_y=True, softmax=True)``.
        reduction: ``"mean"`` (default) or ``"sum"`` over the M heads.
    """

    def __init__(self, loss: nn.Module | None = None, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f'reduction must be "mean" or "sum", got {reduction!r}.')
        self.loss = loss if loss is not None else DiceCELoss(to_onehot_y=True, softmax=True)
        self.reduction = reduction

    def forward(
        self, logits: Sequence[torch.Tensor], label: torch.Tensor, present: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            logits: M tensors (B, K, *spatial), one per modality head.
            label: (B, 1, *spatial) or (B, M, *spatial) class indices.
            present: optional (B, M) mask of the sequences each case has
                (``scripts.networks.modality_presence.modality_presence``): head ``m`` is supervised on
                the cases that have sequence ``m`` only, and a head with no such case adds nothing
                (Semi-CML's per-sequence networks, which would otherwise learn the label from a blank
                image). None: every case.
        """
        num_heads = len(logits)
        if num_heads == 0:
            raise ValueError("MultiHeadSupervisedLoss needs at least one head.")
        if label.shape[1] not in (1, num_heads):
            raise ValueError(
                f"label has {label.shape[1]} channels; expected 1 (common grid) or {num_heads} (one per modality)."
            )
        per_modality = label.shape[1] == num_heads and num_heads > 1
        total = logits[0].new_zeros(())
        for m, head in enumerate(logits):
            target = label[:, m : m + 1] if per_modality else label[:, :1]
            if present is not None:
                keep = present[:, m].bool()
                if not bool(keep.any()):
                    continue
                if not bool(keep.all()):
                    head, target = head[keep], target[keep]
            total = total + self.loss(head, target)
        return total / num_heads if self.reduction == "mean" else total
