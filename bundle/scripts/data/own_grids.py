# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Modalities on their own grids: MR and ultrasound of one patient that are not registered, CT and MRI
volumes, or cohorts of CT patients and MRI patients with no patient in common (CMC's AMOS setting).

No voxel of one sequence corresponds to a voxel of another, so the bundle never puts two of them in
one tensor. :func:`split_by_modality` turns every case into one case per sequence it has: that
sequence's file in its own channel, the others missing (``None``, read as zero channels by
``scripts.data.missing_modalities``, absent for the networks by ``scripts.networks.modality_presence``),
and that sequence's own label. Everything downstream then works on each file's own grid, unchanged:
orientation, resampling, intensity scheme (the channel's own), cropping, patch sampling, sliding-window
validation, evaluation against the sequence's own label, inference written on the file's own grid.

A network sees one sequence per sample, with the presence mask saying which (``unet.yaml``'s
``modality_presence_input``); one network serves every modality, as the modality-shared encoders of
unpaired multimodal segmentation do. The labeled fraction is drawn per patient before the split, so a
labeled patient brings every label it has and an unlabeled one none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["GRID_MODALITY_KEY", "SOURCE_CASE_KEY", "split_by_modality", "split_case"]

#: key of a split case naming its sequence (the evaluation report summarises per sequence with it)
GRID_MODALITY_KEY = "grid_modality"
#: key of a split case naming the case it came from
SOURCE_CASE_KEY = "source_case"


def split_case(case: Mapping[str, Any], modalities: Sequence[str]) -> list[dict[str, Any]]:
    """One case per sequence that ``case`` has (``image``: one path or ``None`` per modality; ``label``,
    when present: one path or ``None`` per modality). The new cases are ``<case>_<modality>``; their
    ``image`` keeps one path, at that modality's position, and their ``label`` is that modality's."""
    image = case.get("image")
    if not isinstance(image, (list, tuple)):
        raise ValueError(
            f"case {case.get('case')!r}: modalities on their own grids need one file per modality, not a "
            "multi-channel file"
        )
    label = case.get("label")
    out = []
    for m, (name, path) in enumerate(zip(modalities, image, strict=False)):
        if path is None:
            continue
        single = {k: v for k, v in case.items() if k not in ("case", "image", "label")}
        single.update(
            {
                "case": f"{case['case']}_{name}",
                "image": [path if i == m else None for i in range(len(modalities))],
                GRID_MODALITY_KEY: str(name),
                SOURCE_CASE_KEY: case["case"],
            }
        )
        if isinstance(label, (list, tuple)) and m < len(label) and label[m] is not None:
            single["label"] = label[m]
        elif isinstance(label, str):
            single["label"] = label
        out.append(single)
    return out


def split_by_modality(datalist: Mapping[str, Sequence[Mapping[str, Any]]], modalities: Sequence[str]) -> dict:
    """Every split of a normalised datalist with each case replaced by its :func:`split_case` cases (the
    returned mapping is of the input's type, with its ``file_problems`` when it has them)."""
    result = type(datalist)() if isinstance(datalist, dict) else {}
    for split, cases in datalist.items():
        result[split] = [single for case in cases for single in split_case(case, modalities)]
    if hasattr(datalist, "file_problems"):
        result.file_problems = list(datalist.file_problems)
    return result
