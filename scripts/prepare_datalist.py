#!/usr/bin/env python
"""Write a bundle datalist (see bundle/docs/README.md) for a public multimodal dataset, or any dataset with
one folder per case, on disk.

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
    python scripts/prepare_datalist.py amos --data_dir /data/amos22 --pairing none
    python scripts/prepare_datalist.py folders --data_dir /data/mrus --modalities "['mr','trus']" \
        --own_grids true --label_suffix _gland
    python scripts/prepare_datalist.py folds /data/lgg/datalist.json --num_folds 4   # cross-validation

Common options: ``--output`` (default ``<data_dir>/datalist.json``), ``--num_validation`` /
``--validation_fraction``, ``--num_testing`` / ``--testing_fraction`` (default: fraction 0.2 each),
``--labeled_fraction`` (fraction of the training cases that keep their label; the others join
``unlabeled`` without it), ``--seed``, ``--overwrite``, ``--absolute_paths`` (default: paths
relative to the datalist's folder). Details: bundle/docs/data_preparation.md.

This file is the command line; the sub-commands are the package ``datalist_preparation/`` beside
it, one module per dataset family (the top-level ``scripts/`` folder is not a package).
"""

from __future__ import annotations

import difflib
import inspect
import sys
from collections.abc import Sequence

import datalist_preparation
from datalist_preparation import *  # noqa: F401,F403 - this tool's Python names are the package's

__all__ = [*datalist_preparation.__all__, "main", "unknown_options"]
COMMANDS = datalist_preparation.COMMANDS


def unknown_options(argv: Sequence[str]) -> list[str]:
    """The ``--options`` of ``argv`` that its sub-command does not take, one problem line each.

    fire runs a command with the arguments it can consume and complains about the others only
    afterwards, so a mistyped ``--label_dir`` would write the datalist and labels to the default
    places before the error. ``--noflag`` (fire's false) and what follows a bare ``--`` (fire's own
    flags) are accepted."""
    args = list(argv)
    if not args or args[0] not in COMMANDS:
        return []  # no or an unknown sub-command: fire says so without running anything
    known = set(inspect.signature(COMMANDS[args[0]]).parameters)
    problems = []
    for arg in args[1:]:
        if arg == "--":
            break
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0].replace("-", "_")
        if name in known or name in ("help", "h") or (name.startswith("no") and name[2:] in known):
            continue
        close = difflib.get_close_matches(name, known, n=1)
        problems.append(f"unknown option {arg.split('=', 1)[0]}" + (f" (did you mean --{close[0]}?)" if close else ""))
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    import fire

    args = list(argv) if argv is not None else sys.argv[1:]
    problems = unknown_options(args)
    if problems:
        known = ", ".join("--" + k for k in sorted(inspect.signature(COMMANDS[args[0]]).parameters))
        print(
            f"{datalist_preparation.PreparationError(problems, args[0])}\n  (options of {args[0]}: {known})",
            file=sys.stderr,
        )
        return 2
    try:
        # the summary is printed by the command itself; do not echo the returned path
        fire.Fire(COMMANDS, command=args, serialize=lambda result: None)
    except datalist_preparation.PreparationError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
