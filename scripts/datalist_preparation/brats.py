"""BRATS 2013/2015 and BraTS 2021-2023: co-registered brain tumour MRI, one folder per case."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from . import base, case_files
from .base import Preparation, PreparationError, sub_command

__all__ = [
    "BRATS2013_LABELS",
    "BRATS2021_LABELS",
    "BRATS2023_LABELS",
    "FolderLayout",
    "brats2013",
    "brats2021",
    "folder_command",
]

BRATS2013_LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing_tumour": 3, "enhancing_tumour": 4}
BRATS2021_LABELS = {"background": 0, "necrotic_tumour_core": 1, "peritumoral_edema": 2, "enhancing_tumour": 4}
BRATS2023_LABELS = {"background": 0, "necrotic_tumour_core": 1, "peritumoral_edema": 2, "enhancing_tumour": 3}


@dataclasses.dataclass(frozen=True)
class FolderLayout:
    """How a dataset with one folder per case names its files and labels; a stem may use ``{case}``
    (the folder name), and the first stem found is used."""

    name: str
    description: str
    #: modality key -> the file stems it may have.
    stems: dict[str, list[str]]
    label_stems: list[str]
    #: the modalities every case must have; the others are used when every case has them.
    required: list[str]
    allowed_codes: set[int]
    labels: dict[str, int]


def folder_command(layout_of: Callable[[str], FolderLayout]) -> Callable[..., str]:
    """
    The sub-command ``layout_of.__name__`` (with its docstring) for a folder-per-case dataset laid
    out as ``layout_of(data_dir)`` says; every such dataset takes the same options.
    """

    def command(
        run: Preparation,
        modalities: Sequence[str] | None = None,
        label_map: dict | None = None,
        label_dir: str | None = None,
        allow_unlabeled: bool = False,
        check_labels: bool = True,
    ) -> str:
        layout = layout_of(run.data_dir)
        return _folder_dataset(run, layout, modalities, label_map, label_dir, allow_unlabeled, check_labels)

    command.__name__ = command.__qualname__ = layout_of.__name__
    command.__module__ = layout_of.__module__
    command.__doc__ = layout_of.__doc__
    return sub_command(command)


def _folder_dataset(
    run: Preparation,
    layout: FolderLayout,
    modalities: Any,
    label_map: Any,
    label_dir: str | None,
    allow_unlabeled: bool,
    check_labels: bool,
) -> str:
    """Collect the cases (one folder each) of a dataset laid out as ``layout`` says, then assemble the datalist."""
    problems = run.problems
    stems, label_stems = layout.stems, layout.label_stems
    mapping = base.as_label_map(label_map, problems)
    explicit = base.as_list(modalities, "modalities", problems)
    if explicit is not None:
        unknown = [m for m in explicit if m not in stems]
        if unknown:
            problems.append(f"--modalities: unknown {unknown} (known: {list(stems)})")
        explicit = [m for m in explicit if m in stems]
    data_dir = run.data_dir
    cases: list[str] = []
    if run.found_data_dir():
        cases = case_files.case_folders(data_dir)
        if not cases:
            problems.append(f"no case folder in {data_dir}")

    found: dict[str, dict[str, str]] = {}
    found_labels: dict[str, str | None] = {}
    for case in cases:
        folder = os.path.join(data_dir, case)
        files = case_files.listing(folder)
        found[case] = {}
        for m, options in stems.items():
            path = case_files.find_file(folder, [s.format(case=case) for s in options], files)
            if path:
                found[case][m] = path
        found_labels[case] = case_files.find_file(folder, [s.format(case=case) for s in label_stems], files)

    if explicit is not None:
        names = explicit
    else:  # required ones, plus the optional ones that every case has
        optional = [m for m in stems if m not in layout.required]
        names = list(layout.required) + [m for m in optional if cases and all(m in found[c] for c in cases)]
        partial = [m for m in optional if m not in names and any(m in found[c] for c in cases)]
        if partial:
            run.notes.append(
                f"modalities {partial} left out: present in some cases only (pass --modalities to require them)"
            )

    labeled: dict[str, dict] = {}
    unlabeled: dict[str, dict] = {}
    for case in cases:
        folder = os.path.join(data_dir, case)
        where = f"case '{case}'"
        images = {}
        for m in names:
            if m in found[case]:
                images[m] = found[case][m]
            else:
                expected = case_files.expected_names([s.format(case=case) for s in stems[m]])
                problems.append(f"{where}: missing {expected} ({m}) in {folder}")
        label = found_labels[case]
        run.inputs += list(images.values()) + ([label] if label else [])
        if label is None and not allow_unlabeled:
            expected = case_files.expected_names([s.format(case=case) for s in label_stems])
            problems.append(
                f"{where}: missing label {expected} in {folder} (--allow_unlabeled puts such cases in 'unlabeled')"
            )
        if len(images) != len(names) or (label is None and not allow_unlabeled):
            continue
        case_files.check_same_grid({**images, **({"label": label} if label else {})}, where, problems)
        if label is None:
            unlabeled[case] = {"images": images}
            continue
        if check_labels:
            case_files.check_label_codes(label, layout.allowed_codes | set(mapping), where, problems)
        labeled[case] = {"images": images, "label": label}

    labels = {name: mapping.get(code, code) for name, code in layout.labels.items()}
    values = sorted(set(labels.values()))
    if values and values != list(range(len(values))):
        run.notes.append(
            f"label codes {values} are not contiguous; the bundle expects 0..num_classes-1, "
            'remap them with --label_map (e.g. "{4: 3}")'
        )
    return run.assemble(layout.name, layout.description, names, labeled, unlabeled, labels, mapping or None, label_dir)


_BRATS2013 = FolderLayout(
    name="BRATS 2013",
    description="Brain tumour MRI, co-registered sequences",
    stems={
        m: [f"{m_file}_subtrMeanDivStd", m_file]
        for m, m_file in (("flair", "Flair"), ("t1c", "T1c"), ("t1", "T1"), ("t2", "T2"))
    },
    label_stems=["OTMultiClass", "OT"],
    required=["flair", "t1c"],
    allowed_codes=set(BRATS2013_LABELS.values()),
    labels=BRATS2013_LABELS,
)


@folder_command
def brats2013(data_dir: str) -> FolderLayout:
    """
    BRATS 2013/2015 (pre-processed naming): ``<data_dir>/<case>/{Flair,T1c,T1,T2}[_subtrMeanDivStd].nii.gz``
    and the label ``OTMultiClass.nii.gz`` (or ``OT.nii.gz``).

    Modality keys ``flair``, ``t1c`` (required), ``t1``, ``t2`` (used when every case has them,
    or when named in ``--modalities``). Label codes are kept (0 background, 1 necrosis, 2 edema,
    3 non-enhancing tumour, 4 enhancing tumour) and checked unless ``--check_labels false``;
    ``--label_map "{a: b}"`` writes relabelled copies to ``--label_dir``.
    """
    return _BRATS2013


_BRATS2023 = FolderLayout(
    name="BraTS 2023",
    description="Brain tumour MRI (t1n, t1c, t2w, t2f), co-registered",
    stems={
        "t1n": ["{case}-t1n", "{case}_t1"],
        "t1c": ["{case}-t1c", "{case}_t1ce"],
        "t2w": ["{case}-t2w", "{case}_t2"],
        "t2f": ["{case}-t2f", "{case}_flair"],
    },
    label_stems=["{case}-seg", "{case}_seg"],
    required=["t1n", "t1c", "t2w", "t2f"],
    allowed_codes={0, 1, 2, 3, 4},
    labels=BRATS2023_LABELS,
)
# the same files under their 2021 names; enhancing tumour is 4
_BRATS2021 = dataclasses.replace(_BRATS2023, name="BraTS 2021", labels=BRATS2021_LABELS)


@folder_command
def brats2021(data_dir: str) -> FolderLayout:
    """
    BraTS 2021-2023: ``<data_dir>/<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (2023 naming) or
    ``<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (2021 naming).

    Modality keys ``t1n``, ``t1c``, ``t2w``, ``t2f`` (all required unless ``--modalities`` picks
    some). Label codes are kept: 2023 naming 0/1 necrotic core/2 edema/3 enhancing; 2021 naming
    uses 4 for enhancing tumour, which the bundle (classes 0..C-1) needs remapped:
    ``--label_map "{4: 3}"`` writes relabelled copies to ``--label_dir``. Validation-phase cases
    have no ``seg``: ``--allow_unlabeled`` puts them in ``unlabeled``.
    """
    cases = case_files.case_folders(data_dir) if os.path.isdir(data_dir) else []
    naming_2021 = []
    for case in cases:
        folder = os.path.join(data_dir, case)
        if case_files.find_file(folder, [f"{case}_seg", f"{case}_t1ce"], case_files.listing(folder)):
            naming_2021.append(case)
    if naming_2021 and len(naming_2021) != len(cases):
        more = " ..." if len(naming_2021) > 5 else ""
        raise PreparationError(
            [
                "mixed BraTS 2021 (`_seg`, `_t1ce`) and 2023 (`-seg`, `-t1c`) naming; 2021-named cases: "
                f"{naming_2021[:5]}{more}"
            ],
            "brats2021",
        )
    return _BRATS2021 if cases and len(naming_2021) == len(cases) else _BRATS2023
