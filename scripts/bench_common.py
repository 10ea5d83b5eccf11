#!/usr/bin/env python
"""What the bundle's benchmark scripts share: the MyoPS case they measure on, one timer and a
tensor-memory peak meter (the machine's description: ``benchmarking/machine.py``; the paths:
``bundle_path.py``). Not a benchmark itself (``bench_training.py``, ``bench_csc_memory.py``,
``bench_inference.py``, ``bench_evaluation.py``; ``bench_throughput.py`` runs the first three)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from bundle_path import REPO_ROOT

MYOPS_CASE = REPO_ROOT.parent / "shared" / "data" / "myops" / "labeled" / "Case3001"

MIB = 2**20


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
