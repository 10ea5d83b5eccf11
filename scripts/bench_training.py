#!/usr/bin/env python
"""Training throughput: samples per second of the bundle's workflow (``train.yaml`` parsed with
``monai.bundle.ConfigParser``, ``SemiSupervisedTrainer.run()`` with the configured iteration
handlers: loss logging, TensorBoard, progress bar, learning-rate schedule; validation and the
per-epoch training-state checkpoint are left out) against a minimal hand-written PyTorch loop doing
the same forward/backward/step (same ``CMCNet``, same ``CMCMethod`` losses, same batch sizes, batches
drawn beforehand and kept in memory as plain tensors), and, in the same alternation, the workflow
with another loader class (``ThreadDataLoader`` by default). Each is timed ``repeats`` times after a
warm-up and the ratio of the medians is reported; below ``min_ratio`` (or with ``--profile``) the
workflow is profiled with cProfile.

    python scripts/bench_training.py --iterations 8 --repeats 3 --threads 1
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import fire
import torch

from bench_common import plain, timed
from benchmarking.machine import describe_machine, format_machine
from bundle_path import BUNDLE, CONFIGS, use_bundle_scripts

use_bundle_scripts()


def build_training(
    iterations: int,
    batch_size: int,
    num_workers: int,
    workdir: str,
    synthetic_dir: str | None = None,
    synthetic: dict | None = None,
    spatial_dims: int = 2,
    roi_size: int | None = None,
    loader: str | None = None,
) -> dict[str, Any]:
    """The CMC training workflow of ``train.yaml`` (one epoch of ``iterations``), parsed but not run;
    ``loader`` replaces the class of its two training loaders (e.g. ``DataLoader``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml")])
    overrides: dict[str, Any] = {
        "bundle_root": str(BUNDLE),
        "output_dir": os.path.join(workdir, "out"),
        "ckpt_dir": os.path.join(workdir, "models"),
        "epochs": 1,
        "iterations_per_epoch": int(iterations),
        "val_interval": 10**9,  # the ValidationHandler stays attached but never fires
        "batch_size": int(batch_size),
        "num_workers": int(num_workers),
        "spatial_dims": int(spatial_dims),
        "validate_voxels": False,
    }
    if roi_size is not None:
        overrides["roi_size"] = [int(roi_size)] * int(spatial_dims)
    if synthetic_dir is not None:
        overrides["synthetic_dir"] = synthetic_dir
    if synthetic is not None:
        overrides["synthetic"] = dict(synthetic)
    if loader is not None:
        overrides["train#dataloader#loader"] = loader
        overrides["train#unlabeled_dataloader#loader"] = loader
    for key, value in overrides.items():
        parser[key] = value
    parser.parse(True)
    if "initialize" in parser:  # the seeds, as `monai.bundle run` does
        parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    return {"parser": parser, "trainer": trainer}


def _draw_batches(trainer: Any, iterations: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """``iterations`` (image, label, unlabeled) batches from the workflow's own loaders, as plain tensors
    on the training device."""
    device = trainer.state.device
    batches = []
    labeled_iter = iter(trainer.data_loader)
    for _ in range(iterations):
        try:
            batch = next(labeled_iter)
        except StopIteration:
            labeled_iter = iter(trainer.data_loader)
            batch = next(labeled_iter)
        unlabeled = trainer.next_unlabeled()
        batches.append(
            (
                plain(batch["image"]).to(device),
                plain(batch["label"]).to(device),
                None if unlabeled is None else plain(unlabeled).to(device),
            )
        )
    return batches


def _manual_loop(trainer: Any, batches: list, epoch_length: int) -> None:
    """What a hand-written PyTorch loop does per iteration, with the workflow's own network, method and optimizer."""
    network, method, optimizer = trainer.network, trainer.method, trainer.optimizer
    use_amp = bool(trainer.amp and trainer.scaler is not None)
    network.train()
    method.train()
    for i, (image, label, unlabeled) in enumerate(batches):
        epoch = i / max(epoch_length, 1)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda") if use_amp else contextlib.nullcontext():
            out = method.step(network, image, label, unlabeled, epoch)
        if use_amp:
            trainer.scaler.scale(out.loss).backward()
            trainer.scaler.step(optimizer)
            trainer.scaler.update()
        else:
            out.loss.backward()
            optimizer.step()
        method.after_optimizer_step(network, epoch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _profile(fn: Callable[[], Any], lines: int = 25) -> str:
    """cProfile of ``fn()``: where a workflow run spends its time (iteration, data loading, the rest),
    then the functions by cumulative time."""
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    fn()
    profiler.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler)

    def cumulative(file_end: str, name: str) -> float:
        return sum(
            ct for (file, _, func), (_, _, _, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
            if func == name and file.endswith(file_end)
        )

    iteration = cumulative(os.path.join("engine", "trainer.py"), "_iteration")
    data = cumulative(os.path.join("dataloader.py"), "__next__")
    unlabeled = cumulative(os.path.join("engine", "trainer.py"), "next_unlabeled")
    labeled = max(data - unlabeled, 0.0)  # the unlabeled batches are drawn inside the iteration
    compute = iteration - unlabeled
    stream = io.StringIO()
    stream.write(
        f"  breakdown of one run ({total:.2f} s under cProfile): forward/backward/step {compute:.2f} s "
        f"({100 * compute / total:.1f}%), data loading {data:.2f} s ({100 * data / total:.1f}%: labeled "
        f"{labeled:.2f} s, unlabeled {unlabeled:.2f} s), handlers and engine {total - compute - labeled - unlabeled:.2f} s "
        f"({100 * (total - compute - labeled - unlabeled) / total:.1f}%)\n"
    )
    stats.stream = stream  # type: ignore[attr-defined]
    stats.strip_dirs().sort_stats("cumulative").print_stats(lines)
    return stream.getvalue()


def training_throughput(
    iterations: int = 8,
    repeats: int = 3,
    batch_size: int = 8,
    num_workers: int = 0,
    min_ratio: float = 0.95,
    profile: bool = False,
    synthetic_dir: str | None = None,
    synthetic: dict | None = None,
    roi_size: int | None = None,
    compare_loader: str | None = "ThreadDataLoader",
) -> dict[str, Any]:
    """Samples per second of the bundle workflow and of a hand-written loop, timed in alternation.

    A sample is one image of the iteration's labeled or unlabeled batch. ``synthetic_dir`` /
    ``synthetic`` default to the bundle's embedded dataset (generated once under ``bundle/data``).
    ``compare_loader``: also time the workflow with its training loaders replaced by this class
    (``ThreadDataLoader``: batches prepared in a background thread while the network computes), in
    the same alternation; ``None`` skips it.
    """
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"), force=True)  # logs formatted, not shown
    with tempfile.TemporaryDirectory() as workdir:
        built = build_training(iterations, batch_size, num_workers, workdir, synthetic_dir, synthetic, roi_size=roi_size)
        trainer = built["trainer"]
        samples_per_iteration = int(batch_size) + (
            int(built["parser"].get_parsed_content("unlabeled_batch_size")) if trainer._has_unlabeled() else 0
        )
        batches = _draw_batches(trainer, iterations)
        other = None
        if compare_loader:
            other = build_training(iterations, batch_size, num_workers, os.path.join(workdir, "other"),
                                   synthetic_dir, synthetic, roi_size=roi_size, loader=compare_loader)["trainer"]

        def one_more_epoch(engine: Any = trainer) -> None:
            # `run()` continues from the previous state: one more epoch of `iterations` iterations
            engine.state.max_epochs = engine.state.epoch + 1
            engine.run()

        # warm-up (allocations, first data-loader iterator), then alternate
        one_more_epoch()
        _manual_loop(trainer, batches, iterations)
        if other is not None:
            one_more_epoch(other)
        bundle_times, manual_times, other_times = [], [], []
        for _ in range(int(repeats)):
            bundle_times.append(timed(one_more_epoch))
            manual_times.append(timed(lambda: _manual_loop(trainer, batches, iterations)))
            if other is not None:
                other_times.append(timed(lambda: one_more_epoch(other)))
        samples = samples_per_iteration * int(iterations)
        bundle_rate = samples / statistics.median(bundle_times)
        manual_rate = samples / statistics.median(manual_times)
        # adjacent runs share the machine's load best: the median of their ratios is the steadier figure
        paired = statistics.median(m / b for b, m in zip(bundle_times, manual_times))
        result: dict[str, Any] = {
            "iterations": int(iterations),
            "repeats": int(repeats),
            "samples_per_iteration": samples_per_iteration,
            "input_shape": list(batches[0][0].shape),
            "num_workers": int(num_workers),
            "amp": bool(trainer.amp),
            "bundle_seconds": bundle_times,
            "manual_seconds": manual_times,
            "bundle_samples_per_s": bundle_rate,
            "manual_samples_per_s": manual_rate,
            "ratio_bundle_over_manual": bundle_rate / manual_rate,
            "paired_ratio_median": paired,
            "loader": type(trainer.data_loader).__name__,
        }
        if other is not None:
            result["compare_loader"] = {
                "loader": type(other.data_loader).__name__,
                "seconds": other_times,
                "samples_per_s": samples / statistics.median(other_times),
                "ratio_over_manual": manual_rate and (samples / statistics.median(other_times)) / manual_rate,
                "paired_ratio_median": statistics.median(m / o for o, m in zip(other_times, manual_times)),
            }
        if profile or min(result["ratio_bundle_over_manual"], paired) < min_ratio:
            result["profile"] = _profile(one_more_epoch)
        return result


def format_training(t: dict[str, Any]) -> list[str]:
    """The report lines of :func:`training_throughput`'s result."""
    out: list[str] = []
    out += [
        "",
        f"[training throughput] CMC, input {t['input_shape']}, {t['samples_per_iteration']} samples/iteration "
        f"(labeled + unlabeled), {t['iterations']} iterations x {t['repeats']} alternating repeats, "
        f"num_workers {t['num_workers']}, amp {t['amp']}",
        f"  bundle workflow ({t['loader']}): {t['bundle_samples_per_s']:8.2f} samples/s  (runs: "
        + ", ".join(f"{s:.2f}" for s in t["bundle_seconds"]) + " s)",
        f"  hand-written    : {t['manual_samples_per_s']:8.2f} samples/s  (runs: "
        + ", ".join(f"{s:.2f}" for s in t["manual_seconds"]) + " s)",
        f"  ratio bundle / hand-written: {t['ratio_bundle_over_manual']:.3f} (medians), "
        f"{t['paired_ratio_median']:.3f} (median of adjacent pairs)",
    ]
    o = t.get("compare_loader")
    if o:
        out += [
            f"  bundle workflow with {o['loader']}: {o['samples_per_s']:8.2f} samples/s  (runs: "
            + ", ".join(f"{s:.2f}" for s in o["seconds"]) + " s)",
            f"  ratio with {o['loader']} / hand-written: {o['ratio_over_manual']:.3f} (medians), "
            f"{o['paired_ratio_median']:.3f} (median of adjacent pairs)",
        ]
    if "profile" in t:
        out += ["  profile of one workflow run (cProfile, cumulative):", t["profile"]]
    return out


def main(threads: int | None = None, **kwargs: Any) -> None:
    """Command line: :func:`training_throughput` with the same arguments (``threads``:
    ``torch.set_num_threads``), printed with the machine."""
    if threads:
        torch.set_num_threads(int(threads))
    result = training_throughput(**kwargs)
    print("\n".join([format_machine(describe_machine()), *format_training(result)]))


if __name__ == "__main__":
    fire.Fire(training_throughput if "--help" in sys.argv or "-h" in sys.argv else main)
