#!/usr/bin/env python
"""Check a datalist and every file of its cases, before a training or inference run.

Runs the bundle's datalist validation (`load_datalist`: keys, modalities, missing files, splits)
and then opens every file (`validate_cases`: unreadable or truncated NIfTI, modalities on
different grids, NaN/Inf voxels, label values outside [0, num_classes), wrong number of channels).
Every problem is printed on its own line, naming the split, case, key and path, then a summary.
Exit status: 0 when no problem is found, 1 otherwise.

Examples:
    python scripts/check_datalist.py --datalist /data/x/datalist.json
    python scripts/check_datalist.py --datalist /data/x/datalist.json --dataset_dir /data/x \
        --modalities "['t1','t2']" --num_classes 4 --spatial_dims 3
    python scripts/check_datalist.py --datalist /data/huge/datalist.json --no_voxels   # headers only
    # sequences on their own grids (one label per sequence, cases may lack sequences)
    python scripts/check_datalist.py --datalist /data/mrus/datalist.json --own_grids true
    # co-registered sequences, some cases lacking one (one label per case)
    python scripts/check_datalist.py --datalist /data/x/datalist.json --allow_missing_modalities true
"""

from __future__ import annotations

import json
import sys

import fire

from bundle_path import use_bundle_scripts

use_bundle_scripts()
from scripts.data.case_validation import inspect_cases  # noqa: E402
from scripts.data.datalist import DatalistError, load_datalist  # noqa: E402
from scripts.errors import FlagError, as_bool  # noqa: E402


def _as_names(modalities) -> list[str] | None:
    """`--modalities "['t1','t2']"` (a list for fire) or `--modalities t1,t2`."""
    if modalities is None:
        return None
    if isinstance(modalities, str):
        return [m.strip() for m in modalities.split(",") if m.strip()]
    return [str(m) for m in modalities]


def _datalist_modalities(datalist: str) -> list[str] | None:
    """The datalist's own ``modalities`` key (what load_datalist uses by default), to name files in messages."""
    try:
        with open(datalist, encoding="utf-8") as f:
            names = json.load(f).get("modalities")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return names
    return None


def check(
    datalist: str,
    dataset_dir: str | None = None,
    modalities=None,
    num_classes: int | None = None,
    no_voxels: bool = False,
    spatial_dims: int | None = None,
    coregistered: bool = True,
    affine_atol: float = 1e-3,
    own_grids: bool = False,
    allow_missing_modalities: bool = False,
) -> int:
    """
    Print every problem of ``datalist`` and a summary; return the exit status (0: clean, 1: problems).

    Args:
        datalist: the datalist JSON file.
        dataset_dir: folder that relative paths are resolved against (default: the datalist's folder).
        modalities: modality names in channel order (default: the datalist's ``modalities`` key).
        num_classes: number of classes including background; label values must be below it
            (default: not checked).
        no_voxels: read headers only (no NaN/Inf or label-value checks), for huge datasets.
        spatial_dims: 2 or 3: check every file's layout against it (default: not checked).
        coregistered: the images of a case must share one voxel grid (``--nocoregistered`` to skip).
        affine_atol: tolerance (mm) between the affine of a label and that of its image.
        own_grids: the sequences of a case are on their own grids, not registered (the bundle's
            ``own_grids``): one label per sequence it has, ``"label": {modality: path}``. Every case
            is checked as the bundle reads it, split into one case per sequence (``<case>_<modality>``)
            holding one image and its own label: the label's grid is checked against its image's,
            sequences are not compared with each other (no co-registration check).
        allow_missing_modalities: a case may lack sequences (the bundle's ``allow_missing_modalities``;
            implied by ``own_grids``).
    """
    names = _as_names(modalities)
    problems: list[str] = []
    try:
        own_grids = as_bool(own_grids, "own_grids")
        allow_missing_modalities = as_bool(allow_missing_modalities, "allow_missing_modalities")
    except FlagError as e:
        print(f"error: {e}")
        print("summary: the datalist was not checked")
        return 1
    options = dict(
        dataset_dir=dataset_dir,
        modalities=names,
        own_grids=own_grids,
        allow_missing_modalities=allow_missing_modalities,
    )
    try:
        data = load_datalist(datalist, **options)
    except FileNotFoundError as e:
        print(f"error: {e}")
        print("summary: the datalist could not be read")
        return 1
    except DatalistError as e:
        problems.extend(e.problems)
        # structure problems hide the files' problems; when missing files are the only ones, the
        # other files can still be checked, so that a single run reports everything
        try:
            data = load_datalist(datalist, check_files=False, **options)
        except DatalistError:
            data = None
    except ValueError as e:
        print(f"error: {e}")
        print("summary: the datalist could not be read")
        return 1

    cases = files = unchecked = 0
    if data is not None:
        report = inspect_cases(
            data,
            num_classes,
            coregistered=coregistered,
            read_voxels=not no_voxels,
            modalities=names or _datalist_modalities(datalist),
            spatial_dims=spatial_dims,
            affine_atol=affine_atol,
            report_missing=False,  # already reported by load_datalist
        )
        problems.extend(report.problems)
        cases = sum(len(v) for v in data.values())
        files, unchecked = report.checked_files, len(report.unchecked_files)

    for problem in problems:
        print(problem)
    if data is not None:
        scope = f"{cases} cases, {files} files opened"
        if own_grids:
            scope = f"{cases} cases (one per sequence: own grids), {files} files opened"
    else:
        scope = "case files not checked (fix the datalist first)"
    if unchecked:
        scope += f", {unchecked} files of formats other than NIfTI not checked"
    voxels = "headers only" if no_voxels else "headers and voxels"
    count = len(problems)
    verdict = f"{count} problem{'s' if count != 1 else ''}" if count else "no problems"
    print(f"summary: {datalist}: {verdict} ({scope}; {voxels})")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    # the exit status is returned, not printed (serialize: fire prints nothing for None)
    return fire.Fire(check, command=argv, name="check_datalist", serialize=lambda status: None)


if __name__ == "__main__":
    sys.exit(main())
