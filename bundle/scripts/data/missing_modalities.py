# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Reading a case whose sequences are not all there.

With ``allow_missing_modalities`` a normalised case's ``image`` list holds ``None`` for each missing
sequence (``scripts.data.datalist``). :class:`LoadModalityImagesd` reads the files that exist and puts
a channel of zeros in place of each missing one, so that every later step (orientation, resampling,
cropping, intensity normalisation, the network) sees the usual ``(M, *spatial)`` image. Zero is the
bundle's convention for a missing sequence (``scripts.networks.modality_presence``): the intensity
steps keep a constant channel at zero, and the networks treat a constant channel as absent.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform

__all__ = ["LoadModalityImagesd", "complete_cases", "missing_modalities", "modality_presence"]


def modality_presence(image: torch.Tensor) -> torch.Tensor:
    """``(B, M)`` boolean mask: True where channel ``m`` of case ``b`` is not constant over its
    spatial axes: the bundle's rule for a missing sequence (a zero-filled file, a dropped or zeroed
    channel), which needs no side channel; ``scripts.networks.modality_presence`` says how the
    networks use it, and the strong views (``scripts.methods.strong_views``) perturb only present channels.

    Args:
        image: ``(B, M, *spatial)``.
    """
    if image.dim() < 3:
        raise ValueError(f"modality_presence expects (B, M, *spatial), got shape {list(image.shape)}.")
    flat = image.flatten(2)
    return flat.amax(dim=2) > flat.amin(dim=2)


def complete_cases(per_modality: list[torch.Tensor] | None, complete: torch.Tensor) -> list[torch.Tensor] | None:
    """The cases (rows) where ``complete`` (B,) is True of each per-modality tensor (the terms that pair
    the sequences of one case: CMC's CSC and CAC, Semi-CML's ASC and mutual MSE); None when there is none
    (or no tensors)."""
    if not per_modality or not bool(complete.any()):
        return None
    if bool(complete.all()):
        return list(per_modality)
    return [x[complete] for x in per_modality]


def missing_modalities(image: Any, modalities: Sequence[str]) -> list[str]:
    """The names of the modalities a case's ``image`` entry lacks (``None`` entries of its list)."""
    if not isinstance(image, (list, tuple)):
        return []
    return [str(m) for m, p in zip(modalities, image, strict=False) if p is None]


class LoadModalityImagesd(MapTransform):
    """
    ``LoadImaged`` for images given as one file per modality, some of which may be missing.

    - A list of paths without ``None``, a single (multi-channel) path: read by MONAI's ``LoadImage``
      exactly as ``LoadImaged(image_only=True)`` reads it.
    - A list with ``None`` entries: the given files are read (they must share one grid, as the
      datalist check makes sure), stacked on a new first axis, and a channel of zeros is inserted at
      the position of each ``None``; the result is ``(M, *spatial)`` with the metadata (affine, file
      name) of the first file given and ``original_channel_dim`` 0, as ``LoadImage`` gives for a
      complete list.

    Args:
        keys: keys of the image entries (usually ``"image"``).
        reader: as ``LoadImage``'s ``reader``.
        allow_missing_keys: don't raise for a missing key.
        kwargs: further ``LoadImage`` arguments (``image_only`` is always True).
    """

    def __init__(
        self, keys: KeysCollection, reader: Any = None, allow_missing_keys: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        kwargs.pop("image_only", None)
        self.loader = LoadImage(reader=reader, image_only=True, **kwargs)

    def read(self, value: Any) -> torch.Tensor:
        """One image entry, read (see the class docstring)."""
        if not isinstance(value, (list, tuple)) or all(p is not None for p in value):
            return self.loader(value)
        given = [i for i, p in enumerate(value) if p is not None]
        if not given:
            raise ValueError("every modality of the case is missing; a case needs at least one image file.")
        loaded = self.loader([value[i] for i in given])
        if len(given) == 1:  # LoadImage returns a single file without a channel axis
            loaded = loaded[None]
        out = torch.zeros((len(value), *loaded.shape[1:]), dtype=loaded.dtype)
        out[given] = torch.as_tensor(loaded)
        meta = dict(getattr(loaded, "meta", {}) or {})
        meta["original_channel_dim"] = 0
        meta["spatial_shape"] = np.asarray(loaded.shape[1:])
        return MetaTensor(out, meta=meta)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.read(d[key])
        return d
