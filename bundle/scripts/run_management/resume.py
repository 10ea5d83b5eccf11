# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Resuming an interrupted training run from its last training-state checkpoint.

``train.yaml`` saves the whole training state after every epoch (network, optimizer, scheduler,
method state, trainer counters, :class:`RandomStates`, the best-model record). :class:`ResumeTraining`
loads the newest such checkpoint when the trainer starts, so that a run killed at any moment
(``kill -9``, a lost machine) continues from its last completed epoch when the same command is
run again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.transforms import Compose, Randomizable, Transform
from torch.utils.data import DataLoader, Dataset

from ..errors import BundleError, as_bool, check_bool
from .checkpoint_loading import CheckpointError, read_checkpoint

__all__ = [
    "ResumeConflictError",
    "ResumeTraining",
    "RandomStates",
    "RunSettings",
    "EvaluatorBestMetric",
    "find_training_states",
    "parse_resume_flag",
]

logger = logging.getLogger(__name__)

_STEP_IN_NAME = re.compile(r"(?:epoch|iteration)=(\d+)\.pt$")


def parse_resume_flag(value: Any, external_training_data: bool = False) -> bool:
    """``resume`` as a bool, parsed like every boolean id (:func:`scripts.errors.as_bool`). ``"auto"``
    (train.yaml's default) resumes unless the run trains on a caller's own cases (``external_training_data``,
    as MONAI Label's ``BundleTrainTask`` passes them), which start a new training each time."""
    if value is None:
        return False
    if isinstance(value, str) and value.strip().lower() == "auto":
        return not external_training_data
    return as_bool(value, "resume")


def find_training_states(folder: str | Path, file_prefix: str) -> list[Path]:
    """The checkpoints ``<file_prefix>_*.pt`` of ``folder``, oldest first (by the epoch or iteration in
    their name, then by modification time). Hidden temporary files of interrupted saves never match."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    keyed = []
    for path in folder.glob(f"{file_prefix}_*.pt"):
        try:  # a file another process deletes meanwhile is skipped
            modified = path.stat().st_mtime
        except FileNotFoundError:
            continue
        match = _STEP_IN_NAME.search(path.name)
        keyed.append(((int(match.group(1)) if match else -1, modified), path))
    return [path for _, path in sorted(keyed)]


# ---------------------------------------------------------------------------- random number generators
def _random_state_to_dict(state: tuple) -> dict[str, Any]:
    """``numpy.random.RandomState.get_state()`` as tensors and numbers (loadable with ``weights_only=True``)."""
    _, keys, pos, has_gauss, cached_gaussian = state
    return {
        "keys": torch.as_tensor(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _random_state_from_dict(state: Mapping[str, Any]) -> tuple:
    keys = torch.as_tensor(state["keys"]).cpu().numpy().astype(np.uint32)
    return ("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"]))


def _find_transform_random_states(obj: Any, path: str, found: dict[str, np.random.RandomState], seen: set[int]) -> None:
    """Collect the ``numpy.random.RandomState`` of every random transform reachable from ``obj``
    (data loaders, datasets, ``Compose``, transforms and the transforms they hold), keyed by path."""
    if obj is None or isinstance(obj, (str, bytes, int, float, bool, torch.Tensor, np.ndarray)) or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.random.RandomState):
        found[path] = obj
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _find_transform_random_states(item, f"{path}[{i}]", found, seen)
    elif isinstance(obj, DataLoader):
        _find_transform_random_states(obj.dataset, f"{path}.dataset", found, seen)
    elif isinstance(obj, Dataset):
        for name in ("transform", "dataset", "datasets"):
            _find_transform_random_states(getattr(obj, name, None), f"{path}.{name}", found, seen)
    elif isinstance(obj, (Transform, Randomizable, Compose)):
        for name, value in vars(obj).items():
            _find_transform_random_states(value, f"{path}.{name}", found, seen)


def _rank_and_world_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class RandomStates:
    """The random number generators of a training run, as an object with ``state_dict``/``load_state_dict``.

    Add it to the training-state checkpoint so that a resumed run draws the same random numbers as
    an uninterrupted one: the global generators of Python (``random``), NumPy and PyTorch (CPU, and
    the current CUDA device when the process uses CUDA), and the ``numpy.random.RandomState`` of every random
    transform reachable from ``data``. The transforms' own states matter with ``num_workers=0``,
    where MONAI's ``DataLoader`` seeds them once and they then advance in the main process; with
    worker processes, each epoch's workers are seeded from the global PyTorch generator.

    The state is made of tensors and numbers only, so the checkpoint loads with
    ``torch.load(..., weights_only=True)``. Restoring a state whose transforms differ (another
    config) restores the global generators and the transforms whose path still matches, with a
    warning.

    In distributed training (``torch.distributed`` initialised, several processes) every process
    has its own generators (e.g. seeded with ``seed + rank``): ``state_dict`` gathers them all
    (``all_gather_object``, so it must be called on every process, as a checkpoint handler attached
    to every process does) into ``per_rank``, and ``load_state_dict`` gives each process its own.
    A process without a saved state of its own (more processes than when saving, or a
    single-process checkpoint on a rank other than 0) keeps its current generators, with a warning.

    Args:
        data: data loaders, datasets or transforms (or a list of them; ``None`` entries are ignored)
            whose random transforms are included.
    """

    def __init__(self, data: Any = None) -> None:
        self.data = data

    def transform_random_states(self) -> dict[str, np.random.RandomState]:
        """The random transforms' generators, keyed by their path from ``data``."""
        found: dict[str, np.random.RandomState] = {}
        _find_transform_random_states(self.data, "data", found, set())
        return found

    def state_dict(self) -> dict[str, Any]:
        state = self._local_state_dict()
        rank, world_size = _rank_and_world_size()
        if world_size > 1:
            gathered: list[Any] = [None] * world_size
            torch.distributed.all_gather_object(gathered, state)
            state = dict(gathered[0], per_rank=gathered)
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        rank, world_size = _rank_and_world_size()
        per_rank = state_dict.get("per_rank")
        if world_size > 1 or per_rank is not None:
            saved = len(per_rank) if per_rank is not None else 1
            if saved != world_size:
                logger.warning(f"random states saved by {saved} processes, restored in {world_size}.")
            if per_rank is not None and rank < len(per_rank):
                self._load_local_state_dict(per_rank[rank])
            elif per_rank is None and rank == 0:
                self._load_local_state_dict(state_dict)
            else:
                logger.warning(f"no saved random state for process {rank}: it keeps its current generators.")
            return
        self._load_local_state_dict(state_dict)

    def _local_state_dict(self) -> dict[str, Any]:
        version, internal, gauss_next = random.getstate()
        state: dict[str, Any] = {
            "python": {
                "version": int(version),
                "state": torch.tensor(internal, dtype=torch.int64),
                "gauss_next": gauss_next,
            },
            "numpy": _random_state_to_dict(np.random.get_state()),
            "torch": torch.get_rng_state(),
            # the current device's generator, when this process uses CUDA (reading it would otherwise
            # create a CUDA context)
            "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
            "transforms": {k: _random_state_to_dict(r.get_state()) for k, r in self.transform_random_states().items()},
        }
        return state

    def _load_local_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        python = state_dict["python"]
        random.setstate((int(python["version"]), tuple(int(x) for x in python["state"].tolist()), python["gauss_next"]))
        np.random.set_state(_random_state_from_dict(state_dict["numpy"]))
        torch.set_rng_state(torch.as_tensor(state_dict["torch"]).cpu())
        cuda_states = list(state_dict.get("cuda", []))
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state(torch.as_tensor(cuda_states[0]).cpu())
        elif cuda_states:
            logger.warning("the checkpoint holds a CUDA random state and CUDA is not available: not restored.")
        saved = dict(state_dict.get("transforms", {}))
        current = self.transform_random_states()
        for path, generator in current.items():
            if path in saved:
                generator.set_state(_random_state_from_dict(saved[path]))
        unmatched = sorted(set(saved) ^ set(current))
        if unmatched:
            logger.warning(
                f"random transforms differ from the checkpoint's ({len(unmatched)} unmatched, e.g. {unmatched[0]}): "
                "their random states are not all restored."
            )


class EvaluatorBestMetric:
    """The best key metric of a MONAI evaluator and its epoch, as an object with ``state_dict``/``load_state_dict``.

    MONAI's evaluators keep ``state.best_metric`` and ``state.best_metric_epoch`` in memory only; add
    this object to the training-state checkpoint so that a resumed run reports (``metrics.json``) and
    compares against the best validation of the whole run.

    Args:
        evaluator: a MONAI ``Evaluator`` (e.g. ``SupervisedEvaluator``).
    """

    def __init__(self, evaluator: Engine) -> None:
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, Any]:
        state = self.evaluator.state
        return {
            "best_metric": float(getattr(state, "best_metric", -1)),
            "best_metric_epoch": int(getattr(state, "best_metric_epoch", -1)),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.evaluator.state.best_metric = float(state_dict["best_metric"])
        self.evaluator.state.best_metric_epoch = int(state_dict["best_metric_epoch"])


# ---------------------------------------------------------------------------- settings of a run
class ResumeConflictError(BundleError, ValueError):
    """The command line asks for other settings than the run it would resume was trained with."""


def _normalised(value: Any) -> Any:
    """``value`` as plain JSON data (tuples as lists, tensors and other objects as text)."""
    return json.loads(json.dumps(value, default=str))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


class RunSettings:
    """The settings (config ids) a training run was started with, kept in its training-state checkpoint.

    :class:`ResumeTraining` compares them with the current ones before it restores anything: the
    optimizer, scheduler and data split of a checkpoint would otherwise silently win over a changed
    command line (``--learning_rate 1e6`` on a resumed run would keep the saved 0.002). Any
    difference stops the run with :class:`ResumeConflictError` naming each setting, its saved and
    its new value. Leave out what may change between restarts (``epochs``: a resumed run may train
    longer; logging intervals; devices).

    Args:
        settings: ``{config id: value}``; values are compared as JSON data (numbers with a relative
            tolerance of 1e-9).
        method: the run's method object, kept as ``settings["method"]``, its class name.
        paths: ``{config id: path or None}``, kept as absolute paths (a run resumed from another
            working folder names the same files).
    """

    def __init__(self, settings: Mapping[str, Any], method: Any = None, paths: Mapping[str, Any] | None = None) -> None:
        settings = dict(settings)
        if method is not None:
            settings["method"] = type(method).__name__
        for key, path in (paths or {}).items():
            settings[key] = os.path.abspath(path) if path else None
        self.settings = _normalised(settings)

    def state_dict(self) -> dict[str, Any]:
        return {"settings": json.dumps(self.settings, sort_keys=True)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Nothing to restore: the current settings are the run's (checked by :meth:`conflicts` first)."""

    def conflicts(self, state_dict: Mapping[str, Any]) -> list[str]:
        """One line per setting whose saved value differs from the current one."""
        saved = json.loads(state_dict["settings"]) if "settings" in state_dict else {}
        lines = []
        for key in sorted(set(saved) | set(self.settings)):
            old, new = saved.get(key, "<not saved>"), self.settings.get(key, "<not set>")
            if not _same(old, new):
                lines.append(f"{key}: saved {json.dumps(old)}, now {json.dumps(new)}")
        return lines


# ---------------------------------------------------------------------------- the handler
class ResumeTraining:
    """Continues a training run from the newest training-state checkpoint of its checkpoint saver.

    Attach it to the trainer after the saver (it runs when the trainer starts). With ``resume``
    on and a checkpoint ``<file_prefix>_*.pt`` in the saver's folder, it loads every object of the
    saver's ``save_dict`` from the newest one (``torch.load(..., weights_only=True)``): network,
    optimizer, scheduler, method state (teachers, stages), the trainer's epoch and iteration
    counters, :class:`RandomStates`, ..., and training continues with the next epoch. The trainer's
    ``max_epochs`` stays the configured one, so raising ``--epochs`` extends a run (its learning-rate
    schedule continues as saved). The files it resumed from are deleted once the run has written its
    next checkpoint (with :class:`~scripts.run_management.atomic_checkpoint.AtomicCheckpointSaver`), so
    ``n_saved`` holds across restarts.

    - No checkpoint: training starts from scratch (logged).
    - The checkpoint's epoch equals ``max_epochs``: the run is complete; this is logged and nothing
      is trained (the trainer returns at once). Start again from scratch with ``resume`` off or
      another output folder, or train longer with a larger ``max_epochs``.
    - The checkpoint's epoch exceeds ``max_epochs``: :class:`ResumeConflictError` (a ``ValueError``).
    - The newest checkpoint cannot be read (truncated or corrupt: a full disk, an interrupted copy,
      a storage fault): the run resumes from the newest older one that can, with a warning naming
      the unreadable file (which this run's next checkpoint replaces); when none can,
      :class:`~scripts.run_management.checkpoint_loading.CheckpointError` naming every file and what to do.
    - A :class:`RunSettings` of ``save_dict`` differs from the checkpoint's: :class:`ResumeConflictError`
      naming every changed setting, before anything is restored.
    - ``resume`` off: training starts from scratch and existing checkpoints of the saver are
      deleted once this run has written its first one.

    Objects of ``save_dict`` missing from the checkpoint (one written by an older version of the
    bundle) are left as they are, with a warning.

    Args:
        saver: the ``CheckpointSaver`` of the training state (interval checkpoints); its
            ``save_dir`` and ``save_dict`` say what to load from where.
        file_prefix: the saver's ``file_prefix`` (MONAI's ``CheckpointSaver`` keeps it in no public
            attribute): its checkpoints are ``<file_prefix>_*.pt``.
        resume: ``True``/``False``, or the strings ``"true"``, ``"false"``, ``"auto"`` of a command line
            (``"auto"``: true unless ``external_training_data``).
        external_training_data: the run trains on cases its caller passed in place of the datalist's
            training split (what ``"auto"`` means depends on it).
        map_location: ``torch.load``'s ``map_location`` (e.g. the training device).
        strict: ``strict`` of ``nn.Module.load_state_dict`` for the network and the method.
        name: logger name; defaults to this module's logger.
    """

    def __init__(
        self,
        saver: Any,
        file_prefix: str = "training_state",
        resume: bool | str = True,
        external_training_data: bool = False,
        map_location: Any = None,
        strict: bool = True,
        name: str | None = None,
    ) -> None:
        self.saver = saver
        self.resume = parse_resume_flag(resume, check_bool(external_training_data, "external_training_data"))
        self.map_location = map_location
        self.strict = bool(strict)
        self.logger = logging.getLogger(name) if name else logger
        self.checkpoint_dir = Path(saver.save_dir)
        self.load_dict: dict[str, Any] = dict(saver.save_dict)
        if int(getattr(saver, "save_interval", 0) or 0) <= 0:
            raise ValueError("ResumeTraining needs a CheckpointSaver with save_interval > 0 (interval checkpoints).")
        self.file_prefix = str(file_prefix)
        self.resumed_from: Path | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def _replace_on_next_save(self, files: Iterable[Path]) -> None:
        replace = getattr(self.saver, "replace_on_next_save", None)
        if replace is not None:
            replace([f.name for f in files])

    def _newest_readable(self, found: list[Path]) -> tuple[Path, Mapping]:
        """The newest of ``found`` (oldest first) that loads as a dict of states, and its content;
        each unreadable newer file is named in a warning. None readable: :class:`CheckpointError`."""
        remedy = "Delete it to start from scratch, or pass --resume false (or another --output_dir)."
        unreadable: list[str] = []
        for path in reversed(found):
            try:
                checkpoint = read_checkpoint(path, self.map_location)
                if not isinstance(checkpoint, Mapping):
                    raise CheckpointError(f"cannot load {path}: it does not hold a dict of states.")
            except CheckpointError as e:
                unreadable.append(str(e))
                continue
            for problem in unreadable:
                self.logger.warning(
                    f"{problem} Resuming from the previous intact checkpoint {path} instead; this run's next "
                    "checkpoint replaces the unreadable file."
                )
            return path, checkpoint
        if len(unreadable) == 1:
            raise CheckpointError(f"cannot resume: {unreadable[0]} {remedy}")
        raise CheckpointError(
            f"cannot resume: no {self.file_prefix} checkpoint can be read:\n"
            + "\n".join(f"  {problem}" for problem in unreadable)
            + "\nDelete them to start from scratch, or pass --resume false (or another --output_dir)."
        )

    def __call__(self, engine: Engine) -> None:
        found = find_training_states(self.checkpoint_dir, self.file_prefix)
        if not self.resume:
            if found:
                self.logger.info(
                    f"resume is off: training starts from scratch; {[f.name for f in found]} in "
                    f"{self.checkpoint_dir} will be replaced by this run's first checkpoint."
                )
                self._replace_on_next_save(found)
            return
        if not found:
            self.logger.info(
                f"no {self.file_prefix} checkpoint in {self.checkpoint_dir}: training starts from scratch."
            )
            return
        latest, checkpoint = self._newest_readable(found)
        present = {k: v for k, v in self.load_dict.items() if k in checkpoint}
        conflicts = [
            line
            for k, obj in present.items()
            if callable(getattr(obj, "conflicts", None))
            for line in obj.conflicts(checkpoint[k])
        ]
        if conflicts:
            raise ResumeConflictError(
                f"cannot resume from {latest}: the run was started with other settings than this command "
                "(the checkpoint's optimizer, scheduler and data split would silently win):\n"
                + "\n".join(f"  {line}" for line in conflicts)
                + "\nRun again with the saved values to continue that run, or pass --resume false (or another "
                "--output_dir) to start a new run with these settings."
            )
        missing = sorted(set(self.load_dict) - set(present))
        if missing:
            self.logger.warning(f"{latest.name} holds no {missing}: those are not restored.")
        max_epochs, epoch_length = engine.state.max_epochs, engine.state.epoch_length
        Checkpoint.load_objects(to_load=present, checkpoint=checkpoint, strict=self.strict)
        engine.state.max_epochs = max_epochs  # the configured length, not the saved one
        if epoch_length is not None and engine.state.epoch_length != epoch_length:
            self.logger.warning(
                f"{latest.name} was trained with {engine.state.epoch_length} iterations per epoch, the config says "
                f"{epoch_length}; the run continues with {engine.state.epoch_length}."
            )
        epoch, iteration = engine.state.epoch, engine.state.iteration
        if max_epochs is not None and epoch > max_epochs:
            raise ResumeConflictError(
                f"{latest} is at epoch {epoch}, beyond max_epochs = {max_epochs}. Pass --epochs {epoch} or more to "
                "continue it, or --resume false (or another --output_dir) to start from scratch."
            )
        self.resumed_from = latest
        self._replace_on_next_save(found)
        if max_epochs is not None and epoch == max_epochs:
            self.logger.info(
                f"training already complete: {latest} is at epoch {epoch} of {max_epochs}, nothing to train. "
                "To train again from scratch pass --resume false (or another --output_dir); to train longer, "
                "raise --epochs."
            )
        else:
            self.logger.info(
                f"resuming from {latest}: epoch {epoch} of {max_epochs} done (iteration {iteration}); "
                f"continuing with epoch {epoch + 1}."
            )
