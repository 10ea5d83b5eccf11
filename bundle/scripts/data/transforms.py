# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Dictionary transforms of the inference and evaluation configs.

- :class:`EnsureModalityChannelsd` puts the modalities of a case on the channel axis, whether the
  case was given as one file per modality or as ONE multi-channel file (what MONAI Label sends).
- :class:`SaveSegmentationd` is ``SaveImaged`` that names the output after the case id and refuses
  to overwrite an input file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import MapTransform, SaveImaged

from .spatial_squeeze import squeeze_trailing_spatial

__all__ = ["EnsureModalityChannelsd", "NiftiNoResampleWriter", "SaveSegmentationd", "input_files_of", "safe_name"]


def _source(img: Any) -> str:
    """The file an image was loaded from, for error messages."""
    meta = getattr(img, "meta", None) or {}
    name = meta.get("filename_or_obj")
    return str(name) if name else "<in-memory image>"


class EnsureModalityChannelsd(MapTransform):
    """
    Makes ``image`` channel-first with one channel per modality, from either input form:

    - **one file per modality** (``"image": [t1, t2, flair]``): ``LoadImaged`` stacks them on a new
      first axis (``original_channel_dim == 0``); the result is checked and kept;
    - **one multi-channel file** (``"image": "case.nii.gz"``): the modalities are on the LAST axis,
      as NIfTI stores them, and ``LoadImaged`` (without ``ensure_channel_first``) returns

      ===========  =========================  ========================================
      spatial_dims  array in the file          meaning
      ===========  =========================  ========================================
      2             ``(H, W, M)``              a 3-D NIfTI whose 3rd axis is modalities
      2             ``(H, W, 1, M)``           a 4-D NIfTI with a singleton slice axis
      3             ``(H, W, D, M)``           a 4-D NIfTI, the 4th axis is modalities
      ===========  =========================  ========================================

      The last axis is moved to the channels only when the file has these dimensions AND its
      last size equals ``num_modalities``; a 2-D ``(H, W)`` file is accepted when there is a
      single modality. Anything else raises ``ValueError`` naming the file, its shape and the
      expected layouts, instead of feeding a wrong tensor to the network (a ``(240, 240, 155)``
      single-sequence volume is not mistaken for 155 channels).

    Use it right after ``LoadImaged(keys="image", image_only=True)`` with ``ensure_channel_first``
    left False. The affine is unchanged (the spatial axes keep their order), so ``Invertd`` and
    ``SaveImaged`` write the prediction on the input's grid.

    Args:
        keys: keys of the images (usually ``"image"``).
        num_modalities: number of modalities ``M`` the network expects.
        spatial_dims: 2 or 3.
        allow_missing_keys: don't raise for a missing key.
    """

    def __init__(
        self, keys: KeysCollection, num_modalities: int, spatial_dims: int, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(spatial_dims) not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if int(num_modalities) < 1:
            raise ValueError(f"num_modalities must be >= 1, got {num_modalities}.")
        self.num_modalities = int(num_modalities)
        self.spatial_dims = int(spatial_dims)

    def _layouts(self) -> str:
        m, s = self.num_modalities, self.spatial_dims
        if s == 2:
            return f"one file per modality, or one multi-channel file of shape (H, W, {m}) or (H, W, 1, {m})"
        return f"one file per modality, or one multi-channel file of shape (H, W, D, {m})"

    def channels_first(self, img: torch.Tensor) -> torch.Tensor:
        """``img`` as ``(M, *spatial)``; raises ``ValueError`` naming the file for any other layout."""
        m, s = self.num_modalities, self.spatial_dims
        shape = tuple(img.shape)
        meta = getattr(img, "meta", {}) or {}
        stacked = meta.get("original_channel_dim") == 0  # LoadImaged stacked one file per modality
        if stacked:  # H x W x 1 files (2-D exports): H x W, metadata included (mixed with H x W files in a batch)
            img = squeeze_trailing_spatial(img, s)
            shape = tuple(img.shape)
        if stacked and len(shape) == s + 1 and shape[0] == m:
            return img
        if stacked:
            raise ValueError(
                f"{_source(img)}: {shape[0] if shape else 0} modality files stacked to shape {shape}, "
                f"expected {m} {s}-D images of one shape (modalities: {m}; {self._layouts()})."
            )
        out: torch.Tensor | None = None
        if len(shape) == s + 1 and shape[-1] == m:
            out = img.movedim(-1, 0)
        elif s == 2 and len(shape) == 4 and shape[2] == 1 and shape[3] == m:
            out = img[:, :, 0, :].movedim(-1, 0)
        elif len(shape) == s and m == 1:
            out = img[None]
        if out is None:
            raise ValueError(
                f"{_source(img)}: image of shape {shape} cannot be read as {m} modalities of a {s}-D image "
                f"(expected {self._layouts()})."
            )
        out = out.contiguous()
        if isinstance(out, MetaTensor):
            out.meta["original_channel_dim"] = -1
            out.meta["spatial_shape"] = np.asarray(out.shape[1:])
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.channels_first(d[key])
        return d


def input_files_of(value: Any) -> list[str]:
    """The file paths named by a case's ``image``/``label`` entry (a path or a list of paths)."""
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    if isinstance(value, Sequence):
        return [os.fspath(v) for v in value if isinstance(v, (str, os.PathLike))]
    return []


def safe_name(case_id: str) -> str:
    """``case_id`` usable as a file name: path separators replaced by ``_``."""
    name = str(case_id).replace(os.sep, "_")
    if os.altsep:
        name = name.replace(os.altsep, "_")
    return name


class NiftiNoResampleWriter(NibabelWriter):
    """
    ``NibabelWriter`` that writes the array with its own affine when no resampling is asked
    (``resample=False``), without going through ``SpatialResample``: in MONAI 1.6.1 that identity
    "resampling" fails for 2-D images (``TypeError`` in ``fall_back_tuple``). With a target affine or
    shape it resamples as ``NibabelWriter`` does.
    """

    def resample_if_needed(self, data_array, affine=None, target_affine=None, output_spatial_shape=None, **kwargs):
        if target_affine is None and output_spatial_shape is None:
            return data_array, affine
        return super().resample_if_needed(
            data_array, affine=affine, target_affine=target_affine, output_spatial_shape=output_spatial_shape, **kwargs
        )


class SaveSegmentationd(SaveImaged):
    """
    ``SaveImaged`` for label maps: ``<output_dir>/<case id>_<output_postfix><output_ext>``, never
    over an input file.

    - When the data has ``case_key`` (the datalist's case id), the file is named after it instead of
      after the first modality's file name (which would give ``p001_t1_seg.nii.gz``).
    - Before writing, the output path is compared with the case's input files (the loaded image's
      ``filename_or_obj`` and every path in ``files_key``, when present): if they are the same file
      a ``FileExistsError`` is raised and nothing is written.

    MONAI Label drops every ``SaveImaged`` (this class included) from a bundle's postprocessing and
    writes the result itself. All other arguments are those of ``SaveImaged``; NIfTI files written
    with ``resample=False`` use :class:`NiftiNoResampleWriter` unless ``writer`` is given.

    - When the data has ``sequences_key`` (``"t1+flair"``: the sequences the case was segmented from,
      see :func:`scripts.data.inference_data.inference_cases`) and they are fewer than ``modalities``,
      a JSON file beside the label map (``<case>_<output_postfix>.json``) records them and the
      trained sequences that were missing.

    Args:
        case_key: key of the case id in the data dictionary.
        files_key: key of the case's input file paths (a path or a list of paths), if any.
        sequences_key: key of the sequences used, if any.
        modalities: the sequences the network was trained on (named as missing in the JSON file).
    """

    def __init__(
        self,
        keys: KeysCollection,
        case_key: str = "case",
        files_key: str | None = "input_files",
        sequences_key: str | None = "sequences",
        modalities: Sequence[str] | None = None,
        **kwargs: Any,
    ):
        ext = str(kwargs.get("output_ext", ".nii.gz")).lower()
        if not kwargs.get("resample", True) and kwargs.get("writer") is None and ext.endswith((".nii", ".nii.gz")):
            kwargs["writer"] = NiftiNoResampleWriter
        super().__init__(keys, **kwargs)
        self.case_key = case_key
        self.files_key = files_key
        self.sequences_key = sequences_key
        self.modalities = [str(m) for m in modalities] if modalities else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case_id = d.get(self.case_key)
        inputs: list[str] = input_files_of(d.get(self.files_key)) if self.files_key else []
        target: str | None = None
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor):
                continue
            inputs.append(str(img.meta.get("filename_or_obj", "")))
            if isinstance(case_id, str) and case_id:
                # the ".nii" is what SaveImaged strips as the extension, so a dotted case id stays whole
                img.meta["filename_or_obj"] = safe_name(case_id) + ".nii"
            kw = self.saver.fname_formatter(img.meta, self.saver)
            target = os.path.realpath(str(self.saver.folder_layout.filename(**kw)))
            clash = [p for p in inputs if p and os.path.exists(p) and os.path.realpath(p) == target]
            if clash:
                raise FileExistsError(
                    f"case {str(case_id)!r}: refusing to write the segmentation to {target}: it is an input file "
                    f"({clash[0]}); choose another output_dir or output_postfix."
                )
        out = super().__call__(d)
        used = d.get(self.sequences_key) if self.sequences_key else None
        if isinstance(used, str) and isinstance(case_id, str) and case_id and target:
            names = used.split("+") if used else []
            if self.modalities is None or set(self.modalities) - set(names):  # segmented without some sequence
                self._write_sequences(target, case_id, names)
        return out

    def _write_sequences(self, segmentation: str, case_id: str, used: list[str]) -> None:
        """``<segmentation without its extension>.json``: the sequences used and those missing."""
        stem = segmentation
        for ext in (".nii.gz", ".nii", os.path.splitext(segmentation)[1]):
            if ext and stem.endswith(ext):
                stem = stem[: -len(ext)]
                break
        record = {"case": case_id, "segmentation": segmentation, "sequences_used": used}
        if self.modalities:
            record["sequences_missing"] = [m for m in self.modalities if m not in used]
        with open(stem + ".json", "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
