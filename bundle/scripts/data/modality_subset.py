# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Evaluation with a subset of the sequences: the others are made missing.

The bundle's convention for a missing sequence is a channel of zeros after intensity normalisation
(zero is the mean after z-scoring; :class:`scripts.methods.strong_views.SequenceDropout` trains with it).
:class:`KeepModalitiesd` applies it by name: ``evaluate.yaml``'s ``eval_modalities`` puts it after the
preparation steps of the evaluation pipeline, and ``scripts/subset_benchmark.py`` evaluates trained
models on every non-empty subset of the sequences with it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["DropSequencesd", "KeepModalitiesd", "kept_modalities", "modality_subsets"]


class DropSequencesd(MapTransform):
    """
    Zeroes fixed sequences (channels) of a channel-first image ``(M, *spatial)``: a missing sequence,
    for robustness evaluation (``scripts/misalignment_benchmark.py --drop_sequences``).

    Args:
        keys: image keys.
        channels: indices of the sequences set to zero.
    """

    def __init__(self, keys: KeysCollection, channels: Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = [int(c) for c in channels]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            bad = [c for c in self.channels if not 0 <= c < img.shape[0]]
            if bad:
                raise ValueError(f"{key}: no sequence {bad}; the image has {img.shape[0]}.")
            img = img.clone()
            img[self.channels] = 0
            d[key] = img
        return d


def _names(value: Any, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{what} must be a list of modality names, got {value!r}.")
    return [str(v) for v in value]


def kept_modalities(eval_modalities: Any, modalities: Sequence[str]) -> list[str] | None:
    """
    The modalities an evaluation keeps (``evaluate.yaml``'s ``eval_modalities``), checked, in channel order.

    Args:
        eval_modalities: names of the modalities kept, a non-empty subset of ``modalities``; one name
            alone may be given as a string; ``None`` (or the command line's ``null`` / ``None``, which
            arrive as strings): all of them, nothing is zeroed.
        modalities: every modality name, in channel order.

    Returns:
        ``None`` (every modality kept), or the kept names in the order of ``modalities``.

    Raises:
        ValueError: an empty subset, a repeated name, or a name that is not in ``modalities``.
    """
    names = _names(modalities, "modalities")
    if eval_modalities is None or eval_modalities in ("null", "None"):
        return None
    what = "eval_modalities (the modalities kept)"
    keep = _names([eval_modalities] if isinstance(eval_modalities, str) else eval_modalities, what)
    if not keep:
        raise ValueError(f"{what} is empty: keep at least one of {names} (null keeps them all).")
    unknown = [m for m in keep if m not in names]
    if unknown:
        raise ValueError(f"{what}: {unknown} not among the modalities {names}.")
    repeated = sorted({m for m in keep if keep.count(m) > 1})
    if repeated:
        raise ValueError(f"{what}: {repeated} given more than once.")
    return [m for m in names if m in keep]


class KeepModalitiesd(MapTransform):
    """
    Keeps the named modalities of a channel-first image ``(M, *spatial)`` (one channel per modality,
    in ``modalities`` order) and sets every other channel to zero: those sequences are missing. The
    kept channels are left unchanged, the image keeps its shape ``(M, *spatial)`` (a copy; the input
    is not modified), and its metadata.

    Put it after the intensity normalisation, so that a missing sequence is the normalised mean (0).

    Args:
        keys: image keys.
        keep: names of the modalities kept, a non-empty subset of ``modalities`` (any order; see
            :func:`kept_modalities`).
        modalities: every modality name, in channel order (the config's ``modalities``).
        allow_missing_keys: do not fail when a key is absent.

    Raises:
        ValueError: ``keep`` is empty, repeats a name or names a modality that is not in ``modalities``
            (at construction); an image whose channel count differs from ``len(modalities)`` (when called).
    """

    def __init__(
        self, keys: KeysCollection, keep: Sequence[str], modalities: Sequence[str], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modalities = _names(modalities, "modalities")
        kept = kept_modalities(keep, self.modalities)
        if kept is None:
            raise ValueError("eval_modalities (the modalities kept) is None: give a list of modality names.")
        self.keep = kept
        self.dropped = [i for i, m in enumerate(self.modalities) if m not in self.keep]
        self._drop = DropSequencesd(keys, self.dropped, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        for key in self.key_iterator(dict(data)):
            channels = data[key].shape[0]
            if channels != len(self.modalities):
                raise ValueError(
                    f"{key}: {channels} channels, but {len(self.modalities)} modalities {self.modalities}."
                )
        if not self.dropped:
            return dict(data)
        return self._drop(data)


def modality_subsets(modalities: Sequence[str]) -> list[list[str]]:
    """Every non-empty subset of ``modalities`` (``2**M - 1`` of them), each in channel order: all of
    them first, then the larger subsets before the smaller ones (e.g. ``[a, b], [a], [b]``)."""
    names = _names(modalities, "modalities")
    return [list(c) for size in range(len(names), 0, -1) for c in combinations(names, size)]
