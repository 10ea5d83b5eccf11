#!/usr/bin/env python
"""Training throughput, CSC loss memory and inference time of the bundle, in one run: the three
benchmarks of ``bench_training.py``, ``bench_csc_memory.py`` and ``bench_inference.py`` (each runs
alone too; see their docstrings), printed with the machine they ran on.

Example (the figures in bundle/docs/README.md):
    python scripts/bench_throughput.py --iterations 8 --repeats 3
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import torch

from bench_common import MYOPS_CASE, peak_memory_bytes
from bench_csc_memory import csc_memory, format_csc_memory, official_csc_reference
from bench_inference import brain_volume_inference, cardiac_case_inference, format_inference
from bench_training import format_training, training_throughput
from benchmarking.machine import describe_machine, format_machine

__all__ = [  # what the tests and other tools use from here
    "MYOPS_CASE",
    "brain_volume_inference",
    "cardiac_case_inference",
    "csc_memory",
    "official_csc_reference",
    "peak_memory_bytes",
    "run_benchmarks",
    "training_throughput",
]


def _format_report(results: dict[str, Any]) -> str:
    out = [format_machine(results["machine"])]
    if results.get("training"):
        out += format_training(results["training"])
    if results.get("csc_memory"):
        out += format_csc_memory(results["csc_memory"])
    out += format_inference(results)
    return "\n".join(out)


def run_benchmarks(
    sections: Sequence[str] = ("training", "memory", "inference"),
    iterations: int = 8,
    repeats: int = 3,
    batch_size: int = 8,
    num_workers: int = 0,
    profile: bool = False,
    compare_loader: str | None = "ThreadDataLoader",
    crop_sizes: Sequence[int] = (32, 48, 64),
    threads: int | None = None,
    brain_roi: int = 96,
    brain_repeats: int = 1,
    cardiac_repeats: int = 3,
    output: str | None = None,
) -> dict[str, Any]:
    """Run the chosen measurements in this one process, print them with the machine description and
    return every figure.

    Args:
        sections: any of ``training``, ``memory``, ``inference``.
        iterations: training iterations per timed run.
        repeats: timed runs of each training loop (alternating bundle / hand-written).
        batch_size: labeled (and unlabeled) batch size.
        num_workers: data-loading workers of the workflow.
        profile: profile the workflow even when it is fast enough.
        compare_loader: also time the workflow with this class as its training loaders (default
            ``ThreadDataLoader``, which prepares batches in a background thread); ``None`` skips it.
        crop_sizes: 3-D crop sizes at which the CSC losses are measured.
        threads: ``torch.set_num_threads`` for every measurement (default: torch's choice, one per
            core). On a machine whose cores are shared with other jobs, 1 avoids the stalls of
            multi-threaded CPU kernels waiting for a busy core, which otherwise dominate small copies.
        brain_roi: sliding-window size of the 3-D inference.
        brain_repeats: timed runs of the 3-D inference.
        cardiac_repeats: timed runs of the cardiac inference.
        output: also write every figure to this JSON file.
    """
    if isinstance(sections, str):
        sections = [sections]
    if threads is not None:
        torch.set_num_threads(int(threads))
    results: dict[str, Any] = {"machine": describe_machine(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    if "training" in sections:
        results["training"] = training_throughput(iterations, repeats, batch_size, num_workers, profile=profile,
                                                  compare_loader=compare_loader)
    if "memory" in sections:
        results["csc_memory"] = csc_memory(crop_sizes)
    if "inference" in sections:
        results["brain_inference"] = brain_volume_inference(roi_size=brain_roi, repeats=brain_repeats)
        results["cardiac_inference"] = cardiac_case_inference(repeats=cardiac_repeats)
    print(_format_report(results), flush=True)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def main(**kwargs: Any) -> None:
    """Command-line entry point: :func:`run_benchmarks` with the same arguments, printing only the report."""
    run_benchmarks(**kwargs)


if __name__ == "__main__":
    fire.Fire(run_benchmarks if "--help" in sys.argv or "-h" in sys.argv else main)
