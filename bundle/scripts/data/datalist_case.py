# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
One case of a datalist: its normal form (:func:`normalise_case`), its id and the order of its image list.

:func:`scripts.data.datalist.load_datalist` normalises every case of a datalist with these, and the
inference data (``--image``, a datalist's split) with the same rules.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

__all__ = ["MissingFileProblem", "case_id_from_files", "derive_case_id", "list_order", "normalise_case"]

# splits whose cases must have a label; labels found in "unlabeled" are dropped
_LABELED_SPLITS = ("training", "validation")
_IMAGE_EXTENSIONS = re.compile(
    r"(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd|\.npy|\.npz|\.png|\.jpg|\.tif|\.tiff|\.dcm)$", re.IGNORECASE
)


class MissingFileProblem(str):
    """A problem text that reports a missing file (see ``defer_missing_files``)."""


def _resolve_path(
    value: Any, base_dir: str, check_files: bool, where: str, key: str, problems: list[str]
) -> str | None:
    """Absolute path of ``value`` (relative to ``base_dir``), or None with a problem added."""
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: key {str(key)!r}: expected a file path, got {value!r}")
        return None
    path = os.path.expanduser(value)
    if not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    path = os.path.normpath(path)
    if check_files and not os.path.exists(path):
        problems.append(MissingFileProblem(f"{where}: key {str(key)!r}: file not found: {path}"))
    return path


def list_order(modalities: list[str], content: dict[str, Any]) -> tuple[list[str], list[int] | None] | None:
    """How ``"image": [...]`` lists, written in the datalist's own ``modalities`` order, map onto
    ``modalities``: None when the orders agree (or the datalist names none), else ``(datalist order,
    index of each of ``modalities`` in it, or None when some is missing from it)``."""
    own = content.get("modalities")
    if not isinstance(own, list) or not own or not all(isinstance(m, str) for m in own) or own == modalities:
        return None
    if len(set(own)) != len(own) or not set(modalities) <= set(own):
        return own, None
    return own, [own.index(m) for m in modalities]


def derive_case_id(first_path: Any, first_modality: str, per_modality: bool) -> str | None:
    """Case id from a file name: extension removed, and a trailing ``_<modality>`` when per modality."""
    if not isinstance(first_path, str) or not first_path.strip():
        return None
    stem = _IMAGE_EXTENSIONS.sub("", os.path.basename(os.path.normpath(first_path)))
    suffix = f"_{first_modality}"
    if per_modality and stem.lower().endswith(suffix.lower()) and len(stem) > len(suffix):
        stem = stem[: -len(suffix)]
    return stem or None


def case_id_from_files(raw: dict[str, Any], modalities: list[str]) -> str | None:
    """The id of a case without a ``case`` key, derived from its first image file: the first path of
    ``"image"`` (a list is one path per modality, so its ``_<modality>`` suffix goes), or else the file of
    the first modality the case names. ``None`` if there is no such file."""
    image = raw.get("image")
    if image is not None:
        if not modalities:
            return None
        first = image[0] if isinstance(image, list) and image else image
        return derive_case_id(first, modalities[0], per_modality=isinstance(image, list))
    present = [m for m in modalities if raw.get(m) is not None]
    return derive_case_id(raw[present[0]], present[0], per_modality=True) if present else None


def normalise_case(
    raw: Any,
    split: str,
    position: int,
    modalities: list[str],
    base_dir: str,
    check_files: bool,
    problems: list[str],
    list_order: tuple[list[str], list[int] | None] | None = None,
    allow_missing_modalities: bool = False,
    own_grids: bool = False,
) -> dict[str, Any]:
    """Normalise one case (see :func:`load_datalist`), appending its problems to ``problems``.
    ``list_order``: see :func:`list_order` (lists of paths follow the datalist's own modalities).
    ``allow_missing_modalities``: a modality key that is absent or null (or a null entry of an
    ``"image"`` list) gives a ``None`` path for that modality instead of a problem."""
    if not isinstance(raw, dict):
        problems.append(f"{split} case #{position}: expected a JSON object, got {type(raw).__name__}")
        return {"case": f"#{position}"}
    image = raw.get("image")
    present = [m for m in modalities if m in raw and raw[m] is not None]
    named = [m for m in modalities if m in raw]

    # case id first, so that every message can name it
    case_id = raw.get("case")
    if case_id is not None and (not isinstance(case_id, str) or not case_id.strip()):
        problems.append(f"{split} case #{position}: key 'case': expected a non-empty string, got {case_id!r}")
        case_id = None
    if case_id is None:
        case_id = case_id_from_files(raw, modalities)
    where = f"{split} case {str(case_id)!r}" if case_id else f"{split} case #{position}"
    case: dict[str, Any] = {"case": case_id if case_id else f"#{position}"}

    expected = f"one per modality: {', '.join(modalities)}"
    order_note = ""
    if list_order is not None:
        own, index = list_order
        order_note = (
            f"the datalist's modalities are {own}, --modalities gives {modalities}; a list of paths follows the "
            "datalist's order"
        )

    def reorder(paths: list, key: str) -> list | None:
        """``paths`` (in the datalist's order) in the order of ``modalities``; None (problem added) if impossible."""
        if list_order is None:
            return paths
        own, index = list_order
        if index is None:
            problems.append(f"{where}: key {str(key)!r}: cannot match its paths to --modalities ({order_note})")
            return None
        if len(paths) != len(own):
            problems.append(
                f"{where}: key {str(key)!r}: expected {len(own)} paths (one per modality: {', '.join(own)}), got {len(paths)}"
            )
            return None
        return [paths[i] for i in index]

    missing_hint = (
        "" if allow_missing_modalities else "; a case may lack sequences with --allow_missing_modalities true"
    )

    def resolve_image(p: Any, key: str) -> str | None:
        """One modality's path, or None for a missing one (when allowed)."""
        if p is None and allow_missing_modalities:
            return None
        if p is None:
            problems.append(f"{where}: key {key!r}: null ({expected}{missing_hint})")
            return None
        return _resolve_path(p, base_dir, check_files, where, key, problems)

    if image is not None:
        if named:
            problems.append(f"{where}: key 'image': given together with per-modality keys {named}; use one form only")
        if isinstance(image, str):
            case["image"] = _resolve_path(image, base_dir, check_files, where, "image", problems)
            if list_order is not None:
                problems.append(
                    f"{where}: key 'image': a multi-channel file holds the modalities in the datalist's order, which "
                    f"differs from --modalities ({order_note}); pass --modalities in the datalist's order: "
                    f"{case['image']}"
                )
        elif isinstance(image, list) and list_order is not None:
            ordered = reorder(image, "image")
            if ordered is not None:
                case["image"] = [
                    resolve_image(p, f"image[{list_order[0].index(m)}]")
                    for p, m in zip(ordered, modalities, strict=False)
                ]
        elif isinstance(image, list):
            if len(image) != len(modalities):
                problems.append(
                    f"{where}: key 'image': expected {len(modalities)} paths ({expected}), got {len(image)}"
                )
            case["image"] = [resolve_image(p, f"image[{i}]") for i, p in enumerate(image)]
        else:
            problems.append(f"{where}: key 'image': expected a path or a list of paths, got {type(image).__name__}")
    elif present:
        if allow_missing_modalities:
            case["image"] = [resolve_image(raw.get(m), m) for m in modalities]
        else:
            for m in modalities:
                if raw.get(m) is None:
                    state = "null" if m in raw else "missing"
                    problems.append(f"{where}: key {str(m)!r}: {state} ({expected}{missing_hint})")
            case["image"] = [
                _resolve_path(raw[m], base_dir, check_files, where, m, problems) for m in modalities if m in present
            ]
    else:
        problems.append(f"{where}: key 'image': no images (give 'image' or one key per modality: {expected})")
    if isinstance(case.get("image"), list) and case["image"] and all(p is None for p in case["image"]):
        problems.append(f"{where}: key 'image': every modality is missing; a case needs at least one ({expected})")

    label = raw.get("label")
    if split == "unlabeled":
        label = None
    given = [m for m, p in zip(modalities, case.get("image") or [], strict=False) if p is not None]
    if label is None:
        if split in _LABELED_SPLITS:
            problems.append(f"{where}: key 'label': missing (every {split} case needs a label)")
    elif own_grids and isinstance(label, dict) and isinstance(case.get("image"), list):
        # one label per sequence given, on that sequence's own grid; none for a sequence the case lacks
        for m in given:
            if label.get(m) is None:
                problems.append(
                    f"{where}: key 'label': no label for modality {str(m)!r} (own grids: one label per sequence given)"
                )
        extra = sorted(str(m) for m in label if m in modalities and m not in given and label[m] is not None)
        if extra:
            problems.append(f"{where}: key 'label': labels for modalities without an image: {extra}")
        unknown = sorted(str(m) for m in set(label) - set(modalities))
        if unknown:
            problems.append(f"{where}: key 'label': unknown modalities {unknown} (expected {', '.join(modalities)})")
        case["label"] = [
            (
                _resolve_path(label[m], base_dir, check_files, where, f"label[{m}]", problems)
                if m in given and label.get(m)
                else None
            )
            for m in modalities
        ]
    elif own_grids:
        problems.append(
            f"{where}: key 'label': modalities on their own grids need one label per modality, "
            f"{{{json.dumps(str(modalities[0]))}: path, ...}} (one for each sequence the case has)"
        )
    elif isinstance(label, str):
        case["label"] = _resolve_path(label, base_dir, check_files, where, "label", problems)
    elif not isinstance(label, str) and isinstance(case.get("image"), list) and None in case["image"]:
        problems.append(
            f"{where}: key 'label': a case with missing modalities needs one label on the grid shared by its "
            "sequences (per-modality labels are not supported with missing sequences)"
        )
    elif isinstance(label, dict):
        for m in modalities:
            if m not in label:
                problems.append(
                    f"{where}: key 'label': no label for modality {str(m)!r} (a label dict needs {expected})"
                )
        unknown = sorted(set(label) - set(modalities))
        if unknown:
            problems.append(f"{where}: key 'label': unknown modalities {unknown} (expected {', '.join(modalities)})")
        case["label"] = [
            _resolve_path(label[m], base_dir, check_files, where, f"label[{m}]", problems)
            for m in modalities
            if m in label
        ]
    elif isinstance(label, list) and list_order is not None:
        ordered = reorder(label, "label")
        if ordered is not None:
            case["label"] = [
                _resolve_path(p, base_dir, check_files, where, f"label[{list_order[0].index(m)}]", problems)
                for p, m in zip(ordered, modalities, strict=False)
            ]
    elif isinstance(label, list):
        if len(label) != len(modalities):
            problems.append(f"{where}: key 'label': expected {len(modalities)} paths ({expected}), got {len(label)}")
        case["label"] = [
            _resolve_path(p, base_dir, check_files, where, f"label[{i}]", problems) for i, p in enumerate(label)
        ]
    else:
        problems.append(f"{where}: key 'label': expected a path or {{modality: path}}, got {type(label).__name__}")

    # modalities of the datalist that this run does not use are dropped
    consumed = {"case", "image", "label", *modalities, *(list_order[0] if list_order else ())}
    for key, value in raw.items():
        if key in consumed:
            continue
        paths = value if isinstance(value, list) else [value]
        if paths and all(isinstance(p, str) and _IMAGE_EXTENSIONS.search(p.strip()) for p in paths):
            shown = ", ".join(os.path.normpath(os.path.join(base_dir, os.path.expanduser(p))) for p in paths)
            problems.append(
                f"{where}: key {str(key)!r}: an image file under a key that is not a modality of this run "
                f"(modalities: {', '.join(modalities)}); add it to the modalities or remove the key: {shown}"
            )
        else:
            case[key] = value
    return case
