#!/usr/bin/env python
"""Train and evaluate methods at labeled fractions over several seeds, and tell gain from noise.

Every run (method x labeled fraction x seed) is two `python -m monai.bundle` commands, both recorded:

1. training: `train.yaml` + the `base_configs` (e.g. `cardiac.yaml`) + the method's override
   (`<method>.yaml`; `a+b` layers several, e.g. `unet+weak_strong`), with `--labeled_fraction`,
   `--seed` and `--split_seed`; the best checkpoint on the `validation` list is kept;
2. evaluation: the same stack + `evaluate.yaml` on the `testing` list of the datalist (never seen in
   training nor in checkpoint selection), or on `--test_datalist` (an external test set, e.g. written
   by `prepare_datalist.py ... --num_validation 0 --num_testing <all>`).

Seeds: each seed of `--seeds` changes the initialisation and the random draws of training, and, unless
`--split_seed` fixes it, also which training cases keep their labels; a fixed `--split_seed` keeps the
labeled subset and varies the initialisation only, so the two sources of noise can be told apart.

Report (Markdown and JSON, rewritten after every run):
- per method and fraction: mean +- std over seeds of the held-out Dice and HD95, and the share of
  full supervision (the `--baseline` method at 100% labels);
- the paired difference against `--baseline` at the same fraction: per test case and seed, Dice of the
  method minus Dice of the baseline trained with the same seed (same labeled cases); its mean, pooled
  over seeds, and a 95% bootstrap confidence interval that resamples the test cases (each case's
  difference averaged over the seeds first, since the seeds of one case are not independent);
- every run's figures and exact commands, and the machine.
The statistics are in `benchmarking/statistics.py`, the report's writing in `benchmarking/report.py`.

A run that fails, in training or in evaluation, does not stop the others: the report holds every run
that finished, then lists each failure with its log, and the benchmark exits with status 1.
A rerun with the same output skips the runs whose commands are unchanged and whose evaluation exists,
so a cut-off or partly failed benchmark retries only the failed and missing runs; a run whose training
finished (same command, `model.pt` written) is only evaluated again; a cut-off run resumes from its
last epoch (the bundle's `resume`), and its reported training time includes the part before the cut
(kept in `<run>/benchmark_time.json`). While it runs, a line is printed per started, finished and
failed step, with the path of the step's live log.

Example (the MyoPS tables of bundle/docs/README.md):
    python scripts/prepare_datalist.py myops ../shared/data/myops --output /tmp/myops/datalist.json \
        --label_dir /tmp/myops/labels --num_validation 4 --num_testing 10 --seed 0 --absolute_paths true
    python scripts/benchmark.py --datalist /tmp/myops/datalist.json --base_configs "['planned','cardiac']" \
        --methods "['unet+supervised','unet+weak_strong']" --fractions "[0.1,0.2]" \
        --runs "['unet+supervised@1.0']" --seeds "[0,1,2]" --baseline unet+supervised \
        --jobs 2 --num_threads 1 --output /tmp/myops/bench/myops.md
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import threading
from collections.abc import Sequence
from pathlib import Path


from benchmarking.commands import as_list, bundle_run_command, config_stack, is_plan_path
from benchmarking.machine import describe_machine
from benchmarking.report import failure_text, fmt, previous_runs, write_report
from benchmarking.runs import BenchmarkFailures, RunFailed, Timer, fire_main, run_all, run_logged, saved_times, say
from benchmarking.statistics import case_dice
from bundle_path import CONFIGS

# overrides that only concern training and would be meaningless (or harmful) for evaluation
_TRAINING_ONLY = {"epochs", "iterations_per_epoch", "val_interval", "log_interval", "learning_rate",
                  "mutual_epochs", "prel_epochs", "unlabeled_batch_size", "batch_size"}


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


def commands(
    method: str, fraction: float, datalist: str, base_configs: Sequence[str], run_dir: Path, seed: int,
    overrides: dict, split_seed: int | None = None, test_datalist: str | None = None,
) -> tuple[list[str], list[str]]:
    """The training and evaluation commands of one run (``split_seed`` None: the same as ``seed``).
    A base config given as a file path (a plan of scripts/plan.py) is layered after the method's
    override, as a plan must be, so that its ids win."""
    bundle_configs = [b for b in base_configs if not is_plan_path(b)]
    plans = [b for b in base_configs if is_plan_path(b)]
    stack = config_stack([*bundle_configs, *method.split("+"), *plans])
    split = seed if split_seed is None else split_seed
    common = {"labeled_fraction": fraction, "seed": seed, "split_seed": split, "ckpt_dir": str(run_dir)}
    train = bundle_run_command(stack, datalist_file=str(datalist), **common, output_dir=str(run_dir), **overrides)
    evaluate = bundle_run_command(
        stack + [str(CONFIGS / "evaluate.yaml")], datalist_file=str(test_datalist or datalist), **common,
        output_dir=str(run_dir / ("test_external" if test_datalist else "test")), eval_split="testing",
        **{k: v for k, v in overrides.items() if k not in _TRAINING_ONLY},
    )
    return train, evaluate


def _num_labeled(datalist: str, fraction: float) -> int:
    with open(datalist, encoding="utf-8") as f:
        n = len(json.load(f).get("training", []))
    return max(1, int(fraction * n + 0.5))


def run_benchmark(
    datalist: str,
    methods: Sequence[str] | str = (),
    fractions: Sequence[float] | float = (),
    runs: Sequence[str] | str = (),
    base_configs: Sequence[str] | str = (),
    seeds: Sequence[int] | int = (0,),
    split_seed: int | None = None,
    baseline: str = "supervised",
    test_datalist: str | None = None,
    jobs: int = 1,
    output: str = "bundle/runs/benchmark/benchmark.md",
    runs_dir: str | None = None,
    title: str = "",
    num_bootstrap: int = 10000,
    seed: int | None = None,
    include: Sequence[str] | str = (),
    **overrides,
) -> list[dict]:
    """Train and evaluate every requested run; returns every run's row (see the module docstring).

    A run that fails (in training or evaluation) is reported and the others go on; at the end the
    report holds every run that finished and lists the failures, and :class:`BenchmarkFailures` is
    raised (``python scripts/benchmark.py`` prints it and exits with status 1).

    Args:
        datalist: datalist JSON with `training`, `unlabeled`, `validation` and `testing` lists
            (see scripts/prepare_datalist.py).
        methods, fractions: every method (a config name; `a+b` layers overrides) at every labeled
            fraction of the `training` list.
        runs: further runs written `"method@fraction"`, e.g. `"['supervised@1.0']"`.
        base_configs: overrides layered on train.yaml before the method's, e.g. `"['planned','cardiac']"`; the path
            of a plan written by scripts/plan.py (`"['planned','/data/x/plan.yaml']"`) is layered after it.
        seeds: the seeds; every run is trained once per seed.
        split_seed: null: each seed also draws the labeled subset; a number: one labeled subset for all.
        baseline: the method the others are compared with (paired, same seed), and whose 100% run is
            "full supervision", e.g. `unet+supervised`.
        test_datalist: evaluate on this datalist's `testing` list instead (an external test set).
        jobs: runs trained at the same time (on a CPU machine with 2 cores: 2, with `--num_threads 1`).
        output: Markdown report; a `.json` with every figure and command is written beside it.
        runs_dir: parent of the runs' folders (default: the folder of `output`).
        title: a line written above the tables.
        num_bootstrap: bootstrap resamples of the confidence intervals.
        seed: a single seed (the same as `--seeds "[seed]"`).
        include: JSON reports of other benchmark runs (e.g. run at the same time on another
            machine) whose runs join this report, not rerun; with nothing else to run, the report
            is only merged.
        overrides: further config overrides for every run, e.g. `--epochs 40 --num_threads 1`.
    """
    datalist = str(Path(datalist).resolve())
    if not os.path.isfile(datalist):
        raise FileNotFoundError(f"datalist not found: {datalist}")
    if test_datalist is not None:
        test_datalist = str(Path(test_datalist).resolve())
        if not os.path.isfile(test_datalist):
            raise FileNotFoundError(f"test datalist not found: {test_datalist}")
    seed_list = [int(s) for s in (as_list(seed) if seed is not None else as_list(seeds))]
    if not seed_list:
        raise ValueError("give at least one seed (--seeds).")
    pairs = plan_runs(as_list(methods), [float(f) for f in as_list(fractions)], as_list(runs))
    included = [row for path in as_list(include) for row in previous_runs(Path(path).resolve())]
    if not pairs and not included:
        raise ValueError("nothing to run: give --methods and --fractions, or --runs 'method@fraction'.")
    if int(jobs) < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}.")
    names = sorted({m for m, _ in pairs} | {r["method"] for r in included})
    if len(names) > 1 and baseline not in names:
        # said before hours of training, not found in a report without its Δ column
        similar = [n for n in names if n.endswith(f"+{baseline}")]
        hint = f"; did you mean --baseline {similar[0]}?" if similar else ""
        say(f"warning: --baseline {baseline!r} is none of the methods {names}: the report will have no paired "
            f"differences and no '% of full supervision'{hint}")
    base = as_list(base_configs)
    out = Path(output).resolve()
    root = Path(runs_dir).resolve() if runs_dir else out.parent
    done = {(r["train_command"], r["eval_command"]): r for r in previous_runs(out.with_suffix(".json"))}
    if not pairs:
        seed_list = sorted({int(r["seed"]) for r in included})
    title = title or f"seeds {seed_list}; split seed {'= seed' if split_seed is None else split_seed}; datalist {datalist}"
    info = describe_machine(torch_threads=False)
    plan = [(m, f, s) for m, f in pairs for s in seed_list]
    prepared = []  # (split seed, run folder, commands) of every run: a config that does not exist stops here
    for method, fraction, run_seed in plan:
        split = run_seed if split_seed is None else int(split_seed)
        run_dir = root / (f"{method}_{fraction:g}_seed{run_seed}" + ("" if split_seed is None else f"_split{split}"))
        prepared.append((split, run_dir, commands(method, fraction, datalist, base, run_dir, run_seed, overrides,
                                                  split_seed, test_datalist)))
    results: dict[int, dict] = {}
    failures: dict[int, dict] = {}
    lock = threading.Lock()

    def report() -> None:
        with lock:
            rows = [results[i] for i in sorted(results)]
            own = {(r["train_command"], r["eval_command"]) for r in rows}
            rows += [r for r in included if (r["train_command"], r["eval_command"]) not in own]
            write_report(rows, out, title, baseline, num_bootstrap, info, [failures[i] for i in sorted(failures)])

    def one(index: int) -> None:
        """One run; a failure is recorded (and reported) instead of stopping the other runs."""
        method, fraction, run_seed = plan[index]
        tag = f"[{index + 1}/{len(plan)}] {method} @ {fraction:.0%}, seed {run_seed}"
        step = {"stage": "training", "log": prepared[index][1] / "train.log"}
        try:
            train_and_evaluate(index, tag, step)
        except Exception as e:  # noqa: BLE001 - any failure of one run must leave the others running
            reason = f"exit {e.returncode}" if isinstance(e, RunFailed) else f"{type(e).__name__}: {e}"
            failure = {"run": tag.split("] ", 1)[-1], "method": method, "labeled_fraction": fraction,
                       "seed": run_seed, "stage": step["stage"], "reason": reason.splitlines()[0],
                       "log": str(step["log"])}
            say(f"{tag}: FAILED: {failure_text(failure)}")
            with lock:
                failures[index] = failure
            report()

    def train_and_evaluate(index: int, tag: str, step: dict) -> None:
        method, fraction, run_seed = plan[index]
        split, run_dir, (train_cmd, eval_cmd) = prepared[index]
        key = (shlex.join(train_cmd), shlex.join(eval_cmd))
        test_dir = run_dir / ("test_external" if test_datalist else "test")
        if key in done and (test_dir / "metrics.json").is_file():
            say(f"{tag}: already done, kept")
            with lock:
                results[index] = done[key]
            return
        step.update(stage="training", log=run_dir / "train.log")
        saved = saved_times(run_dir)
        if saved.get("trained_command") == key[0] and (run_dir / "model.pt").is_file():
            train_s = float(saved.get("train_s", 0.0))  # trained by an earlier attempt whose evaluation failed
            say(f"{tag}: training done before, kept")
        else:
            say(f"{tag}: training; live log {step['log']}")
            timer = Timer(run_dir, "train_s")
            train_s = run_logged(train_cmd, f"training of {tag}", step["log"], timer)
            timer.save(trained_command=key[0])
        val = json.loads((run_dir / "metrics.json").read_text())
        step.update(stage="evaluation", log=run_dir / "eval.log")
        say(f"{tag}: evaluating; live log {step['log']}")
        eval_s = run_logged(eval_cmd, f"evaluation of {tag}", step["log"], Timer(run_dir, "eval_s"))
        test = json.loads((test_dir / "metrics.json").read_text())
        row = {
            "method": method, "labeled_fraction": fraction, "num_labeled": _num_labeled(datalist, fraction),
            "seed": run_seed, "split_seed": split, "test": test["summary"], "case_dice": case_dice(test),
            "num_test_cases": test["num_cases"], "best_val_mean_dice": val["best_metric"],
            "best_epoch": val["best_metric_epoch"], "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
            "train_command": key[0], "eval_command": key[1], "machine": info,
        }
        say(f"{tag}: done, test mean Dice {row['test']['fused']['dice']['mean']:.4f} over {row['num_test_cases']} "
             f"cases, HD95 {fmt(row['test']['fused']['hd95']['mean'], 1)} mm; train {train_s:.0f} s")
        with lock:
            results[index] = row
        report()  # after every run: a cut-off benchmark keeps what it measured

    run_all(one, len(plan), jobs)
    report()
    rows = [results[i] for i in sorted(results)]
    if out.is_file():
        print(out.read_text(), flush=True)
    if failures:
        raise BenchmarkFailures([failures[i] for i in sorted(failures)], len(rows), out)
    return rows + [r for r in included if r not in rows]


def main(argv: Sequence[str]) -> int:
    """The command line: 0 when every run finished, 1 when some failed (listed last, on stderr)."""
    return fire_main(run_benchmark, list(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
