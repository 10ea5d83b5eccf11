# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Inter-modality misalignment: dictionary transforms that move each modality (channel of ``image``)
by its own rigid motion, in millimetres and degrees, independently of the other modalities and of
the label.

Multimodal methods such as CMC (Zhou et al., MICCAI 2024) assume, or are claimed to tolerate, that
the sequences of a case are not perfectly co-registered (patient motion between acquisitions,
breath-hold differences in cardiac MRI, CT/MRI pairs). These transforms simulate that:

- :class:`RandModalityMisalignd` is a training augmentation: with probability ``prob`` each moving
  modality gets a random shift (``max_shift_mm``), rotation (``max_rotation_deg``) and, optionally,
  a smooth random elastic displacement (``elastic_mm``);
- :class:`ModalityMisalignd` applies a fixed shift / rotation to chosen modalities, for robustness
  evaluation (``scripts/misalignment_benchmark.py``).

Geometry (both transforms):

- the image is channel-first, ``(M, *spatial)`` with 2 or 3 spatial axes, one channel per modality;
  motions are expressed along the **array axes** after the pipeline's orientation transform;
- voxel spacing comes from the MetaTensor's affine (the norm of each axis' column), so a shift of
  ``s`` mm along an axis of spacing ``p`` mm moves the content by ``s / p`` voxels, and a rotation
  is rigid in millimetres (on an anisotropic grid it is not a rotation of the voxel array);
- rotations turn about the centre of the image grid; the angle of the plane of axes ``(a, b)``
  turns axis ``a`` towards axis ``b``. 2-D images have one plane, ``(0, 1)``. In 3-D a single
  angle is a rotation in the plane ``(0, 1)`` (about the last axis: the in-plane rotation of a stack
  of slices whose slice axis is last); three angles are rotations about axes 0, 1 and 2 (planes
  ``(1, 2)``, ``(2, 0)``, ``(0, 1)``), applied in that order;
- the moved content is resampled once, by MONAI's ``Resample`` on a grid from ``AffineGrid`` (plus
  the elastic displacement, if any), with ``mode`` for images, nearest for labels, zeros outside the
  image and ``align_corners=False`` (voxel centres, the grid centre at ``(size - 1) / 2``); a
  modality that does not move is copied unchanged, bit for bit; the affine and the rest of the
  metadata are kept (the grid does not change, the content moves on it), and nothing is added to
  ``applied_operations``.

Labels (``label_keys``): a label with ONE channel is the label of co-registered data; it lies on the
reference modality's grid (``reference_modality``, index 0 by default, which never moves) and is
left untouched. A label with ``M`` channels (one label per modality, misaligned or unpaired data)
has its channel ``m`` moved with modality ``m`` (nearest-neighbour interpolation). A missing label
(unlabeled case) is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, ensure_tuple

from .rigid_motion import ModalityMotion, move_channel, rotation_matrix, smooth_field, voxel_spacing_of

__all__ = [
    "ModalityMisalignd",
    "ModalityMotion",
    "RandModalityMisalignd",
    "move_channel",
    "rotation_matrix",
    "voxel_spacing_of",
]

_IMAGE_MODES = ("bilinear", "nearest")


# ---------------------------------------------------------------- geometry


# ---------------------------------------------------------------- argument checks
def _non_negative(name: str, value: float | Sequence[float]) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in ensure_tuple(value))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a sequence of numbers, got {value!r}.") from None
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}.")
    return values


def _finite(name: str, value: float | Sequence[float]) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in ensure_tuple(value))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a sequence of numbers, got {value!r}.") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return values


def _modality_indices(modalities: Sequence[int] | int | None, reference_modality: int | None) -> tuple[int, ...] | None:
    if reference_modality is not None:
        if isinstance(reference_modality, bool) or not isinstance(reference_modality, (int, np.integer)):
            raise ValueError(f"reference_modality must be a channel index or None, got {reference_modality!r}.")
        if reference_modality < 0:
            raise ValueError(f"reference_modality must be >= 0, got {reference_modality}.")
    if modalities is None:
        return None
    indices = ensure_tuple(modalities)
    if not all(isinstance(m, (int, np.integer)) and not isinstance(m, bool) and m >= 0 for m in indices):
        raise ValueError(f"modalities must be channel indices >= 0, got {modalities!r}.")
    if len(set(indices)) != len(indices):
        raise ValueError(f"modalities must be distinct, got {modalities!r}.")
    if reference_modality is not None and reference_modality in indices:
        raise ValueError(
            f"modality {reference_modality} is the reference modality (its grid carries a single-channel label) "
            f"and cannot move; choose other modalities or another reference_modality."
        )
    return tuple(int(m) for m in indices)


class _ModalityMotionApplier(MapTransform):
    """
    Shared part of the misalignment transforms: checks a case's image and labels and moves every
    modality channel by the motion of that modality.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection | None,
        modalities: Sequence[int] | int | None,
        reference_modality: int | None,
        mode: str,
        allow_missing_keys: bool,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = ensure_tuple(label_keys) if label_keys is not None else ()
        self.modalities = _modality_indices(modalities, reference_modality)
        self.reference_modality = None if reference_modality is None else int(reference_modality)
        if mode not in _IMAGE_MODES:
            raise ValueError(f"mode must be one of {_IMAGE_MODES}, got {mode!r}.")
        self.mode = mode

    def moving_modalities(self, num_modalities: int) -> tuple[int, ...]:
        """Indices of the modalities that may move, for an image of ``num_modalities`` channels."""
        if self.modalities is None:
            return tuple(m for m in range(num_modalities) if m != self.reference_modality)
        beyond = [m for m in self.modalities if m >= num_modalities]
        if beyond:
            raise ValueError(f"modalities {beyond} do not exist: the image has {num_modalities} channels (modalities).")
        return self.modalities

    def image_geometry(self, d: Mapping[Hashable, Any]) -> tuple[int, tuple[int, ...]] | None:
        """``(number of modalities, spatial shape)`` of the case's first image key (None: no image key)."""
        for key in self.key_iterator(d):
            img = d[key]
            if not hasattr(img, "shape") or len(img.shape) not in (3, 4):
                raise ValueError(
                    f"{str(key)!r} must be channel-first (M, H, W) or (M, H, W, D), got shape {tuple(getattr(img, 'shape', ()))}."
                )
            return int(img.shape[0]), tuple(int(s) for s in img.shape[1:])
        return None

    def motions_for(self, num_modalities: int, shape: tuple[int, ...]) -> Mapping[int, ModalityMotion] | None:
        """The motion of each moving modality of a case of ``num_modalities`` images of ``shape``; None: leave it."""
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """``data`` with its modalities moved by :meth:`motions_for` (unchanged without an image)."""
        d = dict(data)
        geometry = self.image_geometry(d)
        if geometry is None:
            return d
        num_modalities, shape = geometry
        motions = self.motions_for(num_modalities, shape)
        return d if motions is None else self.apply_motions(d, motions, num_modalities, shape)

    def apply_motions(self, d: dict, motions: Mapping[int, ModalityMotion], num_modalities: int, shape: tuple) -> dict:
        """Moves modality ``m`` of every image key (and channel ``m`` of per-modality labels) by ``motions[m]``."""
        spacing = None
        for key in self.key_iterator(d):
            img = d[key]
            if int(img.shape[0]) != num_modalities or tuple(img.shape[1:]) != shape:
                raise ValueError(
                    f"{str(key)!r} has shape {tuple(img.shape)}, other image keys ({num_modalities}, *{shape})."
                )
            spacing = voxel_spacing_of(img, len(shape)) if spacing is None else spacing
            d[key] = self._move(img, motions, spacing, self.mode)
        for key in self.label_keys:
            if key not in d or d[key] is None:
                continue  # unlabeled case
            label = d[key]
            channels = int(label.shape[0]) if hasattr(label, "shape") and len(label.shape) == len(shape) + 1 else -1
            if channels == 1:
                if self.reference_modality is None:
                    raise ValueError(
                        f"{str(key)!r} has one channel: it lies on the reference modality's grid, but reference_modality is None."
                    )
                continue  # co-registered data: the label stays on the reference grid
            if channels != num_modalities or tuple(label.shape[1:]) != shape:
                raise ValueError(
                    f"{str(key)!r} of shape {tuple(getattr(label, 'shape', ()))} must have 1 channel (one label on the "
                    f"reference grid) or {num_modalities} (one per modality) on the image grid {shape}."
                )
            d[key] = self._move(
                label, motions, voxel_spacing_of(label, len(shape)) if spacing is None else spacing, "nearest"
            )
        return d

    @staticmethod
    def _move(img: Any, motions: Mapping[int, ModalityMotion], spacing: np.ndarray, mode: str) -> Any:
        if all(m.is_identity() for m in motions.values()):
            return img
        data = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        channels = [
            move_channel(data[m], spacing, motions[m], mode) if m in motions else data[m].clone()
            for m in range(data.shape[0])
        ]
        out, *_ = convert_to_dst_type(torch.stack(channels), img)
        return out


class ModalityMisalignd(_ModalityMotionApplier):
    """
    Moves chosen modalities by a FIXED shift (mm) and rotation (degrees), for evaluating how a model
    copes with misaligned inputs, e.g. "modalities 1 and 2 shifted by 5 mm along axis 0"::

        ModalityMisalignd(keys="image", shift_mm=5.0, shift_axis=0, modalities=[1, 2])
        ModalityMisalignd(keys="image", rotation_deg=10.0)  # every modality but 0, about the centre

    Every moving modality gets the same motion: the rotation about the image centre, then the shift.
    Geometry, labels and metadata: see the module docstring.

    Args:
        keys: keys of the channel-first multimodal images ``(M, *spatial)`` (usually ``"image"``).
        label_keys: keys of the labels: a 1-channel label is left untouched, an ``M``-channel label
            (one per modality) has each channel moved with its modality. ``None``: no labels.
        shift_mm: the shift in mm: a number, along ``shift_axis``, or one value per spatial axis.
        shift_axis: array axis (0-based, spatial) of a scalar ``shift_mm``.
        rotation_deg: rotation about the image centre in degrees: one angle (2-D, or the plane of
            axes ``(0, 1)`` in 3-D) or, in 3-D, three angles about axes 0, 1, 2.
        modalities: channel indices that move; ``None``: every modality but ``reference_modality``.
        reference_modality: the modality whose grid carries a single-channel label; it never moves.
            ``None``: no reference (then a single-channel label is an error).
        mode: interpolation of the images, ``"bilinear"`` or ``"nearest"`` (labels: always nearest).
        allow_missing_keys: don't raise for a missing image key.

    Raises:
        ValueError: for non-finite values, a ``shift_axis`` or a number of values that does not fit
            the image, modalities that do not exist or include the reference, a label with neither 1
            nor ``M`` channels.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_keys: KeysCollection | None = "label",
        shift_mm: float | Sequence[float] = 0.0,
        shift_axis: int = 0,
        rotation_deg: float | Sequence[float] = 0.0,
        modalities: Sequence[int] | int | None = None,
        reference_modality: int | None = 0,
        mode: str = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, label_keys, modalities, reference_modality, mode, allow_missing_keys)
        self.shift_mm = _finite("shift_mm", shift_mm)
        if isinstance(shift_axis, bool) or not isinstance(shift_axis, (int, np.integer)) or not 0 <= shift_axis <= 2:
            raise ValueError(f"shift_axis must be a spatial axis index 0, 1 or 2, got {shift_axis!r}.")
        self.shift_axis = int(shift_axis)
        self.rotation_deg = _finite("rotation_deg", rotation_deg)
        if len(self.rotation_deg) not in (1, 3):
            raise ValueError(f"rotation_deg must be one angle or three (3-D), got {rotation_deg!r}.")

    def motion(self, spatial_dims: int) -> ModalityMotion:
        """The motion of every moving modality for a ``spatial_dims``-D image."""
        if len(self.shift_mm) == 1:
            if self.shift_axis >= spatial_dims:
                raise ValueError(f"shift_axis {self.shift_axis} does not exist in a {spatial_dims}-D image.")
            shift = np.zeros(spatial_dims)
            shift[self.shift_axis] = self.shift_mm[0]
        elif len(self.shift_mm) == spatial_dims:
            shift = np.asarray(self.shift_mm, dtype=np.float64)
        else:
            raise ValueError(f"shift_mm has {len(self.shift_mm)} values, the image has {spatial_dims} spatial axes.")
        return ModalityMotion(rotation=rotation_matrix(self.rotation_deg, spatial_dims), shift_mm=shift)

    def motions_for(self, num_modalities: int, shape: tuple[int, ...]) -> dict[int, ModalityMotion]:
        motion = self.motion(len(shape))
        return {m: motion for m in self.moving_modalities(num_modalities)}


class RandModalityMisalignd(RandomizableTransform, _ModalityMotionApplier):
    """
    Training augmentation: each moving modality is, with probability ``prob`` and independently of
    the others, moved by a random rigid motion (and an optional small elastic deformation), so that
    the network sees cases whose sequences are not co-registered.

    For every moving modality that is drawn to move:

    - a shift drawn uniformly in ``[-max_shift_mm, max_shift_mm]`` along every array axis (a number:
      the same maximum on every axis; a sequence: one maximum per axis, e.g. ``[5, 5, 0]`` keeps a
      stack of slices on its slices);
    - a rotation about the image centre, each angle drawn uniformly in ``[-max, max]``:
      ``max_rotation_deg`` is one maximum (2-D, or the plane ``(0, 1)`` in 3-D) or three maxima
      (3-D, about axes 0, 1, 2);
    - with ``elastic_mm > 0``, a smooth displacement field: every component drawn uniformly in
      ``[-elastic_mm, elastic_mm]`` on ``elastic_control_points`` control points per axis and
      interpolated (bi/trilinear) to the image grid, so that no voxel moves by more than
      ``elastic_mm`` along any axis.

    The draws depend only on the random state (``set_random_state``), the number of modalities and
    the image shape, never on the intensities. Geometry, labels and metadata: see the module docstring.

    Args:
        keys: keys of the channel-first multimodal images ``(M, *spatial)`` (usually ``"image"``).
        label_keys: keys of the labels: a 1-channel label is left untouched, an ``M``-channel label
            (one per modality) has each channel moved with its modality. ``None``: no labels.
        prob: probability that a moving modality moves (drawn per modality, per case).
        max_shift_mm: maximum shift (mm), a number or one value per spatial axis.
        max_rotation_deg: maximum rotation angle (degrees, at most 180), one or three values.
        elastic_mm: maximum elastic displacement (mm) per axis; 0 (default) disables it.
        elastic_control_points: control points per axis of the elastic field (>= 2; fewer is smoother).
        modalities: channel indices that may move; ``None``: every modality but ``reference_modality``.
        reference_modality: the modality whose grid carries a single-channel label; it never moves.
            ``None``: no reference (then a single-channel label is an error).
        mode: interpolation of the images, ``"bilinear"`` or ``"nearest"`` (labels: always nearest).
        allow_missing_keys: don't raise for a missing image key.

    Raises:
        ValueError: for a ``prob`` outside [0, 1], negative or non-finite maxima, a rotation beyond
            180 degrees, fewer than 2 control points, a number of values that does not fit the image,
            modalities that do not exist or include the reference, a label with neither 1 nor ``M``
            channels.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_keys: KeysCollection | None = "label",
        prob: float = 0.5,
        max_shift_mm: float | Sequence[float] = 5.0,
        max_rotation_deg: float | Sequence[float] = 5.0,
        elastic_mm: float = 0.0,
        elastic_control_points: int = 5,
        modalities: Sequence[int] | int | None = None,
        reference_modality: int | None = 0,
        mode: str = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        try:
            prob = float(prob)
        except (TypeError, ValueError):
            raise ValueError(f"prob must be a number in [0, 1], got {prob!r}.") from None
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}.")
        RandomizableTransform.__init__(self, prob=prob)
        _ModalityMotionApplier.__init__(
            self, keys, label_keys, modalities, reference_modality, mode, allow_missing_keys
        )
        self.max_shift_mm = _non_negative("max_shift_mm", max_shift_mm)
        self.max_rotation_deg = _non_negative("max_rotation_deg", max_rotation_deg)
        if len(self.max_rotation_deg) not in (1, 3):
            raise ValueError(f"max_rotation_deg must be one maximum or three (3-D), got {max_rotation_deg!r}.")
        if max(self.max_rotation_deg) > 180:
            raise ValueError(f"max_rotation_deg must be at most 180 degrees, got {max_rotation_deg!r}.")
        elastic = _non_negative("elastic_mm", elastic_mm)
        if len(elastic) != 1:
            raise ValueError(f"elastic_mm must be one number (mm), got {elastic_mm!r}.")
        self.elastic_mm = elastic[0]
        if isinstance(elastic_control_points, bool) or not isinstance(elastic_control_points, (int, np.integer)):
            raise ValueError(f"elastic_control_points must be an integer >= 2, got {elastic_control_points!r}.")
        if elastic_control_points < 2:
            raise ValueError(f"elastic_control_points must be >= 2, got {elastic_control_points}.")
        self.elastic_control_points = int(elastic_control_points)
        #: the motions drawn for the last case, ``{modality index: ModalityMotion}`` (moving ones only)
        self.motions: dict[int, ModalityMotion] = {}

    def _per_axis(self, name: str, values: tuple[float, ...], spatial_dims: int) -> np.ndarray:
        if len(values) == 1:
            return np.full(spatial_dims, values[0])
        if len(values) != spatial_dims:
            raise ValueError(f"{name} has {len(values)} values, the image has {spatial_dims} spatial axes.")
        return np.asarray(values, dtype=np.float64)

    def randomize(self, num_modalities: int, spatial_shape: Sequence[int]) -> None:  # type: ignore[override]
        """Draws the motion of every moving modality of a case of ``num_modalities`` channels and ``spatial_shape``."""
        d = len(spatial_shape)
        max_shift = self._per_axis("max_shift_mm", self.max_shift_mm, d)
        if d == 2 and len(self.max_rotation_deg) != 1:
            raise ValueError(f"a 2-D image has one rotation angle, max_rotation_deg has {len(self.max_rotation_deg)}.")
        max_rotation = np.asarray(self.max_rotation_deg, dtype=np.float64)
        self.motions = {}
        for m in self.moving_modalities(num_modalities):
            if self.R.rand() >= self.prob:
                continue
            shift = self.R.uniform(-max_shift, max_shift)
            angles = self.R.uniform(-max_rotation, max_rotation)
            displacement = None
            if self.elastic_mm > 0:
                control = self.R.uniform(
                    -self.elastic_mm, self.elastic_mm, size=(d, *[self.elastic_control_points] * d)
                )
                displacement = smooth_field(control, spatial_shape)
            self.motions[m] = ModalityMotion(rotation_matrix(angles, d), shift, displacement)
        self._do_transform = bool(self.motions)

    def motions_for(self, num_modalities: int, shape: tuple[int, ...]) -> dict[int, ModalityMotion] | None:
        self.randomize(num_modalities, shape)
        return self.motions if self._do_transform else None
