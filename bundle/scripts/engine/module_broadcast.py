# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Making state identical on every rank of a ``torch.distributed`` run by copying rank 0's."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["is_distributed", "broadcast_module_state", "broadcast_object"]


def is_distributed() -> bool:
    """Whether this process belongs to an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def broadcast_module_state(module: nn.Module, src: int = 0) -> None:
    """Overwrite, in place, every parameter and buffer of ``module`` with rank ``src``'s values.

    A collective: every rank must call it, with modules of the same architecture. Does nothing
    outside a multi-rank process group.

    Args:
        module: the module to synchronise (its tensors must be on a device the backend supports:
            CUDA for NCCL, CPU or CUDA for Gloo).
        src: the rank whose values are kept.
    """
    if not is_distributed():
        return
    for tensor in module.state_dict(keep_vars=True).values():
        if isinstance(tensor, torch.Tensor):
            dist.broadcast(tensor.data, src=src)


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` (any picklable object), on every rank; ``value`` itself outside a
    multi-rank process group. A collective: every rank must call it."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]
