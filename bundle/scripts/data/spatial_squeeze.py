# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Accepts 2-D images stored with a singleton third axis (``H x W x 1``, common in exports), alone or
mixed with ``H x W`` files in one dataset."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["SqueezeSpatialDimsd", "squeeze_trailing_spatial"]


def squeeze_trailing_spatial(img: Any, spatial_dims: int) -> Any:
    """``img`` (channel-first) without its trailing singleton axes beyond ``spatial_dims`` spatial axes.

    The metadata say the same: a MetaTensor's ``spatial_shape`` (the file's spatial shape, which
    ``LoadImage`` records as ``(H, W, 1)`` for an ``H x W x 1`` file) loses the same trailing 1s. MONAI's
    collate stacks every metadata entry of a batch, so an ``(H, W, 1)`` next to an ``(H, W)`` case
    would otherwise fail with ``stack expects each tensor to be equal size, but got [3] at entry 0 and
    [2] at entry 1``. The affine is kept (4 x 4 for every NIfTI): MONAI's spatial transforms use its
    leading ``spatial_dims`` block. Not MONAI's ``SqueezeDim``: it drops a row and a column of the
    affine, which would again differ from the ``H x W`` cases of the batch.
    """
    spatial_dims = int(spatial_dims)
    while img.ndim - 1 > spatial_dims and img.shape[-1] == 1:
        img = img.squeeze(-1)
    meta = getattr(img, "meta", None)
    shape = meta.get("spatial_shape") if isinstance(meta, dict) else None
    if shape is not None and img.ndim - 1 == spatial_dims:
        kept = [int(s) for s in np.asarray(shape).reshape(-1)]
        while len(kept) > spatial_dims and kept[-1] == 1:
            kept.pop()
        meta["spatial_shape"] = np.asarray(kept)
    return img


class SqueezeSpatialDimsd(MapTransform):
    """
    Removes trailing singleton spatial axes beyond ``spatial_dims`` from channel-first images:
    ``(C, H, W, 1)`` becomes ``(C, H, W)`` when ``spatial_dims`` is 2, as if the file had been
    ``H x W`` (metadata included, see :func:`squeeze_trailing_spatial`), so that both kinds of files
    can be batched together. Other shapes are left unchanged (a real ``H x W x D`` volume is not
    touched).

    Use it right after ``LoadImaged(..., ensure_channel_first=True)``.
    """

    def __init__(self, keys: KeysCollection, spatial_dims: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = int(spatial_dims)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = squeeze_trailing_spatial(d[key], self.spatial_dims)
        return d
