"""Medical Segmentation Decathlon: a task folder whose dataset.json lists one multi-channel image per case."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from .base import Preparation, sub_command
from .case_files import case_id, check_label_codes, read_shape

__all__ = ["msd"]


def _key_name(name: str) -> str:
    key = re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")
    return key or "modality"


@sub_command
def msd(
    run: Preparation, dataset_json: str = "dataset.json", include_test_images: bool = True, check_labels: bool = True
) -> str:
    """
    Medical Segmentation Decathlon task folder (e.g. Task01_BrainTumour) with its ``dataset.json``:
    one multi-channel NIfTI per case (channels on the last axis) -> ``"image": "<file>"``.

    Modality keys: the ``modality`` names of dataset.json, lower-cased (Task01: ``flair``, ``t1w``,
    ``t1gd``, ``t2w``), in channel order. Label codes are kept (names from dataset.json). The
    images of the ``test`` list (no labels) join ``unlabeled`` unless ``--include_test_images false``.
    """
    problems = run.problems
    data_dir = run.data_dir
    json_path = os.path.join(data_dir, dataset_json)
    meta: dict = {}
    if not os.path.isfile(json_path):
        problems.append(f"{json_path} not found (the MSD task folder holds dataset.json, imagesTr/, labelsTr/)")
    else:
        try:
            with open(json_path, encoding="utf-8") as f:
                meta = json.load(f)
        except ValueError as e:
            problems.append(f"{json_path}: not valid JSON: {e}")
        if meta and not isinstance(meta, dict):
            problems.append(f"{json_path}: the top level must be an object")
            meta = {}
    modality = meta.get("modality") or {}
    try:
        order = sorted(modality, key=int)
    except (TypeError, ValueError):
        problems.append(f"{json_path}: 'modality' keys must be channel numbers, got {list(modality)}")
        order = []
    names = []
    for k in order:
        key = _key_name(modality[k])
        names.append(key if key not in names else f"{key}_{k}")
    if meta and not names:
        problems.append(f"{json_path}: no 'modality' entry (channel number -> name)")
    try:
        labels = {str(v): int(k) for k, v in (meta.get("labels") or {}).items()}
    except (TypeError, ValueError):
        problems.append(f"{json_path}: 'labels' keys must be class numbers")
        labels = {}
    if meta and not labels:
        problems.append(f"{json_path}: no 'labels' entry (class number -> name)")

    def resolve(rel: Any, where: str) -> str | None:
        if not isinstance(rel, str) or not rel.strip():
            problems.append(f"{where}: expected a file path, got {rel!r}")
            return None
        path = os.path.normpath(os.path.join(data_dir, rel))
        if not os.path.isfile(path):
            problems.append(f"{where}: file not found: {path}")
            return None
        return path

    def check_image(path: str, where: str) -> tuple[int, ...] | None:
        shape = read_shape(path, problems, where)
        if shape is None or not names:
            return None
        channels = shape[3] if len(shape) == 4 else 1
        if len(shape) not in (3, 4) or channels != len(names):
            problems.append(
                f"{where}: image {path} has shape {shape}; expected {len(names)} channel(s) "
                f"({', '.join(names)}) on the last axis"
            )
            return None
        return shape[:3]

    labeled: dict[str, dict] = {}
    unlabeled: dict[str, dict] = {}
    training = meta.get("training") or []
    if meta and not training:
        problems.append(f"{json_path}: empty 'training' list")
    for i, item in enumerate(training):
        where = f"dataset.json training #{i}"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object with 'image' and 'label'")
            continue
        image = resolve(item.get("image"), f"{where} 'image'")
        label = resolve(item.get("label"), f"{where} 'label'")
        run.inputs += [p for p in (image, label) if p]
        if image is None or label is None:
            continue
        case = case_id(image)
        where = f"case '{case}'"
        if case in labeled:
            problems.append(f"{where}: listed twice in {json_path}")
            continue
        spatial = check_image(image, where)
        label_shape = read_shape(label, problems, where)
        if spatial is not None and label_shape is not None and tuple(label_shape) != tuple(spatial):
            problems.append(f"{where}: label shape {label_shape} differs from the image's {spatial}")
        if check_labels and labels:
            check_label_codes(label, set(labels.values()), where, problems)
        labeled[case] = {"images": {"image": image}, "label": label}
    if include_test_images:
        for i, item in enumerate(meta.get("test") or []):
            rel = item.get("image") if isinstance(item, dict) else item
            image = resolve(rel, f"dataset.json test #{i}")
            if image is None:
                continue
            run.inputs.append(image)
            case = case_id(image)
            if case in labeled or case in unlabeled:
                problems.append(f"case '{case}': in both 'training' and 'test' of {json_path}")
                continue
            check_image(image, f"test case '{case}'")
            unlabeled[case] = {"images": {"image": image}}
    return run.assemble(
        str(meta.get("name", "MSD task")),
        "Medical Segmentation Decathlon task; one multi-channel image per case (channels last)",
        names,
        labeled,
        unlabeled,
        labels,
    )
