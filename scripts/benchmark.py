#!/usr/bin/env python
"""Train and evaluate methods at labeled fractions on a real dataset, and tabulate held-out results.

Every run is two `python -m monai.bundle` commands, both recorded in the output:

1. training: `train.yaml` + the `base_configs` (e.g. `cardiac.yaml`) + the method's override
   (`<method>.yaml`; `a+b` layers several), with `--labeled_fraction`, `--seed` and `--split_seed`;
   the best checkpoint on the `validation` list is kept;
2. evaluation: the same stack + `evaluate.yaml` on the `testing` list (never seen in training nor
   in checkpoint selection).

The table gives, per run: mean and per-class Dice and HD95 (mm) of the fused prediction, the mean
Dice of each modality head, the best validation Dice and the wall time of training and evaluation.
Results are written after every run (Markdown and JSON), and a rerun with the same output skips the
runs already in the JSON whose commands are unchanged, so a cut-off benchmark continues.

Example (the MyoPS table of bundle/docs/README.md):
    python scripts/prepare_datalist.py myops ../shared/data/myops --output /tmp/myops/datalist.json \
        --label_dir /tmp/myops/labels --num_validation 4 --num_testing 10 --seed 0
    python scripts/benchmark.py --datalist /tmp/myops/datalist.json --base_configs "['cardiac']" \
        --runs "['supervised@1.0','supervised@0.2','cmc@0.2','semicml@0.2','mean_teacher@0.2']" \
        --seed 0 --output bundle/runs/benchmark/myops.md --epochs 40
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import fire

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "bundle" / "configs"


def _config_stack(names: Sequence[str]) -> list[str]:
    files = [str(CONFIGS / "train.yaml")]
    for name in names:
        path = CONFIGS / (name if name.endswith((".yaml", ".json")) else f"{name}.yaml")
        if not path.is_file():
            raise FileNotFoundError(f"no config '{name}' in {CONFIGS} (looked for {path})")
        files.append(str(path))
    return files


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        return [value]
    return list(value)


def plan_runs(methods: Sequence[str], fractions: Sequence[float], runs: Sequence[str]) -> list[tuple[str, float]]:
    """The (method, fraction) pairs: every method at every fraction, then each ``"method@fraction"``
    of ``runs``, without repeats and in that order."""
    pairs: list[tuple[str, float]] = []
    for fraction in fractions:
        for method in methods:
            pairs.append((str(method), float(fraction)))
    for spec in runs:
        method, sep, fraction = str(spec).rpartition("@")
        if not sep or not method:
            raise ValueError(f"run '{spec}' must be written 'method@fraction', e.g. 'cmc@0.2'.")
        pairs.append((method, float(fraction)))
    for method, fraction in pairs:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"labeled fraction of '{method}' must be in (0, 1], got {fraction}.")
    unique: list[tuple[str, float]] = []
    for pair in pairs:
        if pair not in unique:
            unique.append(pair)
    return unique


def _overrides(values: dict) -> list[str]:
    args: list[str] = []
    for key, value in values.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)]
    return args


def commands(
    method: str, fraction: float, datalist: str, base_configs: Sequence[str], run_dir: Path, seed: int,
    overrides: dict,
) -> tuple[list[str], list[str]]:
    """The training and evaluation commands of one run."""
    stack = _config_stack([*base_configs, *method.split("+")])
    common = ["--datalist_file", str(datalist), "--labeled_fraction", str(fraction), "--seed", str(seed),
              "--split_seed", str(seed), "--ckpt_dir", str(run_dir)]
    train = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(stack), *common,
             "--output_dir", str(run_dir), *_overrides(overrides)]
    evaluate = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
                json.dumps(stack + [str(CONFIGS / "evaluate.yaml")]), *common,
                "--output_dir", str(run_dir / "test"), "--eval_split", "testing",
                *_overrides({k: v for k, v in overrides.items() if k not in _TRAINING_ONLY})]
    return train, evaluate


# overrides that only concern training and would be meaningless (or harmful) for evaluation
_TRAINING_ONLY = {"epochs", "iterations_per_epoch", "val_interval", "log_interval", "learning_rate",
                  "mutual_epochs", "prel_epochs"}


def _run(cmd: list[str], what: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
                           f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return seconds


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_table(results: list[dict], output: Path, title: str = "") -> str:
    """Markdown table of the runs (plus the commands), written to ``output`` with a ``.json`` beside."""
    if not results:
        return ""
    classes = [c for c in results[0]["test"]["fused"]["dice"] if c not in ("mean", "undefined_values")]
    heads = list(results[0]["test"])
    reference = next((r for r in results if r["method"].split("+")[0] == "supervised" and r["labeled_fraction"] == 1.0), None)
    header = ["method", "labeled", "Dice mean"] + [f"Dice {c}" for c in classes] + ["HD95 mean (mm)"]
    header += [f"HD95 {c}" for c in classes] + [f"Dice {h} head" for h in heads[1:]]
    header += ["% of full supervision", "best val Dice", "train (s)", "eval (s)"]
    lines = ([f"{title}", ""] if title else []) + ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        fused = r["test"]["fused"]
        share = "n/a"
        if reference is not None and reference["test"]["fused"]["dice"]["mean"]:
            share = f"{100 * fused['dice']['mean'] / reference['test']['fused']['dice']['mean']:.1f}%"
        cells = [r["method"], f"{r['labeled_fraction']:.0%} ({r['num_labeled']})", _fmt(fused["dice"]["mean"])]
        cells += [_fmt(fused["dice"][c]) for c in classes] + [_fmt(fused["hd95"]["mean"], 1)]
        cells += [_fmt(fused["hd95"][c], 1) for c in classes]
        cells += [_fmt(r["test"][h]["dice"]["mean"]) for h in heads[1:]]
        cells += [share, _fmt(r["best_val_mean_dice"]), f"{r['train_s']:.0f}", f"{r['eval_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Commands (training, then evaluation on the held-out `testing` list):", ""]
    for r in results:
        lines += [f"- {r['method']} @ {r['labeled_fraction']:.0%}:", "  ```",
                  f"  {r['train_command']}", f"  {r['eval_command']}", "  ```"]
    text = "\n".join(lines) + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    return text


def _num_labeled(datalist: str, fraction: float) -> int:
    with open(datalist, encoding="utf-8") as f:
        n = len(json.load(f).get("training", []))
    return max(1, int(fraction * n + 0.5))


def main(
    datalist: str,
    methods: Sequence[str] | str = (),
    fractions: Sequence[float] | float = (),
    runs: Sequence[str] | str = (),
    base_configs: Sequence[str] | str = (),
    seed: int = 0,
    output: str = "bundle/runs/benchmark/benchmark.md",
    runs_dir: str | None = None,
    title: str = "",
    **overrides,
) -> list[dict]:
    """Train and evaluate every requested run; returns the rows of the table.

    Args:
        datalist: datalist JSON with `training`, `unlabeled`, `validation` and `testing` lists
            (see scripts/prepare_datalist.py).
        methods, fractions: every method (a config name; `a+b` layers overrides) is run at every
            labeled fraction of the `training` list.
        runs: further runs written `"method@fraction"`, e.g. `"['supervised@1.0']"`.
        base_configs: overrides layered on train.yaml before the method's, e.g. `"['cardiac']"`.
        seed: training seed and labeled-split seed of every run (reported in the table).
        output: Markdown table; a `.json` with every figure and command is written beside it.
        runs_dir: parent of the runs' folders (default: the folder of `output`).
        title: a line written above the table.
        overrides: further config overrides for every run, e.g. `--epochs 40`.
    """
    datalist = str(Path(datalist).resolve())
    if not os.path.isfile(datalist):
        raise FileNotFoundError(f"datalist not found: {datalist}")
    pairs = plan_runs(_as_list(methods), [float(f) for f in _as_list(fractions)], _as_list(runs))
    if not pairs:
        raise ValueError("nothing to run: give --methods and --fractions, or --runs 'method@fraction'.")
    base = _as_list(base_configs)
    out = Path(output).resolve()
    root = Path(runs_dir).resolve() if runs_dir else out.parent
    done = {}
    if out.with_suffix(".json").is_file():
        done = {(r["train_command"], r["eval_command"]): r for r in json.loads(out.with_suffix(".json").read_text())}
    title = title or f"seed {seed}; datalist {datalist}"
    results: list[dict] = []
    for method, fraction in pairs:
        run_dir = root / f"{method}_{fraction:g}_seed{seed}"
        train_cmd, eval_cmd = commands(method, fraction, datalist, base, run_dir, seed, overrides)
        key = (shlex.join(train_cmd), shlex.join(eval_cmd))
        if key in done and (run_dir / "test" / "metrics.json").is_file():
            print(f"[{method} @ {fraction:.0%}] already done, kept", flush=True)
            results.append(done[key])
            continue
        print(f"[{method} @ {fraction:.0%}] training: {key[0]}", flush=True)
        train_s = _run(train_cmd, f"training of {method} @ {fraction}")
        print(f"[{method} @ {fraction:.0%}] evaluation: {key[1]}", flush=True)
        eval_s = _run(eval_cmd, f"evaluation of {method} @ {fraction}")
        val = json.loads((run_dir / "metrics.json").read_text())
        test = json.loads((run_dir / "test" / "metrics.json").read_text())
        row = {
            "method": method,
            "labeled_fraction": fraction,
            "num_labeled": _num_labeled(datalist, fraction),
            "seed": seed,
            "test": test["summary"],
            "num_test_cases": test["num_cases"],
            "best_val_mean_dice": val["best_metric"],
            "best_epoch": val["best_metric_epoch"],
            "train_s": round(train_s, 1),
            "eval_s": round(eval_s, 1),
            "train_command": key[0],
            "eval_command": key[1],
        }
        print(f"  test mean Dice {row['test']['fused']['dice']['mean']:.4f} over {row['num_test_cases']} cases, "
              f"HD95 {_fmt(row['test']['fused']['hd95']['mean'], 1)} mm; train {train_s:.0f} s", flush=True)
        results.append(row)
        write_table(results, out, title)  # after every run: a cut-off benchmark keeps what it measured
    print(write_table(results, out, title))
    return results


if __name__ == "__main__":
    fire.Fire(lambda *args, **kwargs: main(*args, **kwargs) and None)
