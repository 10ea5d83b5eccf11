# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Accepts 2-D images stored with a singleton third axis (``H x W x 1``, common in exports)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["SqueezeSpatialDimsd"]


class SqueezeSpatialDimsd(MapTransform):
    """
    Removes trailing singleton spatial axes beyond ``spatial_dims`` from channel-first images:
    ``(C, H, W, 1)`` becomes ``(C, H, W)`` when ``spatial_dims`` is 2, as if the file had been
    ``H x W``. Other shapes are left unchanged (a real ``H x W x D`` volume is not touched). The
    affine is kept: MONAI's spatial transforms use its leading ``spatial_dims`` block.

    Use it right after ``LoadImaged(..., ensure_channel_first=True)``.
    """

    def __init__(self, keys: KeysCollection, spatial_dims: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = int(spatial_dims)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            while img.ndim - 1 > self.spatial_dims and img.shape[-1] == 1:
                img = img.squeeze(-1)
            d[key] = img
        return d
