# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Reading checkpoint files with errors that name the file and say what to do.

A checkpoint cut short (a full disk, an interrupted copy, a storage fault) makes ``torch.load`` fail
deep inside its zip or pickle reader (``PytorchStreamReader failed reading zip archive: failed
finding central directory``), which names neither the file nor a remedy. :func:`read_checkpoint`
turns every such failure into a :class:`CheckpointError` naming the file; :class:`CheckedCheckpointLoader`
is MONAI's ``CheckpointLoader`` (``evaluate.yaml``, ``inference.yaml``) with the same errors, and
``scripts.run_management.resume.ResumeTraining`` reads training states with it.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from ..errors import BundleError

__all__ = ["CheckedCheckpointLoader", "CheckpointError", "read_checkpoint"]


class CheckpointError(BundleError, RuntimeError):
    """A checkpoint file is missing, unreadable (truncated, corrupt) or does not fit the network."""


def _one_line(error: BaseException, limit: int = 160) -> str:
    """``Type: message`` on one line; a long message (torch's zip reader adds a paragraph) to its first sentence."""
    text = " ".join(str(error).split())
    if len(text) > limit and ". " in text[:limit]:
        text = text[: text.index(". ") + 1]
    elif len(text) > limit:
        text = text[:limit] + " ..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def read_checkpoint(path: str | os.PathLike, map_location: Any = None, remedy: str = "") -> Any:
    """``torch.load(path, map_location, weights_only=True)``, raising :class:`CheckpointError` naming ``path``.

    Args:
        path: the checkpoint file.
        map_location: ``torch.load``'s ``map_location``.
        remedy: what the user should do, appended to the message (e.g. how to start from scratch).

    Raises:
        CheckpointError: the file does not exist, or cannot be read (truncated, corrupt, not a
            checkpoint); the message names the file and the reader's error.
    """
    path = os.fspath(path)
    tail = f" {remedy}" if remedy else ""
    if not os.path.isfile(path):
        raise CheckpointError(f"cannot load {path}: no such file.{tail}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - zip, pickle, EOF and OS errors alike mean an unusable file
        raise CheckpointError(
            f"cannot load {path}: the file is truncated or corrupt ({_one_line(e)}); it was cut short while being "
            f"written or copied, or is not a checkpoint.{tail}"
        ) from e


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (same arguments) whose failures are :class:`CheckpointError` s naming the file.

    - no file at ``load_path``: says so, and how to give the folder of the weights;
    - a truncated or corrupt file: says so (see :func:`read_checkpoint`);
    - a readable file whose weights do not fit the network (another network config): says to run
      with the configs the model was trained with.

    Loading itself is MONAI's: the error is diagnosed only after ``CheckpointLoader.__call__``
    failed, by reading the file again, so that a good checkpoint is read once and loaded exactly as
    ``CheckpointLoader`` loads it (rather than repeating its loading code here).
    """

    remedy = (
        "Point --ckpt_dir at the folder of a complete model.pt (training writes its best weights there), "
        "copy the file again from its source, or train again."
    )

    def __call__(self, engine: Engine) -> None:
        try:
            super().__call__(engine)
        except Exception as e:  # noqa: BLE001 - diagnosed below, re-raised with the file named
            read_checkpoint(self.load_path, self.map_location, self.remedy)  # raises for a missing or bad file
            raise CheckpointError(
                f"cannot load {self.load_path} into the network of this config ({_one_line(e, 400)}). Evaluate and "
                "infer with the configs and settings (--spatial_dims, --modalities, --class_names, "
                "--modality_presence_input, a method's or plan's override, ...) the model was trained with."
            ) from e
