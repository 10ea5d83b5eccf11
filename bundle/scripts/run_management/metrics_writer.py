# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events

from .atomic_checkpoint import atomic_write_bytes

__all__ = ["ValidationMetricsWriter"]


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist() if value.numel() > 1 else float(value)
    return value


class ValidationMetricsWriter:
    """Writes the validation metrics of every validation round to a JSON file, and logs a summary.

    Attach it to the evaluator. After each round the file ``filename`` holds the latest metrics, the
    best key metric with its epoch, and the history of every round. Per-class metrics (tensors) are
    written as ``{class_name: value}`` when ``class_names`` is given. The file is replaced atomically.
    ``state_dict``/``load_state_dict`` carry the history through a resumed training run.

    Args:
        filename: path of the JSON file (its folder is created); relative to ``folder`` when that is given.
        class_names: names of the foreground classes, in the order of per-class metric tensors.
        logger_name: logger used for the one-line summary.
        folder: the folder of ``filename`` (a run's ``output_dir``), or None.
    """

    def __init__(
        self,
        filename: str = "metrics.json",
        class_names: Sequence[str] | None = None,
        logger_name: str = "ValidationMetrics",
        folder: str | None = None,
    ):
        self.filename = os.path.join(folder, filename) if folder else str(filename)
        self.class_names = list(class_names) if class_names is not None else None
        self.logger = logging.getLogger(logger_name)
        self.history: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def state_dict(self) -> dict[str, Any]:
        """The history of validation rounds (plain numbers, lists and dicts), for the training-state checkpoint."""
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history, so that a resumed run's ``metrics.json`` also lists the rounds before it."""
        self.history = list(state_dict["history"])

    def _named(self, value: Any) -> Any:
        value = _plain(value)
        if isinstance(value, list) and self.class_names is not None and len(value) == len(self.class_names):
            return dict(zip(self.class_names, value, strict=False))
        return value

    def __call__(self, engine: Engine) -> None:
        metrics = {k: self._named(v) for k, v in engine.state.metrics.items()}
        record = {"epoch": int(engine.state.epoch), **metrics}
        self.history.append(record)
        key = getattr(engine.state, "key_metric_name", None) or next(iter(metrics), None)
        content = {
            "epoch": record["epoch"],
            "metrics": metrics,
            "key_metric": key,
            "best_metric": _plain(getattr(engine.state, "best_metric", None)),
            "best_metric_epoch": int(getattr(engine.state, "best_metric_epoch", -1)),
            "history": self.history,
        }
        if key is not None:
            content[key] = metrics.get(key)
            content[f"best_{key}"] = content["best_metric"]
        os.makedirs(os.path.dirname(os.path.abspath(self.filename)), exist_ok=True)
        atomic_write_bytes(json.dumps(content, indent=2).encode("utf-8"), self.filename)
        if key is not None and isinstance(content[key], float):
            self.logger.info(
                f"epoch {record['epoch']}: {key} = {content[key]:.4f} "
                f"(best {content['best_metric']:.4f} at epoch {content['best_metric_epoch']}); written to {self.filename}"
            )
