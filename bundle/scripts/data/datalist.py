"""
Datalist loading for the bundle configs.

A datalist is a JSON file with up to four case lists, ``training`` (labeled), ``unlabeled``,
``validation`` and ``testing``, and optionally the top-level ``modalities`` (names, in channel
order) and ``labels`` keys. Every case is normalised by :func:`load_datalist` to::

    {"case": "<id>", "image": [<abs path per modality>] or "<abs multi-channel path>",
     "label": "<abs path>" or [<abs path per modality>],   # only when the case has a label
     ...}                                                     # any other key is kept

so that the configs can load ``image``/``label`` with MONAI dictionary transforms whatever form
the datalist was written in. :func:`resolve_datalist` is the entry point of the configs: it
falls back to the embedded synthetic dataset when no dataset folder is given.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import BundleError, InputError, InputNotFoundError
from .datalist_case import MissingFileProblem, derive_case_id, list_order, normalise_case
from .own_grids import split_by_modality
from .synthetic import generate_synthetic_dataset

__all__ = [
    "DATALIST_SPLITS",
    "Datalist",
    "DatalistError",
    "derive_case_id",
    "labeled_cases",
    "list_order",
    "declared_names",
    "load_datalist",
    "normalise_case",
    "resolve_datalist",
    "select_labeled",
]

#: case lists of a datalist, in the order they are reported.
DATALIST_SPLITS = ("training", "unlabeled", "validation", "testing")
# top-level keys that are not splits and are read by the bundle
_METADATA_KEYS = ("modalities", "labels")


class DatalistError(BundleError, ValueError):
    """
    Invalid datalist. The message lists every problem found, one per line, each naming the split,
    the case id, the offending key and, where there is one, the path.

    Args:
        problems: one description per problem.
        datalist_file: the datalist the problems were found in, named in the first line.
    """

    def __init__(self, problems: Sequence[str], datalist_file: str | None = None) -> None:
        # the arguments themselves go to Exception (pickle and copy rebuild the error from them)
        super().__init__(list(problems), datalist_file)
        self.problems = list(problems)
        self.datalist_file = datalist_file

    def __str__(self) -> str:
        where = f" {self.datalist_file}" if self.datalist_file else ""
        count = len(self.problems)
        header = f"invalid datalist{where} ({count} problem{'s' if count != 1 else ''}):"
        return "\n".join([header] + [f"  {p}" for p in self.problems])


class Datalist(dict):
    """The normalised datalist (a dict of case lists); ``file_problems`` holds the missing files that
    :func:`load_datalist` deferred (``defer_missing_files``) to :func:`~scripts.data.case_validation.check_datalist_cases`.
    """

    file_problems: list[str] = []


def load_datalist(
    datalist_file: str,
    dataset_dir: str | None = None,
    modalities: Sequence[str] | None = None,
    labeled_fraction: float = 1.0,
    split_seed: int = 0,
    check_files: bool = True,
    require_validation: bool = False,
    defer_missing_files: bool = False,
    require_training: bool = True,
    allow_missing_modalities: bool = False,
    own_grids: bool = False,
) -> dict[str, list[dict]]:
    """
    Read, validate and normalise a datalist.

    Accepted forms of the images of a case:

    - one key per modality name, e.g. ``{"t1": "a_t1.nii.gz", "t2": "a_t2.nii.gz"}`` (what the
      synthetic generator writes);
    - ``"image": [path, ...]`` with one path per modality, in modality order;
    - ``"image": "path"``: a single multi-channel file holding all modalities (kept as a string;
      its channel count is not checked here).

    Accepted forms of the label: ``"label": path`` (one label on the grid shared by all
    modalities), or ``"label": {modality: path}`` / ``"label": [path, ...]`` (one label per
    modality on that modality's grid, normalised to a list in modality order).

    Cases of ``training`` and ``validation`` must have a label; ``testing`` cases may have one;
    labels of ``unlabeled`` cases are dropped so they cannot leak into training. The case id is
    ``case`` when given, otherwise derived from the first image file name (extension and a
    trailing ``_<first modality>`` removed). Relative paths are resolved against ``dataset_dir``;
    absolute paths are kept.

    All problems are collected and reported together in one :class:`DatalistError`: a missing
    modality key, a wrong number of images, a missing file (when ``check_files``), an empty
    ``training`` list (when ``require_training``), a label dict missing a modality, a case id in two splits or twice in one
    split, an image file used by cases of two splits.

    Args:
        datalist_file: path of the JSON datalist.
        dataset_dir: folder that relative paths are resolved against; default: the folder of
            ``datalist_file``.
        modalities: modality names in channel order; default: the datalist's ``modalities`` key.
        labeled_fraction: fraction in (0, 1] of the ``training`` cases that keep their label; the
            others (chosen per case by a permutation seeded with ``split_seed``) are appended to
            ``unlabeled`` without their label. ``max(1, round(fraction * n))`` cases stay labeled
            (rounded half up). The selection does not depend on the order of the list, and for
            one seed a smaller fraction keeps a subset of the cases a larger one keeps.
        split_seed: seed of the labeled/unlabeled selection.
        check_files: check that every referenced file exists.
        require_validation: an empty ``validation`` list is a problem (training selects ``model.pt``
            on it).
        require_training: an empty ``training`` list is a problem (training needs labeled cases);
            evaluation passes False, so that an external test set holds its ``testing`` list alone.
        defer_missing_files: when missing files are the only problems, return the datalist (a
            :class:`Datalist`) with them in ``file_problems`` instead of raising, so that
            ``check_datalist_cases`` reports them together with the problems of every other file.
        allow_missing_modalities: a case may lack modalities (a per-modality key absent or null, or a
            null entry of an ``"image"`` list): its ``image`` list holds ``None`` for each missing one
            (at least one must be given, and the label must be a single file). False: each missing
            key is a problem, named with the option that allows it.
        own_grids: the modalities of a case are on their own grids, not registered (MR and ultrasound,
            CT and MRI, or cohorts with no patient in common): each labeled case gives one label per
            sequence it has (``"label": {modality: path}``), a case may lack sequences, and every case is
            then split into one case per sequence (:func:`scripts.data.own_grids.split_by_modality`),
            after the labeled fraction is drawn per patient.

    Unknown top-level keys that look like a misspelled split (``"validaton"``) or hold a list of
    cases are problems; other keys (``name``, ``description``, ...) are ignored. When both
    ``modalities`` and the datalist's own ``modalities`` key are given in different orders, the
    ``"image": [...]``/``"label": [...]`` lists (written in the datalist's order) are reordered to
    ``modalities``; a multi-channel file cannot be, and is a problem. A case key holding an image
    path that is not a modality (``"dwi"``) is a problem.

    Returns:
        ``{"training": [...], "unlabeled": [...], "validation": [...], "testing": [...]}`` with
        normalised cases (missing lists are empty).

    Raises:
        InputNotFoundError: ``datalist_file`` does not exist (a ``FileNotFoundError``).
        InputError: ``labeled_fraction`` outside (0, 1] (a ``ValueError``).
        DatalistError: the datalist is invalid (all problems in one message).
    """
    fraction = _check_fraction(labeled_fraction)
    datalist_path = os.path.abspath(os.path.expanduser(os.fspath(datalist_file)))
    if not os.path.isfile(datalist_path):
        raise InputNotFoundError(f"datalist file not found: {datalist_path}")
    try:
        with open(datalist_path, encoding="utf-8") as f:
            content = json.load(f)
    except ValueError as e:
        raise DatalistError([f"not valid JSON: {e}"], datalist_path) from e
    if not isinstance(content, dict):
        raise DatalistError([f"the top level must be a JSON object, got {type(content).__name__}"], datalist_path)

    problems: list[str] = []
    names = _modality_names(modalities, content, problems)
    if names is None:
        raise DatalistError(problems, datalist_path)
    if dataset_dir:
        base_dir = os.path.abspath(os.path.expanduser(os.fspath(dataset_dir)))
    else:
        base_dir = os.path.dirname(datalist_path)

    _check_top_level_keys(content, names, problems)
    order = list_order(names, content)
    result: dict[str, list[dict]] = Datalist()
    for split in DATALIST_SPLITS:
        raw_cases = content.get(split, [])
        if raw_cases is None:
            raw_cases = []
        if not isinstance(raw_cases, list):
            problems.append(f"split {str(split)!r}: must be a list of cases, got {type(raw_cases).__name__}")
            raw_cases = []
        result[split] = [
            normalise_case(
                raw,
                split,
                position,
                names,
                base_dir,
                check_files,
                problems,
                order,
                allow_missing_modalities or own_grids,
                own_grids,
            )
            for position, raw in enumerate(raw_cases)
        ]
    if require_training and not content.get("training"):
        problems.append("split 'training': no cases; at least one labeled training case is required")
    if require_validation and not result["validation"]:
        problems.append(
            "split 'validation': no cases; training selects and writes model.pt on the validation cases, so at "
            "least one labeled validation case is required"
        )
    _check_case_ids(result, problems)
    _check_shared_images(result, problems)
    if problems and defer_missing_files and all(isinstance(p, MissingFileProblem) for p in problems):
        result.file_problems = [str(p) for p in problems]
    elif problems:
        raise DatalistError(problems, datalist_path)

    if fraction < 1.0:
        _apply_labeled_fraction(result, fraction, split_seed)
    if own_grids:
        result = split_by_modality(result, names)
    return result


def resolve_datalist(
    dataset_dir: str | None,
    datalist_file: str | None,
    modalities: Sequence[str],
    synthetic_dir: str,
    spatial_dims: int = 2,
    synthetic: dict | None = None,
    **options: Any,
) -> dict[str, list[dict]]:
    """
    Datalist of a run: the user's dataset when one is given, else the embedded synthetic dataset.

    - ``dataset_dir`` and ``datalist_file`` both empty: the synthetic dataset is generated once in
      ``synthetic_dir`` (see :func:`scripts.data.synthetic.generate_synthetic_dataset`) and loaded.
    - ``dataset_dir`` given: ``datalist_file`` defaults to ``<dataset_dir>/datalist.json``; image
      paths are resolved against ``dataset_dir``.
    - only ``datalist_file`` given: image paths are resolved against the datalist's folder.

    A relative ``datalist_file`` is relative to the current working directory.

    Args:
        dataset_dir: folder of a user dataset, or None (or "") for the synthetic dataset.
        datalist_file: datalist of the user dataset, or None for the default.
        modalities: modality names in channel order.
        synthetic_dir: folder of the synthetic dataset; use one folder per set of parameters,
            since a folder generated with other parameters is refused, not overwritten.
        spatial_dims: 2 or 3, dimensionality of the synthetic dataset (ignored for user data).
        synthetic: further keyword arguments of ``generate_synthetic_dataset`` (``image_size``,
            ``num_training``, ``misalignment_mm``, ``seed``, ...).
        options: keyword arguments of :func:`load_datalist` (``labeled_fraction``, ``split_seed``,
            ``require_validation``, ``defer_missing_files``, ``allow_missing_modalities``, ``own_grids``, ...).

    Returns:
        the normalised datalist, as :func:`load_datalist` returns it.
    """
    if not dataset_dir and not datalist_file:
        generator_options = dict(synthetic or {})
        clashes = sorted(set(generator_options) & {"output_dir", "spatial_dims", "modalities"})
        if clashes:
            raise InputError(
                f"--synthetic options {clashes} are set by their own ids (--synthetic_dir, --spatial_dims, "
                "--modalities); remove them from --synthetic."
            )
        datalist_path = generate_synthetic_dataset(
            synthetic_dir, spatial_dims=spatial_dims, modalities=modalities, **generator_options
        )
        root = None
    elif datalist_file:
        datalist_path, root = os.path.abspath(os.path.expanduser(os.fspath(datalist_file))), dataset_dir or None
    else:
        root = dataset_dir
        datalist_path = os.path.join(os.path.abspath(os.path.expanduser(os.fspath(dataset_dir))), "datalist.json")
    return load_datalist(datalist_path, dataset_dir=root, modalities=modalities, **options)


def declared_names(dataset_dir: str | None, datalist_file: str | None, key: str, default: Sequence[str]) -> list[str]:
    """The names a datalist declares for itself, so that a run on it needs no ``--modalities`` or
    ``--class_names``: ``key="modalities"``: its top-level ``"modalities"`` list; ``key="labels"``: the
    class names of its ``"labels"`` map (``{"1": "gland", ...}`` as MSD writes it, or ``{"gland": 1, ...}``;
    values 1..K; background, 0, left out; several names of one value are joined with ``+``).
    ``default`` when there is no datalist (the synthetic dataset), it cannot be read (its loading reports
    why), or it declares nothing; the configs' ids given on the command line win over both.

    Raises:
        DatalistError: the declaration is there but unusable (its problem named with the file).
    """
    path = datalist_file or (os.path.join(dataset_dir, "datalist.json") if dataset_dir else None)
    if key not in _METADATA_KEYS:
        raise ValueError(f"key must be one of {_METADATA_KEYS}, got {key!r}.")
    try:
        with open(os.path.expanduser(str(path)), encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, TypeError, ValueError):
        return list(default)
    value = content.get(key) if isinstance(content, dict) else None
    if value is None:
        return list(default)
    if key == "modalities":
        if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return list(value)
        raise DatalistError([f"{path}: key 'modalities': must be a non-empty list of names, got {value!r}"])
    classes: dict[int, list[str]] = {}
    for orient in (lambda k, v: (k, v), lambda k, v: (v, k)):  # {"1": "gland"} (MSD) or {"gland": 1}
        try:
            classes = {}
            for number, name in (orient(k, v) for k, v in dict(value).items()):
                if int(number) != 0:
                    classes.setdefault(int(number), []).append(str(name))
            break
        except (TypeError, ValueError):
            classes = {}
    if not classes or sorted(classes) != list(range(1, len(classes) + 1)):
        raise DatalistError([f"{path}: key 'labels': must map the label values 1..K to class names, got {value!r}"])
    # names that share a value (a preparation tool's label map merged them, e.g. BraTS's tumour
    # regions into one whole tumour) name their union, in the order the datalist gives them
    return ["+".join(classes[k]) for k in sorted(classes)]


def _check_fraction(labeled_fraction: float) -> float:
    """Return ``labeled_fraction`` as a float, raising ValueError unless it is in (0, 1]."""
    try:
        fraction = float(labeled_fraction)
    except (TypeError, ValueError):
        raise InputError(f"labeled_fraction must be a number in (0, 1], got {labeled_fraction!r}.") from None
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"labeled_fraction must be in (0, 1], got {labeled_fraction!r}.")
    return fraction


def _modality_names(modalities: Sequence[str] | None, content: dict[str, Any], problems: list[str]) -> list[str] | None:
    """Modality names from the argument or the datalist; None (with problems added) when unusable."""
    source = "argument 'modalities'"
    if modalities is None:
        modalities = content.get("modalities")
        source = "key 'modalities'"
        if modalities is None:
            problems.append("no modalities: pass `modalities` or add a top-level 'modalities' list to the datalist")
            return None
    if isinstance(modalities, (str, bytes)) or not isinstance(modalities, Sequence) or not modalities:
        problems.append(f"{source}: must be a non-empty list of modality names, got {modalities!r}")
        return None
    names = list(modalities)
    bad = [n for n in names if not isinstance(n, str) or not n or n in ("case", "image", "label")]
    if bad:
        problems.append(f"{source}: invalid modality names {bad!r}")
    if len(set(map(str, names))) != len(names):
        problems.append(f"{source}: duplicate modality names in {names!r}")
    return None if bad or len(set(map(str, names))) != len(names) else names


def _check_top_level_keys(content: dict[str, Any], modalities: list[str], problems: list[str]) -> None:
    """Report top-level keys that look like a misspelled split or hold cases under an unknown name."""
    splits = ", ".join(DATALIST_SPLITS)
    for key, value in content.items():
        if key in DATALIST_SPLITS or key in _METADATA_KEYS or not isinstance(key, str):
            continue
        close = difflib.get_close_matches(key.lower(), DATALIST_SPLITS, n=1, cutoff=0.75)
        if close:
            problems.append(
                f"key {str(key)!r}: unknown top-level key; did you mean {str(close[0])!r}? (splits: {splits})"
            )
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(c, dict) and {"case", "image", "label", *modalities} & set(c) for c in value)
        ):
            problems.append(
                f"key {str(key)!r}: {len(value)} cases under an unknown split name; they are not used (splits: {splits})"
            )


def _check_case_ids(datalist: dict[str, list[dict]], problems: list[str]) -> None:
    """Report case ids repeated within a split or shared by two splits (data leakage)."""
    first_split: dict[str, str] = {}
    for split in DATALIST_SPLITS:
        seen: dict[str, int] = {}
        for position, case in enumerate(datalist[split]):
            case_id = case["case"]
            if case_id.startswith("#"):
                continue
            if case_id in seen:
                problems.append(
                    f"{split} case {str(case_id)!r}: key 'case': duplicate case id "
                    f"(positions {seen[case_id]} and {position})"
                )
                continue
            seen[case_id] = position
            if case_id in first_split:
                problems.append(
                    f"{split} case {str(case_id)!r}: key 'case': also in split {str(first_split[case_id])!r} (data leakage)"
                )
            else:
                first_split[case_id] = split


def _check_shared_images(datalist: dict[str, list[dict]], problems: list[str]) -> None:
    """
    Report image files used by cases of two different splits under different case ids (data
    leakage that the case-id check cannot see); one line per pair of cases, naming the first file.
    """
    owner: dict[str, tuple[str, str]] = {}
    reported: set[tuple[str, str, str, str]] = set()
    for split in DATALIST_SPLITS:
        for case in datalist[split]:
            image = case.get("image")
            paths = [image] if isinstance(image, str) else list(image or [])
            for path in paths:
                if path is None:
                    continue
                if path not in owner:
                    owner[path] = (split, case["case"])
                    continue
                other_split, other_case = owner[path]
                pair = (other_split, other_case, split, case["case"])
                if other_split == split or other_case == case["case"] or pair in reported:
                    continue
                reported.add(pair)
                problems.append(
                    f"{split} case {str(case['case'])!r}: key 'image': file also used by {other_split} case "
                    f"{str(other_case)!r} (data leakage): {path}"
                )


def select_labeled(case_ids: Sequence[str], labeled_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """
    ``(kept, moved)``, each sorted: the ``max(1, round(labeled_fraction * n))`` case ids (rounded
    half up) that keep their label, and the others.

    The sorted ids are permuted with ``numpy.random.default_rng(seed)`` and the first ones are kept,
    so the selection depends on the ids and the seed, not on their order, and for one seed a smaller
    fraction keeps a subset of what a larger one keeps. ``load_datalist(labeled_fraction=...,
    split_seed=seed)`` and ``scripts/prepare_datalist.py --labeled_fraction ... --seed seed`` both
    use it, so preparing with a fraction keeps the same cases as loading with it.
    """
    ids = sorted(case_ids)
    keep_count = min(len(ids), max(1, math.floor(float(labeled_fraction) * len(ids) + 0.5)))
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    kept = {ids[i] for i in order[:keep_count]}
    return sorted(kept), sorted(set(ids) - kept)


def _apply_labeled_fraction(datalist: dict[str, list[dict]], fraction: float, split_seed: int) -> None:
    """Keep ``max(1, round(fraction * n))`` training cases labeled; move the others to ``unlabeled``."""
    training = datalist["training"]
    kept = set(select_labeled([case["case"] for case in training], fraction, split_seed)[0])
    datalist["training"] = [case for case in training if case["case"] in kept]
    moved = [{k: v for k, v in case.items() if k != "label"} for case in training if case["case"] not in kept]
    datalist["unlabeled"] = datalist["unlabeled"] + moved


def labeled_cases(datalist: Mapping[str, Sequence[dict]], split: str) -> list[dict]:
    """The cases of ``split``, which must all have a single label file (evaluation needs labels).

    Raises:
        InputError: ``split`` is not a split (a ``ValueError``).
        DatalistError: ``split`` has no cases, or cases without a single label file.
    """
    if split not in datalist:
        raise InputError(f"eval_split {str(split)!r} is not a datalist split (splits: {sorted(datalist)}).")
    cases = list(datalist[split])
    if not cases:
        filled = [name for name in DATALIST_SPLITS if datalist.get(name)]
        raise DatalistError(
            [f"split {str(split)!r}: no cases to evaluate (splits with cases: {filled}); choose one with --eval_split"]
        )
    unlabeled = [c.get("case", "?") for c in cases if not isinstance(c.get("label"), str)]
    if unlabeled:
        problem = f"split {str(split)!r}: evaluation needs one label file per case; missing or per-modality labels in "
        raise DatalistError([problem + f"cases {unlabeled}"])
    return cases
