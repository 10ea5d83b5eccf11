#!/usr/bin/env python
"""Validation Dice of training methods at several labeled fractions, with the same config and seed.

Each (method, fraction) pair is one `python -m monai.bundle run` of `bundle/configs/train.yaml`
layered with `bundle/configs/<method>.yaml`; only `labeled_fraction` (and the output folders)
change between runs. The labeled cases left out join the unlabeled pool. The result is a Markdown
table (best and last validation mean Dice, wall time) and a JSON file with every figure and the
exact commands.

Example (the figures in bundle/docs/README.md):
    python scripts/label_efficiency.py --methods "['cmc','supervised']" --fractions "[0.1]" \
        --output bundle/docs/label_efficiency.md
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

import fire

from benchmarking.commands import bundle_run_command, config_stack  # the one command builder
from bundle_path import REPO_ROOT


def _command(method: str, fraction: float, run_dir: Path, overrides: dict) -> list[str]:
    # e.g. "semicml+supervised": Semi-CML's network, supervised only
    return bundle_run_command(config_stack(method.split("+")), labeled_fraction=fraction, output_dir=str(run_dir),
                              ckpt_dir=str(run_dir), **overrides)


def _write(results: list[dict], out: Path) -> None:
    lines = [
        "| method | labeled fraction | best val mean Dice | (epoch) | last val mean Dice | wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['method']} | {r['labeled_fraction']:.0%} | {r['best_val_mean_dice']:.4f} | "
                     f"{r['best_epoch']} | {r['last_val_mean_dice']:.4f} | {r['wall_time_s']:.0f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")


def main(
    methods: tuple | list = ("cmc", "supervised"),
    fractions: tuple | list = (0.1,),
    output: str = "bundle/runs/label_efficiency/label_efficiency.md",
    runs_dir: str = "bundle/runs/label_efficiency",
    **overrides,
) -> list[dict]:
    """Train every method at every labeled fraction and tabulate validation Dice.

    Args:
        methods: method names; each needs `bundle/configs/<method>.yaml`. `a+b` layers several
            overrides, e.g. `semicml+supervised` trains Semi-CML's network on labeled data only.
        fractions: labeled fractions of the `training` list, in (0, 1].
        output: Markdown table to write (a `.json` with the same stem is written beside it).
        runs_dir: parent folder of the runs' outputs and checkpoints.
        overrides: further config overrides passed to every run, e.g. `--epochs 10`.
    """
    if isinstance(methods, str):
        methods = [methods]
    if isinstance(fractions, (int, float)):
        fractions = [fractions]
    results = []
    for fraction in fractions:
        for method in methods:
            run_dir = (REPO_ROOT / runs_dir / f"{method}_{float(fraction):g}").resolve()
            cmd = _command(method, float(fraction), run_dir, overrides)
            print(f"[{method} @ {float(fraction):.0%} labeled] {shlex.join(cmd)}", flush=True)
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                raise RuntimeError(f"run failed ({method}, {fraction}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            metrics = json.loads((run_dir / "metrics.json").read_text())
            row = {
                "method": method,
                "labeled_fraction": float(fraction),
                "best_val_mean_dice": metrics["best_metric"],
                "best_epoch": metrics["best_metric_epoch"],
                "last_val_mean_dice": metrics["val_mean_dice"],
                "wall_time_s": round(seconds, 1),
                "command": shlex.join(cmd),
            }
            print(f"  best val mean Dice {row['best_val_mean_dice']:.4f} (epoch {row['best_epoch']}), "
                  f"last {row['last_val_mean_dice']:.4f}, {seconds:.0f} s", flush=True)
            results.append(row)
            _write(results, Path(output))  # after every run, so a cut-off sweep keeps what it measured
    print((Path(output)).read_text())
    return results


if __name__ == "__main__":
    fire.Fire(main)
