# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Checkpoint files that are either complete or absent, whatever happens during a save.

MONAI's ``CheckpointSaver`` writes with ignite's ``DiskSaver(atomic=False)``: ``torch.save`` straight
into the final file. Ignite's ``Checkpoint`` also deletes the file it replaces *before* writing the new
one. A process killed (or a disk filling up) during a save therefore leaves a truncated checkpoint,
or none at all when ``n_saved=1``. The classes here write every checkpoint to a temporary file in the
same folder, flush and ``fsync`` it, rename it onto the final name with ``os.replace`` (atomic on
POSIX and Windows) and only then delete the files it replaces.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver

__all__ = ["PARTIAL_SUFFIX", "atomic_save", "atomic_write_bytes", "AtomicDiskSaver", "AtomicCheckpointSaver"]

logger = logging.getLogger(__name__)

# temporary files are named `.<final name>.<random>.partial`: hidden, and never matched by `*.pt`
PARTIAL_SUFFIX = ".partial"


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# read once, at import (os.umask can only be read by setting it, which is not thread-safe)
_FILE_MODE = _default_file_mode()


def atomic_save(obj: Any, path: str | os.PathLike, save_fn: Callable[..., Any] | None = None, **kwargs: Any) -> None:
    """Save ``obj`` to ``path`` so that ``path`` never holds a partially written file.

    The object is serialised into a temporary file in the folder of ``path`` (same filesystem, so
    that the rename is atomic), which is flushed and ``fsync``-ed, given the permissions of a
    normally created file, and renamed onto ``path`` with ``os.replace``; the folder is then
    ``fsync``-ed so that the rename survives a power loss. If serialising or writing fails (an
    exception, a full disk), the temporary file is removed, the error is raised and ``path`` keeps
    its previous content. If the process is killed meanwhile, ``path`` is untouched and only a hidden
    ``.<name>.<random>.partial`` file may remain.

    Args:
        obj: what to save (typically a dict of state dicts).
        path: the final file; its folder must exist.
        save_fn: ``save_fn(obj, file_object, **kwargs)``; defaults to ``torch.save``.
        kwargs: further arguments of ``save_fn``.

    Example::

        atomic_save(network.state_dict(), "models/model.pt")
    """
    path = Path(path)
    save = torch.save if save_fn is None else save_fn
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            save(obj, f, **kwargs)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_folder(path.parent)


def _write_bytes(data: bytes, f: Any) -> None:
    f.write(data)


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` with :func:`atomic_save` (temporary file, ``fsync``, rename): the
    project's one atomic writer, for JSON reports, datalists and label files alike."""
    atomic_save(data, path, save_fn=_write_bytes)


class AtomicDiskSaver(BaseSaveHandler):
    """Ignite save handler that writes with :func:`atomic_save` and removes replaced files afterwards.

    Not ignite's ``DiskSaver(atomic=True)``: that one neither ``fsync``-s the file nor its folder, and
    ``ignite.handlers.Checkpoint`` calls ``remove(old)`` before ``save(new)``, so a process killed
    between the two would leave no complete checkpoint. Here ``remove`` only records the file, which
    is deleted once the next checkpoint has been written completely (never the file just written,
    which matters for a fixed ``filename``). Only the process of rank ``save_on_rank`` writes or
    deletes, as with ``DiskSaver``. It implements ignite's public ``BaseSaveHandler`` interface.

    Args:
        dirname: folder of the checkpoints (created if missing).
        filename: a fixed file name for every checkpoint (e.g. ``model.pt``), or ``None`` for the name
            ``Checkpoint`` chooses.
        save_on_rank: the rank that writes in distributed training.
        kwargs: further arguments of ``torch.save``.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None, save_on_rank: int = 0, **kwargs: Any):
        self.dirname = Path(dirname).expanduser()
        self.filename = filename
        self.save_on_rank = int(save_on_rank)
        self.kwargs = kwargs
        self._to_remove: list[str] = []
        if idist.get_rank() == self.save_on_rank:
            self.dirname.mkdir(parents=True, exist_ok=True)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        path = self.dirname / (self.filename or filename)
        atomic_save(checkpoint, path, **self.kwargs)
        replaced, self._to_remove = self._to_remove, []
        for name in dict.fromkeys(replaced):
            if name != path.name:
                with contextlib.suppress(FileNotFoundError):
                    (self.dirname / name).unlink()

    def remove(self, filename: str) -> None:
        """Delete ``filename`` once the next checkpoint is written (see the class description)."""
        if idist.get_rank() == self.save_on_rank:
            self._to_remove.append(self.filename or filename)

    def replace_on_next_save(self, filenames: Iterable[str]) -> None:
        """Delete these files of ``dirname`` (e.g. left by an earlier run) once the next checkpoint is written."""
        if idist.get_rank() == self.save_on_rank:
            self._to_remove.extend(os.path.basename(str(f)) for f in filenames)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` whose every file is written atomically (:class:`AtomicDiskSaver`).

    Same arguments and files as ``monai.handlers.CheckpointSaver``; in addition:

    - a checkpoint is written to a temporary file, ``fsync``-ed and renamed onto its final name, and
      the files it replaces (``n_saved``, ``key_metric_n_saved``, a fixed ``key_metric_filename``)
      are deleted only after that, so a process killed at any moment, or a save that fails (full
      disk), leaves the previous checkpoint complete and loadable;
    - ``state_dict()`` / ``load_state_dict()`` hold the key-metric record (the best scores kept so
      far), so that a resumed training run keeps comparing with the best model of the run before it
      (add the saver to the training state's ``save_dict``);
    - :meth:`replace_on_next_save` lets a resumed run retire the interval checkpoints of the run it
      continues, so that ``n_saved`` still holds across restarts;
    - temporary files left in ``save_dir`` by saves of an earlier process that was killed are deleted
      when the saver is created.

    Example (bundle config)::

        _target_: scripts.run_management.atomic_checkpoint.AtomicCheckpointSaver
        save_dir: "@ckpt_dir"
        save_dict: {model: "@network"}
        save_key_metric: true
        key_metric_filename: model.pt
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in self._checkpoints():
            fixed_name = getattr(checkpoint.save_handler, "filename", None)
            checkpoint.save_handler = AtomicDiskSaver(self.save_dir, filename=fixed_name)
            self._remove_partial_files(fixed_name or checkpoint.filename_prefix)

    def _remove_partial_files(self, name_start: str) -> None:
        """Delete the temporary files that saves of this saver interrupted by a killed process left."""
        if not name_start or idist.get_rank() != 0:
            return
        for leftover in Path(self.save_dir).glob(f".{name_start}*{PARTIAL_SUFFIX}"):
            with contextlib.suppress(OSError):
                leftover.unlink()
                logger.info(f"removed {leftover}, left by an interrupted save")

    def _checkpoints(self) -> list:
        names = ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint")
        missing = [n for n in names if not hasattr(self, n)]
        if missing:  # guards against a MONAI release that renames the internals this class relies on
            raise RuntimeError(
                f"monai.handlers.CheckpointSaver has no attributes {missing}; update AtomicCheckpointSaver."
            )
        return [getattr(self, n) for n in names if getattr(self, n) is not None]

    def state_dict(self) -> dict:
        """The key-metric record: ``{"key_metric_saved": [[score, filename], ...]}`` (empty list without key metric)."""
        saved = [] if self._key_metric_checkpoint is None else self._key_metric_checkpoint._saved
        return {"key_metric_saved": [[float(priority), str(name)] for priority, name in saved]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the key-metric record written by :meth:`state_dict` (or MONAI's ``{"_saved": ...}``)."""
        saved = state_dict.get("key_metric_saved", state_dict.get("_saved", []))
        if self._key_metric_checkpoint is not None:
            self._key_metric_checkpoint.load_state_dict({"_saved": [(float(p), str(f)) for p, f in saved]})

    def replace_on_next_save(self, filenames: Iterable[str]) -> None:
        """Delete these files of ``save_dir`` once the next interval checkpoint has been written."""
        if self._interval_checkpoint is not None:
            self._interval_checkpoint.save_handler.replace_on_next_save(filenames)
