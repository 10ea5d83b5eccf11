# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Test-time mirroring: the prediction averaged over the input and its mirror images along the axes that
training flips (nnU-Net's default inference, Isensee et al., Nature Methods 2021).

Written here because MONAI's inferers have no mirroring, and ``monai.data.TestTimeAugmentation`` serves
another purpose: random transforms drawn per pass, inverted through the transforms' records, for an
uncertainty estimate; it does not enumerate the fixed mirror images."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer

__all__ = ["MirroredInferer"]


class MirroredInferer(Inferer):
    """Runs ``inferer`` on the input and on every mirror image of it along a non-empty subset of
    ``spatial_axes``, flips each output back, and returns the mean of the ``2 ** len(spatial_axes)`` outputs
    (logits, before the softmax of the post-processing, as nnU-Net averages them).

    Mirror only the axes the training augmentation flips (``planned.yaml``: in-plane axes 0 and 1): the
    network has seen those mirror images; others would show it anatomy it never saw.

    Args:
        inferer: the inferer of one pass (a sliding window, slice by slice, ...).
        spatial_axes: spatial axes (0 = the first axis after batch and channel) to mirror; None or empty:
            ``inferer`` alone, unchanged.
    """

    def __init__(self, inferer: Inferer, spatial_axes: Sequence[int] | None = None) -> None:
        super().__init__()
        axes = [int(a) for a in (spatial_axes or [])]
        if any(a < 0 for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"spatial_axes must be distinct non-negative axes, got {spatial_axes!r}.")
        self.inferer = inferer
        self.spatial_axes = tuple(axes)

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> Any:
        total = self.inferer(inputs, network, *args, **kwargs)
        if not self.spatial_axes:
            return total
        if max(self.spatial_axes) >= inputs.ndim - 2:
            raise ValueError(f"cannot mirror axes {self.spatial_axes} of an input with {inputs.ndim - 2} spatial axes.")
        subsets = [
            s for n in range(1, len(self.spatial_axes) + 1) for s in itertools.combinations(self.spatial_axes, n)
        ]
        for subset in subsets:
            dims = [a + 2 for a in subset]
            total = total + torch.flip(self.inferer(torch.flip(inputs, dims), network, *args, **kwargs), dims)
        return total / (len(subsets) + 1)
