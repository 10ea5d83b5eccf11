"""
The case files of a dataset in its own folders: finding them (one folder per case, ``<stem>.nii[.gz]``
files), naming what is missing, and checking that a case's files share a grid and that a label holds
only the codes it may. The sub-commands of ``scripts/prepare_datalist.py`` read their layouts with these.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = [
    "NIFTI_EXTENSIONS",
    "case_folders",
    "case_id",
    "check_label_codes",
    "check_same_grid",
    "expected_names",
    "find_file",
    "label_codes",
    "listing",
    "read_shape",
]

NIFTI_EXTENSIONS = (".nii.gz", ".nii")


def listing(folder: str) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def find_file(folder: str, stems: Sequence[str], names: set[str]) -> str | None:
    """First ``<stem>.nii.gz`` or ``<stem>.nii`` among ``names`` (the listing of ``folder``), else None."""
    for stem in stems:
        for ext in NIFTI_EXTENSIONS:
            if stem + ext in names:
                return os.path.join(folder, stem + ext)
    return None


def expected_names(stems: Sequence[str]) -> str:
    return " or ".join(f"{s}.nii.gz" for s in stems)


def case_folders(folder: str) -> list[str]:
    return sorted(n for n in listing(folder) if not n.startswith(".") and os.path.isdir(os.path.join(folder, n)))


def case_id(path: str) -> str:
    """The file name of ``path`` without its NIfTI extension."""
    name = os.path.basename(path)
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def read_shape(path: str, problems: list[str], where: str) -> tuple[int, ...] | None:
    import nibabel as nib

    try:
        return tuple(int(s) for s in nib.load(path).shape)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one reported problem
        problems.append(f"{where}: cannot read {path}: {e}")
        return None


def check_same_grid(paths: dict[str, str], where: str, problems: list[str]) -> None:
    """Report files of one case whose array shapes differ (co-registered data share one grid)."""
    shapes = {key: read_shape(p, problems, where) for key, p in paths.items()}
    shapes = {k: s for k, s in shapes.items() if s is not None}
    if len(set(shapes.values())) > 1:
        shape_list = ", ".join(f"{k} {s}" for k, s in shapes.items())
        problems.append(f"{where}: images and label are not on one grid (shapes {shape_list})")


def label_codes(path: str, where: str, problems: list[str]):
    """(image, integer array) of a label file, or None with a problem appended."""
    import nibabel as nib

    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # noqa: BLE001
        problems.append(f"{where}: cannot read label {path}: {e}")
        return None
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
            problems.append(f"{where}: label {path} has non-integer values")
            return None
        data = np.round(data)
    return img, data.astype(np.int64)


def check_label_codes(path: str, allowed: set[int], where: str, problems: list[str]) -> set[int]:
    loaded = label_codes(path, where, problems)
    if loaded is None:
        return set()
    codes = {int(c) for c in np.unique(loaded[1])}
    unknown = sorted(codes - allowed)
    if unknown:
        problems.append(f"{where}: label {path} has unknown codes {unknown} (expected {sorted(allowed)})")
    return codes
