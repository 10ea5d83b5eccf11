# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Checks, before training starts, that the run's output folders can hold what it will write."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["OutputFolderError", "check_output_folders"]


class OutputFolderError(OSError):
    """An output folder cannot be created or written, or its disk has too little free space."""


def _write_probe(folder: Path) -> None:
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".write_probe-")
    try:
        os.write(fd, b"probe")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.remove(probe)


def check_output_folders(folders: Mapping[str, str] | Sequence[str], min_free_mb: float = 0.0) -> dict[str, float]:
    """Create each output folder, prove it writable and check the free space of its disk.

    Run it in a bundle's ``initialize`` so that an unusable folder stops the run before any data is
    loaded or any epoch is trained, with a message naming the folder (and the config id that sets
    it), instead of an error at the first checkpoint. For each folder: it is created (with its
    parents) if missing; a hidden probe file is written, ``fsync``-ed and removed; the free space
    of its filesystem (``shutil.disk_usage``) must be at least ``min_free_mb``. Checks that pass
    leave nothing behind but the created folders.

    Args:
        folders: ``{config_id: folder}`` (e.g. ``{"output_dir": ..., "ckpt_dir": ...}``), or a list of
            folders.
        min_free_mb: the least free space, in MiB, each folder's disk must have; ``0`` disables the check.

    Returns:
        the free space of each folder's disk in MiB, keyed like ``folders``.

    Raises:
        OutputFolderError: (an ``OSError``) naming the folder, when it cannot be created, is not a
            folder, cannot be written, or has less than ``min_free_mb`` free.

    Example::

        check_output_folders({"output_dir": "runs/train", "ckpt_dir": "models"}, min_free_mb=200)
    """
    if min_free_mb is None or float(min_free_mb) < 0:
        raise ValueError(f"min_free_mb must be >= 0, got {min_free_mb}.")
    items = list(folders.items()) if isinstance(folders, Mapping) else [(None, f) for f in folders]
    free: dict[str, float] = {}
    for key, folder in items:
        path = Path(str(folder)).expanduser()
        what = f"{key} '{path}'" if key else f"'{path}'"
        hint = f" (set it with --{key})" if key else ""
        if path.exists() and not path.is_dir():
            raise OutputFolderError(f"output folder {what} is a file, not a folder. Choose another location{hint}.")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputFolderError(
                f"output folder {what} cannot be created: {e.strerror or e}. Choose a writable location{hint}."
            ) from e
        try:
            _write_probe(path)
        except OSError as e:
            raise OutputFolderError(
                f"output folder {what} is not writable: {e.strerror or e}. Fix its permissions or choose "
                f"another folder{hint}."
            ) from e
        free_mb = shutil.disk_usage(path).free / 2**20
        if free_mb < float(min_free_mb):
            raise OutputFolderError(
                f"output folder {what} has {free_mb:.0f} MiB free on its disk, less than min_free_disk_mb = "
                f"{float(min_free_mb):g} MiB needed for checkpoints and logs. Free some space, choose a folder on "
                f"another disk{hint}, or lower --min_free_disk_mb."
            )
        free[str(key) if key else str(path)] = free_mb
    return free
