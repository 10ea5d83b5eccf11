# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""The input contract of the cross-modal losses: one tensor per modality, at least two, one shape."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_modality_inputs"]


def check_modality_inputs(tensors: Sequence[torch.Tensor], what: str, axes: str = "(B, K, *spatial)") -> torch.Size:
    """The shape shared by ``M >= 2`` per-modality tensors, each ``axes`` with at least one spatial axis.

    Args:
        tensors: one tensor per modality.
        what: what they are, for the messages ("predictions", "features", ...).
        axes: their expected axes, for the messages.

    Raises:
        ValueError: fewer than two tensors, fewer than three dimensions, or shapes that differ.
    """
    if len(tensors) < 2:
        raise ValueError(f"at least two modality {what} are required, got {len(tensors)}.")
    shape = tensors[0].shape
    if len(shape) < 3:
        raise ValueError(f"{what} must have shape {axes}, got {tuple(shape)}.")
    for t in tensors[1:]:
        if t.shape != shape:
            raise ValueError(f"all {what} must have the same shape, got {tuple(shape)} and {tuple(t.shape)}.")
    return shape
