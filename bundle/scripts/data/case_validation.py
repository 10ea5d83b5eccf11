# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Checks of the FILES of every case of a normalised datalist, before training or inference starts.

:func:`scripts.data.datalist.load_datalist` validates the structure of a datalist (keys, number of
modalities, files that exist, splits). This module opens the files themselves, one at a time, and
reports every problem found in one list, each message naming the split, the case, the key and the
path::

    training case 'p001': key 'image[1]' (t2): spatial shape (30, 32) differs from image[0] (t1)
    (32, 32) (...): /data/p001/t2.nii.gz       <- one line

Checks (NIfTI and the other formats nibabel reads: ``.nii``, ``.nii.gz``, ``.mgh``, ``.mgz``,
``.hdr``/``.img``; files of other formats are not opened, see :data:`NIBABEL_EXTENSIONS`):

- always (header only, cheap): the header can be read; the image is not empty, its number of axes
  fits its role (a per-modality image or a label holds one channel; a single multi-channel
  ``image`` file holds one channel per modality on its last axis); the affine is finite and
  invertible; the file is not truncated (size of an ``.nii`` against its header; for an
  ``.nii.gz`` the uncompressed size stored in the gzip trailer, and, only when that does not match,
  a streaming decompression); with ``coregistered``, the images of a case share one voxel grid
  (shape and affine) and a single label is on that grid; a per-modality label is on the grid of
  its modality's image;
- with ``read_voxels`` (reads every voxel once): the voxel data can be read; images have no NaN or
  Inf; labels are finite integers in ``[0, num_classes)`` (range only when ``num_classes`` is given).

Affines of the images of one case are compared with the rule MONAI's ``LoadImage`` applies when it
stacks one file per modality into channels (``numpy.allclose``: relative 1e-5, absolute 1e-8):
files that differ more than that make training fail on the first batch. Labels are loaded on
their own, so a label's affine is compared with an absolute tolerance (``affine_atol``, mm).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import BundleError, check_bool
from .file_integrity import NIBABEL_EXTENSIONS, check_compressed_size, check_file_size, describe_error, is_nibabel_file
from .voxel_grids import grid_problems, spacing_of, strip_trailing_singletons, vector_text

__all__ = [
    "CaseReport",
    "CaseValidationError",
    "NIBABEL_EXTENSIONS",
    "check_datalist_cases",
    "inspect_cases",
    "validate_cases",
]

# at most this many distinct out-of-range label values are listed in a message
_MAX_LISTED_VALUES = 8


class CaseValidationError(BundleError, ValueError):
    """
    Some files of the cases of a datalist are unusable. The message lists every problem found, one
    per line, each naming the split, the case id, the key and the path.

    Args:
        problems: one description per problem.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        header = f"invalid case files ({count} problem{'s' if count != 1 else ''}):"
        super().__init__("\n".join([header] + [f"  {p}" for p in self.problems]))


def validate_cases(datalist: dict[str, list[dict]], num_classes: int | None, **options: Any) -> list[str]:
    """Every problem :func:`inspect_cases` finds in the files of ``datalist`` (empty when every file is
    usable); ``options`` as :func:`inspect_cases`."""
    return inspect_cases(datalist, num_classes, **options).problems


@dataclass
class CaseReport:
    """Result of :func:`inspect_cases`."""

    #: one message per problem (what :func:`validate_cases` returns).
    problems: list[str]
    #: number of distinct files opened.
    checked_files: int
    #: files not opened because nibabel does not read their format (sorted, distinct).
    unchecked_files: list[str]


def inspect_cases(
    datalist: dict[str, list[dict]],
    num_classes: int | None,
    coregistered: bool = True,
    read_voxels: bool = True,
    modalities: Sequence[str] | None = None,
    spatial_dims: int | None = None,
    affine_atol: float = 1e-3,
    report_missing: bool = True,
) -> CaseReport:
    """
    Check the files of every case of a normalised datalist: every problem found, with counts for reports
    (``scripts/check_datalist.py``); :func:`validate_cases` returns the problems alone.

    Args:
        datalist: ``{split: [case, ...]}`` as :func:`scripts.data.datalist.load_datalist` returns
            it: each case has ``case``, ``image`` (a list of one path per modality, or one
            multi-channel path) and optionally ``label`` (a path, or a list of one path per
            modality). Other keys are ignored; ``None`` paths are skipped.
        num_classes: number of classes including background: label values must be in
            ``[0, num_classes)``; None skips the range check.
        coregistered: the images of a case must share one voxel grid (shape and affine), and a
            single ``label`` must be on it. The bundle's pipelines stack the images of a case, so
            they need this; pass False only for a pipeline that resamples. A per-modality label is
            always compared with the image of its modality.
        read_voxels: read the voxel data (NaN/Inf in images, label values, unreadable data). False
            reads headers only (a few KB per file), for huge datasets.
        modalities: modality names in channel order: name the images in messages, and give the
            number of channels a multi-channel ``image`` file must have. Default: the length of
            the cases' image lists (the channel count of a multi-channel file is then not checked
            when no case has a list).
        spatial_dims: 2 or 3: check the layout of every file against it (as
            ``scripts.data.transforms.EnsureModalityChannelsd`` reads a multi-channel file). None:
            only the number of channels of a multi-channel file (its last axis) is checked.
        affine_atol: absolute tolerance (mm) between the affine of a label and that of its image.
        report_missing: report missing files; False skips them silently (for a caller that has
            already reported them, as ``load_datalist`` does).

    Returns:
        a :class:`CaseReport`; its ``problems`` hold one message per problem, in split, case and file
        order (empty when every file is usable). Each message reads
        ``<split> case '<id>': key '<key>' [(<modality>)]: <problem>: <path>``.
    """
    validator = _Validator(
        datalist, num_classes, coregistered, read_voxels, modalities, spatial_dims, affine_atol, report_missing
    )
    problems = validator.run()
    return CaseReport(problems, len(validator.opened), sorted(set(validator.skipped_files)))


def check_datalist_cases(
    datalist: dict[str, list[dict]], num_classes: int | None = None, **options: Any
) -> dict[str, list[dict]]:
    """
    :func:`inspect_cases` for the configs (``options`` as there): returns ``datalist`` itself (unchanged) when every file
    is usable, so that it can be chained after ``resolve_datalist``; raises otherwise.

    Missing files that ``load_datalist`` deferred (``defer_missing_files``: the datalist's
    ``file_problems``) are reported with the problems of every other file.

    Raises:
        CaseValidationError: every problem found, in one message.
    """
    deferred = list(getattr(datalist, "file_problems", None) or [])
    problems = deferred + inspect_cases(datalist, num_classes, report_missing=not deferred, **options).problems
    if problems:
        raise CaseValidationError(problems)
    return datalist


# ------------------------------------------------------------------------------------------------
# implementation


class _FileInfo:
    """What was learnt from one file: its grid (None when unusable) and its problems (texts)."""

    __slots__ = ("role", "shape", "spatial", "affine", "problems")

    def __init__(self, role: str) -> None:
        self.role = role  # "image" (one modality), "multichannel" (all modalities) or "label"
        self.shape: tuple[int, ...] | None = None
        self.spatial: tuple[int, ...] | None = None  # spatial shape (the channel axis removed)
        self.affine: np.ndarray | None = None
        self.problems: list[str] = []


class _Validator:
    """The checks of :func:`inspect_cases`; each file is opened once per role (results are cached)."""

    def __init__(
        self,
        datalist: dict[str, list[dict]],
        num_classes: int | None,
        coregistered: bool,
        read_voxels: bool,
        modalities: Sequence[str] | None,
        spatial_dims: int | None,
        affine_atol: float,
        report_missing: bool = True,
    ) -> None:
        if not isinstance(datalist, dict):
            raise TypeError(f"datalist must be a dict of case lists, got {type(datalist).__name__}.")
        if num_classes is not None and int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes!r}.")
        if spatial_dims is not None and int(spatial_dims) not in (2, 3):
            raise ValueError(f"spatial_dims must be 2, 3 or None, got {spatial_dims!r}.")
        if isinstance(modalities, str):
            raise TypeError(f"modalities must be a list of names, got the string {modalities!r}.")
        self.datalist = datalist
        self.num_classes = None if num_classes is None else int(num_classes)
        self.coregistered = check_bool(coregistered, "coregistered")
        self.read_voxels = check_bool(read_voxels, "read_voxels")
        self.names = [str(m) for m in modalities] if modalities else None
        self.spatial_dims = None if spatial_dims is None else int(spatial_dims)
        self.affine_atol = float(affine_atol)
        self.report_missing = report_missing
        self.num_modalities = len(self.names) if self.names else self._infer_num_modalities()
        self._cache: dict[tuple[str, str], _FileInfo] = {}
        self.opened: set[str] = set()  # files opened with nibabel
        self.skipped_files: list[str] = []  # files of a format nibabel does not read

    # ---------------------------------------------------------------- driver
    def _infer_num_modalities(self) -> int | None:
        for cases in self.datalist.values():
            for case in cases if isinstance(cases, list) else []:
                image = case.get("image") if isinstance(case, dict) else None
                if isinstance(image, list) and image:
                    return len(image)
        return None

    def run(self) -> list[str]:
        problems: list[str] = []
        for split, cases in self.datalist.items():
            if not isinstance(cases, list):
                continue
            for position, case in enumerate(cases):
                if isinstance(case, dict):
                    problems.extend(self._case(split, position, case))
        return problems

    def _modality(self, index: int) -> str:
        if self.names and 0 <= index < len(self.names):
            return f" ({self.names[index]})"
        return ""

    def _case(self, split: str, position: int, case: dict) -> list[str]:
        where = f"{split} case {str(case.get('case') or f'#{position}')!r}"
        problems: list[str] = []

        def report(key: str, info: _FileInfo, path: str) -> None:
            problems.extend(f"{where}: key {key}: {text}: {path}" for text in info.problems)

        # images: (key text, path, info, index or None for a multi-channel file)
        image = case.get("image")
        images: list[tuple[str, str, _FileInfo, int | None]] = []
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            info = self._file(path, "multichannel")
            if info is not None:
                images.append(("'image'", path, info, None))
        elif isinstance(image, list):
            for i, p in enumerate(image):
                if isinstance(p, (str, os.PathLike)):
                    info = self._file(os.fspath(p), "image")
                    if info is not None:
                        images.append((f"'image[{i}]'{self._modality(i)}", os.fspath(p), info, i))
        for key, path, info, _ in images:
            report(key, info, path)

        # the reference grid: the first image with a usable grid
        usable = [entry for entry in images if entry[2].spatial is not None]
        reference = usable[0] if usable else None
        if self.coregistered and reference is not None:
            ref_key = reference[0].replace("'", "")
            for key, path, info, _ in usable[1:]:
                problems.extend(
                    f"{where}: key {key}: {text}: {path}"
                    for text in grid_problems(info, reference[2], ref_key, stacked=True, affine_atol=self.affine_atol)
                )

        # labels
        label = case.get("label")
        if isinstance(label, (str, os.PathLike)):
            path = os.fspath(label)
            info = self._file(path, "label")
            if info is not None:
                report("'label'", info, path)
                if self.coregistered and reference is not None and info.spatial is not None:
                    ref_key = reference[0].replace("'", "")
                    problems.extend(
                        f"{where}: key 'label': {text}: {path}"
                        for text in grid_problems(
                            info, reference[2], ref_key, stacked=False, affine_atol=self.affine_atol
                        )
                    )
        elif isinstance(label, list):
            by_index = {entry[3]: entry for entry in usable if entry[3] is not None}
            for i, p in enumerate(label):
                if not isinstance(p, (str, os.PathLike)):
                    continue
                path = os.fspath(p)
                info = self._file(path, "label")
                if info is None:
                    continue
                key = f"'label[{i}]'{self._modality(i)}"
                report(key, info, path)
                if info.spatial is None:
                    continue
                # a per-modality label lies on its modality's grid; a multi-channel file has one grid
                target = by_index.get(i) or (reference if reference is not None and reference[3] is None else None)
                if target is not None:
                    problems.extend(
                        f"{where}: key {key}: {text}: {path}"
                        for text in grid_problems(
                            info, target[2], target[0].replace("'", ""), stacked=False, affine_atol=self.affine_atol
                        )
                    )
        return problems

    # ---------------------------------------------------------------- one file
    def _file(self, path: str, role: str) -> _FileInfo | None:
        """Checks of one file in one role (image, multichannel, label), cached; None: not checked."""
        key = (path, role)
        if key in self._cache:
            return self._cache[key]
        info = _FileInfo(role)
        if not os.path.exists(path):
            if not self.report_missing:
                return None
            info.problems.append("file not found")
        elif not is_nibabel_file(path):
            self.skipped_files.append(path)
            return None
        else:
            self.opened.add(path)
            self._inspect(path, role, info)
        self._cache[key] = info
        return info

    def _inspect(self, path: str, role: str, info: _FileInfo) -> None:
        try:
            img = nib.load(path)
            shape = tuple(int(s) for s in img.shape)
            affine = np.asarray(img.affine, dtype=np.float64)
        except Exception as e:  # nibabel raises many types for damaged files
            cause = ""
            if path.lower().endswith(".gz"):
                problem = check_compressed_size(path)
                cause = f"; {problem}" if problem else ""
            info.problems.append(f"unreadable header ({describe_error(e, path)}{cause})")
            return
        info.shape = shape
        header_ok = self._check_header(shape, affine, role, info)
        if self.read_voxels:
            readable = self._check_voxels(img, path, role, info)
            # data read fine: a cut gzip trailer is still reported, as the headers-only check does
            check_size = readable and path.lower().endswith(".nii.gz")
        else:
            check_size = True
        if check_size:
            try:
                problem = check_file_size(img, path)
            except Exception as e:
                problem = f"unreadable file ({describe_error(e, path)})"
            if problem:
                info.problems.append(problem)
        if header_ok:
            info.affine = affine
            if role != "multichannel":
                info.spatial = shape
            elif self.num_modalities == 1:
                info.spatial = strip_trailing_singletons(shape)  # a trailing channel axis of size 1 is stripped too
            elif self.num_modalities is not None:
                info.spatial = strip_trailing_singletons(shape[:-1])  # modalities on the last axis
        del img

    def _layouts(self) -> str:
        m, s = self.num_modalities, self.spatial_dims
        if s == 2:
            return f"(H, W, {m}) or (H, W, 1, {m})"
        if s == 3:
            return f"(H, W, D, {m})"
        return f"(..., {m})"

    def _check_header(self, shape: tuple[int, ...], affine: np.ndarray, role: str, info: _FileInfo) -> bool:
        """Header checks; False when the grid of the file cannot be compared with others."""
        ok = True
        if not shape or any(s <= 0 for s in shape):
            info.problems.append(f"empty image of shape {shape}")
            return False
        if not np.all(np.isfinite(affine)):
            info.problems.append("affine has non-finite values")
            ok = False
        elif abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            spacing = vector_text(spacing_of(affine))
            info.problems.append(f"singular affine (zero voxel size or collapsed axes), spacing {spacing}")
            ok = False
        s = self.spatial_dims
        if role == "multichannel":
            m = self.num_modalities
            if m is None:
                return ok
            if s is None:
                valid = (
                    len(shape) >= 3 and shape[-1] == m and 2 <= len(strip_trailing_singletons(shape[:-1])) <= 3
                ) or (m == 1 and len(strip_trailing_singletons(shape)) <= 3)
            elif s == 2:
                valid = (len(shape) == 3 and shape[-1] == m) or (len(shape) == 4 and shape[2] == 1 and shape[3] == m)
                valid = valid or (m == 1 and len(shape) == 2)
            else:
                valid = (len(shape) == 4 and shape[-1] == m) or (m == 1 and len(shape) == 3)
            if not valid:
                names = f" (one per modality: {', '.join(self.names)})" if self.names else ""
                if len(shape) >= 3 and shape[-1] != m:
                    info.problems.append(
                        f"multi-channel image of shape {shape} has {shape[-1]} channels on its last axis, "
                        f"expected {m}{names}"
                    )
                else:
                    info.problems.append(
                        f"image of shape {shape} cannot be read as {m} modalities{names}: expected a "
                        f"multi-channel file of shape {self._layouts()}"
                    )
                return False
            return ok
        what = "label" if role == "label" else "per-modality image"
        axes = strip_trailing_singletons(shape)
        if s is not None and len(axes) > s:
            info.problems.append(
                f"{what} of shape {shape} is not a {s}-D image (spatial_dims={s}; a {what} holds one channel)"
            )
            return False
        if s is None and len(axes) > 3:
            info.problems.append(
                f"{what} of shape {shape} has more than 3 non-singleton axes (a {what} holds one channel)"
            )
            return False
        return ok

    def _check_voxels(self, img: Any, path: str, role: str, info: _FileInfo) -> bool:
        """Voxel checks; False when the voxel data cannot be read."""
        try:
            if role == "label":
                data = np.asanyarray(img.dataobj)  # scaled values
            else:
                proxy = img.dataobj  # raw values: NaN/Inf survive scaling, and no float64 copy
                data = proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else np.asanyarray(proxy)
        except Exception as e:
            info.problems.append(f"voxel data unreadable ({describe_error(e, path)})")
            return False
        if data.dtype.kind not in "biufc":
            info.problems.append(f"voxel type {data.dtype} is not numeric")
            return True
        finite = None
        if data.dtype.kind in "fc":
            finite = np.isfinite(data)
            bad = data.size - int(np.count_nonzero(finite))
            if bad:
                nan = int(np.count_nonzero(np.isnan(data)))
                info.problems.append(f"{bad} non-finite voxels of {data.size} ({nan} NaN, {bad - nan} Inf)")
        if role != "label":
            return True
        values = data if finite is None else data[finite]
        if values.size == 0:
            return True
        if values.dtype.kind == "c":
            info.problems.append(f"complex label values ({values.dtype})")
            return True
        if values.dtype.kind == "f":
            fractional = values != np.round(values)
            count = int(np.count_nonzero(fractional))
            if count:
                example = float(values[fractional][0])
                info.problems.append(
                    f"{count} voxels with non-integer label values (e.g. {example:g}); a label map holds class indices"
                )
        if self.num_classes is None:
            return True
        low, high = values.min(), values.max()
        if low < 0 or high >= self.num_classes:
            outside = values[(values < 0) | (values >= self.num_classes)]
            distinct = np.unique(outside)
            listed = ", ".join(f"{float(v):g}" for v in distinct[:_MAX_LISTED_VALUES])
            more = f", ... ({distinct.size} distinct)" if distinct.size > _MAX_LISTED_VALUES else ""
            info.problems.append(
                f"label values outside [0, {self.num_classes}): {listed}{more} in {outside.size} voxels "
                f"(num_classes={self.num_classes} including background)"
            )
        return True
