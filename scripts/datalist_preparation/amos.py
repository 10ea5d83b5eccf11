"""AMOS 2022: abdominal CT and MRI of different patients, one case per scan or paired per split."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from .base import KEPT_CODES, Preparation, PreparationError, sub_command
from .case_files import NIFTI_EXTENSIONS, case_id, check_label_codes, check_same_grid, listing

__all__ = ["AMOS_LABELS", "amos"]

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
# (images, labels, whether every image needs a label)
_FOLDERS = [("imagesTr", "labelsTr", True), ("imagesVa", "labelsVa", True), ("imagesTs", "labelsTs", False)]


def _pair(ct: list[str], mri: list[str], mode: str, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Pair CT and MRI scan ids: both permuted; ``truncate`` stops at the shorter list, ``cycle``
    uses every scan of the longer list once and reuses the shorter list's scans in turn."""
    ct = [ct[i] for i in rng.permutation(len(ct))]
    mri = [mri[i] for i in rng.permutation(len(mri))]
    if not ct or not mri:
        return []
    n = min(len(ct), len(mri)) if mode == "truncate" else max(len(ct), len(mri))
    return [(ct[i % len(ct)], mri[i % len(mri)]) for i in range(n)]


@sub_command
def amos(
    run: Preparation,
    pairing: str = "cycle",
    mri_min_id: int = 500,
    include_test_images: bool = True,
    check_labels: bool = True,
) -> str:
    """
    AMOS 2022 (unpaired abdominal CT and MRI): ``imagesTr/``+``labelsTr/``, ``imagesVa/``+``labelsVa/``,
    ``imagesTs/`` (+``labelsTs/`` if present), files ``amos_NNNN.nii.gz``; scan numbers >=
    ``mri_min_id`` are MRI, the others CT.

    The scans of each modality are split per scan (validation/testing counts and fractions apply
    to each modality; ``labeled_fraction`` to each modality's training scans). ``pairing="none"``
    (recommended, for runs with modalities on their own grids: ``configs/unpaired.yaml``) writes
    one single-modality case per scan, ``{"case": "amos_0001", "ct": ..., "label": {"ct": ...}}``:
    CT and MRI patients stay separate cohorts, as they are. The other modes pair CT and MRI scans
    (of different patients) within each split with a seeded permutation. ``pairing="cycle"`` uses every scan
    of the larger modality once and reuses the smaller modality's scans in turn (a scan may be in
    several cases of one split, never in two splits); ``"truncate"`` makes min(n_ct, n_mri) pairs
    and leaves the other scans out. A case is ``{"case": "<ct>+<mri>", "ct": ..., "mri": ...,
    "label": {"ct": ..., "mri": ...}}``; label codes (0-15, the 15 AMOS organs) are kept.
    """
    problems, data_dir = run.problems, run.data_dir
    if pairing not in ("none", "cycle", "truncate"):
        problems.append(f"--pairing must be 'none', 'cycle' or 'truncate', got {pairing!r}")
    scans: dict[str, dict[str, dict[str, str]]] = {"ct": {}, "mri": {}}  # modality -> id -> {image, label}
    unlabeled_scans: dict[str, dict[str, str]] = {"ct": {}, "mri": {}}
    if run.found_data_dir() and not os.path.isdir(os.path.join(data_dir, "imagesTr")):
        problems.append(f"folder not found: {os.path.join(data_dir, 'imagesTr')} (with labelsTr/, AMOS layout)")
    allowed = set(AMOS_LABELS.values())
    for images_sub, labels_sub, label_required in _FOLDERS:
        images_dir, labels_dir = os.path.join(data_dir, images_sub), os.path.join(data_dir, labels_sub)
        if not os.path.isdir(images_dir) or (images_sub == "imagesTs" and not include_test_images):
            continue
        image_files = sorted(n for n in listing(images_dir) if n.endswith(NIFTI_EXTENSIONS) and not n.startswith("."))
        label_files = {n for n in listing(labels_dir) if n.endswith(NIFTI_EXTENSIONS) and not n.startswith(".")}
        for name in sorted(label_files - set(image_files)):
            problems.append(f"label {os.path.join(labels_dir, name)} has no image {os.path.join(images_dir, name)}")
        for name in image_files:
            scan = case_id(name)
            numbers = re.findall(r"\d+", scan)
            where = f"scan '{scan}' ({images_sub})"
            if not numbers:
                problems.append(f"{where}: no scan number in the file name, cannot tell CT from MRI")
                continue
            modality = "mri" if int(numbers[-1]) >= int(mri_min_id) else "ct"
            image = os.path.join(images_dir, name)
            label = os.path.join(labels_dir, name) if name in label_files else None
            run.inputs += [image] + ([label] if label else [])
            if scan in scans[modality] or scan in unlabeled_scans[modality]:
                problems.append(f"{where}: found in two folders")
                continue
            if label is None:
                if label_required:
                    problems.append(f"{where}: missing label {os.path.join(labels_dir, name)}")
                else:
                    unlabeled_scans[modality][scan] = image
                continue
            check_same_grid({"image": image, "label": label}, where, problems)
            if check_labels:
                check_label_codes(label, allowed, where, problems)
            scans[modality][scan] = {"image": image, "label": label}
    for modality in ("ct", "mri"):
        if os.path.isdir(data_dir) and not scans[modality]:
            problems.append(
                f"no labeled {modality.upper()} scan found in {data_dir} (MRI: scan number >= {mri_min_id})"
            )

    split_ids: dict[str, dict[str, list[str]]] = {}
    for modality in ("ct", "mri"):
        n_val, n_test = run.split_counts(len(scans[modality]), what=f"labeled {modality.upper()} scans")
        if problems:
            continue
        parts = run.split(list(scans[modality]), n_val, n_test)
        for split, count in (("validation", run.options.num_validation), ("testing", run.options.num_testing)):
            if not parts[split] and count != 0:
                run.notes.append(f"no {modality.upper()} scan in {split}")
        split_ids[modality] = parts
    run.check_outputs()

    unpaired = pairing == "none"
    content: dict[str, Any] = run.header(
        "AMOS 2022",
        (
            "Abdominal CT and MRI of different patients, one case per scan (modalities on their own grids)"
            if unpaired
            else "Abdominal CT and MRI of different patients, paired per split (see 'pairing')"
        ),
    )
    content["modalities"] = ["ct", "mri"]
    content["labels"] = dict(AMOS_LABELS)
    content["pairing"] = {
        "mode": pairing,
        "note": "CT and MRI scans come from different patients; each scan was assigned to one split, "
        + (
            "and is one case with its own label (load with own_grids: configs/unpaired.yaml)"
            if unpaired
            else "then CT and MRI scans of a split were paired with a seeded permutation"
        ),
    }
    content["preparation"] = run.provenance(mri_min_id=int(mri_min_id), label_codes=KEPT_CODES)
    for index, split in enumerate(("training", "unlabeled", "validation", "testing")):
        ct_ids, mri_ids = split_ids["ct"][split], split_ids["mri"][split]
        if split == "unlabeled":
            ct_ids = sorted(ct_ids + list(unlabeled_scans["ct"]))
            mri_ids = sorted(mri_ids + list(unlabeled_scans["mri"]))
        if unpaired:
            content[split] = sorted(
                (
                    _single(run, modality, scan, scans, unlabeled_scans, split != "unlabeled")
                    for modality, ids in (("ct", ct_ids), ("mri", mri_ids))
                    for scan in ids
                ),
                key=lambda c: c["case"],
            )
            continue
        pairs = _pair(ct_ids, mri_ids, pairing, np.random.default_rng([int(run.options.seed), 7, index]))
        used_ct, used_mri = {c for c, _ in pairs}, {m for _, m in pairs}
        left = [s for s in ct_ids if s not in used_ct] + [s for s in mri_ids if s not in used_mri]
        if left:
            more = " ..." if len(left) > 6 else ""
            run.notes.append(f"{split}: {len(left)} scan(s) left unpaired ({pairing}): {left[:6]}{more}")
        cases = []
        for ct, mri in pairs:
            ct_path = scans["ct"].get(ct, {}).get("image") or unlabeled_scans["ct"].get(ct)
            mri_path = scans["mri"].get(mri, {}).get("image") or unlabeled_scans["mri"].get(mri)
            item = {"case": f"{ct}+{mri}", "ct": run.rel(ct_path), "mri": run.rel(mri_path)}
            if split != "unlabeled":
                item["label"] = {"ct": run.rel(scans["ct"][ct]["label"]), "mri": run.rel(scans["mri"][mri]["label"])}
            cases.append(item)
        content[split] = sorted(cases, key=lambda c: c["case"])
    if not content["training"]:
        what = "no training scan" if unpaired else "no training pair (CT or MRI training scans missing)"
        raise PreparationError([what], run.command)
    if unpaired:
        run.notes.append("one case per scan: train with bundle/configs/unpaired.yaml (own_grids: true)")
    return run.write(content)


def _single(
    run: Preparation,
    modality: str,
    scan: str,
    scans: dict[str, dict[str, dict[str, str]]],
    unlabeled_scans: dict[str, dict[str, str]],
    with_label: bool,
) -> dict[str, Any]:
    """The single-modality case of one scan (``pairing="none"``), with its own label when ``with_label``."""
    image = scans[modality].get(scan, {}).get("image") or unlabeled_scans[modality][scan]
    item: dict[str, Any] = {"case": scan, modality: run.rel(image)}
    if with_label:
        item["label"] = {modality: run.rel(scans[modality][scan]["label"])}
    return item
