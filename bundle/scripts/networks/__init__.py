from __future__ import annotations

from .cmc_net import ChannelAttention, CMCNet, ModalityFusion
from .decoupled_net import DecoupledMultiModalNet

__all__ = ["ChannelAttention", "CMCNet", "DecoupledMultiModalNet", "ModalityFusion"]
