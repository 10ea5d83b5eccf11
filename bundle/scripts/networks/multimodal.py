# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
The contract of a multimodal network, written once: what the methods, the evaluation and the
per-modality validation may ask of a network that reads one input channel per sequence (modality)
through one head per sequence.

Terms:

- **heads**: the network has ``num_modalities`` (``M``) heads, head ``m`` reading sequence ``m``
  (input channel ``m``). ``forward_modalities(image)`` runs every head, whatever is available or
  present, and returns ``(logits, features)``: ``M`` logits ``(B, C, *spatial)`` in modality order and
  the heads' bottleneck features for the feature losses (an empty list when the network has none).
  ``forward(image, heads=True)`` returns the same pair: the form that goes through a
  ``DistributedDataParallel`` wrapper (see :mod:`scripts.networks.wrapped_network`).
- **available modalities**: the heads allowed to vote in the network's prediction at all
  (``DecoupledMultiModalNet(available_modalities=[0, 2])`` for cases known to lack sequence 1); every
  head when the network restricts none (``CMCNet``).
- **present sequences**: per case, the sequences the input actually holds: ``(B, M)`` from
  :func:`~scripts.networks.modality_presence.modality_presence` (a constant, e.g. zero-filled,
  channel is missing).
- **average of heads**: ``average_heads(logits, present=None)`` is the network's prediction from its
  heads' logits: per case, the mean over the available heads whose sequence is present (``present``
  None: every sequence present). ``forward(image)`` returns ``average_heads(forward_modalities(image)[0],
  modality_presence(image))``, so that the prediction of training, evaluation and inference is one
  computation (:meth:`scripts.engine.method.SemiSupervisedMethod.mean_of_heads` calls it).

:class:`MultimodalNetwork` states the contract as a ``typing.Protocol``: ``CMCNet`` and
``DecoupledMultiModalNet`` satisfy it by their methods, with no common base class (the networks stay
plain ``nn.Module`` subclasses that TorchScript compiles). :class:`PerModalityNetworks` is what
Semi-CML and the per-modality validation add: one independent network per sequence.
:func:`is_multimodal` tells a multimodal network from a single network that reads all sequences at
once (a MONAI ``UNet``) and refuses, with the list of what is missing, a network that declares
``forward_modalities`` but breaks the rest of the contract.
"""

from __future__ import annotations

import functools
import inspect
from typing import Optional, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["MultimodalNetwork", "PerModalityNetworks", "contract_gaps", "is_multimodal", "require_multimodal"]


@runtime_checkable
class MultimodalNetwork(Protocol):
    """A network with one head per sequence (see the module docstring for the terms).

    Attributes:
        num_modalities: ``M``, the number of input channels and of heads.
    """

    num_modalities: int

    def forward(self, image: torch.Tensor, heads: bool = False):
        """``(B, C, *spatial)`` logits, the average of the heads; with ``heads=True`` the pair of
        :meth:`forward_modalities` (Python only)."""

    def forward_modalities(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(logits, features)``: every head's logits (``M``, modality order) and bottleneck features."""

    def average_heads(self, logits: list[torch.Tensor], present: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The network's prediction from its ``M`` heads' logits: per case, the mean over the available
        heads whose sequence is present (``present``: ``(B, M)``; None: all)."""


@runtime_checkable
class PerModalityNetworks(Protocol):
    """A network made of one independent single-channel network per sequence (``DecoupledMultiModalNet``):
    ``modality_network(m)`` segments ``(B, 1, *spatial)`` sequence ``m`` alone (Semi-CML's PReL teacher,
    :class:`scripts.engine.modality_validation.ModalityValidationHandler`)."""

    num_modalities: int

    def modality_network(self, modality: int) -> nn.Module:
        """The network of sequence ``modality``."""


@functools.lru_cache(maxsize=None)
def _forward_takes_heads(cls: type) -> bool:
    """Whether ``cls.forward`` accepts the ``heads`` keyword (checked once per class)."""
    try:
        parameters = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):  # e.g. a TorchScript module
        return False
    return "heads" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


# the members each contract names, for the message of a refusal (isinstance only says yes or no)
_MEMBERS = {
    MultimodalNetwork: ("num_modalities", "forward_modalities", "average_heads"),
    PerModalityNetworks: ("num_modalities", "modality_network"),
}


def contract_gaps(network: object, contract: type = MultimodalNetwork) -> list[str]:
    """What ``network`` lacks to satisfy ``contract`` (:class:`MultimodalNetwork` or
    :class:`PerModalityNetworks`); empty when it satisfies it."""
    gaps = [f"`{name}`" for name in _MEMBERS[contract] if not hasattr(network, name)]
    if contract is MultimodalNetwork and not _forward_takes_heads(type(network)):
        gaps.append("a `heads` argument of forward() (`forward(image, heads=False)`)")
    return gaps


def require_multimodal(network: object, user: str, contract: type = MultimodalNetwork) -> None:
    """Raise ``TypeError`` naming ``user`` and every missing member unless ``network`` satisfies ``contract``."""
    gaps = contract_gaps(network, contract)
    if gaps or not isinstance(network, contract):  # the Protocol's own check, for members _MEMBERS may miss
        raise TypeError(
            f"{user} needs a network that satisfies scripts.networks.multimodal.{contract.__name__} "
            f"(e.g. {'DecoupledMultiModalNet' if contract is PerModalityNetworks else 'CMCNet'}); "
            f"{type(network).__name__} lacks {', '.join(gaps) or 'part of it'}."
        )


def is_multimodal(network: object) -> bool:
    """Whether ``network`` (unwrapped) is a multimodal network (:class:`MultimodalNetwork`).

    False for a network without ``forward_modalities`` (one network reading all sequences, e.g. a
    MONAI ``UNet``: its ``forward`` is its only prediction).

    Raises:
        TypeError: ``network`` has ``forward_modalities`` but does not satisfy the rest of the contract
            (the message lists what is missing): treating it as a single network would silently drop
            its heads.
    """
    if not hasattr(network, "forward_modalities"):
        return False
    require_multimodal(network, "a network with forward_modalities()")
    return True
