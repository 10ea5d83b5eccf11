#!/usr/bin/env python
# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Plots a training run from its TensorBoard logs (the run's `output_dir`, e.g. bundle/runs/train):

- `losses.png`: every loss term (`loss`, `loss_*`) over iterations, and the loss weights
  (`weight_*`) in a second panel when the run logged any;
- `val_dice.png`: the validation Dice (`val_mean_dice`, and any other `val_*` scalar) over epochs.

Usage (from the repository root):

    python scripts/plot_training.py bundle/runs/train
    python scripts/plot_training.py --log_dir bundle/runs/train --output_dir /tmp/plots --smooth 10

Prints the paths of the PNG files written (in `output_dir`, default: `log_dir`).
"""

from __future__ import annotations

import os

import fire
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_scalars(log_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag of the TensorBoard event files under `log_dir`: tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    if not os.path.isdir(log_dir):
        raise FileNotFoundError(f"log_dir not found: {log_dir}")
    folders = sorted({root for root, _, files in os.walk(log_dir) if any(".tfevents." in f for f in files)})
    if not folders:
        raise FileNotFoundError(f"no TensorBoard event file (events.out.tfevents.*) under {log_dir}")
    series: dict[str, dict[int, float]] = {}
    for folder in folders:
        accumulator = EventAccumulator(folder, size_guidance={SCALARS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            for event in accumulator.Scalars(tag):
                series.setdefault(tag, {})[int(event.step)] = float(event.value)  # a resumed run: last wins
    return {
        tag: (np.array(sorted(points)), np.array([points[s] for s in sorted(points)])) for tag, points in series.items()
    }


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.array([values[: i + 1].mean() for i in range(window - 1)])
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_losses(scalars: dict, path: str, smooth: int = 1) -> str | None:
    """Loss terms over iterations (and the loss weights in a second panel); None if none logged."""
    losses = sorted(t for t in scalars if t == "loss" or t.startswith("loss_"))
    weights = sorted(t for t in scalars if t.startswith("weight_"))
    if not losses:
        return None
    panels = 2 if weights else 1
    fig, axes = plt.subplots(panels, 1, figsize=(8, 3.6 * panels), squeeze=False, sharex=True)
    ax = axes[0, 0]
    for tag in losses:
        steps, values = scalars[tag]
        ax.plot(steps, _smooth(values, smooth), label=tag, linewidth=2.0 if tag == "loss" else 1.2)
    ax.set_ylabel("loss" + (f" (moving average of {smooth})" if smooth > 1 else ""))
    ax.set_title("training loss terms")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if weights:
        ax = axes[1, 0]
        for tag in weights:
            ax.plot(*scalars[tag], label=tag)
        ax.set_ylabel("weight")
        ax.set_title("loss weights (ramp-ups)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_validation(scalars: dict, path: str, key: str = "val_mean_dice") -> str | None:
    """Validation scalars (`val_*`) over epochs, with the best value of `key` marked; None if none."""
    tags = sorted(t for t in scalars if t.startswith("val_"))
    if not tags:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for tag in tags:
        steps, values = scalars[tag]
        ax.plot(steps, values, marker="o", markersize=3, label=tag, linewidth=2.0 if tag == key else 1.2)
    if key in scalars:
        steps, values = scalars[key]
        best = int(np.argmax(values))
        ax.plot([steps[best]], [values[best]], marker="*", markersize=12, color="tab:red",
                label=f"best {values[best]:.3f} (epoch {steps[best]})", linestyle="none")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Dice")
    ax.set_title("validation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(log_dir: str = "bundle/runs/train", output_dir: str | None = None, smooth: int = 1) -> list[str]:
    """
    Write `losses.png` and `val_dice.png` for the run logged in `log_dir`.

    Args:
        log_dir: the run's output_dir, holding its TensorBoard event files.
        output_dir: where the PNG files go; default: `log_dir`.
        smooth: moving-average window of the loss curves (1: raw values).

    Returns:
        the paths written.
    """
    scalars = read_scalars(str(log_dir))
    out = str(output_dir or log_dir)
    os.makedirs(out, exist_ok=True)
    written = [
        plot_losses(scalars, os.path.join(out, "losses.png"), smooth=int(smooth)),
        plot_validation(scalars, os.path.join(out, "val_dice.png")),
    ]
    written = [w for w in written if w]
    if not written:
        raise ValueError(f"no loss or validation scalar in the TensorBoard logs of {log_dir} (tags: {sorted(scalars)})")
    for w in written:
        print(w)
    return written


def _cli(log_dir: str = "bundle/runs/train", output_dir: str | None = None, smooth: int = 1) -> None:
    main(log_dir, output_dir, smooth)


if __name__ == "__main__":
    fire.Fire(_cli)
