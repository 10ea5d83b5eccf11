"""Generic case folders: one folder per case, ``<case>_<modality>`` files, on one grid or on their own grids."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from . import base, case_files
from .base import Preparation, sub_command
from .case_files import NIFTI_EXTENSIONS

__all__ = ["folders"]

#: datalist keys that a modality cannot be named
_RESERVED_KEYS = ("case", "image", "label")


def _stems(names: Sequence[str], own_grids: bool, label_suffix: str) -> tuple[dict[str, str], dict[str, str]]:
    """File stems (with ``{case}``) of the images and labels: modality -> stem; labels: modality -> stem
    (own grids) or ``{"label": stem}`` (one shared label)."""
    images = {m: "{case}_" + m for m in names}
    if own_grids:
        labels = {m: "{case}_" + m + label_suffix for m in names}
    else:
        labels = {"label": "{case}" + label_suffix}
    return images, labels


@sub_command
def folders(
    run: Preparation,
    modalities: Sequence[str] | None = None,
    own_grids: bool = False,
    label_suffix: str = "_label",
    allow_missing_modalities: bool = False,
    allow_unlabeled: bool = False,
    class_names: Sequence[str] | None = None,
    check_labels: bool = True,
) -> str:
    """
    Case folders (any dataset): ``<data_dir>/<case>/<case>_<modality>.nii.gz`` (or ``.nii``), one
    folder per case, the folder name being the case id and the prefix of its files.

    ``modalities`` (required) names the sequences and the ``<modality>`` part of the file names, e.g.
    ``"['mr','trus']"``. Labels (codes kept, checked to be whole numbers in 0..255, or in
    0..len(class_names) with ``class_names``):

    - ``own_grids=True`` (sequences on their own grids, not registered: MR and ultrasound, CT and MRI):
      one label per sequence, ``<case>_<modality><label_suffix>.nii.gz``, on that sequence's grid; the
      case is written ``{"case": c, "mr": ..., "trus": ..., "label": {"mr": ..., "trus": ...}}``. A labeled
      case has a label for every sequence it has. Load it with ``own_grids`` (``configs/unpaired.yaml``).
    - ``own_grids=False`` (co-registered sequences): one label ``<case><label_suffix>.nii.gz`` on the
      grid shared by the case's sequences, written ``"label": path``.

    A case lacking a sequence file is a problem (naming the case and the file) unless
    ``allow_missing_modalities``: it is then written without that sequence's key (load it with
    ``allow_missing_modalities``, which ``own_grids`` implies). A case without any label is a problem
    unless ``allow_unlabeled``: it then joins ``unlabeled``. ``class_names`` (without the background)
    gives the datalist's ``labels``; otherwise they are named after the codes found (``class_<code>``).
    Returns the datalist path.
    """
    problems = run.problems
    names = base.as_list(modalities, "modalities", problems)
    if modalities is None:
        problems.append(
            "--modalities is required: the sequence names, the <modality> part of <case>_<modality>.nii.gz "
            "(e.g. --modalities \"['mr','trus']\")"
        )
    names = names or []
    reserved = [m for m in names if m in _RESERVED_KEYS]
    if reserved:
        problems.append(f"--modalities: {reserved} cannot be modality names (datalist keys {list(_RESERVED_KEYS)})")
    if any(os.sep in m or "/" in m for m in names):
        problems.append(f"--modalities: names cannot hold a path separator, got {names!r}")
    if not isinstance(label_suffix, str) or not label_suffix or "/" in label_suffix or os.sep in label_suffix:
        problems.append(f"--label_suffix must be a non-empty file name part such as _label, got {label_suffix!r}")
        label_suffix = "_label"
    classes = base.as_list(class_names, "class_names", problems)
    allowed = set(range(len(classes) + 1)) if classes else set(range(256))

    image_stems, label_stems = _stems(names, own_grids, label_suffix)
    clashes = sorted(set(image_stems.values()) & set(label_stems.values()))
    if clashes:
        shown = [s.format(case="<case>") for s in clashes]
        problems.append(
            f"--label_suffix {label_suffix!r}: the label files {shown} would also be image files of --modalities; "
            "choose another suffix"
        )

    cases: list[str] = []
    if run.found_data_dir():
        cases = case_files.case_folders(run.data_dir)
        if not cases:
            problems.append(f"no case folder in {run.data_dir} (expected <case>/<case>_<modality>.nii.gz)")

    labeled: dict[str, dict] = {}
    unlabeled: dict[str, dict] = {}
    codes: set[int] = set()
    incomplete: list[str] = []
    unused: list[str] = []
    missing_hint = " (--allow_missing_modalities true writes the case without it)"
    unlabeled_hint = " (--allow_unlabeled true puts such cases in 'unlabeled')"
    for case in cases if names and not clashes else []:
        folder = os.path.join(run.data_dir, case)
        files = case_files.listing(folder)
        where = f"case '{case}'"
        before = len(problems)
        images: dict[str, str] = {}
        for m in names:
            path = case_files.find_file(folder, [image_stems[m].format(case=case)], files)
            if path is not None:
                images[m] = path
            elif not allow_missing_modalities:
                expected = case_files.expected_names([image_stems[m].format(case=case)])
                problems.append(f"{where}: missing {expected} ({m}) in {folder}{missing_hint}")
        if not images:
            problems.append(
                f"{where}: no image file in {folder} (expected "
                + ", ".join(f"{image_stems[m].format(case=case)}.nii.gz" for m in names)
                + ")"
            )
        found_labels = {
            k: path for k, stem in label_stems.items() if (path := case_files.find_file(folder, [stem.format(case=case)], files))
        }
        used = set(images.values()) | set(found_labels.values())
        unused += sorted(
            os.path.join(case, n) for n in files if n.endswith(NIFTI_EXTENSIONS) and os.path.join(folder, n) not in used
        )

        label: str | dict[str, str] | None
        if own_grids:
            for m in sorted(set(found_labels) - set(images)):
                if allow_missing_modalities:
                    problems.append(
                        f"{where}: label {found_labels[m]} has no image {image_stems[m].format(case=case)}.nii.gz in {folder}"
                    )
            label = {m: found_labels[m] for m in images if m in found_labels} or None
            if label is not None:
                for m in images:
                    if m not in label:
                        stem = label_stems[m].format(case=case)
                        problems.append(
                            f"{where}: missing label {case_files.expected_names([stem])} ({m}) in {folder} (own grids: a labeled "
                            "case has a label for every sequence it has)"
                        )
            elif images and not allow_unlabeled:
                expected = ", ".join(f"{label_stems[m].format(case=case)}.nii.gz" for m in images)
                problems.append(f"{where}: missing labels {expected} in {folder}{unlabeled_hint}")
        else:
            label = found_labels.get("label")
            if label is None and images and not allow_unlabeled:
                per_modality = [m for m in names if case_files.find_file(folder, [f"{case}_{m}{label_suffix}"], files)]
                hint = (
                    f"; found per-modality labels of {per_modality}: sequences with their own labels are --own_grids true"
                    if per_modality
                    else unlabeled_hint
                )
                problems.append(
                    f"{where}: missing label {case_files.expected_names([label_stems['label'].format(case=case)])} in {folder}{hint}"
                )
        run.inputs += list(images.values()) + list(found_labels.values())
        if len(problems) > before:
            continue

        # grids: each label on its image's grid (own grids), or the images and label on one grid
        if own_grids and isinstance(label, dict):
            for m, path in label.items():
                case_files.check_same_grid({m: images[m], f"label of {m}": path}, where, problems)
        elif not own_grids:
            case_files.check_same_grid({**images, **({"label": label} if label else {})}, where, problems)
        if check_labels and label is not None:
            for path in label.values() if isinstance(label, dict) else [label]:
                codes |= case_files.check_label_codes(path, allowed, where, problems)
        if len(images) < len(names):
            incomplete.append(case)
        if label is None:
            unlabeled[case] = {"images": images}
        else:
            labeled[case] = {"images": images, "label": label}

    if classes:
        labels: dict[str, int] | None = {"background": 0, **{n: i + 1 for i, n in enumerate(classes)}}
    elif check_labels:
        labels = {"background": 0, **{f"class_{c}": c for c in sorted(codes) if c}}
        values = sorted(codes | {0})
        if codes and values != list(range(len(values))):
            run.notes.append(
                f"label codes {values} are not contiguous; the bundle expects 0..num_classes-1 (remap the labels)"
            )
    else:
        labels = None
    if unused:
        more = " ..." if len(unused) > 6 else ""
        run.notes.append(
            f"{len(unused)} NIfTI file(s) are neither a sequence nor a label, not used: {unused[:6]}{more}"
        )
    if incomplete:
        more = " ..." if len(incomplete) > 6 else ""
        run.notes.append(f"{len(incomplete)} case(s) lack a sequence: {incomplete[:6]}{more}")
    if own_grids:
        run.notes.append("sequences on their own grids: train with bundle/configs/unpaired.yaml (own_grids: true)")
    elif incomplete:
        run.notes.append("cases lack sequences: train with --allow_missing_modalities true")

    layout: dict[str, Any] = {
        "images": "<case>/<case>_<modality>.nii.gz",
        "labels": (
            f"<case>/<case>_<modality>{label_suffix}.nii.gz" if own_grids else f"<case>/<case>{label_suffix}.nii.gz"
        ),
    }
    description = (
        "Sequences on their own grids (not registered), one label per sequence on its own grid"
        if own_grids
        else "Co-registered sequences, one label per case on the sequences' grid"
    )
    return run.assemble(
        f"case folders {os.path.basename(run.data_dir.rstrip(os.sep))}".rstrip(),
        description,
        names,
        labeled,
        unlabeled,
        labels,
        None,
        None,
        own_grids=bool(own_grids),
        allow_missing_modalities=bool(allow_missing_modalities),
        layout=layout,
    )
