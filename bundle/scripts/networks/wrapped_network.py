# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Running the modality heads of a multimodal network, whether or not it is wrapped for data parallelism.

``DistributedDataParallel`` (DDP) synchronises gradients through hooks that its own ``forward``
prepares: a training forward must therefore be a call of the wrapper itself. A DDP wrapper does not
expose the wrapped network's other methods or attributes (``forward_modalities``,
``modality_network``, ``num_modalities``), and calling ``wrapper.module.forward_modalities(x)``
would bypass the gradient synchronisation. The multimodal networks of the bundle accept
``forward(image, heads=True)``, which returns what ``forward_modalities`` returns, so that
:func:`forward_modality_heads` can call ``wrapper(image, heads=True)``; :func:`unwrap_network` gives
the plain network for attribute access and for copies (teachers, snapshots, state dicts).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

__all__ = ["unwrap_network", "has_modality_heads", "forward_modality_heads"]

_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrap_network(network: nn.Module) -> nn.Module:
    """The network inside ``DataParallel`` / ``DistributedDataParallel`` wrappers (any nesting),
    or ``network`` itself when it is not wrapped."""
    while isinstance(network, _WRAPPERS):
        network = network.module
    return network


def has_modality_heads(network: nn.Module) -> bool:
    """Whether the (possibly wrapped) network is multimodal, i.e. has ``forward_modalities``."""
    return callable(getattr(unwrap_network(network), "forward_modalities", None))


def _forward_accepts_heads(network: nn.Module) -> bool:
    try:
        return "heads" in inspect.signature(network.forward).parameters
    except (TypeError, ValueError):  # e.g. a TorchScript module
        return False


def forward_modality_heads(network: nn.Module, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-modality logits and bottleneck features of a multimodal network, through its wrapper.

    For a network wrapped in ``DataParallel`` / ``DistributedDataParallel`` this calls
    ``network(image, heads=True)``, so that the wrapper's ``forward`` runs (gradient synchronisation,
    scattering). A plain network is called the same way when its ``forward`` accepts ``heads``, and
    through ``forward_modalities`` otherwise.

    Args:
        network: a network with ``forward_modalities(image) -> (logits, features)``, possibly wrapped.
        image: input ``(B, M, *spatial)``.

    Returns:
        the lists of per-modality logits and features (the latter may be empty).

    Raises:
        TypeError: when the network has no ``forward_modalities``, or is wrapped and its ``forward``
            does not accept ``heads`` (the heads could not be computed through the wrapper).
    """
    inner = unwrap_network(network)
    if not callable(getattr(inner, "forward_modalities", None)):
        raise TypeError(f"{type(inner).__name__} has no forward_modalities(); it is not a multimodal network.")
    if _forward_accepts_heads(inner):
        logits, features = network(image, heads=True)
    elif inner is network:
        logits, features = network.forward_modalities(image)
    else:
        raise TypeError(
            f"{type(inner).__name__} is wrapped in {type(network).__name__}, but its forward() has no `heads` "
            "argument: add `forward(image, heads=False)` returning forward_modalities(image) when heads is True, "
            "so that training calls go through the wrapper (calling the inner module would skip gradient "
            "synchronisation)."
        )
    return list(logits), list(features)
