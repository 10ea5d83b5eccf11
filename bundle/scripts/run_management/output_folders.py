# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Checks, before training starts, that the run's output folders can hold what it will write."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import BundleError

try:
    import fcntl
except ImportError:  # Windows: no run lock
    fcntl = None  # type: ignore[assignment]

#: name of the lock file a run holds in its locked output folder
LOCK_NAME = ".run.lock"
# folders this process created (parents first), and the run locks it holds {folder: (fd, lock file)}
_CREATED: list[Path] = []
_LOCKS: dict[str, tuple[int, Path]] = {}


def _at_exit() -> None:
    """Release the run locks, then remove the folders this process created that are still empty
    (a run that failed before writing anything leaves no empty folders behind)."""
    for fd, lock_file in _LOCKS.values():
        try:
            lock_file.unlink()
        except OSError:
            pass
        os.close(fd)
    _LOCKS.clear()
    for folder in reversed(_CREATED):
        try:
            folder.rmdir()  # fails, and keeps the folder, unless it is empty
        except OSError:
            pass


atexit.register(_at_exit)


def _lock(path: Path, what: str, hint: str) -> None:
    """Hold an exclusive lock on ``path`` until this process ends (released by the OS even after
    ``kill -9``); only on rank 0 of a distributed run, whose other processes share the folder."""
    if fcntl is None or os.environ.get("RANK", "0").strip() not in ("", "0"):
        return
    key = str(path.resolve())
    if key in _LOCKS:
        return
    lock_file = path / LOCK_NAME
    for _ in range(3):
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise OutputFolderError(
                f"output folder {what} is in use by another run ({holder}): two runs would overwrite each other's "
                f"checkpoints. Wait for it to finish, or choose another folder{hint}."
            ) from None
        try:  # the file an exiting run unlinked meanwhile is not the lock: open the new one
            if os.stat(lock_file).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    else:
        raise OutputFolderError(f"output folder {what}: cannot take the run lock {lock_file}; try again.")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    _LOCKS[key] = (fd, lock_file)


__all__ = ["OutputFolderError", "check_output_folders"]


class OutputFolderError(BundleError, OSError):
    """An output folder cannot be created or written, or its disk has too little free space."""


def _write_probe(folder: Path) -> None:
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".write_probe-")
    try:
        os.write(fd, b"probe")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.remove(probe)


def check_output_folders(
    folders: Mapping[str, str] | Sequence[str], min_free_mb: float = 0.0, lock: str | None = None
) -> dict[str, float]:
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
        lock: the key of the folder (e.g. ``"output_dir"``) this run locks until it ends (a hidden
            ``.run.lock`` file): a second run into it meanwhile is refused. None: no lock.

    Folders it creates are removed when the process ends if they are still empty.

    Returns:
        the free space of each folder's disk in MiB, keyed like ``folders``.

    Raises:
        OutputFolderError: (an ``OSError``) naming the folder, when it cannot be created, is not a
            folder, cannot be written, has less than ``min_free_mb`` free, or is locked by another run.

    Example::

        check_output_folders({"output_dir": "runs/train", "ckpt_dir": "models"}, min_free_mb=200)
    """
    if min_free_mb is None or float(min_free_mb) < 0:
        raise ValueError(f"min_free_mb must be >= 0, got {min_free_mb}.")
    items = list(folders.items()) if isinstance(folders, Mapping) else [(None, f) for f in folders]
    free: dict[str, float] = {}
    for key, folder in items:
        path = Path(str(folder)).expanduser()
        what = f"{key} {str(path)!r}" if key else f"{str(path)!r}"
        hint = f" (set it with --{key})" if key else ""
        if path.exists() and not path.is_dir():
            raise OutputFolderError(f"output folder {what} is a file, not a folder. Choose another location{hint}.")
        missing = []
        parent = path.absolute()
        while not parent.exists() and parent != parent.parent:
            missing.append(parent)
            parent = parent.parent
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _CREATED.extend(p for p in reversed(missing) if p.is_dir() and p not in _CREATED)
            raise OutputFolderError(
                f"output folder {what} cannot be created: {e.strerror or e}. Choose a writable location{hint}."
            ) from e
        _CREATED.extend(p for p in reversed(missing) if p not in _CREATED)
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
        if lock is not None and key == lock:
            _lock(path, what, hint)
    return free
