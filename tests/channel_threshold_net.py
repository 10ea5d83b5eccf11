"""A fixed, hand-written segmentation network for tests whose results are known in advance.

Imported by the bundle commands of tests/test_modality_subsets.py as ``tests.channel_threshold_net``
(the commands run from the repository root); it imports nothing but torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ChannelThresholdNet(nn.Module):
    """Foreground (class 1) exactly where any of ``channels`` of the input is positive, background
    (class 0) elsewhere: a channel set to zero (a missing sequence) adds no foreground.

    Input ``(B, M, *spatial)``, output logits ``(B, 2, *spatial)``. One buffer (``channels``), so that a
    checkpoint of it can be saved and loaded strictly.
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("channels", torch.tensor([int(c) for c in channels], dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        foreground = (x[:, self.channels] > 0).any(dim=1, keepdim=True).to(x.dtype)
        return torch.cat([1.0 - foreground, foreground], dim=1) * 10.0
