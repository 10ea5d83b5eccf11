# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Exposes every modality head of a multimodal network as one output, for evaluation."""

from __future__ import annotations

import torch
import torch.nn as nn

from .modality_presence import modality_presence

__all__ = ["ModalityHeadsWrapper"]


class ModalityHeadsWrapper(nn.Module):
    """
    Wraps a network that has ``forward_modalities`` (e.g. ``CMCNet``, ``DecoupledMultiModalNet``)
    so that ONE forward pass returns the network's prediction and every modality head's prediction,
    concatenated on the channel axis::

        heads = forward_modalities(image)[0]
        output[:, 0:C]              average_heads(heads)   (the network's prediction)
        output[:, C*(m+1):C*(m+2)]  heads[m]               (head of modality m)

    A single tensor goes through any MONAI inferer (e.g. ``SlidingWindowInferer`` stitches all the
    heads at once); split it back with :class:`scripts.engine.head_outputs.SplitHeadsd`.

    The network's prediction is computed from the heads by the network's own ``average_heads``
    (the mean of the heads for ``CMCNet``; the mean over ``available_modalities`` for
    ``DecoupledMultiModalNet``), which is what its ``forward``, and so inference, returns: the
    encoders and decoders run once, not once for ``forward`` and again for the heads. A network
    with ``forward_modalities`` but no ``average_heads`` is run twice (``forward``, then the heads).
    ``forward_modalities`` may return the list of head logits or a tuple whose first item is that list.

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
        self.averages_heads = callable(getattr(network, "average_heads", None))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not self.has_heads:
            return self.network(image)
        heads = self.network.forward_modalities(image)
        if isinstance(heads, tuple) and heads and isinstance(heads[0], (list, tuple)):
            heads = heads[0]
        if self.averages_heads:  # over the sequences present in each case
            prediction = self.network.average_heads(heads, modality_presence(image))
        else:
            prediction = self.network(image)
        return torch.cat([prediction, *heads], dim=1)
