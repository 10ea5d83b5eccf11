# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Which sequences an input actually holds, and how the networks use that.

The bundle's convention for a **missing sequence** (a patient whose post-contrast scan was never
acquired, a sequence left out at inference, a strong view's sequence dropout) is a channel that is
zero everywhere after intensity normalisation. A network cannot tell such a channel from a real image
of mean intensity by its values at one voxel, so it is told explicitly:

- :func:`modality_presence` (kept with the data convention, ``scripts.data.missing_modalities``)
  marks a channel as present when it is not constant over the input. A
  constant channel carries no information, so calling it absent loses nothing, and the rule needs no
  side channel: it holds for a zero-filled missing file, for a sequence dropped by a strong view, for a
  channel zeroed by the subset evaluation, and for any caller (MONAI Label, an exported TorchScript
  module) that passes zeros for a sequence it does not have.
- :class:`ModalityPresenceInput` gives a single network that reads every sequence (a MONAI ``UNet``,
  ``unet.yaml``) one extra input channel per sequence, constant 1 where the sequence is present and 0
  where it is missing: the presence mask as extra input, so that a zero-filled sequence is not read as
  a real one.
- :func:`present_heads_mean` averages a per-sequence network's heads over the sequences present in
  each case (CMC's and Semi-CML's networks): a head whose own sequence is missing does not vote, in
  the spirit of HeMIS (Havaei et al., MICCAI 2016), which averages over the modalities available.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import nn

from ..data.missing_modalities import modality_presence
from ..errors import check_bool

__all__ = ["ModalityPresenceInput", "modality_presence", "present_heads_mean", "with_presence_input"]


def present_heads_mean(
    logits: list[torch.Tensor], present: Optional[torch.Tensor] = None, heads: Optional[list[int]] = None
) -> torch.Tensor:
    """The mean of per-sequence heads, per case over the heads whose sequence is present.

    Args:
        logits: ``M`` tensors of shape ``(B, C, *spatial)``, head ``m`` reading sequence ``m``.
        present: ``(B, M)`` mask of the sequences present in each case (:func:`modality_presence`);
            None: every sequence.
        heads: the indices of the heads that may vote at all (Semi-CML's ``available_modalities``);
            None: all.

    Returns:
        ``(B, C, *spatial)``. A case with none of the allowed heads' sequences present (a blank input)
        gets the mean of the allowed heads, so the output is always defined.
    """
    stacked = torch.stack(logits, dim=1)  # (B, M, C, *spatial)
    batch, num_heads = stacked.shape[0], stacked.shape[1]
    allowed = torch.zeros(num_heads, dtype=stacked.dtype, device=stacked.device)
    if heads is None:
        allowed.fill_(1.0)
    else:
        for m in heads:
            allowed[m] = 1.0
    weights = allowed.unsqueeze(0).expand(batch, num_heads)
    if present is not None:
        masked = weights * present.to(stacked.dtype)
        none_present = masked.sum(dim=1, keepdim=True) == 0
        weights = torch.where(none_present, weights, masked)
    weights = weights / weights.sum(dim=1, keepdim=True)
    shape = [batch, num_heads] + [1] * (stacked.dim() - 2)
    return (stacked * weights.view(shape)).sum(dim=1)


class ModalityPresenceInput(nn.Module):
    """
    A segmentation network fed its input plus one presence channel per sequence.

    ``forward(image)`` with ``image`` of shape ``(B, M, *spatial)`` runs
    ``network(cat([image, presence], dim=1))`` where ``presence`` is ``(B, M, *spatial)``, channel
    ``m`` of case ``b`` constant 1 when :func:`modality_presence` finds sequence ``m`` present, else 0.
    The wrapped network must take ``2 * num_modalities`` input channels.

    Args:
        network: the wrapped network (e.g. a MONAI ``UNet`` with ``in_channels = 2 * M``).
        num_modalities: ``M``; the input must have this many channels.
    """

    def __init__(self, network: nn.Module, num_modalities: int) -> None:
        super().__init__()
        if int(num_modalities) != num_modalities or int(num_modalities) < 1:
            raise ValueError(f"num_modalities must be an integer >= 1, got {num_modalities}.")
        self.network = network
        self.num_modalities = int(num_modalities)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() < 3 or image.shape[1] != self.num_modalities:
            raise ValueError(
                f"ModalityPresenceInput: expected input (B, {self.num_modalities}, *spatial), got {list(image.shape)}."
            )
        present = modality_presence(image).to(image.dtype)
        maps = present.view(list(present.shape) + [1] * (image.dim() - 2)).expand_as(image)
        return self.network(torch.cat([image, maps], dim=1))


def with_presence_input(network: Callable[..., nn.Module], num_modalities: int, enabled: Any = False) -> nn.Module:
    """The configs' switch (``unet.yaml``'s ``modality_presence_input``).

    Args:
        network: builds the network from ``in_channels`` (a ``_mode_: callable`` config component).
        num_modalities: ``M``.
        enabled: the parsed ``@flags#modality_presence_input``. True: ``network(in_channels=2 * M)`` wrapped in
            :class:`ModalityPresenceInput`; False: ``network(in_channels=M)`` itself, whose weights keep
            their names, so that checkpoints of networks trained without the mask still load.
    """
    if check_bool(enabled, "modality_presence_input"):
        return ModalityPresenceInput(network(in_channels=2 * int(num_modalities)), num_modalities)
    return network(in_channels=int(num_modalities))
