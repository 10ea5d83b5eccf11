from __future__ import annotations

from .cmc_net import ChannelAttention, CMCNet, ModalityFusion
from .decoupled_net import DecoupledMultiModalNet
from .wrapped_network import forward_modality_heads, has_modality_heads, unwrap_network

__all__ = [
    "ChannelAttention",
    "CMCNet",
    "DecoupledMultiModalNet",
    "ModalityFusion",
    "forward_modality_heads",
    "has_modality_heads",
    "unwrap_network",
]
