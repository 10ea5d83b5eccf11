# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Exposes every modality head of a multimodal network as one output, for evaluation."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ModalityHeadsWrapper"]


class ModalityHeadsWrapper(nn.Module):
    """
    Wraps a network that has ``forward_modalities`` (e.g. ``CMCNet``, ``DecoupledMultiModalNet``)
    so that ONE forward pass returns the fused prediction and every modality head's prediction,
    concatenated on the channel axis::

        output[:, 0:C]             network(image)              (the fused prediction)
        output[:, C*(m+1):C*(m+2)]  forward_modalities(image)[0][m]   (head of modality m)

    A single tensor goes through any MONAI inferer (e.g. ``SlidingWindowInferer`` stitches all the
    heads at once); split it back with :class:`scripts.engine.evaluation.SplitHeadsd`.

    The fused prediction is whatever the wrapped network's ``forward`` returns (the mean of the
    heads for ``CMCNet``; the mean over ``available_modalities`` for ``DecoupledMultiModalNet``),
    so it is exactly what inference produces. ``forward_modalities`` may return the list of head
    logits or a tuple whose first item is that list.

    A network without ``forward_modalities`` (one network reading all sequences, e.g. a MONAI
    ``UNet``) has no heads: the output is its prediction alone.

    The wrapper owns no parameters of its own: load the checkpoint into the wrapped network.

    Args:
        network: the multimodal network (or any segmentation network).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.has_heads = callable(getattr(network, "forward_modalities", None))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        fused = self.network(image)
        if not self.has_heads:
            return fused
        heads = self.network.forward_modalities(image)
        if isinstance(heads, tuple) and heads and isinstance(heads[0], (list, tuple)):
            heads = heads[0]
        return torch.cat([fused, *heads], dim=1)
