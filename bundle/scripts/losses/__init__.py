from __future__ import annotations

from .anatomical_consistency import AnatomicalConsistencyLoss
from .area_similarity_contrastive import AreaSimilarityContrastiveLoss
from .channel_semantic_consistency import ChannelSemanticConsistencyLoss
from .multi_head import MultiHeadSupervisedLoss
from .mutual_consistency import MutualConsistencyLoss
from .soft_dice_ce import SoftDiceCELoss

__all__ = [
    "AnatomicalConsistencyLoss",
    "AreaSimilarityContrastiveLoss",
    "ChannelSemanticConsistencyLoss",
    "MultiHeadSupervisedLoss",
    "MutualConsistencyLoss",
    "SoftDiceCELoss",
]
