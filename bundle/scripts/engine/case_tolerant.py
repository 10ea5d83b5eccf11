# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Batch inference that survives bad cases: a case that cannot be read, preprocessed, segmented or
saved is reported (naming the case and its files) and skipped, and every other case completes.

- :class:`CaseTolerantDataset` applies the preprocessing lazily and turns a failure into a marker
  item ``{"case": id, "error": message}`` instead of raising in the data loader.
- :class:`CaseTolerantEvaluator` is a MONAI ``SupervisedEvaluator`` that skips marker items,
  catches the errors of one case's inference and postprocessing (saving included), and at the end
  logs a summary; with ``raise_on_failure`` (the default) it then raises ``CaseFailuresError``
  listing the failed cases, so that ``python -m monai.bundle run`` exits with a non-zero status
  after having written every good case.

Use ``batch_size=1`` (cases of different sizes cannot be batched anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import SupervisedEvaluator
from monai.transforms import apply_transform
from torch.utils.data import Dataset

from ..data.transforms import input_files_of
from ..errors import BundleError, check_bool

__all__ = ["CaseTolerantDataset", "CaseTolerantEvaluator", "CaseFailuresError", "root_cause"]

ERROR_KEY = "error"


class CaseFailuresError(BundleError, RuntimeError):
    """Raised at the end of a run in which some cases failed; ``failures`` maps case id to message."""

    def __init__(self, failures: dict[str, str], total: int) -> None:
        # the arguments themselves go to Exception (pickle and copy rebuild the error from them)
        super().__init__(dict(failures), total)
        self.failures = dict(failures)
        self.total = total

    def __str__(self) -> str:
        lines = [f"{len(self.failures)} of {self.total} cases failed (the other cases were written):"]
        lines += [f"  {msg}" for msg in self.failures.values()]
        return "\n".join(lines)


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a chain (MONAI wraps transform errors in ``RuntimeError``)."""
    seen = set()
    while (error.__cause__ is not None or error.__context__ is not None) and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return error


def _describe(case_id: str, files: Sequence[str], error: BaseException) -> str:
    cause = root_cause(error)
    where = f"case {str(case_id)!r}" + (f" (files: {', '.join(files)})" if files else "")
    return f"{where}: {type(cause).__name__}: {cause}"


class CaseTolerantDataset(Dataset):
    """
    Map-style dataset that applies ``transform`` to each case when it is read; a case whose
    transform raises becomes ``{"case": id, "error": "case 'id' (files: ...): <error>"}``.

    The ``input_files`` entry of a case (see :func:`scripts.data.inference_data.inference_cases`)
    is kept out of the transformed item (it would not collate) and used for the messages.

    A case whose ``finite_keys`` hold NaN or Inf after the transform fails too (a NaN voxel makes the
    whole normalised image NaN, and the network would return all background). A failed case's files
    are checked one by one (:func:`scripts.data.case_validation.validate_cases`), so that the
    message names the bad file (truncated, NaN voxels, wrong layout) rather than every file of the case.

    Args:
        data: list of case dicts with ``case`` and ``image``.
        transform: the preprocessing.
        case_key: key of the case id.
        finite_keys: keys that must hold finite values after the transform.
        modalities, spatial_dims: name the files and check their layout in the diagnosis of a failed case.
    """

    def __init__(
        self,
        data: Sequence[dict],
        transform: Callable | None = None,
        case_key: str = "case",
        finite_keys: Sequence[str] = ("image",),
        modalities: Sequence[str] | None = None,
        spatial_dims: int | None = None,
    ) -> None:
        self.data = list(data)
        self.transform = transform
        self.case_key = case_key
        self.finite_keys = list(finite_keys)
        self.modalities = list(modalities) if modalities else None
        self.spatial_dims = spatial_dims
        self.logger = logging.getLogger(self.__class__.__name__)

    def __len__(self) -> int:
        return len(self.data)

    def case_id(self, index: int) -> str:
        return str(self.data[index].get(self.case_key, f"#{index}"))

    def files(self, case_id: str) -> list[str]:
        for case in self.data:
            if str(case.get(self.case_key)) == case_id:
                return input_files_of(case.get("input_files")) or input_files_of(case.get("image"))
        return []

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = {k: v for k, v in self.data[index].items() if k != "input_files"}
        case_id = self.case_id(index)
        try:
            item = apply_transform(self.transform, case) if self.transform is not None else case
            for key in self.finite_keys:
                value = item.get(key) if isinstance(item, dict) else None
                if (
                    isinstance(value, torch.Tensor)
                    and value.is_floating_point()
                    and not bool(torch.isfinite(value).all())
                ):
                    raise ValueError(f"{str(key)!r} holds NaN or Inf values after preprocessing")
            return item
        except Exception as e:  # noqa: BLE001 - every error of one case is reported, not raised
            message = self._diagnose(case) or _describe(case_id, self.files(case_id), e)
            return {self.case_key: case_id, ERROR_KEY: message}

    def _diagnose(self, case: dict) -> str | None:
        """The problems of a failed case's files, one per line naming the key and the file; None if none found."""
        from scripts.data.case_validation import validate_cases

        try:
            problems = validate_cases(
                {"inference": [case]}, None, modalities=self.modalities, spatial_dims=self.spatial_dims
            )
        except Exception:  # noqa: BLE001 - the diagnosis must not hide the original error
            return None
        return "\n    ".join(problems) if problems else None


class CaseTolerantEvaluator(SupervisedEvaluator):
    """
    ``SupervisedEvaluator`` for batch inference over cases of which some may be bad.

    Per iteration (``batch_size=1``): a marker item from :class:`CaseTolerantDataset` is recorded
    as failed; otherwise the usual iteration runs (inference, postprocessing, saving), and any
    error it raises is recorded against the case instead of stopping the run. Failed cases are
    logged as they happen (error level) and listed at the end, with the number of cases written.

    Args:
        raise_on_failure: after the run, raise :class:`CaseFailuresError` if any case failed
            (non-zero exit status of ``monai.bundle run``). False: log only (exit status 0).
        case_key: key of the case id in the batches.
        other arguments: as ``SupervisedEvaluator``.

    Attributes:
        failures: ``{case id: message}`` of the last run.
        completed_cases: ids of the cases that went through without error.
    """

    def __init__(self, *args: Any, raise_on_failure: bool = True, case_key: str = "case", **kwargs: Any) -> None:
        if "amp" in kwargs:
            check_bool(kwargs["amp"], "amp")
        super().__init__(*args, **kwargs)
        self.raise_on_failure = check_bool(raise_on_failure, "raise_on_failure")
        self.case_key = case_key
        self.failures: dict[str, str] = {}
        self.completed_cases: list[str] = []
        self.case_logger = logging.getLogger(self.__class__.__name__)

    def _case_ids(self, batchdata: Any) -> list[str]:
        ids = batchdata.get(self.case_key) if isinstance(batchdata, dict) else None
        if ids is None:
            return [f"#{self.state.iteration}"]
        return [str(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]

    def _files(self, case_id: str) -> list[str]:
        dataset = getattr(self.data_loader, "dataset", None)
        return dataset.files(case_id) if isinstance(dataset, CaseTolerantDataset) else []

    def _fail(self, case_id: str, message: str) -> None:
        self.failures[case_id] = message
        self.case_logger.error(f"FAILED {message}")

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> dict:
        case_ids = self._case_ids(batchdata)
        errors = batchdata.get(ERROR_KEY) if isinstance(batchdata, dict) else None
        if errors is not None:
            for case_id, message in zip(
                case_ids, errors if isinstance(errors, (list, tuple)) else [errors], strict=False
            ):
                self._fail(case_id, str(message))
            return {}
        try:
            output = super()._iteration(engine, batchdata)
        except Exception as e:  # noqa: BLE001 - one case's error must not stop the others
            for case_id in case_ids:
                self._fail(case_id, _describe(case_id, self._files(case_id), e))
            return {}
        self.completed_cases.extend(case_ids)
        return output

    def run(self, *args: Any, **kwargs: Any) -> None:
        self.failures = {}
        self.completed_cases = []
        super().run(*args, **kwargs)
        total = len(self.completed_cases) + len(self.failures)
        self.case_logger.info(f"{len(self.completed_cases)} of {total} cases segmented.")
        if self.failures:
            self.case_logger.error(f"{len(self.failures)} failed case(s): {', '.join(self.failures)}")
            if self.raise_on_failure:
                raise CaseFailuresError(self.failures, total)
