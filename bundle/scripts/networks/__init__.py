from __future__ import annotations

from .cmc_net import ChannelAttention, CMCNet, ModalityFusion
from .decoupled_net import DecoupledMultiModalNet
from .multimodal import MultimodalNetwork, PerModalityNetworks, is_multimodal, require_multimodal
from .wrapped_network import forward_modality_heads, has_modality_heads, unwrap_network

__all__ = [
    "ChannelAttention",
    "CMCNet",
    "DecoupledMultiModalNet",
    "ModalityFusion",
    "MultimodalNetwork",
    "PerModalityNetworks",
    "forward_modality_heads",
    "has_modality_heads",
    "is_multimodal",
    "require_multimodal",
    "unwrap_network",
]
