# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Orientation for anisotropic stacks of 2-D slices (short-axis cardiac MRI).

``Orientationd(axcodes="RAS")`` is the wrong tool for a short-axis cine stack: the slice plane is
oblique, so the nearest world axis of the through-plane direction differs between scans (MyoPS
stores some cases as ``L,S,P`` and others as ``P,S,R``), and reordering to RAS would move the
through-plane axis into the image plane of some cases, after which slice-by-slice training cuts
the volume the wrong way. :class:`SliceAxisLastd` instead finds the through-plane axis from the
voxel spacing and makes it the last spatial axis, leaving the in-plane axes in their stored order.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import InvertibleTransform, MapTransform, Orientation
from nibabel.orientations import aff2axcodes

__all__ = ["SliceAxisLastd", "thin_axis", "through_plane_axis"]


def through_plane_axis(affine: np.ndarray | torch.Tensor, min_ratio: float = 1.5) -> int | None:
    """
    The spatial axis whose voxel spacing is the largest, when it is at least ``min_ratio`` times the
    second largest; ``None`` for (near-)isotropic grids, which have no slice axis.

    Args:
        affine: the ``(d+1, d+1)`` voxel-to-world matrix.
        min_ratio: how much coarser than the other axes the slice axis must be.
    """
    a = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    d = a.shape[0] - 1
    spacing = affine_to_spacing(a, r=d, suppress_zeros=False)
    order = np.argsort(spacing)
    if d < 2 or spacing[order[-1]] < min_ratio * spacing[order[-2]]:
        return None
    return int(order[-1])


def thin_axis(shape: tuple[int, ...] | torch.Size, max_ratio: float = 0.5) -> int | None:
    """
    The spatial axis with the fewest voxels when it has at most ``max_ratio`` times as many as the
    smallest of the other axes (a stack of slices whose header gives no coarser slice spacing, e.g.
    a nominal 1 mm), else ``None``.

    Args:
        shape: the spatial shape.
        max_ratio: how much shorter than the other axes the slice axis must be.
    """
    sizes = [int(s) for s in shape]
    if len(sizes) < 3:
        return None
    order = np.argsort(sizes, kind="stable")
    return int(order[0]) if sizes[order[0]] <= max_ratio * sizes[order[1]] else None


class SliceAxisLastd(MapTransform, InvertibleTransform):
    """
    Makes the through-plane (coarsest) axis of every ``keys`` image the last spatial axis.

    The axis is found on the first key's affine (see :func:`through_plane_axis`); every key is
    reordered the same way with MONAI's ``Orientation`` (so the affine and the inverse are exact),
    the in-plane axes keeping their stored order and direction. Images already in that layout, and
    isotropic images, are returned unchanged.

    Args:
        keys: keys of channel-first 3-D images (``(C, H, W, D)``), e.g. ``["image", "label"]``.
        min_ratio: how much coarser than the in-plane spacing the slice spacing must be.
        thin_ratio: for grids with no coarser axis (isotropic headers), the axis with the fewest voxels
            is the slice axis when it has at most this fraction of the voxels of the others
            (:func:`thin_axis`); ``None``: such grids are left alone.
        allow_missing_keys: don't raise for a missing key (unlabeled cases).
    """

    def __init__(
        self,
        keys: KeysCollection,
        min_ratio: float = 1.5,
        thin_ratio: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if min_ratio < 1.0:
            raise ValueError(f"min_ratio must be >= 1, got {min_ratio}.")
        if thin_ratio is not None and not 0.0 < thin_ratio < 1.0:
            raise ValueError(f"thin_ratio must be in (0, 1) or None, got {thin_ratio}.")
        self.min_ratio = float(min_ratio)
        self.thin_ratio = thin_ratio
        # one instance, so that its inverse recognises the operations it recorded
        self._orientation = Orientation(axcodes="RAS")

    def target_axcodes(self, affine: Any, shape: tuple[int, ...] | None = None) -> str | None:
        """Orientation codes that move the slice axis last, or ``None`` when nothing has to move."""
        a = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
        axis = through_plane_axis(a, self.min_ratio)
        if axis is None and self.thin_ratio is not None and shape is not None:
            axis = thin_axis(shape, self.thin_ratio)
        if axis is None or axis == a.shape[0] - 2:
            return None
        codes = list(aff2axcodes(a))
        return "".join([c for i, c in enumerate(codes) if i != axis] + [codes[axis]])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        codes: str | None = None
        first = True
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor) or img.ndim != 4:
                raise ValueError(
                    f"SliceAxisLastd: {str(key)!r} of "
                    f"{img.meta.get('filename_or_obj', 'the case') if isinstance(img, MetaTensor) else 'the case'} "
                    f"must be a channel-first 3-D MetaTensor (C, H, W, D), got {type(img).__name__} "
                    f"of shape {tuple(getattr(img, 'shape', ()))}."
                )
            if first:
                codes = self.target_axcodes(img.affine, tuple(img.shape[1:]))
                first = False
            if codes is not None:
                self._orientation.axcodes = codes
                d[key] = self._orientation(img)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            ops = getattr(d[key], "applied_operations", [])
            if ops and ops[-1].get("class") == "Orientation" and ops[-1].get("id") == id(self._orientation):
                d[key] = self._orientation.inverse(d[key])
        return d
