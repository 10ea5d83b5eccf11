#!/usr/bin/env python
"""Write a bundle datalist (see bundle/docs/README.md) for a public multimodal dataset on disk.

One sub-command per dataset family; every one validates what it reads, collects every problem
(case, expected file, folder) and fails with all of them at once before writing anything, splits
the labeled cases per case (never per slice) into training / validation / testing with a seed, and
never overwrites an existing datalist (or remapped label file) unless ``--overwrite`` is given.
Input files are never modified: images and labels are referenced in place, and labels that need new
codes are written to a separate folder (``--label_dir``).

    python scripts/prepare_datalist.py myops --data_dir /data/myops --output /data/myops/datalist.json \
        --num_validation 5 --num_testing 5 --labeled_fraction 0.2 --seed 0
    python scripts/prepare_datalist.py myops --data_dir /data/myops --keep_pathology true
    python scripts/prepare_datalist.py brats2013 --data_dir /data/brats2013
    python scripts/prepare_datalist.py brats2021 --data_dir /data/BraTS2021 --label_map "{4: 3}"
    python scripts/prepare_datalist.py msd --data_dir /data/Task01_BrainTumour
    python scripts/prepare_datalist.py amos --data_dir /data/amos22 --pairing cycle

Common options: ``--output`` (default ``<data_dir>/datalist.json``), ``--num_validation`` /
``--validation_fraction``, ``--num_testing`` / ``--testing_fraction`` (default: fraction 0.2 each),
``--labeled_fraction`` (fraction of the training cases that keep their label; the others join
``unlabeled`` without it), ``--seed``, ``--overwrite``, ``--absolute_paths`` (default: paths
relative to the datalist's folder). Details: bundle/docs/data_preparation.md.

This file is a stand-alone tool (the top-level ``scripts/`` folder is not a package).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.utils import str2bool

_BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundle")
if _BUNDLE not in sys.path:
    sys.path.insert(0, _BUNDLE)  # the bundle's components, importable as `scripts`
from scripts.engine.atomic_checkpoint import atomic_write_bytes  # noqa: E402

__all__ = [
    "PreparationError",
    "MYOPS_LABELS",
    "MYOPS_PATHOLOGY_LABELS",
    "split_cases",
    "select_labeled",
    "myops",
    "brats2013",
    "brats2021",
    "msd",
    "amos",
    "main",
]

_NIFTI = (".nii.gz", ".nii")

# ---------------------------------------------------------------------------------------------
# label conventions
# ---------------------------------------------------------------------------------------------

#: MyoPS 2020 sequences: datalist key -> file suffix.
MYOPS_SEQUENCES = {"c0": "C0", "lge": "LGE", "t2": "T2"}
#: MyoPS codes -> classes of the usual three-structure task (pathology merged into the myocardium).
MYOPS_LABELS = {
    "mapping": {200: 1, 1220: 1, 2221: 1, 500: 2, 600: 3},
    "names": {"background": 0, "lv_myocardium": 1, "lv_blood_pool": 2, "rv_blood_pool": 3},
}
#: MyoPS codes -> classes with edema and scar kept apart (``--keep_pathology``).
MYOPS_PATHOLOGY_LABELS = {
    "mapping": {200: 1, 500: 2, 600: 3, 1220: 4, 2221: 5},
    "names": {
        "background": 0,
        "normal_myocardium": 1,
        "lv_blood_pool": 2,
        "rv_blood_pool": 3,
        "edema": 4,
        "scar": 5,
    },
}
BRATS2013_LABELS = {
    "background": 0,
    "necrosis": 1,
    "edema": 2,
    "non_enhancing_tumour": 3,
    "enhancing_tumour": 4,
}
BRATS2021_LABELS = {"background": 0, "necrotic_tumour_core": 1, "peritumoral_edema": 2, "enhancing_tumour": 4}
BRATS2023_LABELS = {"background": 0, "necrotic_tumour_core": 1, "peritumoral_edema": 2, "enhancing_tumour": 3}
AMOS_LABELS = {
    "background": 0,
    "spleen": 1,
    "right_kidney": 2,
    "left_kidney": 3,
    "gallbladder": 4,
    "esophagus": 5,
    "liver": 6,
    "stomach": 7,
    "aorta": 8,
    "inferior_vena_cava": 9,
    "pancreas": 10,
    "right_adrenal_gland": 11,
    "left_adrenal_gland": 12,
    "duodenum": 13,
    "bladder": 14,
    "prostate_uterus": 15,
}


class PreparationError(ValueError):
    """The dataset cannot be prepared; the message lists every problem found, one per line."""

    def __init__(self, problems: Sequence[str], command: str) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        plural = "s" if count != 1 else ""
        header = f"{command}: cannot prepare the datalist ({count} problem{plural}); nothing written:"
        super().__init__("\n".join([header] + [f"  - {p}" for p in self.problems]))


# ---------------------------------------------------------------------------------------------
# splitting
# ---------------------------------------------------------------------------------------------


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _split_counts(
    n: int,
    num_validation: int | None,
    num_testing: int | None,
    validation_fraction: float | None,
    testing_fraction: float | None,
    problems: list[str],
    what: str = "labeled cases",
) -> tuple[int, int]:
    """Numbers of validation and testing cases out of ``n`` (problems appended when invalid)."""
    counts = []
    for name, count, fraction in (
        ("validation", num_validation, validation_fraction),
        ("testing", num_testing, testing_fraction),
    ):
        if count is not None and fraction is not None:
            problems.append(f"give --num_{name} or --{name}_fraction, not both")
            counts.append(0)
            continue
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                problems.append(f"--num_{name} must be a whole number >= 0, got {count!r}")
                counts.append(0)
                continue
            counts.append(count)
            continue
        fraction = 0.2 if fraction is None else fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
            problems.append(f"--{name}_fraction must be in [0, 1), got {fraction!r}")
            counts.append(0)
            continue
        counts.append(_round_half_up(fraction * n))
    n_val, n_test = counts
    # every case in `testing` (no validation) is an external test set: a datalist to evaluate on only
    external_test_set = n_val == 0 and n_test == n and not problems
    if n and n_val + n_test >= n and not external_test_set:
        problems.append(
            f"{n_val} validation + {n_test} testing cases leave no training case out of {n} {what}; "
            "lower --num_validation/--num_testing (or the fractions)"
        )
    return n_val, n_test


def split_cases(case_ids: Sequence[str], num_validation: int, num_testing: int, seed: int) -> dict[str, list[str]]:
    """
    Split case ids (whole cases) into ``training`` / ``validation`` / ``testing``.

    The sorted ids are permuted with ``numpy.random.default_rng(seed)``: the first ``num_testing``
    go to testing, the next ``num_validation`` to validation, the rest to training. The result
    depends only on the set of ids and the seed (not on their order), and for one seed the testing
    cases do not depend on ``num_validation``. Each returned list is sorted.
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate case ids")
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    testing = shuffled[:num_testing]
    validation = shuffled[num_testing : num_testing + num_validation]
    training = shuffled[num_testing + num_validation :]
    return {"training": sorted(training), "validation": sorted(validation), "testing": sorted(testing)}


def select_labeled(case_ids: Sequence[str], labeled_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """
    ``(kept, moved)``: ``max(1, round(fraction * n))`` cases keep their label (rounded half up).

    Same rule as the bundle's ``load_datalist(labeled_fraction=..., split_seed=seed)``: the sorted
    ids are permuted with ``numpy.random.default_rng(seed)`` and the first ones are kept, so for
    one seed a smaller fraction keeps a subset of what a larger one keeps.
    """
    ids = sorted(case_ids)
    if not ids:
        return [], []
    keep = min(len(ids), max(1, _round_half_up(float(labeled_fraction) * len(ids))))
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    kept = {ids[i] for i in order[:keep]}
    return sorted(kept), sorted(set(ids) - kept)


def _check_common(labeled_fraction: Any, seed: Any, problems: list[str]) -> None:
    if isinstance(labeled_fraction, bool) or not isinstance(labeled_fraction, (int, float)) or not (
        0.0 < labeled_fraction <= 1.0
    ):
        problems.append(f"--labeled_fraction must be in (0, 1], got {labeled_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(f"--seed must be a whole number, got {seed!r}")


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


def _listing(folder: str) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def _find(folder: str, stems: Sequence[str], listing: set[str]) -> str | None:
    """First ``<stem>.nii.gz`` or ``<stem>.nii`` of ``folder`` that exists, else None."""
    for stem in stems:
        for ext in _NIFTI:
            if stem + ext in listing:
                return os.path.join(folder, stem + ext)
    return None


def _expected(stems: Sequence[str]) -> str:
    return " or ".join(f"{s}.nii.gz" for s in stems)


def _case_folders(folder: str) -> list[str]:
    return sorted(n for n in _listing(folder) if not n.startswith(".") and os.path.isdir(os.path.join(folder, n)))


def _shape(path: str, problems: list[str], where: str) -> tuple[int, ...] | None:
    import nibabel as nib

    try:
        return tuple(int(s) for s in nib.load(path).shape)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one reported problem
        problems.append(f"{where}: cannot read {path}: {e}")
        return None


def _check_same_grid(paths: dict[str, str], where: str, problems: list[str]) -> None:
    """Report files of one case whose array shapes differ (co-registered data share one grid)."""
    shapes = {key: _shape(p, problems, where) for key, p in paths.items()}
    shapes = {k: s for k, s in shapes.items() if s is not None}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{k} {s}" for k, s in shapes.items())
        problems.append(f"{where}: images and label are not on one grid (shapes {listing})")


def _label_codes(path: str, where: str, problems: list[str]):
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


def _check_label_codes(path: str, allowed: set[int], where: str, problems: list[str]) -> set[int]:
    loaded = _label_codes(path, where, problems)
    if loaded is None:
        return set()
    codes = {int(c) for c in np.unique(loaded[1])}
    unknown = sorted(codes - allowed)
    if unknown:
        problems.append(f"{where}: label {path} has unknown codes {unknown} (expected {sorted(allowed)})")
    return codes


def _write_label(src: str, dst: str, mapping: dict[int, int]) -> None:
    """Write ``src`` with codes replaced by ``mapping`` (codes not in it kept) to ``dst``, as uint8 NIfTI.

    The affine and header of ``src`` are kept; the gzip stream carries no time stamp, so the same
    input gives the same bytes.
    """
    import nibabel as nib

    problems: list[str] = []
    loaded = _label_codes(src, src, problems)
    if loaded is None:
        raise PreparationError(problems, "write label")
    img, data = loaded
    out = data.copy()
    for code, value in mapping.items():
        out[data == code] = value
    if out.min() < 0 or out.max() > 255:
        raise PreparationError([f"{src}: remapped codes outside 0..255"], "write label")
    out = out.astype(np.uint8)
    if isinstance(img, nib.Nifti1Image):
        new = type(img)(out, img.affine, img.header)
    else:
        new = nib.Nifti1Image(out, img.affine)
    new.set_data_dtype(np.uint8)
    new.header.set_slope_inter(1.0, 0.0)
    raw = new.to_bytes()
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    atomic_write_bytes(gzip.compress(raw, compresslevel=6, mtime=0) if dst.endswith(".gz") else raw, dst)


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(os.path.abspath(path)))


def _check_outputs(
    output: str, label_targets: Sequence[str], inputs: Sequence[str], overwrite: bool, problems: list[str]
) -> None:
    """Refuse to overwrite an input file, or an existing output without ``--overwrite``."""
    input_set = {_real(p) for p in inputs}
    for target, what in [(output, "datalist")] + [(t, "label") for t in label_targets]:
        if _real(target) in input_set:
            problems.append(f"output {what} {target} is one of the input files; choose another --output/--label_dir")
        elif os.path.isdir(target):
            problems.append(f"output {what} {target} is a folder")
        elif os.path.exists(target) and not overwrite:
            problems.append(f"output {what} {target} already exists; pass --overwrite to replace it")


def _rel(path: str, base: str, absolute: bool) -> str:
    path = os.path.abspath(path)
    if absolute:
        return path
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive (Windows)
        return path


def _output_path(data_dir: str, output: str | None) -> str:
    return os.path.abspath(os.path.expanduser(output if output else os.path.join(data_dir, "datalist.json")))


def _write_datalist(output: str, content: dict) -> None:
    os.makedirs(os.path.dirname(output), exist_ok=True)
    atomic_write_bytes((json.dumps(content, indent=2) + "\n").encode("utf-8"), output)


def _summary(command: str, output: str, content: dict, notes: Sequence[str]) -> None:
    counts = ", ".join(f"{s} {len(content.get(s, []))}" for s in ("training", "unlabeled", "validation", "testing"))
    print(f"{command}: wrote {output} ({counts}; modalities {content['modalities']})")
    for note in notes:
        print(f"{command}: note: {note}")


def _to_bool(value: Any, name: str, command: str) -> bool:
    """A flag given as a bool, or on the command line as true/false/yes/no/1/0 (fire keeps those as
    text), parsed by MONAI's ``str2bool``."""
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    try:
        return str2bool(value if isinstance(value, bool) else str(value).strip())
    except ValueError:
        raise PreparationError([f"--{name} must be true or false, got {value!r}"], command) from None


def _as_list(value: Any, name: str, problems: list[str]) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        problems.append(f"--{name} must be a non-empty list of names, got {value!r}")
        return None
    if len(set(value)) != len(value):
        problems.append(f"--{name} has duplicates: {list(value)!r}")
    return list(value)


def _as_label_map(value: Any, problems: list[str]) -> dict[int, int]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            problems.append(f"--label_map must be a mapping such as \"{{4: 3}}\", got {value!r}")
            return {}
    if not isinstance(value, dict):
        problems.append(f"--label_map must be a mapping such as \"{{4: 3}}\", got {value!r}")
        return {}
    try:
        mapping = {int(k): int(v) for k, v in value.items()}
    except (TypeError, ValueError):
        problems.append(f"--label_map keys and values must be whole numbers, got {value!r}")
        return {}
    if any(not 0 <= v <= 255 for v in mapping.values()):
        problems.append(f"--label_map values must be in 0..255, got {value!r}")
    return mapping


# ---------------------------------------------------------------------------------------------
# shared assembly for datasets with one label on the grid shared by all modalities
# ---------------------------------------------------------------------------------------------


def _assemble(
    command: str,
    data_dir: str,
    output: str,
    modalities: list[str],
    labeled: dict[str, dict],
    unlabeled: dict[str, dict],
    labels: dict[str, int],
    label_mapping: dict[int, int] | None,
    label_dir: str | None,
    extra: dict,
    problems: list[str],
    notes: list[str],
    num_validation,
    num_testing,
    validation_fraction,
    testing_fraction,
    labeled_fraction,
    seed,
    overwrite: bool,
    absolute_paths: bool,
    inputs: list[str],
) -> str:
    """
    Split, check the outputs, write the remapped labels (when ``label_mapping``) and the datalist.

    ``labeled`` / ``unlabeled``: case id -> {"images": {modality or "image": path}, "label": path}.
    """
    n_val, n_test = _split_counts(
        len(labeled), num_validation, num_testing, validation_fraction, testing_fraction, problems
    )
    if not labeled:
        problems.append(f"no labeled case found in {data_dir}")
    base = os.path.dirname(output)
    label_dir = os.path.abspath(os.path.expanduser(label_dir)) if label_dir else os.path.join(base, "labels")
    splits: dict[str, list[str]] = {"training": [], "validation": [], "testing": []}
    moved: list[str] = []
    if labeled and not problems:
        splits = split_cases(list(labeled), n_val, n_test, seed)
        splits["training"], moved = select_labeled(splits["training"], labeled_fraction, seed)
    # labels referenced by the datalist: remapped copies, or the input files in place
    label_of: dict[str, str] = {}
    for split in ("training", "validation", "testing"):
        for case in splits[split]:
            src = labeled[case]["label"]
            label_of[case] = os.path.join(label_dir, f"{case}_label.nii.gz") if label_mapping else src
    targets = [label_of[c] for c in label_of] if label_mapping else []
    _check_outputs(output, targets, inputs, overwrite, problems)
    if problems:
        raise PreparationError(problems, command)

    for case, dst in label_of.items():
        if label_mapping:
            _write_label(labeled[case]["label"], dst, label_mapping)

    def entry(case: str, images: dict[str, str], label: str | None) -> dict:
        item = {"case": case}
        item.update({k: _rel(p, base, absolute_paths) for k, p in images.items()})
        if label:
            item["label"] = _rel(label, base, absolute_paths)
        return item

    content: dict[str, Any] = dict(extra)
    content["modalities"] = modalities
    content["labels"] = labels
    content["preparation"] = {
        "tool": f"scripts/prepare_datalist.py {command}",
        "seed": seed,
        "labeled_fraction": labeled_fraction,
        "num_validation": n_val,
        "num_testing": n_test,
        "label_codes": (
            {str(k): v for k, v in sorted(label_mapping.items())} if label_mapping else "kept as in the input files"
        ),
    }
    content["training"] = [entry(c, labeled[c]["images"], label_of[c]) for c in splits["training"]]
    content["unlabeled"] = [entry(c, labeled[c]["images"], None) for c in moved] + [
        entry(c, unlabeled[c]["images"], None) for c in sorted(unlabeled)
    ]
    content["validation"] = [entry(c, labeled[c]["images"], label_of[c]) for c in splits["validation"]]
    content["testing"] = [entry(c, labeled[c]["images"], label_of[c]) for c in splits["testing"]]
    _write_datalist(output, content)
    _summary(command, output, content, notes)
    return output


# ---------------------------------------------------------------------------------------------
# MyoPS 2020
# ---------------------------------------------------------------------------------------------


def myops(
    data_dir: str,
    output: str | None = None,
    label_dir: str | None = None,
    keep_pathology: bool = False,
    modalities: Sequence[str] = ("c0", "lge", "t2"),
    labeled_subdir: str = "labeled",
    unlabeled_subdir: str = "unlabeled",
    num_validation: int | None = None,
    num_testing: int | None = None,
    validation_fraction: float | None = None,
    testing_fraction: float | None = None,
    labeled_fraction: float = 1.0,
    seed: int = 0,
    overwrite: bool = False,
    absolute_paths: bool = False,
) -> str:
    """
    MyoPS 2020 (three-sequence cardiac MRI): ``<data_dir>/labeled/<case>/<case>_{C0,LGE,T2,gd}.nii.gz``
    and ``<data_dir>/unlabeled/<case>/<case>_{C0,LGE,T2}.nii.gz`` (the unlabeled folder is optional).

    Datalist modality keys: ``c0`` (bSSFP cine), ``lge``, ``t2``. The ``gd`` codes are remapped and
    written to ``<label_dir>/<case>_label.nii.gz`` (default ``label_dir``: ``labels/`` beside the
    datalist): by default 1 LV myocardium (200, 1220, 2221), 2 LV blood pool (500), 3 RV blood pool
    (600); with ``keep_pathology`` 1 normal myocardium (200), 2 LV, 3 RV, 4 edema (1220), 5 scar
    (2221). Any other code is reported. Returns the datalist path.
    """
    keep_pathology = _to_bool(keep_pathology, "keep_pathology", "myops")
    overwrite = _to_bool(overwrite, "overwrite", "myops")
    absolute_paths = _to_bool(absolute_paths, "absolute_paths", "myops")
    command = "myops"
    problems: list[str] = []
    notes: list[str] = []
    _check_common(labeled_fraction, seed, problems)
    names = _as_list(modalities, "modalities", problems) or []
    unknown = [m for m in names if m not in MYOPS_SEQUENCES]
    if unknown:
        problems.append(f"--modalities: unknown MyoPS sequences {unknown} (known: {list(MYOPS_SEQUENCES)})")
        names = [m for m in names if m in MYOPS_SEQUENCES]
    data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
    output = _output_path(data_dir, output)
    conv = MYOPS_PATHOLOGY_LABELS if keep_pathology else MYOPS_LABELS
    mapping = dict(conv["mapping"])
    allowed = {0, *mapping}

    labeled: dict[str, dict] = {}
    unlabeled: dict[str, dict] = {}
    inputs: list[str] = []
    labeled_root = os.path.join(data_dir, labeled_subdir)
    unlabeled_root = os.path.join(data_dir, unlabeled_subdir)
    if not os.path.isdir(data_dir):
        problems.append(f"data folder not found: {data_dir}")
    elif not os.path.isdir(labeled_root):
        problems.append(f"folder of labeled cases not found: {labeled_root} (expected <case>/<case>_C0.nii.gz, ...)")
    elif not _case_folders(labeled_root):
        problems.append(f"no case folder in {labeled_root}")
    if os.path.isdir(data_dir) and not os.path.isdir(unlabeled_root):
        notes.append(f"no folder {unlabeled_root}: no unlabeled cases")

    for root, is_labeled in ((labeled_root, True), (unlabeled_root, False)):
        kind = "labeled" if is_labeled else "unlabeled"
        for case in _case_folders(root):
            folder = os.path.join(root, case)
            listing = _listing(folder)
            where = f"{kind} case '{case}'"
            images: dict[str, str] = {}
            for m in names:
                stem = f"{case}_{MYOPS_SEQUENCES[m]}"
                path = _find(folder, [stem], listing)
                if path is None:
                    problems.append(f"{where}: missing {_expected([stem])} ({m}) in {folder}")
                else:
                    images[m] = path
            label = _find(folder, [f"{case}_gd"], listing)
            if is_labeled and label is None:
                problems.append(f"{where}: missing label {_expected([f'{case}_gd'])} in {folder}")
            if not is_labeled and label is not None:
                notes.append(f"{where}: label {label} ignored (case is in {unlabeled_subdir}/)")
            if not is_labeled and case in labeled:
                problems.append(f"{where}: also in {labeled_subdir}/ (one case in two folders)")
                continue
            inputs += list(images.values()) + ([label] if label else [])
            if len(images) != len(names) or (is_labeled and label is None):
                continue
            _check_same_grid({**images, **({"label": label} if is_labeled else {})}, where, problems)
            if is_labeled:
                _check_label_codes(label, allowed, where, problems)
                labeled[case] = {"images": images, "label": label}
            else:
                unlabeled[case] = {"images": images}

    extra = {
        "name": "MyoPS 2020",
        "description": "Multi-sequence cardiac MRI (C0 = bSSFP cine, LGE, T2); labels remapped from the MyoPS codes",
        "data_dir": data_dir,
    }
    return _assemble(
        command, data_dir, output, names, labeled, unlabeled, dict(conv["names"]), mapping, label_dir, extra,
        problems, notes, num_validation, num_testing, validation_fraction, testing_fraction, labeled_fraction,
        seed, overwrite, absolute_paths, inputs,
    )


# ---------------------------------------------------------------------------------------------
# BraTS (one folder per case)
# ---------------------------------------------------------------------------------------------


def _folder_dataset(
    command: str,
    data_dir: str,
    output: str | None,
    stems: dict[str, list[str]],
    label_stems: list[str],
    required: list[str],
    modalities: Any,
    allowed_codes: set[int] | None,
    labels: dict[str, int] | None,
    label_map: Any,
    label_dir: str | None,
    allow_unlabeled: bool,
    check_labels: bool,
    extra: dict,
    split_args: dict,
) -> str:
    """One folder per case; ``stems`` may use ``{case}`` (the folder name)."""
    problems: list[str] = []
    notes: list[str] = []
    _check_common(split_args["labeled_fraction"], split_args["seed"], problems)
    mapping = _as_label_map(label_map, problems)
    explicit = _as_list(modalities, "modalities", problems)
    if explicit is not None:
        unknown = [m for m in explicit if m not in stems]
        if unknown:
            problems.append(f"--modalities: unknown {unknown} (known: {list(stems)})")
        explicit = [m for m in explicit if m in stems]
    data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
    output = _output_path(data_dir, output)
    cases = _case_folders(data_dir) if os.path.isdir(data_dir) else []
    if not os.path.isdir(data_dir):
        problems.append(f"data folder not found: {data_dir}")
    elif not cases:
        problems.append(f"no case folder in {data_dir}")

    found: dict[str, dict[str, str]] = {}
    found_labels: dict[str, str | None] = {}
    for case in cases:
        folder = os.path.join(data_dir, case)
        listing = _listing(folder)
        found[case] = {}
        for m, options in stems.items():
            path = _find(folder, [s.format(case=case) for s in options], listing)
            if path:
                found[case][m] = path
        found_labels[case] = _find(folder, [s.format(case=case) for s in label_stems], listing)

    if explicit is not None:
        names = explicit
    else:  # required ones, plus the optional ones that every case has
        optional = [m for m in stems if m not in required]
        names = list(required) + [m for m in optional if cases and all(m in found[c] for c in cases)]
        partial = [m for m in optional if m not in names and any(m in found[c] for c in cases)]
        if partial:
            notes.append(
                f"modalities {partial} left out: present in some cases only (pass --modalities to require them)"
            )

    labeled: dict[str, dict] = {}
    unlabeled: dict[str, dict] = {}
    inputs: list[str] = []
    for case in cases:
        folder = os.path.join(data_dir, case)
        where = f"case '{case}'"
        images = {}
        for m in names:
            if m in found[case]:
                images[m] = found[case][m]
            else:
                expected = _expected([s.format(case=case) for s in stems[m]])
                problems.append(f"{where}: missing {expected} ({m}) in {folder}")
        label = found_labels[case]
        inputs += list(images.values()) + ([label] if label else [])
        if label is None and not allow_unlabeled:
            expected = _expected([s.format(case=case) for s in label_stems])
            problems.append(
                f"{where}: missing label {expected} in {folder} (--allow_unlabeled puts such cases in 'unlabeled')"
            )
        if len(images) != len(names) or (label is None and not allow_unlabeled):
            continue
        _check_same_grid({**images, **({"label": label} if label else {})}, where, problems)
        if label is None:
            unlabeled[case] = {"images": images}
            continue
        if check_labels and allowed_codes is not None:
            _check_label_codes(label, allowed_codes | set(mapping), where, problems)
        labeled[case] = {"images": images, "label": label}

    labels = dict(labels or {})
    if mapping:
        remapped: dict[str, int] = {}
        for name, code in labels.items():
            remapped[name] = mapping.get(code, code)
        labels = remapped
    values = sorted(set(labels.values()))
    if values and values != list(range(len(values))):
        notes.append(
            f"label codes {values} are not contiguous; the bundle expects 0..num_classes-1, "
            "remap them with --label_map (e.g. \"{4: 3}\")"
        )
    return _assemble(
        command, data_dir, output, names, labeled, unlabeled, labels, mapping or None, label_dir, extra, problems,
        notes, inputs=inputs, **split_args,
    )


def _split_args(num_validation, num_testing, validation_fraction, testing_fraction, labeled_fraction, seed,
                overwrite, absolute_paths) -> dict:
    return dict(
        num_validation=num_validation, num_testing=num_testing, validation_fraction=validation_fraction,
        testing_fraction=testing_fraction, labeled_fraction=labeled_fraction, seed=seed, overwrite=overwrite,
        absolute_paths=absolute_paths,
    )


def brats2013(
    data_dir: str,
    output: str | None = None,
    modalities: Sequence[str] | None = None,
    label_map: dict | None = None,
    label_dir: str | None = None,
    allow_unlabeled: bool = False,
    check_labels: bool = True,
    num_validation: int | None = None,
    num_testing: int | None = None,
    validation_fraction: float | None = None,
    testing_fraction: float | None = None,
    labeled_fraction: float = 1.0,
    seed: int = 0,
    overwrite: bool = False,
    absolute_paths: bool = False,
) -> str:
    """
    BRATS 2013/2015 (pre-processed naming): ``<data_dir>/<case>/{Flair,T1c,T1,T2}[_subtrMeanDivStd].nii.gz``
    and the label ``OTMultiClass.nii.gz`` (or ``OT.nii.gz``).

    Modality keys ``flair``, ``t1c`` (required), ``t1``, ``t2`` (used when every case has them,
    or when named in ``--modalities``). Label codes are kept (0 background, 1 necrosis, 2 edema,
    3 non-enhancing tumour, 4 enhancing tumour) and checked unless ``--check_labels false``;
    ``--label_map "{a: b}"`` writes relabelled copies to ``--label_dir``.
    """
    allow_unlabeled = _to_bool(allow_unlabeled, "allow_unlabeled", "brats2013")
    check_labels = _to_bool(check_labels, "check_labels", "brats2013")
    overwrite = _to_bool(overwrite, "overwrite", "brats2013")
    absolute_paths = _to_bool(absolute_paths, "absolute_paths", "brats2013")
    stems = {m: [f"{m_file}_subtrMeanDivStd", m_file] for m, m_file in
             (("flair", "Flair"), ("t1c", "T1c"), ("t1", "T1"), ("t2", "T2"))}
    extra = {
        "name": "BRATS 2013",
        "description": "Brain tumour MRI, co-registered sequences",
        "data_dir": os.path.abspath(os.path.expanduser(str(data_dir))),
    }
    return _folder_dataset(
        "brats2013", data_dir, output, stems, ["OTMultiClass", "OT"], ["flair", "t1c"], modalities,
        set(BRATS2013_LABELS.values()), BRATS2013_LABELS, label_map, label_dir, allow_unlabeled, check_labels, extra,
        _split_args(num_validation, num_testing, validation_fraction, testing_fraction, labeled_fraction, seed,
                    overwrite, absolute_paths),
    )


def brats2021(
    data_dir: str,
    output: str | None = None,
    modalities: Sequence[str] | None = None,
    label_map: dict | None = None,
    label_dir: str | None = None,
    allow_unlabeled: bool = False,
    check_labels: bool = True,
    num_validation: int | None = None,
    num_testing: int | None = None,
    validation_fraction: float | None = None,
    testing_fraction: float | None = None,
    labeled_fraction: float = 1.0,
    seed: int = 0,
    overwrite: bool = False,
    absolute_paths: bool = False,
) -> str:
    """
    BraTS 2021-2023: ``<data_dir>/<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (2023 naming) or
    ``<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (2021 naming).

    Modality keys ``t1n``, ``t1c``, ``t2w``, ``t2f`` (all required unless ``--modalities`` picks
    some). Label codes are kept: 2023 naming 0/1 necrotic core/2 edema/3 enhancing; 2021 naming
    uses 4 for enhancing tumour, which the bundle (classes 0..C-1) needs remapped:
    ``--label_map "{4: 3}"`` writes relabelled copies to ``--label_dir``. Validation-phase cases
    have no ``seg``: ``--allow_unlabeled`` puts them in ``unlabeled``.
    """
    allow_unlabeled = _to_bool(allow_unlabeled, "allow_unlabeled", "brats2021")
    check_labels = _to_bool(check_labels, "check_labels", "brats2021")
    overwrite = _to_bool(overwrite, "overwrite", "brats2021")
    absolute_paths = _to_bool(absolute_paths, "absolute_paths", "brats2021")
    stems = {
        "t1n": ["{case}-t1n", "{case}_t1"],
        "t1c": ["{case}-t1c", "{case}_t1ce"],
        "t2w": ["{case}-t2w", "{case}_t2"],
        "t2f": ["{case}-t2f", "{case}_flair"],
    }
    folder = os.path.abspath(os.path.expanduser(str(data_dir)))
    cases = _case_folders(folder) if os.path.isdir(folder) else []
    naming_2021 = [
        c for c in cases
        if _find(os.path.join(folder, c), [f"{c}_seg", f"{c}_t1ce"], _listing(os.path.join(folder, c)))
    ]
    labels = BRATS2021_LABELS if cases and len(naming_2021) == len(cases) else BRATS2023_LABELS
    extra = {
        "name": "BraTS 2021" if labels is BRATS2021_LABELS else "BraTS 2023",
        "description": "Brain tumour MRI (t1n, t1c, t2w, t2f), co-registered",
        "data_dir": folder,
    }
    split = _split_args(num_validation, num_testing, validation_fraction, testing_fraction, labeled_fraction, seed,
                        overwrite, absolute_paths)
    if naming_2021 and len(naming_2021) != len(cases):
        raise PreparationError(
            [f"mixed BraTS 2021 (`_seg`, `_t1ce`) and 2023 (`-seg`, `-t1c`) naming; 2021-named cases: "
             f"{naming_2021[:5]}{' ...' if len(naming_2021) > 5 else ''}"], "brats2021")
    return _folder_dataset(
        "brats2021", data_dir, output, stems, ["{case}-seg", "{case}_seg"], list(stems), modalities,
        {0, 1, 2, 3, 4}, labels, label_map, label_dir, allow_unlabeled, check_labels, extra, split,
    )


# ---------------------------------------------------------------------------------------------
# Medical Segmentation Decathlon
# ---------------------------------------------------------------------------------------------


def _key_name(name: str) -> str:
    key = re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")
    return key or "modality"


def _case_id(path: str) -> str:
    name = os.path.basename(path)
    for ext in _NIFTI:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def msd(
    data_dir: str,
    output: str | None = None,
    dataset_json: str = "dataset.json",
    include_test_images: bool = True,
    check_labels: bool = True,
    num_validation: int | None = None,
    num_testing: int | None = None,
    validation_fraction: float | None = None,
    testing_fraction: float | None = None,
    labeled_fraction: float = 1.0,
    seed: int = 0,
    overwrite: bool = False,
    absolute_paths: bool = False,
) -> str:
    """
    Medical Segmentation Decathlon task folder (e.g. Task01_BrainTumour) with its ``dataset.json``:
    one multi-channel NIfTI per case (channels on the last axis) -> ``"image": "<file>"``.

    Modality keys: the ``modality`` names of dataset.json, lower-cased (Task01: ``flair``, ``t1w``,
    ``t1gd``, ``t2w``), in channel order. Label codes are kept (names from dataset.json). The
    images of the ``test`` list (no labels) join ``unlabeled`` unless ``--include_test_images false``.
    """
    include_test_images = _to_bool(include_test_images, "include_test_images", "msd")
    check_labels = _to_bool(check_labels, "check_labels", "msd")
    overwrite = _to_bool(overwrite, "overwrite", "msd")
    absolute_paths = _to_bool(absolute_paths, "absolute_paths", "msd")
    command = "msd"
    problems: list[str] = []
    notes: list[str] = []
    _check_common(labeled_fraction, seed, problems)
    data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
    output = _output_path(data_dir, output)
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
        shape = _shape(path, problems, where)
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
    inputs: list[str] = []
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
        inputs += [p for p in (image, label) if p]
        if image is None or label is None:
            continue
        case = _case_id(image)
        where = f"case '{case}'"
        if case in labeled:
            problems.append(f"{where}: listed twice in {json_path}")
            continue
        spatial = check_image(image, where)
        label_shape = _shape(label, problems, where)
        if spatial is not None and label_shape is not None and tuple(label_shape) != tuple(spatial):
            problems.append(f"{where}: label shape {label_shape} differs from the image's {spatial}")
        if check_labels and labels:
            _check_label_codes(label, set(labels.values()), where, problems)
        labeled[case] = {"images": {"image": image}, "label": label}
    if include_test_images:
        for i, item in enumerate(meta.get("test") or []):
            rel = item.get("image") if isinstance(item, dict) else item
            image = resolve(rel, f"dataset.json test #{i}")
            if image is None:
                continue
            inputs.append(image)
            case = _case_id(image)
            if case in labeled or case in unlabeled:
                problems.append(f"case '{case}': in both 'training' and 'test' of {json_path}")
                continue
            check_image(image, f"test case '{case}'")
            unlabeled[case] = {"images": {"image": image}}
    extra = {
        "name": str(meta.get("name", "MSD task")),
        "description": "Medical Segmentation Decathlon task; one multi-channel image per case (channels last)",
        "data_dir": data_dir,
    }
    return _assemble(
        command, data_dir, output, names, labeled, unlabeled, labels, None, None, extra, problems, notes,
        num_validation, num_testing, validation_fraction, testing_fraction, labeled_fraction, seed, overwrite,
        absolute_paths, inputs,
    )


# ---------------------------------------------------------------------------------------------
# AMOS (unpaired CT and MRI)
# ---------------------------------------------------------------------------------------------


def _pair(ct: list[str], mri: list[str], mode: str, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Pair CT and MRI scan ids: both permuted; ``truncate`` stops at the shorter list, ``cycle``
    uses every scan of the longer list once and reuses the shorter list's scans in turn."""
    ct = [ct[i] for i in rng.permutation(len(ct))]
    mri = [mri[i] for i in rng.permutation(len(mri))]
    if not ct or not mri:
        return []
    n = min(len(ct), len(mri)) if mode == "truncate" else max(len(ct), len(mri))
    return [(ct[i % len(ct)], mri[i % len(mri)]) for i in range(n)]


def amos(
    data_dir: str,
    output: str | None = None,
    pairing: str = "cycle",
    mri_min_id: int = 500,
    include_test_images: bool = True,
    check_labels: bool = True,
    num_validation: int | None = None,
    num_testing: int | None = None,
    validation_fraction: float | None = None,
    testing_fraction: float | None = None,
    labeled_fraction: float = 1.0,
    seed: int = 0,
    overwrite: bool = False,
    absolute_paths: bool = False,
) -> str:
    """
    AMOS 2022 (unpaired abdominal CT and MRI): ``imagesTr/``+``labelsTr/``, ``imagesVa/``+``labelsVa/``,
    ``imagesTs/`` (+``labelsTs/`` if present), files ``amos_NNNN.nii.gz``; scan numbers >=
    ``mri_min_id`` are MRI, the others CT.

    The bundle takes every modality per case, so CT and MRI scans (of different patients) are
    paired: the scans of each modality are first split per scan (validation/testing counts and
    fractions apply to each modality; ``labeled_fraction`` to each modality's training scans),
    then paired within each split with a seeded permutation. ``pairing="cycle"`` uses every scan
    of the larger modality once and reuses the smaller modality's scans in turn (a scan may be in
    several cases of one split, never in two splits); ``"truncate"`` makes min(n_ct, n_mri) pairs
    and leaves the other scans out. A case is ``{"case": "<ct>+<mri>", "ct": ..., "mri": ...,
    "label": {"ct": ..., "mri": ...}}``; label codes (0-15, the 15 AMOS organs) are kept.
    """
    include_test_images = _to_bool(include_test_images, "include_test_images", "amos")
    check_labels = _to_bool(check_labels, "check_labels", "amos")
    overwrite = _to_bool(overwrite, "overwrite", "amos")
    absolute_paths = _to_bool(absolute_paths, "absolute_paths", "amos")
    command = "amos"
    problems: list[str] = []
    notes: list[str] = []
    _check_common(labeled_fraction, seed, problems)
    if pairing not in ("cycle", "truncate"):
        problems.append(f"--pairing must be 'cycle' or 'truncate', got {pairing!r}")
    data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
    output = _output_path(data_dir, output)
    if not os.path.isdir(data_dir):
        problems.append(f"data folder not found: {data_dir}")
    scans: dict[str, dict[str, dict[str, str]]] = {"ct": {}, "mri": {}}  # modality -> id -> {image, label}
    unlabeled_scans: dict[str, dict[str, str]] = {"ct": {}, "mri": {}}
    inputs: list[str] = []
    folders = [("imagesTr", "labelsTr", True), ("imagesVa", "labelsVa", True), ("imagesTs", "labelsTs", False)]
    if os.path.isdir(data_dir) and not os.path.isdir(os.path.join(data_dir, "imagesTr")):
        problems.append(f"folder not found: {os.path.join(data_dir, 'imagesTr')} (with labelsTr/, AMOS layout)")
    allowed = set(AMOS_LABELS.values())
    for images_sub, labels_sub, label_required in folders:
        images_dir, labels_dir = os.path.join(data_dir, images_sub), os.path.join(data_dir, labels_sub)
        if not os.path.isdir(images_dir) or (images_sub == "imagesTs" and not include_test_images):
            continue
        image_files = sorted(n for n in _listing(images_dir) if n.endswith(_NIFTI) and not n.startswith("."))
        label_files = {n for n in _listing(labels_dir) if n.endswith(_NIFTI) and not n.startswith(".")}
        for name in sorted(label_files - set(image_files)):
            problems.append(f"label {os.path.join(labels_dir, name)} has no image {os.path.join(images_dir, name)}")
        for name in image_files:
            scan = _case_id(name)
            numbers = re.findall(r"\d+", scan)
            where = f"scan '{scan}' ({images_sub})"
            if not numbers:
                problems.append(f"{where}: no scan number in the file name, cannot tell CT from MRI")
                continue
            modality = "mri" if int(numbers[-1]) >= int(mri_min_id) else "ct"
            image = os.path.join(images_dir, name)
            label = os.path.join(labels_dir, name) if name in label_files else None
            inputs += [image] + ([label] if label else [])
            if scan in scans[modality] or scan in unlabeled_scans[modality]:
                problems.append(f"{where}: found in two folders")
                continue
            if label is None:
                if label_required:
                    problems.append(f"{where}: missing label {os.path.join(labels_dir, name)}")
                else:
                    unlabeled_scans[modality][scan] = image
                continue
            _check_same_grid({"image": image, "label": label}, where, problems)
            if check_labels:
                _check_label_codes(label, allowed, where, problems)
            scans[modality][scan] = {"image": image, "label": label}
    for modality in ("ct", "mri"):
        if os.path.isdir(data_dir) and not scans[modality]:
            problems.append(
                f"no labeled {modality.upper()} scan found in {data_dir} (MRI: scan number >= {mri_min_id})"
            )

    split_ids: dict[str, dict[str, list[str]]] = {}
    for modality in ("ct", "mri"):
        n_val, n_test = _split_counts(
            len(scans[modality]), num_validation, num_testing, validation_fraction, testing_fraction, problems,
            what=f"labeled {modality.upper()} scans",
        )
        if problems:
            continue
        parts = split_cases(list(scans[modality]), n_val, n_test, seed)
        parts["training"], moved = select_labeled(parts["training"], labeled_fraction, seed)
        parts["unlabeled"] = moved
        for split in ("validation", "testing"):
            if not parts[split] and (num_validation if split == "validation" else num_testing) != 0:
                notes.append(f"no {modality.upper()} scan in {split}")
        split_ids[modality] = parts
    _check_outputs(output, [], inputs, overwrite, problems)
    if problems:
        raise PreparationError(problems, command)

    base = os.path.dirname(output)
    content: dict[str, Any] = {
        "name": "AMOS 2022",
        "description": "Abdominal CT and MRI of different patients, paired per split (see 'pairing')",
        "data_dir": data_dir,
        "modalities": ["ct", "mri"],
        "labels": dict(AMOS_LABELS),
        "pairing": {
            "mode": pairing,
            "note": "CT and MRI scans come from different patients; each scan was assigned to one split, "
            "then CT and MRI scans of a split were paired with a seeded permutation",
        },
        "preparation": {"tool": "scripts/prepare_datalist.py amos", "seed": seed, "labeled_fraction": labeled_fraction,
                        "mri_min_id": int(mri_min_id), "label_codes": "kept as in the input files"},
    }
    for index, split in enumerate(("training", "unlabeled", "validation", "testing")):
        ct_ids, mri_ids = split_ids["ct"][split], split_ids["mri"][split]
        if split == "unlabeled":
            ct_ids = sorted(ct_ids + list(unlabeled_scans["ct"]))
            mri_ids = sorted(mri_ids + list(unlabeled_scans["mri"]))
        pairs = _pair(ct_ids, mri_ids, pairing, np.random.default_rng([int(seed), 7, index]))
        used_ct, used_mri = {c for c, _ in pairs}, {m for _, m in pairs}
        left = [s for s in ct_ids if s not in used_ct] + [s for s in mri_ids if s not in used_mri]
        if left:
            more = " ..." if len(left) > 6 else ""
            notes.append(f"{split}: {len(left)} scan(s) left unpaired ({pairing}): {left[:6]}{more}")
        cases = []
        for ct, mri in pairs:
            ct_path = scans["ct"].get(ct, {}).get("image") or unlabeled_scans["ct"].get(ct)
            mri_path = scans["mri"].get(mri, {}).get("image") or unlabeled_scans["mri"].get(mri)
            item = {"case": f"{ct}+{mri}", "ct": _rel(ct_path, base, absolute_paths),
                    "mri": _rel(mri_path, base, absolute_paths)}
            if split != "unlabeled":
                item["label"] = {"ct": _rel(scans["ct"][ct]["label"], base, absolute_paths),
                                 "mri": _rel(scans["mri"][mri]["label"], base, absolute_paths)}
            cases.append(item)
        content[split] = sorted(cases, key=lambda c: c["case"])
    if not content["training"]:
        raise PreparationError(["no training pair (CT or MRI training scans missing)"], command)
    _write_datalist(output, content)
    _summary(command, output, content, notes)
    return output


# ---------------------------------------------------------------------------------------------


COMMANDS = {"myops": myops, "brats2013": brats2013, "brats2021": brats2021, "msd": msd, "amos": amos}


def main(argv: Sequence[str] | None = None) -> int:
    import fire

    try:
        # the summary is printed by the command itself; do not echo the returned path
        fire.Fire(COMMANDS, command=list(argv) if argv is not None else None, serialize=lambda result: None)
    except PreparationError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
