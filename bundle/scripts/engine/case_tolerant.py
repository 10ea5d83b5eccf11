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

from monai.engines import SupervisedEvaluator
from monai.transforms import apply_transform
from torch.utils.data import Dataset

from scripts.data.transforms import input_files_of

__all__ = ["CaseTolerantDataset", "CaseTolerantEvaluator", "CaseFailuresError", "root_cause"]

ERROR_KEY = "error"


class CaseFailuresError(RuntimeError):
    """Raised at the end of a run in which some cases failed; ``failures`` maps case id to message."""

    def __init__(self, failures: dict[str, str], total: int) -> None:
        self.failures = dict(failures)
        lines = [f"{len(failures)} of {total} cases failed (the other cases were written):"]
        lines += [f"  {msg}" for msg in failures.values()]
        super().__init__("\n".join(lines))


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a chain (MONAI wraps transform errors in ``RuntimeError``)."""
    seen = set()
    while (error.__cause__ is not None or error.__context__ is not None) and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return error


def _describe(case_id: str, files: Sequence[str], error: BaseException) -> str:
    cause = root_cause(error)
    where = f"case '{case_id}'" + (f" (files: {', '.join(files)})" if files else "")
    return f"{where}: {type(cause).__name__}: {cause}"


class CaseTolerantDataset(Dataset):
    """
    Map-style dataset that applies ``transform`` to each case when it is read; a case whose
    transform raises becomes ``{"case": id, "error": "case 'id' (files: ...): <error>"}``.

    The ``input_files`` entry of a case (see :func:`scripts.data.inference_data.inference_cases`)
    is kept out of the transformed item (it would not collate) and used for the messages.

    Args:
        data: list of case dicts with ``case`` and ``image``.
        transform: the preprocessing.
        case_key: key of the case id.
    """

    def __init__(self, data: Sequence[dict], transform: Callable | None = None, case_key: str = "case") -> None:
        self.data = list(data)
        self.transform = transform
        self.case_key = case_key
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
            return apply_transform(self.transform, case) if self.transform is not None else case
        except Exception as e:  # noqa: BLE001 - every error of one case is reported, not raised
            message = _describe(case_id, self.files(case_id), e)
            return {self.case_key: case_id, ERROR_KEY: message}


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
        super().__init__(*args, **kwargs)
        if isinstance(raise_on_failure, str):  # `--raise_on_failure false` arrives as a string
            raise_on_failure = raise_on_failure.strip().lower() not in ("false", "0", "no", "off", "")
        self.raise_on_failure = bool(raise_on_failure)
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
            for case_id, message in zip(case_ids, errors if isinstance(errors, (list, tuple)) else [errors]):
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
