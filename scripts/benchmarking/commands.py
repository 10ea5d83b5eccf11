"""Config files by name or path, config stacks, and the ``python -m monai.bundle run`` command line: the one
place that finds configs and builds these commands for every tool."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bundle_path import CONFIGS, REPO_ROOT

_CONFIG_SUFFIXES = (".yaml", ".json")


def as_list(value) -> list:
    """A command-line value as a list: None is empty, a scalar is one item."""
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        return [value]
    return list(value)


def find_config(name: str | os.PathLike) -> Path:
    """A config file: a config of the bundle by name (``cardiac``, ``semicml.yaml``), else a path (absolute,
    or relative to the current folder or to the repository root; e.g. a plan written by scripts/plan.py).

    Raises:
        FileNotFoundError: none of these is a file.
    """
    name = str(name)
    in_bundle = CONFIGS / (name if name.endswith(_CONFIG_SUFFIXES) else f"{name}.yaml")
    for candidate in (in_bundle, Path(name), REPO_ROOT / name):
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"no config '{name}' in {CONFIGS} (looked for {in_bundle}) nor at that path")


def config_stack(names: Sequence[str | os.PathLike]) -> list[str]:
    """train.yaml then each of ``names`` (see :func:`find_config`), as paths."""
    return [str(find_config("train.yaml")), *(str(find_config(name)) for name in names)]


def is_plan_path(name: str | os.PathLike) -> bool:
    """Whether a config is a file outside the bundle's configs (e.g. a plan written by scripts/plan.py)."""
    try:
        return find_config(name).parent != CONFIGS.resolve()
    except FileNotFoundError:
        return False


def _overrides(values: dict) -> list[str]:
    args: list[str] = []
    for key, value in values.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)]
    return args


def bundle_run_command(stack: Sequence[str], **ids) -> list[str]:
    """The ``python -m monai.bundle run`` command line of a config stack (from :func:`config_stack`) with
    ``--<id> <value>`` for every keyword (lists, dicts, booleans and None as JSON): the one place that builds
    these commands (benchmark.py, subset_benchmark.py, label_efficiency.py, bench_threads.py)."""
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(list(stack)), *_overrides(ids)]
