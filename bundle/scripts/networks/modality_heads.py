# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Exposes every modality head of a multimodal network as one output, for evaluation."""

from __future__ import annotations

import torch
import torch.nn as nn

from .modality_presence import modality_presence
from .multimodal import is_multimodal

__all__ = ["ModalityHeadsWrapper"]


class ModalityHeadsWrapper(nn.Module):
    """
    Wraps a multimodal network (:class:`~scripts.networks.multimodal.MultimodalNetwork`, e.g. ``CMCNet``,
    ``DecoupledMultiModalNet``) so that ONE forward pass returns the network's prediction and every
    modality head's prediction, concatenated on the channel axis::

        heads = forward_modalities(image)[0]
        output[:, 0:C]              average_heads(heads, modality_presence(image))   (the network's prediction)
        output[:, C*(m+1):C*(m+2)]  heads[m]                                        (head of modality m)

    A single tensor goes through any MONAI inferer (e.g. ``SlidingWindowInferer`` stitches all the
    heads at once); split it back with :class:`scripts.evaluation.head_outputs.SplitHeadsd`.

    The network's prediction is computed from the heads by the network's own ``average_heads``
    (the mean of the heads for ``CMCNet``; the mean over ``available_modalities`` for
    ``DecoupledMultiModalNet``; per case over the sequences present), which is what its ``forward``,
    and so inference, returns: the encoders and decoders run once, not once for ``forward`` and again
    for the heads.

    A network without ``forward_modalities`` (one network reading all sequences, e.g. a MONAI
    ``UNet``) has no heads: the output is its prediction alone. A network with ``forward_modalities``
    that breaks the rest of the contract is refused (``TypeError``).

    The wrapper owns no parameters of its own: load the checkpoint into the wrapped network.

    Args:
        network: the multimodal network (or any segmentation network).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.has_heads = is_multimodal(network)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not self.has_heads:
            return self.network(image)
        heads, _ = self.network.forward_modalities(image)
        prediction = self.network.average_heads(heads, modality_presence(image))  # over the sequences present
        return torch.cat([prediction, *heads], dim=1)
