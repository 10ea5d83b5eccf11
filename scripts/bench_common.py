#!/usr/bin/env python
"""What the bundle's benchmark scripts share: paths, the machine's description, one timer and a
tensor-memory peak meter. Not a benchmark itself (``bench_training.py``, ``bench_csc_memory.py``,
``bench_inference.py``, ``bench_evaluation.py``; ``bench_throughput.py`` runs the first three)."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundle"
CONFIGS = BUNDLE / "configs"
MYOPS_CASE = REPO_ROOT.parent / "shared" / "data" / "myops" / "labeled" / "Case3001"
if str(BUNDLE) not in sys.path:
    sys.path.insert(0, str(BUNDLE))  # the bundle's components, importable as `scripts`

MIB = 2**20


def machine_description() -> dict[str, Any]:
    """CPU model, core counts, accelerator and library versions of this machine."""
    import monai

    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu_model,
        "nproc": usable,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
    }


def format_machine(m: dict[str, Any]) -> str:
    """One line for :func:`machine_description`'s result."""
    return (f"machine: {m['cpu_model']}, {m['nproc']} usable cores, torch threads {m['torch_threads']}, "
            f"GPU {m['gpu'] or 'none'}; Python {m['python']}, torch {m['torch']}, MONAI {m['monai']}")


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of ``fn()``, with the GPU synchronised before and after (the one timer of the benchmarks)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def plain(x: Any) -> torch.Tensor:
    """A plain tensor (a MetaTensor's data without its metadata)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def peak_memory_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes of tensor memory allocated by ``fn()`` above what was allocated before it.

    On a CUDA device: ``torch.cuda.max_memory_allocated``. On the CPU, where torch keeps no such
    counter, the allocations and frees recorded by ``torch.profiler`` (``profile_memory=True``) are
    replayed in time order and the running total's maximum is taken. Both count tensor storage
    only (not the Python interpreter or allocator caches), so the figures compare formulations.
    """
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # an allocation is reported as the allocating op's own memory, a free as a "[memory]" event
    changes = sorted(
        (event.time_range.start, event.self_cpu_memory_usage)
        for event in prof.events()
        if event.self_cpu_memory_usage
    )
    live = peak = 0
    for _, delta in changes:
        live += delta
        peak = max(peak, live)
    return int(peak)
