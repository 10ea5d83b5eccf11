# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Input validation shared by the multimodal networks (TorchScript-compatible)."""

from __future__ import annotations

import torch

__all__ = ["check_multimodal_input"]


def check_multimodal_input(
    image: torch.Tensor, spatial_dims: int, num_modalities: int, size_divisor: list[int], network: str, hint: str
) -> None:
    """Raise ``ValueError`` unless ``image`` is ``(B, num_modalities, *spatial)`` with every spatial
    size divisible by the matching ``size_divisor`` entry. ``network`` names the caller in the
    message and ``hint`` is appended to the channel-count message."""
    if image.dim() != spatial_dims + 2:
        raise ValueError(
            network
            + " expects input of shape (B, M, *spatial) with "
            + str(spatial_dims)
            + " spatial dims, got "
            + str(image.dim())
            + " dims."
        )
    if image.shape[1] != num_modalities:
        raise ValueError(
            network
            + " expects "
            + str(num_modalities)
            + " input channels (one per modality"
            + hint
            + "), got "
            + str(image.shape[1])
            + "."
        )
    for d in range(spatial_dims):
        if image.shape[d + 2] % size_divisor[d] != 0:
            raise ValueError(
                network
                + " spatial size "
                + str(image.shape[2:])
                + " must be divisible by the product of strides "
                + str(size_divisor)
                + "."
            )
