# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Argument and input validation shared by the multimodal networks (the input check is TorchScript-compatible)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_multimodal_input", "check_network_levels"]


def check_network_levels(
    spatial_dims: int,
    num_modalities: int,
    out_channels: int,
    channels: Sequence[int],
    strides: Sequence[int | Sequence[int]] | None,
) -> tuple[list[int], list[list[int]]]:
    """Validate the constructor arguments the per-modality encoder-decoder networks share and return
    ``(channels, strides)`` normalised: ``channels`` as ints, ``strides`` as one list of
    ``spatial_dims`` ints per downsampling (default: 2 everywhere). Raises ``ValueError`` naming the
    argument otherwise."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if int(num_modalities) != num_modalities or num_modalities < 1:
        raise ValueError(f"num_modalities must be an integer >= 1, got {num_modalities}.")
    if int(out_channels) != out_channels or out_channels < 1:
        raise ValueError(f"out_channels must be an integer >= 1, got {out_channels}.")
    levels = [int(c) for c in channels]
    if len(levels) < 2 or any(c < 1 for c in levels):
        raise ValueError(f"channels must have at least 2 positive levels, got {levels}.")
    if strides is None:
        strides = [2] * (len(levels) - 1)
    if len(strides) != len(levels) - 1:
        raise ValueError(f"strides must have len(channels) - 1 = {len(levels) - 1} entries, got {len(strides)}.")
    per_dim_strides: list[list[int]] = []
    for s in strides:
        per_dim = [int(s)] * spatial_dims if isinstance(s, int) else [int(v) for v in s]
        if len(per_dim) != spatial_dims or any(v < 1 for v in per_dim):
            raise ValueError(f"each stride must be a positive int or {spatial_dims} positive ints, got {s}.")
        per_dim_strides.append(per_dim)
    return levels, per_dim_strides


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
