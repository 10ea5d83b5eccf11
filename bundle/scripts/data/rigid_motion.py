# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Moving one channel of an image by a rigid motion in millimetres (and an optional smooth displacement
field), on its own grid: the geometry of :mod:`scripts.data.misalignment`'s transforms, whose module
docstring states the conventions (array axes, spacing from the affine, rotation about the grid centre,
one resampling by MONAI's ``Resample`` on an ``AffineGrid``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import AffineGrid, Resample, Resize
from monai.transforms.utils import create_grid
from monai.utils import convert_to_numpy, convert_to_tensor

__all__ = ["ModalityMotion", "move_channel", "rotation_matrix", "smooth_field", "voxel_spacing_of"]


@dataclass
class ModalityMotion:
    """
    Motion of one modality's content, in millimetres, about the centre of the image grid.

    A point at ``p`` mm from the grid centre moves to ``rotation @ p + shift_mm``, then by the
    displacement field (if any) at its new position.

    Attributes:
        rotation: ``(d, d)`` rotation matrix, in the millimetre frame of the array axes.
        shift_mm: ``(d,)`` translation, mm along each array axis.
        displacement_mm: optional ``(d, *spatial)`` smooth displacement field (mm), on the output grid.
    """

    rotation: np.ndarray
    shift_mm: np.ndarray
    displacement_mm: np.ndarray | None = None

    def is_identity(self) -> bool:
        """True when the motion moves nothing (then the channel is copied, not resampled)."""
        d = self.rotation.shape[0]
        still = np.array_equal(self.rotation, np.eye(d)) and not np.any(self.shift_mm)
        return still and (self.displacement_mm is None or not np.any(self.displacement_mm))


def rotation_matrix(angles_deg: float | Sequence[float], spatial_dims: int) -> np.ndarray:
    """
    Rotation matrix from angles in degrees (see the module docstring for the convention).

    Args:
        angles_deg: one angle (2-D, or the plane ``(0, 1)`` in 3-D), or, in 3-D, three angles about
            axes 0, 1 and 2, applied in that order.
        spatial_dims: 2 or 3.

    Returns:
        ``(spatial_dims, spatial_dims)`` float64 array ``R``; a point ``p`` moves to ``R @ p``.
    """
    angles = [float(a) for a in np.atleast_1d(np.asarray(angles_deg, dtype=np.float64))]
    if spatial_dims == 2:
        if len(angles) != 1:
            raise ValueError(f"a 2-D rotation has one angle, got {len(angles)}: {angles_deg}.")
        return _plane_rotation(2, 0, 1, angles[0])
    if spatial_dims != 3:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if len(angles) == 1:
        return _plane_rotation(3, 0, 1, angles[0])
    if len(angles) != 3:
        raise ValueError(
            f"a 3-D rotation has one angle (plane (0, 1)) or three (about axes 0, 1, 2), got {angles_deg}."
        )
    rx = _plane_rotation(3, 1, 2, angles[0])
    ry = _plane_rotation(3, 2, 0, angles[1])
    rz = _plane_rotation(3, 0, 1, angles[2])
    return rz @ ry @ rx


def _plane_rotation(d: int, a: int, b: int, angle_deg: float) -> np.ndarray:
    """Rotation by ``angle_deg`` in the plane of axes ``(a, b)``, turning ``a`` towards ``b``."""
    r = np.eye(d)
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def voxel_spacing_of(img: Any, spatial_dims: int) -> np.ndarray:
    """
    Voxel size (mm) of the first ``spatial_dims`` array axes of a channel-first image.

    Read from a MetaTensor's affine (norm of each axis' column; a 2-D image with a 4x4 NIfTI affine
    works), else from ``meta["pixdim"]``; an image without metadata (plain tensor or array) is taken
    as 1 mm isotropic.
    """
    affine = getattr(img, "affine", None) if isinstance(img, MetaTensor) else None
    if affine is not None:
        a = np.asarray(torch.as_tensor(affine).detach().cpu(), dtype=np.float64)
        if a.ndim == 2 and a.shape[0] >= spatial_dims + 1 and a.shape[1] >= spatial_dims + 1:
            # every spatial row: an oblique slice's in-plane axes have a through-plane component
            spacing = np.asarray(affine_to_spacing(a, r=a.shape[0] - 1, suppress_zeros=False))[:spatial_dims]
            if np.all(np.isfinite(spacing)) and np.all(spacing > 0):
                return spacing
    meta = getattr(img, "meta", None) or {}
    pixdim = meta.get("pixdim") if isinstance(meta, Mapping) else None
    if pixdim is not None:
        p = np.asarray(pixdim, dtype=np.float64).reshape(-1)
        if p.size >= spatial_dims + 1 and np.all(p[1 : spatial_dims + 1] > 0):
            return p[1 : spatial_dims + 1]
    return np.ones(spatial_dims)


def _sampling_grid(
    shape: Sequence[int], spacing: np.ndarray, motion: ModalityMotion, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """
    ``Resample`` grid (``(d + 1, *shape)``, homogeneous, voxels from the grid centre) that makes the
    content move by ``motion``: every output point ``y`` (mm from the grid centre) samples the source
    point ``rotation^T @ (y - shift - displacement(y))`` mm, i.e. the voxel ``S^-1`` of that point,
    with ``S = diag(spacing)``.

    The voxel-space matrix ``S^-1 R^T`` is not a rotation on an anisotropic grid, which is why the
    matrix is given to ``AffineGrid`` rather than angles (``Affine``/``RandAffine`` rotate voxel
    coordinates). ``Affine`` itself is not used because the elastic displacement has to join the
    same grid: one interpolation for the whole motion.
    """
    d = len(shape)
    points = create_grid(shape, spacing=tuple(float(s) for s in spacing), dtype=dtype, device=device, backend="torch")
    if motion.displacement_mm is not None:
        points[:d] -= torch.as_tensor(motion.displacement_mm, dtype=dtype, device=device)
    to_source = motion.rotation.T / np.asarray(spacing, dtype=np.float64)[:, None]
    affine = np.eye(d + 1)
    affine[:d, :d] = to_source
    affine[:d, d] = -to_source @ motion.shift_mm
    grid, _ = AffineGrid(affine=torch.as_tensor(affine), dtype=dtype, device=device)(grid=points)
    return convert_to_tensor(grid, track_meta=False)


def move_channel(channel: torch.Tensor, spacing: np.ndarray, motion: ModalityMotion, mode: str) -> torch.Tensor:
    """
    One channel ``(*spatial)`` resampled so that its content moves by ``motion`` (zeros outside).

    Args:
        channel: the 2-D or 3-D array of one modality (a plain tensor).
        spacing: voxel size (mm) of each axis.
        motion: the motion of the content.
        mode: ``"bilinear"`` (trilinear in 3-D) or ``"nearest"``.

    On an axis of a single voxel, ``Resample`` normalises coordinates by a width of 2 voxels, so a
    motion along that axis moves the content half as far as on any other axis (the content of a
    single slice has no neighbour to move towards; only its weight against the zeros changes).
    """
    if motion.is_identity():
        return channel.clone()
    # float32 unless the data is float64: MONAI's float64 default would double the cost of every case
    dtype = torch.float64 if channel.dtype == torch.float64 else torch.float32
    grid = _sampling_grid(tuple(channel.shape), spacing, motion, dtype, channel.device)
    resample = Resample(mode=mode, padding_mode="zeros", norm_coords=True, align_corners=False, dtype=dtype)
    moved = convert_to_tensor(resample(channel[None], grid=grid), track_meta=False)[0]
    return moved.to(channel.dtype)


def smooth_field(control: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
    """
    ``(d, *control grid)`` values interpolated (bi/trilinear, corners aligned) to ``(d, *spatial_shape)``.

    MONAI's ``Rand2DElastic``/``Rand3DElastic`` do not fit this field: they draw their own offsets
    (normal, unbounded, in voxels, on a control grid set by a spacing in voxels, or Gaussian-smoothed
    per-voxel noise in 3-D) from their own generator, so neither the bound "at most ``elastic_mm``
    along any axis" in mm on anisotropic grids nor the draws of a seeded run would hold, and they
    resample on their own, apart from the modality's rigid motion.
    """
    mode = "bilinear" if len(spatial_shape) == 2 else "trilinear"
    resize = Resize(spatial_size=tuple(spatial_shape), mode=mode, align_corners=True, dtype=torch.float64)
    return convert_to_numpy(resize(control), dtype=np.float64)
