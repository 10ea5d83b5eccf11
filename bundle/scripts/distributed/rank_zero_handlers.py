# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Keeping the handlers that only write output (logs, TensorBoard, checkpoints, metrics files) on rank 0."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

from ignite.handlers import ProgressBar
from monai.handlers import (
    ClassificationSaver,
    ClearMLHandler,
    LogfileHandler,
    MetricsSaver,
    MLFlowHandler,
    StatsHandler,
    TensorBoardHandler,
)

from ..run_management.metrics_writer import ValidationMetricsWriter
from ..run_management.tracking import NamePerClassMetrics

__all__ = ["OUTPUT_HANDLER_TYPES", "handlers_for_rank"]

logger = logging.getLogger(__name__)

# handlers whose only effect is output: on ranks other than 0 they would duplicate logs, or write
# concurrent TensorBoard event files and metrics files. Checkpoint savers are not among them: ignite
# writes checkpoints on rank 0 only (`save_on_rank`) while building them on every rank, which a
# training state that gathers from every rank (random states) requires.
OUTPUT_HANDLER_TYPES: tuple[type, ...] = (
    StatsHandler,
    TensorBoardHandler,
    ProgressBar,
    MetricsSaver,
    ClassificationSaver,
    LogfileHandler,
    MLFlowHandler,
    ClearMLHandler,
    ValidationMetricsWriter,
    NamePerClassMetrics,
)


def _release_tensorboard_writer(handler: TensorBoardHandler) -> None:
    """Close the writer a TensorBoard handler created for itself and delete its (empty) event file."""
    if not getattr(handler, "internal_writer", False):
        return
    writer = getattr(handler, "_writer", None)
    event_writer = getattr(getattr(writer, "file_writer", None), "event_writer", None)
    filename = getattr(event_writer, "_file_name", None)
    handler.close()
    if filename:
        with contextlib.suppress(OSError):
            os.remove(filename)


def handlers_for_rank(
    handlers: Sequence[Any] | None, rank: int, output_handler_types: Sequence[type] | None = None
) -> list[Any]:
    """The handlers a rank attaches: all of them on rank 0, all but the output-only ones elsewhere.

    Handlers are matched by type (``isinstance``), never by position, so the handler lists of the
    configs may change without breaking the distributed override. Handlers that change training
    (learning-rate schedule, validation, per-modality validation, checkpoint loading, early
    stopping, ...) stay on every rank: they must run identically everywhere. So do checkpoint
    savers (MONAI ``CheckpointSaver`` and subclasses): they write on rank 0 only by themselves
    (ignite's ``save_on_rank``), and the objects they save may gather state from every rank.

    A TensorBoard handler creates its event file when it is constructed: for the ones dropped here
    the writer is closed and that empty file deleted, so that only rank 0's event file remains.

    Args:
        handlers: the configured handlers (``None`` is an empty list).
        rank: this process's global rank.
        output_handler_types: the types kept on rank 0 only; defaults to :data:`OUTPUT_HANDLER_TYPES`
            (MONAI's stats, TensorBoard, metrics and classification savers, log file, MLflow and
            ClearML handlers, ignite's ``ProgressBar`` and the bundle's ``ValidationMetricsWriter``
            and ``NamePerClassMetrics``).

    Returns:
        a new list, in the original order.

    Example::

        train_handlers = handlers_for_rank(handlers, torch.distributed.get_rank())
    """
    handlers = list(handlers or [])
    if int(rank) == 0:
        return handlers
    types = tuple(OUTPUT_HANDLER_TYPES if output_handler_types is None else output_handler_types)
    kept = []
    for handler in handlers:
        if isinstance(handler, types):
            if isinstance(handler, TensorBoardHandler):
                _release_tensorboard_writer(handler)
            logger.debug(f"rank {rank}: {type(handler).__name__} left to rank 0")
        else:
            kept.append(handler)
    return kept
