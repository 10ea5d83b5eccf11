# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Running the modality heads of a multimodal network, whether or not it is wrapped for data parallelism.

``DistributedDataParallel`` (DDP) synchronises gradients through hooks that its own ``forward``
prepares: a training forward must therefore be a call of the wrapper itself. A DDP wrapper does not
expose the wrapped network's other methods or attributes (``forward_modalities``,
``modality_network``, ``num_modalities``), and calling ``wrapper.module.forward_modalities(x)``
would bypass the gradient synchronisation. The multimodal network contract
(:class:`scripts.networks.multimodal.MultimodalNetwork`) therefore includes ``forward(image, heads=True)``,
which returns what ``forward_modalities`` returns, so that :func:`forward_modality_heads` calls
``wrapper(image, heads=True)``; :func:`unwrap_network` gives
the plain network for attribute access and for copies (teachers, snapshots, state dicts).
"""

from __future__ import annotations

import torch
from torch import nn

from .multimodal import is_multimodal, require_multimodal

__all__ = ["unwrap_network", "has_modality_heads", "forward_modality_heads"]

_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrap_network(network: nn.Module) -> nn.Module:
    """The network inside ``DataParallel`` / ``DistributedDataParallel`` wrappers (any nesting),
    or ``network`` itself when it is not wrapped."""
    while isinstance(network, _WRAPPERS):
        network = network.module
    return network


def has_modality_heads(network: nn.Module) -> bool:
    """Whether the (possibly wrapped) network is multimodal (:func:`scripts.networks.multimodal.is_multimodal`
    of the unwrapped network; a network that breaks the contract half-way raises ``TypeError``)."""
    return is_multimodal(unwrap_network(network))


def forward_modality_heads(network: nn.Module, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-modality logits and bottleneck features of a multimodal network, through its wrapper.

    Calls ``network(image, heads=True)`` (the contract's form of ``forward_modalities``), so that a
    ``DataParallel`` / ``DistributedDataParallel`` wrapper's ``forward`` runs (gradient synchronisation,
    scattering); a plain network is called the same way.

    Args:
        network: a :class:`~scripts.networks.multimodal.MultimodalNetwork`, possibly wrapped.
        image: input ``(B, M, *spatial)``.

    Returns:
        the lists of per-modality logits and features (the latter may be empty).

    Raises:
        TypeError: when the unwrapped network does not satisfy the contract (the message lists what is
            missing, e.g. a ``forward`` without ``heads``, without which the heads could not be computed
            through the wrapper: calling the inner module would skip gradient synchronisation).
    """
    require_multimodal(unwrap_network(network), "forward_modality_heads")
    logits, features = network(image, heads=True)
    return list(logits), list(features)
