# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
The cases of an inference run (``configs/inference.yaml``), from whichever source is given.

Sources, first match wins:

1. ``image``: one case from the command line: a list of per-modality files
   (``--image "['a_t1.nii.gz','a_t2.nii.gz','a_flair.nii.gz']"``), ONE multi-channel file
   (``--image a.nii.gz``), or the sequences one has, by name (``--image "{'flair': 'a_flair.nii.gz'}"``).
2. ``datalist_file``, or ``dataset_dir`` holding a ``datalist.json``: the cases of ``data_split``
   (default ``testing``), in any form the training datalist accepts (one key per modality,
   ``"image": [...]`` or ``"image": "multi-channel file"``). Unlike training, no ``training``
   list is required and a missing file does not stop the run: that case alone fails.
3. ``dataset_dir`` with ``image_pattern`` (a glob relative to ``dataset_dir``): one case per
   matching multi-channel file.
4. nothing: the ``data_split`` cases of the embedded synthetic dataset (generated once).

Every case is ``{"case": id, "image": path or [paths], "input_files": [every input path]}``. The
output path of every case (``<output_dir>/<case>_<postfix><ext>``) is checked against every input
file of every case before anything runs: an inference run never overwrites its input.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError, InputNotFoundError, OverwriteRefusedError, check_bool
from .datalist import DatalistError
from .datalist_case import derive_case_id, list_order, normalise_case
from .missing_modalities import missing_modalities
from .own_grids import GRID_MODALITY_KEY, split_case
from .synthetic import generate_synthetic_dataset
from .transforms import input_files_of, safe_name

__all__ = ["inference_cases", "segmentation_path"]

logger = logging.getLogger(__name__)


def segmentation_path(output_dir: str, case_id: str, output_postfix: str = "seg", output_ext: str = ".nii.gz") -> str:
    """Where ``SaveSegmentationd`` (with ``separate_folder=False``) writes the label map of a case."""
    ext = output_ext if output_ext.startswith(".") else f".{output_ext}"
    postfix = f"_{output_postfix}" if output_postfix else ""
    return os.path.join(os.path.abspath(os.path.expanduser(output_dir)), f"{safe_name(case_id)}{postfix}{ext}")


def _abspath(path: Any) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _cases_from_image(image: Any, modalities: Sequence[str], allow_missing: bool = True) -> list[dict[str, Any]]:
    if isinstance(image, (str, os.PathLike)):
        path = _abspath(image)
        return [{"case": derive_case_id(path, modalities[0], per_modality=False) or "case", "image": path}]
    hint = "" if allow_missing else " (a case lacking sequences needs --allow_missing_modalities true)"
    if isinstance(image, Mapping):  # {modality: path}: the sequences that were acquired
        unknown = [str(k) for k in image if k not in modalities]
        if unknown:
            raise InputError(f"--image: unknown modalities {unknown}; the network reads {', '.join(modalities)}.")
        image = [image.get(m) for m in modalities]
    if isinstance(image, Sequence) and image and all(p is None or isinstance(p, (str, os.PathLike)) for p in image):
        if len(image) != len(modalities):
            raise InputError(
                f"--image: got {len(image)} files for {len(modalities)} modalities ({', '.join(modalities)}); "
                "give one file per modality in that order, one multi-channel file, or "
                f"{{modality: file}} for the sequences you have, e.g. \"{{{modalities[-1]!r}: 'case.nii.gz'}}\"."
            )
        missing = missing_modalities(image, modalities)
        if len(missing) == len(modalities):
            raise InputError("--image: no file given; a case needs at least one sequence.")
        if missing and not allow_missing:
            raise InputError(f"--image: no file for modalities {missing}{hint}.")
        paths = [None if p is None else _abspath(p) for p in image]
        first = next(i for i, p in enumerate(paths) if p is not None)
        case_id = derive_case_id(paths[first], modalities[first], per_modality=True) or "case"
        return [{"case": case_id, "image": paths}]
    raise InputError(f"--image: expected a file path, a list of file paths or {{modality: path}}, got {image!r}.")


def _cases_from_datalist(
    datalist_file: str, dataset_dir: str | None, data_split: str, modalities: Sequence[str], allow_missing: bool = True
):
    with open(datalist_file, encoding="utf-8") as f:
        try:
            content = json.load(f)
        except ValueError as e:
            raise DatalistError([f"not valid JSON: {e}"], datalist_file) from e
    if not isinstance(content, dict):
        raise DatalistError(["the top level must be a JSON object"], datalist_file)
    raw = content.get(data_split)
    if not isinstance(raw, list) or not raw:
        available = [k for k, v in content.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        raise DatalistError([f"split {str(data_split)!r}: no cases (splits with cases: {available})"], datalist_file)
    base_dir = _abspath(dataset_dir) if dataset_dir else os.path.dirname(_abspath(datalist_file))
    problems: list[str] = []
    # files are not checked here: a missing file fails its own case at load time, not the run
    order = list_order(list(modalities), content)
    cases = [
        normalise_case(
            c,
            "testing" if data_split != "unlabeled" else "unlabeled",
            i,
            list(modalities),
            base_dir,
            False,
            problems,
            order,
            allow_missing,
        )
        for i, c in enumerate(raw)
    ]
    if problems:
        raise DatalistError(problems, datalist_file)
    return cases


def inference_cases(
    modalities: Sequence[str],
    image: Any = None,
    dataset_dir: str | None = None,
    datalist_file: str | None = None,
    data_split: str = "testing",
    image_pattern: str | None = None,
    synthetic_dir: str | None = None,
    spatial_dims: int = 2,
    output_dir: str | None = None,
    output_postfix: str = "seg",
    output_ext: str = ".nii.gz",
    allow_missing_modalities: Any = True,
    own_grids: Any = False,
) -> list[dict[str, Any]]:
    """
    The cases to segment (see the module docstring for the sources and their order).

    Args:
        modalities: modality names in channel order.
        image: one case from the command line: a path, or a list of one path per modality.
        dataset_dir: folder of a dataset (with ``datalist.json``, or searched with ``image_pattern``).
        datalist_file: a datalist JSON; default ``<dataset_dir>/datalist.json``.
        data_split: the datalist list to segment.
        image_pattern: glob of multi-channel files relative to ``dataset_dir``, when there is no datalist.
        synthetic_dir: folder of the embedded synthetic dataset, used when no source is given.
        spatial_dims: dimensionality of the synthetic dataset.
        output_dir, output_postfix, output_ext: where the segmentations go; when ``output_dir`` is
            given, a segmentation path equal to any input file raises ``OverwriteRefusedError``.
        allow_missing_modalities: a case may lack sequences (``--image "{'flair': 'a.nii.gz'}"``, a
            ``null`` in an ``--image`` list, a datalist case without a modality key): its missing
            sequences are ``None`` in ``image`` and read as zeros (``scripts.data.missing_modalities``).
        own_grids: the sequences are on their own grids: every case is split into one case per
            sequence (``<case>_<modality>``, ``scripts.data.own_grids``), each segmented and written on
            its own file's grid.

    Returns:
        ``[{"case": id, "image": path or [paths or None], "input_files": [paths], "sequences": "a+b"}, ...]``,
        ``sequences`` naming the sequences the case is segmented from (all for a multi-channel file).

    Raises:
        InputError, InputNotFoundError, OverwriteRefusedError, DatalistError: bundle errors (a
        ``ValueError``, ``FileNotFoundError`` and ``FileExistsError`` too) naming the setting or the
        file, so that a ``monai.bundle run`` ends with the message alone (``scripts.errors``).
    """
    modalities = list(modalities)
    allow_missing = check_bool(allow_missing_modalities, "allow_missing_modalities")
    if image not in (None, "", [], {}):
        cases = _cases_from_image(image, modalities, allow_missing)
    else:
        datalist_path = None
        if datalist_file:
            datalist_path = _abspath(datalist_file)
        elif dataset_dir and os.path.isfile(os.path.join(_abspath(dataset_dir), "datalist.json")) and not image_pattern:
            datalist_path = os.path.join(_abspath(dataset_dir), "datalist.json")
        if datalist_path:
            if not os.path.isfile(datalist_path):
                raise InputNotFoundError(f"datalist file not found: {datalist_path}")
            cases = _cases_from_datalist(datalist_path, dataset_dir, data_split, modalities, allow_missing)
        elif dataset_dir:
            if not image_pattern:
                raise InputError(
                    f"dataset_dir {_abspath(dataset_dir)} has no datalist.json: give --image_pattern "
                    "(e.g. '*.nii.gz', one multi-channel file per case), --datalist_file, or --image."
                )
            paths = sorted(glob.glob(os.path.join(_abspath(dataset_dir), image_pattern)))
            if not paths:
                raise InputNotFoundError(f"no file matches {os.path.join(_abspath(dataset_dir), image_pattern)}")
            cases = [{"case": derive_case_id(p, modalities[0], per_modality=False) or p, "image": p} for p in paths]
        else:
            if not synthetic_dir:
                raise InputError("no input: give --image, --dataset_dir or --datalist_file.")
            datalist_path = generate_synthetic_dataset(synthetic_dir, spatial_dims=spatial_dims, modalities=modalities)
            cases = _cases_from_datalist(datalist_path, None, data_split, modalities, allow_missing)

    if check_bool(own_grids, "own_grids"):
        cases = [single for case in cases for single in split_case(case, modalities)]
    result = []
    seen: set[str] = set()
    for case in cases:
        files = input_files_of(case.get("image")) + input_files_of(case.get("label"))
        case_id = str(case["case"])
        if case_id in seen:
            raise InputError(
                f"case id {str(case_id)!r} appears twice: the two segmentations would overwrite each other."
            )
        seen.add(case_id)
        missing = missing_modalities(case["image"], modalities)
        if missing and GRID_MODALITY_KEY not in case:
            logger.warning(f"case {case_id!r}: no {', '.join(missing)}; segmented from the other sequences")
        used = "+".join(m for m in modalities if m not in missing)
        entry = {"case": case_id, "image": case["image"], "input_files": files}
        if GRID_MODALITY_KEY in case:  # one sequence per case by design: nothing missing to record
            entry[GRID_MODALITY_KEY] = case[GRID_MODALITY_KEY]
        else:
            entry["sequences"] = used
        result.append(entry)
    if output_dir:
        inputs = {os.path.realpath(p): p for c in result for p in c["input_files"]}
        for c in result:
            target = segmentation_path(output_dir, c["case"], output_postfix, output_ext)
            if os.path.realpath(target) in inputs:
                raise OverwriteRefusedError(
                    f"case {str(c['case'])!r}: refusing to run: its segmentation {target} would overwrite the input file "
                    f"{inputs[os.path.realpath(target)]}; choose another output_dir or output_postfix."
                )
    return result
