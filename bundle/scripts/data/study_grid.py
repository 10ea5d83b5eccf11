# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Last transform of ``inference.yaml``'s postprocessing, for callers that write the prediction themselves.

A 2-D study is stored as a 3-D NIfTI, ``(H, W, M)``, or a 4-D one, ``(H, W, 1, M)``: its grid is
a one-slice volume with a 4x4 affine. The 2-D network's prediction is ``(1, H, W)``. MONAI Label
(0.8.5) drops the bundle's ``SaveImaged`` and then restores and writes the prediction itself: its
``Restored`` keeps a 3-D array ``(1, H, W)`` as it is (it drops a leading channel only from 4-D
arrays), and its writer drops the affine of a 2-D array. The label was written as ``(1, H, W)``
with the axes shifted, off the image's grid.

:class:`PredOnStudyGridd` gives a 2-D prediction the study's one-slice layout, ``(1, H, W, 1)``, and
records that spatial shape in the reference image's metadata (``spatial_shape``, which ``Restored``
compares with): the caller then writes ``(H, W, 1)`` with the study's own affine. It comes after
``SaveSegmentationd``, so the bundle's own inference still writes ``(H, W)``; a 3-D prediction is
left unchanged.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["PredOnStudyGridd"]


class PredOnStudyGridd(MapTransform):
    """
    ``(C, H, W)`` -> ``(C, H, W, 1)`` for the keys, and ``ref_key``'s ``spatial_shape`` metadata set to
    ``(H, W, 1)``; predictions with 3 spatial axes pass unchanged.

    Args:
        keys: keys of the predictions (channel first).
        ref_key: key of the input image whose metadata a caller restores the prediction with.
        allow_missing_keys: don't raise for a missing key.
    """

    def __init__(self, keys: KeysCollection, ref_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            if pred.ndim != 3:
                continue
            d[key] = pred[..., None]
            ref = d.get(self.ref_key)
            if isinstance(ref, MetaTensor):
                ref.meta["spatial_shape"] = np.asarray(d[key].shape[1:])
        return d
