"""The one description of the machine that benchmark figures were measured on (``benchmark.py`` and
``subset_benchmark.py`` record it in their reports; the ``bench_*`` tools print it with :func:`format_machine`)."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bundle_path import REPO_ROOT


def _cpu_model() -> str:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return model


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=False).stdout.strip() or None
    except OSError:  # pragma: no cover
        return None


def describe_machine(torch_threads: bool = True) -> dict[str, Any]:
    """Platform, CPU model, core counts, accelerator, library versions and the repository's commit.

    Args:
        torch_threads: include this process's ``torch.get_num_threads()`` (leave it out where the figures
            come from other processes with their own thread count, as the runs of ``benchmark.py``).
    """
    info: dict[str, Any] = {
        "platform": platform.platform(), "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        import torch

        if torch_threads:
            info["torch_threads"] = torch.get_num_threads()
        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        pass
    with contextlib.suppress(ImportError):
        import monai

        info["monai"] = monai.__version__
    info["commit"] = _commit()
    return info


def format_machine(m: dict[str, Any]) -> str:
    """One line for :func:`describe_machine`'s result."""
    return (f"machine: {m['cpu_model']}, {m['nproc']} usable cores, torch threads {m.get('torch_threads', 'n/a')}, "
            f"GPU {m.get('cuda') or 'none'}; Python {m['python']}, torch {m.get('torch')}, MONAI {m.get('monai')}")


def machine_text(info: dict) -> str:
    """Every field of a machine description on one line (as the reports write it)."""
    return "; ".join(f"{k} {v}" for k, v in info.items()) if info else "not recorded"
