"""MyoPS 2020: three-sequence cardiac MRI, one folder per case, labeled and unlabeled folders."""

from __future__ import annotations

import os
from collections.abc import Sequence

from . import base, case_files
from .base import Preparation, sub_command

__all__ = ["MYOPS_LABELS", "MYOPS_PATHOLOGY_LABELS", "MYOPS_SEQUENCES", "myops"]

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
    "names": {"background": 0, "normal_myocardium": 1, "lv_blood_pool": 2, "rv_blood_pool": 3, "edema": 4, "scar": 5},
}


@sub_command
def myops(
    run: Preparation,
    label_dir: str | None = None,
    keep_pathology: bool = False,
    modalities: Sequence[str] = ("c0", "lge", "t2"),
    labeled_subdir: str = "labeled",
    unlabeled_subdir: str = "unlabeled",
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
    problems = run.problems
    names = base.as_list(modalities, "modalities", problems) or []
    unknown = [m for m in names if m not in MYOPS_SEQUENCES]
    if unknown:
        problems.append(f"--modalities: unknown MyoPS sequences {unknown} (known: {list(MYOPS_SEQUENCES)})")
        names = [m for m in names if m in MYOPS_SEQUENCES]
    conv = MYOPS_PATHOLOGY_LABELS if keep_pathology else MYOPS_LABELS
    mapping = dict(conv["mapping"])
    allowed = {0, *mapping}

    labeled: dict[str, dict] = {}
    unlabeled: dict[str, dict] = {}
    labeled_root = os.path.join(run.data_dir, labeled_subdir)
    unlabeled_root = os.path.join(run.data_dir, unlabeled_subdir)
    if run.found_data_dir():
        if not os.path.isdir(labeled_root):
            problems.append(
                f"folder of labeled cases not found: {labeled_root} (expected <case>/<case>_C0.nii.gz, ...)"
            )
        elif not case_files.case_folders(labeled_root):
            problems.append(f"no case folder in {labeled_root}")
        if not os.path.isdir(unlabeled_root):
            run.notes.append(f"no folder {unlabeled_root}: no unlabeled cases")

    for root, is_labeled in ((labeled_root, True), (unlabeled_root, False)):
        kind = "labeled" if is_labeled else "unlabeled"
        for case in case_files.case_folders(root):
            folder = os.path.join(root, case)
            files = case_files.listing(folder)
            where = f"{kind} case '{case}'"
            images: dict[str, str] = {}
            for m in names:
                stem = f"{case}_{MYOPS_SEQUENCES[m]}"
                path = case_files.find_file(folder, [stem], files)
                if path is None:
                    problems.append(f"{where}: missing {case_files.expected_names([stem])} ({m}) in {folder}")
                else:
                    images[m] = path
            label = case_files.find_file(folder, [f"{case}_gd"], files)
            if is_labeled and label is None:
                problems.append(f"{where}: missing label {case_files.expected_names([f'{case}_gd'])} in {folder}")
            if not is_labeled and label is not None:
                run.notes.append(f"{where}: label {label} ignored (case is in {unlabeled_subdir}/)")
            if not is_labeled and case in labeled:
                problems.append(f"{where}: also in {labeled_subdir}/ (one case in two folders)")
                continue
            run.inputs += list(images.values()) + ([label] if label else [])
            if len(images) != len(names) or (is_labeled and label is None):
                continue
            case_files.check_same_grid({**images, **({"label": label} if is_labeled else {})}, where, problems)
            if is_labeled:
                case_files.check_label_codes(label, allowed, where, problems)
                labeled[case] = {"images": images, "label": label}
            else:
                unlabeled[case] = {"images": images}

    return run.assemble(
        "MyoPS 2020",
        "Multi-sequence cardiac MRI (C0 = bSSFP cine, LGE, T2); labels remapped from the MyoPS codes",
        names,
        labeled,
        unlabeled,
        dict(conv["names"]),
        mapping,
        label_dir,
    )
