# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Intensity normalisation with one scheme per modality (channel), as a dataset plan decides it
(``scripts/plan.py``; the rules are in ``docs/planning.md``).

MONAI's intensity transforms apply one setting to every channel; a case that stacks a CT and an MR
sequence, or an ultrasound and an MR volume, needs a different one per channel, so
:class:`ModalityIntensityd` runs MONAI's own transforms channel by channel.

Schemes (one dict per modality, in the order of the image channels):

- ``{"scheme": "zscore", "lower": 1, "upper": 99}``: per image: clip to its own ``lower``-th and
  ``upper``-th percentiles, then zero mean and unit variance (MR sequences, whose intensities have no
  physical unit; nnU-Net's ZScoreNormalization, with the percentile clip of cardiac.yaml).
- ``{"scheme": "window", "low": a, "high": b, "mean": m, "std": s}``: one dataset-wide setting: clip
  to ``[a, b]``, then subtract ``m`` and divide by ``s`` (CT in Hounsfield units, whose values mean
  the same in every scan: nnU-Net's CTNormalization, ``a``/``b`` the 0.5th/99.5th percentiles of the
  foreground intensities and ``m``/``s`` their mean and standard deviation; also 8-bit data already
  windowed by its exporter, with ``[0, 255]``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, NormalizeIntensity, ScaleIntensityRangePercentiles

__all__ = ["ModalityIntensityd", "SCHEMES"]

SCHEMES = {"zscore": ("lower", "upper"), "window": ("low", "high", "mean", "std")}


def _check_scheme(index: int, spec: Mapping[str, Any]) -> dict[str, Any]:
    name = spec.get("scheme") if isinstance(spec, Mapping) else None
    if name not in SCHEMES:
        raise ValueError(
            f"intensity scheme of modality {index}: 'scheme' must be one of {sorted(SCHEMES)}, got {spec!r}."
        )
    missing = [k for k in SCHEMES[name] if k not in spec]
    if missing:
        raise ValueError(f"intensity scheme of modality {index} ({name}) lacks {missing}: {spec!r}.")
    values = {k: float(spec[k]) for k in SCHEMES[name]}
    if name == "zscore" and not 0.0 <= values["lower"] < values["upper"] <= 100.0:
        raise ValueError(f"intensity scheme of modality {index}: need 0 <= lower < upper <= 100, got {spec!r}.")
    if name == "window" and not (values["low"] < values["high"] and values["std"] > 0):
        raise ValueError(f"intensity scheme of modality {index}: need low < high and std > 0, got {spec!r}.")
    return {"scheme": name, **values}


class ModalityIntensityd(MapTransform):
    """
    Normalises each channel of ``keys`` with its own scheme (see the module docstring).

    Args:
        keys: channel-first images, one channel per modality.
        schemes: one scheme dict per channel.
        allow_missing_keys: don't raise for a missing key.
    """

    def __init__(
        self, keys: KeysCollection, schemes: Sequence[Mapping[str, Any]], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not schemes:
            raise ValueError("ModalityIntensityd needs one scheme per modality, got none.")
        self.schemes = [_check_scheme(i, s) for i, s in enumerate(schemes)]
        self._steps = [self._make(s) for s in self.schemes]

    @staticmethod
    def _make(spec: dict[str, Any]):
        if spec["scheme"] == "zscore":
            clip = ScaleIntensityRangePercentiles(spec["lower"], spec["upper"], b_min=0.0, b_max=1.0, clip=True)
            scale = NormalizeIntensity()
            return lambda x: scale(clip(x))
        low, high = spec["low"], spec["high"]
        scale = NormalizeIntensity(subtrahend=spec["mean"], divisor=spec["std"])
        return lambda x: scale(x.clamp(low, high))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.shape[0] != len(self._steps):
                raise ValueError(
                    f"ModalityIntensityd: {str(key)!r} has {img.shape[0]} channels but {len(self._steps)} "
                    "intensity schemes were given (one per modality)."
                )
            # a MetaTensor keeps its metadata through the channel slices and torch.cat
            d[key] = torch.cat([self._normalise(step, img[c : c + 1].float()) for c, step in enumerate(self._steps)])
        return d

    @staticmethod
    def _normalise(step, channel: torch.Tensor) -> torch.Tensor:
        """``step(channel)``, except that a constant channel (a missing sequence, filled with zeros by
        ``scripts.data.missing_modalities``) becomes zero whatever the scheme: a window would move it
        to ``(low - mean) / std``, and zero is what the networks read as absent."""
        if channel.numel() and bool(channel.max() == channel.min()):
            return channel * 0.0
        return step(channel)
