# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Checks of what a finished training run produced."""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from ..errors import BundleError

__all__ = ["TrainingOutputError", "check_model_written"]


class TrainingOutputError(BundleError, RuntimeError):
    """Training ended without writing the model it is meant to produce."""


def check_model_written(
    ckpt_dir: str,
    evaluator: Any,
    val_interval: int,
    epochs: int,
    external_training_data: bool = False,
    file_name: str = "model.pt",
) -> str:
    """``ckpt_dir/file_name`` when it exists; otherwise :class:`TrainingOutputError` saying why it was not written.

    The best model is written by the validation (``val_mean_dice``): a run in which no validation
    round ran, or in which the key metric was never a number, writes none, and would otherwise
    exit 0 with nothing to show. Not checked when a caller trains on its own cases
    (``external_training_data``, MONAI Label), which may validate differently.
    """
    model_file = os.path.join(ckpt_dir, file_name)
    if external_training_data or os.path.isfile(model_file):
        return model_file
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return model_file  # rank 0 writes it, maybe on storage this process does not see
    state = evaluator.state
    if not getattr(state, "iteration", 0):
        reason = (
            f"no validation round ran (val_interval = {val_interval}, epochs = {epochs}: validation runs every "
            "val_interval epochs); lower --val_interval"
        )
    else:
        key = getattr(state, "key_metric_name", None) or "the key metric"
        value = (getattr(state, "metrics", None) or {}).get(key)
        shown = "NaN" if isinstance(value, float) and math.isnan(value) else value
        reason = (
            f"{key} was never a number better than the initial -1 (last value: {shown}); NaN means the validation "
            "labels hold no foreground class: give validation cases whose labels contain the classes"
        )
    raise TrainingOutputError(f"training finished without writing {model_file}: {reason}.")
