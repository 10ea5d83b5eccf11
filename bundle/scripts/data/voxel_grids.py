# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Whether the files of one case share a voxel grid (shape and affine), with the tolerance of the code that
will combine them, and the wording :mod:`scripts.data.case_validation` reports a difference in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.data.utils import affine_to_spacing

__all__ = ["grid_problems", "spacing_of", "strip_trailing_singletons", "vector_text"]

# tolerance of MONAI's LoadImage when stacking one file per modality (image_reader._copy_compatible_dict)
_STACK_RTOL, _STACK_ATOL = 1e-5, 1e-8


def strip_trailing_singletons(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` without its trailing singleton axes (``(64, 64, 1)`` and ``(64, 64)`` are one grid)."""
    out = list(shape)
    while len(out) > 1 and out[-1] == 1:
        out.pop()
    return tuple(int(s) for s in out)


def vector_text(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """The voxel spacing of a 4 x 4 affine, per axis (zeros kept)."""
    return np.asarray(affine_to_spacing(np.asarray(affine, dtype=np.float64), r=3, suppress_zeros=False))


def grid_problems(info: Any, ref: Any, ref_key: str, stacked: bool, affine_atol: float) -> list[str]:
    """Differences between the grid of ``info`` and that of ``ref`` (files with ``spatial``, ``affine`` and
    ``role``): images stacked into channels must agree as MONAI's ``LoadImage`` requires, a label within
    ``affine_atol`` mm of its image."""
    if info.spatial is None or ref.spatial is None or info.affine is None or ref.affine is None:
        return []
    hint = (
        "the images of a case must share one voxel grid: the bundle stacks them into channels as they are; "
        "resample them onto the grid of image[0] first"
        if stacked
        else "a label must be on the grid of its image"
    )
    # files loaded one per modality are stacked (and cropped with their label) as they are: their
    # shapes must be equal; a multi-channel file is squeezed to its spatial axes when it is read
    squeezed = "multichannel" in (info.role, ref.role)
    same_shape = (
        strip_trailing_singletons(info.spatial) == strip_trailing_singletons(ref.spatial)
        if squeezed
        else info.spatial == ref.spatial
    )
    if not same_shape:
        return [f"spatial shape {info.spatial} differs from {ref_key} {ref.spatial} ({hint})"]
    diff = float(np.max(np.abs(info.affine - ref.affine)))
    if stacked:
        same = np.allclose(info.affine, ref.affine, rtol=_STACK_RTOL, atol=_STACK_ATOL)
        tolerance = "MONAI LoadImage stacks files only when their affines are numpy.allclose (rtol 1e-5, atol 1e-8)"
    else:
        same = diff <= affine_atol
        tolerance = f"tolerance {affine_atol:g} mm"
    if same:
        return []
    origins = f"origin {vector_text(info.affine[:3, 3])} vs {vector_text(ref.affine[:3, 3])}"
    spacings = f"spacing {vector_text(spacing_of(info.affine))} vs {vector_text(spacing_of(ref.affine))}"
    return [f"affine differs from {ref_key} by up to {diff:.3g} ({tolerance}): {origins}, {spacings} ({hint})"]
