"""
``folds``: cross-validation folds of a datalist that already exists, to choose settings on validation
patients without touching its test cases (nnU-Net's practice of a k-fold split of the training cases).

The labeled cases (``training`` and ``validation``, pooled) are split per case into ``num_folds``
parts. Fold ``k`` validates on part ``k`` and trains on the others; ``testing``, ``unlabeled`` and
every other key are copied unchanged. Each fold is written next to the datalist (``<name>_fold<k>.json``)
so that its relative paths still resolve.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from .base import PreparationError, _to_bool, atomic_write_bytes

from scripts.data.datalist_case import case_id_from_files  # noqa: E402 - base put the bundle on sys.path

LABELED_SPLITS = ("training", "validation")


def fold_split(case_ids: list[str], num_folds: int, seed: int) -> list[list[str]]:
    """The validation cases of each fold: the sorted ids permuted with ``numpy.random.default_rng(seed)``
    and cut into ``num_folds`` contiguous parts whose sizes differ by at most one. The result depends
    only on the set of ids and the seed; each part is sorted."""
    ids = sorted(case_ids)
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    return [sorted(ids[i] for i in part) for part in np.array_split(order, num_folds)]


def _read(datalist: str, problems: list[str]) -> dict[str, Any] | None:
    if not os.path.isfile(datalist):
        problems.append(f"datalist not found: {datalist}")
        return None
    try:
        with open(datalist, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, ValueError) as e:
        problems.append(f"{datalist}: not a readable JSON file ({e})")
        return None
    if not isinstance(content, dict):
        problems.append(f"{datalist}: the datalist must be a JSON object with 'training' and 'validation' lists")
        return None
    return content


def _case_id(entry: Any, modalities: list[str]) -> str | None:
    """The case's id as the bundle's loader gives it: ``case``, or else derived from its first image file."""
    if not isinstance(entry, dict):
        return None
    if entry.get("case") is not None:
        return entry["case"] if isinstance(entry["case"], str) and entry["case"].strip() else None
    return case_id_from_files(entry, modalities)


def _labeled_cases(content: dict[str, Any], datalist: str, problems: list[str]) -> dict[str, dict]:
    """The pooled labeled cases by id (problems recorded for a missing list, a case without an id, a
    duplicate id, or a labeled case that is also a test case)."""
    modalities = [m for m in content.get("modalities", []) if isinstance(m, str)]
    cases: dict[str, dict] = {}
    for split in LABELED_SPLITS:
        entries = content.get(split, [])
        if not isinstance(entries, list):
            problems.append(f"{datalist}: '{split}' must be a list of cases")
            continue
        for i, entry in enumerate(entries):
            case = _case_id(entry, modalities)
            if case is None:
                problems.append(f"{datalist}: {split}[{i}] has no case id ('case', or an image file to derive it from)")
            elif case in cases:
                problems.append(f"{datalist}: case {case} appears twice among the training and validation cases")
            else:
                cases[case] = entry
    tests = {_case_id(e, modalities) for e in content.get("testing", [])}
    for case in sorted(tests & set(cases)):
        problems.append(f"{datalist}: case {case} is both a test case and a training/validation case")
    return cases


def folds(datalist: str, num_folds: int = 5, seed: int = 0, overwrite: bool = False) -> list[str]:
    """
    Cross-validation folds of DATALIST (a datalist ``prepare_datalist.py`` or you wrote): its
    ``training`` and ``validation`` cases, pooled, are split per case into ``num_folds`` parts
    (the sorted case ids permuted with the ``seed``); fold k validates on part k and trains on the
    others. ``testing`` and ``unlabeled`` are kept unchanged in every fold, so the test cases stay
    untouched while settings are chosen on the folds. Each fold is written next to DATALIST as
    ``<name>_fold<k>.json`` (k from 0), with ``preparation.cross_validation`` saying how it was made.
    Existing fold files are not replaced without ``--overwrite``. Returns the fold files' paths.

        python scripts/prepare_datalist.py folds /data/lgg/datalist.json --num_folds 4 --seed 0
    """
    problems: list[str] = []
    overwrite = _to_bool(overwrite, "overwrite", "folds")
    datalist = os.path.abspath(os.path.expanduser(str(datalist)))
    count_ok = isinstance(num_folds, int) and not isinstance(num_folds, bool) and num_folds >= 2
    if not count_ok:
        problems.append(f"--num_folds must be a whole number >= 2, got {num_folds!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(f"--seed must be a whole number, got {seed!r}")
    content = _read(datalist, problems)
    cases = _labeled_cases(content, datalist, problems) if content is not None else {}
    if content is not None and count_ok and len(cases) < num_folds:
        problems.append(f"{datalist}: {len(cases)} training and validation cases cannot make {num_folds} folds "
                        "(each fold needs a validation case)")
    stem = os.path.splitext(datalist)[0]
    outputs = [f"{stem}_fold{k}.json" for k in range(num_folds)] if count_ok and num_folds <= len(cases) else []
    for path in outputs:
        if os.path.isdir(path):
            problems.append(f"output fold {path} is a folder")
        elif os.path.exists(path) and not overwrite:
            problems.append(f"output fold {path} already exists; pass --overwrite to replace it")
    if problems:
        raise PreparationError(problems, "folds")

    parts = fold_split(list(cases), num_folds, seed)
    for k, (path, validation) in enumerate(zip(outputs, parts)):
        held = set(validation)
        fold = dict(content)
        fold["training"] = [cases[c] for c in sorted(cases) if c not in held]
        fold["validation"] = [cases[c] for c in validation]
        fold["preparation"] = {
            **(content.get("preparation") or {}),
            "cross_validation": {"source": datalist, "fold": k, "num_folds": num_folds, "seed": seed},
        }
        atomic_write_bytes((json.dumps(fold, indent=2) + "\n").encode("utf-8"), path)
        print(f"folds: wrote {path} (fold {k} of {num_folds}: training {len(fold['training'])}, "
              f"validation {len(validation)}, unlabeled {len(content.get('unlabeled', []))}, "
              f"testing {len(content.get('testing', []))} unchanged)")
    return outputs
