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
import platform
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fire
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "bundle" / "configs"
if str(REPO_ROOT / "bundle") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "bundle"))  # the bundle's components, importable as `scripts`
from scripts.engine.atomic_checkpoint import atomic_write_bytes  # noqa: E402

# overrides that only concern training and would be meaningless (or harmful) for evaluation
_TRAINING_ONLY = {"epochs", "iterations_per_epoch", "val_interval", "log_interval", "learning_rate",
                  "mutual_epochs", "prel_epochs", "unlabeled_batch_size", "batch_size"}


def _config_stack(names: Sequence[str]) -> list[str]:
    """train.yaml then each of ``names``: a config of the bundle by name (``cardiac``, ``unet``), or the
    path of a config file anywhere (e.g. a plan written by scripts/plan.py)."""
    files = [str(CONFIGS / "train.yaml")]
    for name in names:
        path = CONFIGS / (name if name.endswith((".yaml", ".json")) else f"{name}.yaml")
        if not path.is_file() and str(name).endswith((".yaml", ".json")) and Path(name).is_file():
            path = Path(name).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no config '{name}' in {CONFIGS} (looked for {path}) nor at that path")
        files.append(str(path))
    return files


def _is_plan_path(name: str) -> bool:
    """Whether a base config is a file outside the bundle (a written plan) rather than a bundle config."""
    name = str(name)
    if (CONFIGS / (name if name.endswith((".yaml", ".json")) else f"{name}.yaml")).is_file() and os.sep not in name:
        return False  # a bundle config by name
    return Path(name).is_file() and Path(name).resolve().parent != CONFIGS.resolve()


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


def bundle_run_command(stack: Sequence[str], **ids) -> list[str]:
    """The ``python -m monai.bundle run`` command line of a config stack (from :func:`_config_stack`)
    with ``--<id> <value>`` for every keyword (lists, dicts, booleans and None as JSON): the one place
    that builds these commands (benchmark.py, label_efficiency.py, bench_threads.py)."""
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(list(stack)), *_overrides(ids)]


def commands(
    method: str, fraction: float, datalist: str, base_configs: Sequence[str], run_dir: Path, seed: int,
    overrides: dict, split_seed: int | None = None, test_datalist: str | None = None,
) -> tuple[list[str], list[str]]:
    """The training and evaluation commands of one run (``split_seed`` None: the same as ``seed``).
    A base config given as a file path (a plan of scripts/plan.py) is layered after the method's
    override, as a plan must be, so that its ids win."""
    bundle_configs = [b for b in base_configs if not _is_plan_path(b)]
    plans = [b for b in base_configs if _is_plan_path(b)]
    stack = _config_stack([*bundle_configs, *method.split("+"), *plans])
    split = seed if split_seed is None else split_seed
    common = {"labeled_fraction": fraction, "seed": seed, "split_seed": split, "ckpt_dir": str(run_dir)}
    train = bundle_run_command(stack, datalist_file=str(datalist), **common, output_dir=str(run_dir), **overrides)
    evaluate = bundle_run_command(
        stack + [str(CONFIGS / "evaluate.yaml")], datalist_file=str(test_datalist or datalist), **common,
        output_dir=str(run_dir / ("test_external" if test_datalist else "test")), eval_split="testing",
        **{k: v for k, v in overrides.items() if k not in _TRAINING_ONLY},
    )
    return train, evaluate


class RunFailed(RuntimeError):
    """A training or evaluation command of a run exited non-zero; ``log`` holds its output."""

    def __init__(self, message: str, log: Path, returncode: int | None = None) -> None:
        super().__init__(message)
        self.log = log
        self.returncode = returncode


class BenchmarkFailures(RuntimeError):
    """Some runs failed; the report holds those that finished. ``failures``: one dict per failed run."""

    def __init__(self, failures: list[dict], finished: int, report: Path) -> None:
        self.failures = failures
        lines = [f"{len(failures)} of {len(failures) + finished} runs failed; the report {report} holds the "
                 f"{finished} that finished. Run the same command again to retry the failed ones:"]
        lines += [f"  {_failure_text(f)}" for f in failures]
        super().__init__("\n".join(lines))


def _failure_text(failure: dict) -> str:
    return f"{failure['run']}: {failure['stage']} failed ({failure['reason']}); log: {failure['log']}"


# one lock for every progress line: parallel jobs print whole lines, never parts of two on one line
_PRINT_LOCK = threading.Lock()


def _say(line: str) -> None:
    """Print ``line`` and its newline in one write (``print`` writes them separately, so two threads can
    interleave ``a`` ``b`` ``\\n`` ``\\n``)."""
    with _PRINT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _saved_times(run_dir: Path) -> dict:
    path = run_dir / "benchmark_time.json"
    return json.loads(path.read_text()) if path.is_file() else {}


class _Timer:
    """Accumulated wall time of a run's training over attempts, saved every few seconds to
    ``<run>/benchmark_time.json`` so that a cut-off attempt still counts."""

    def __init__(self, run_dir: Path, key: str) -> None:
        self.path = run_dir / "benchmark_time.json"
        self.key = key
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.before = float(saved.get(key, 0.0))
        self.attempts = int(saved.get(f"{key}_attempts", 0)) + 1
        self.start = time.perf_counter()

    def save(self, **extra) -> float:
        total = self.before + time.perf_counter() - self.start
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        saved.update({self.key: round(total, 1), f"{self.key}_attempts": self.attempts, **extra})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json.dumps(saved).encode("utf-8"), self.path)
        return total


def _run(cmd: list[str], what: str, log: Path, timer: _Timer) -> float:
    """Run ``cmd`` with its output in ``log``; returns the accumulated seconds of ``timer``.

    Raises:
        RunFailed: ``cmd`` exited non-zero; the message ends with the tail of ``log``.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ {shlex.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            time.sleep(1.0)
            timer.save()
    seconds = timer.save()
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RunFailed(f"{what} failed (exit {proc.returncode}); log: {log}\n{shlex.join(cmd)}\n{tail}", log,
                        proc.returncode)
    return seconds


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _case_dice(test: dict) -> dict[str, float]:
    """Fused mean Dice of every test case with a defined value."""
    out = {}
    for entry in test.get("cases", []):
        value = entry.get("fused", {}).get("dice", {}).get("mean")
        if value is not None and np.isfinite(value):
            out[str(entry["case"])] = float(value)
    return out


def paired_difference(rows: list[dict], baseline_rows: list[dict], num_bootstrap: int = 10000, seed: int = 0) -> dict | None:
    """Paired per-case Dice difference of ``rows`` against ``baseline_rows`` (matched by seed and case).

    Returns the mean difference pooled over seeds and cases, its 95% bootstrap confidence interval
    (resampling test cases, each case's difference first averaged over the seeds), the per-seed mean
    differences, the number of pairs and the share of pairs the method wins; ``None`` without pairs.
    """
    base = {r["seed"]: r["case_dice"] for r in baseline_rows}
    per_case: dict[str, list[float]] = {}
    per_seed: dict[int, list[float]] = {}
    for r in rows:
        if r["seed"] not in base:
            continue
        for case, value in r["case_dice"].items():
            if case in base[r["seed"]]:
                d = value - base[r["seed"]][case]
                per_case.setdefault(case, []).append(d)
                per_seed.setdefault(r["seed"], []).append(d)
    if not per_case:
        return None
    case_means = np.array([np.mean(v) for v in per_case.values()])
    pooled = np.concatenate([np.asarray(v) for v in per_case.values()])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(case_means), size=(num_bootstrap, len(case_means)))
    boot = case_means[draws].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {
        "mean": float(pooled.mean()),
        "ci95": [float(low), float(high)],
        "per_seed": {str(s): float(np.mean(v)) for s, v in sorted(per_seed.items())},
        "num_pairs": int(pooled.size),
        "num_cases": int(len(case_means)),
        "seeds": sorted(int(s) for s in per_seed),
        "win_rate": float((pooled > 0).mean()),
    }


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)


def summarise(results: list[dict], baseline: str, num_bootstrap: int = 10000) -> list[dict]:
    """One entry per (method, fraction): mean +- std over seeds, share of full supervision, paired difference."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["labeled_fraction"]), []).append(r)
    full = groups.get((baseline, 1.0), [])
    full_mean = _mean_std([r["test"]["fused"]["dice"]["mean"] for r in full])[0] if full else None
    summary = []
    for (method, fraction), rows in groups.items():
        dice_mean, dice_std = _mean_std([r["test"]["fused"]["dice"]["mean"] for r in rows])
        hd_mean, hd_std = _mean_std([r["test"]["fused"]["hd95"]["mean"] for r in rows])
        entry = {
            "method": method, "labeled_fraction": fraction, "num_labeled": rows[0]["num_labeled"],
            "seeds": sorted(r["seed"] for r in rows), "dice_mean": dice_mean, "dice_std": dice_std,
            "hd95_mean": hd_mean, "hd95_std": hd_std,
            "share_of_full": (dice_mean / full_mean) if (full_mean and dice_mean is not None) else None,
            "train_s_mean": float(np.mean([r["train_s"] for r in rows])),
            "vs_baseline": None,
        }
        if method != baseline and (baseline, fraction) in groups:
            entry["vs_baseline"] = paired_difference(rows, groups[(baseline, fraction)], num_bootstrap)
        summary.append(entry)
    return summary


def machine() -> dict:
    """What the runs ran on."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        pass
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                        text=True, check=False).stdout.strip() or None
    except OSError:  # pragma: no cover
        info["commit"] = None
    return info


def _machine_text(info: dict) -> str:
    return "; ".join(f"{k} {v}" for k, v in info.items()) if info else "not recorded"


def _machines(results: list[dict], info: dict | None) -> list[tuple[dict, list[str]]]:
    """The distinct machines of ``results`` (a run's own ``machine``, else ``info``), each with its runs."""
    out: list[tuple[dict, list[str]]] = []
    for r in results:
        where = r.get("machine") or info or {}
        name = f"{r['method']}@{r['labeled_fraction']:g}/seed{r['seed']}"
        for known, names in out:
            if known == where:
                names.append(name)
                break
        else:
            out.append((where, [name]))
    return out


def write_report(results: list[dict], output: Path, title: str = "", baseline: str = "supervised",
                 num_bootstrap: int = 10000, info: dict | None = None, failures: Sequence[dict] = ()) -> str:
    """Markdown report (summary over seeds, paired differences, every run, commands) at ``output``,
    and a ``.json`` beside it with every figure and command; ``failures`` (runs that failed, see
    :func:`run_benchmark`) are listed after the tables, each with its log."""
    if not results and not failures:
        return ""
    lines = ([title, ""] if title else [])
    if results:
        lines += _result_lines(results, baseline, num_bootstrap, info)
    if failures:
        lines += ["", f"Failed runs ({len(failures)}; not in the tables above; the same command retries them):", ""]
        lines += [f"- {_failure_text(f)}" for f in failures]
    text = "\n".join(lines) + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    output.with_suffix(".json").write_text(json.dumps({
        "summary": summarise(results, baseline, num_bootstrap) if results else [], "runs": results, "machine": info,
        "baseline": baseline, "failures": list(failures)}, indent=2) + "\n")
    return text


def _result_lines(results: list[dict], baseline: str, num_bootstrap: int, info: dict | None) -> list[str]:
    """The tables, machines and commands of :func:`write_report`."""
    summary = summarise(results, baseline, num_bootstrap)
    lines: list[str] = []
    lines += [f"Baseline for the paired differences and for '% of full': `{baseline}`.", ""]
    header = ["method", "labeled", "seeds", "Dice mean ± std", "HD95 (mm) mean ± std", "% of full supervision",
              f"Δ Dice vs {baseline} [95% CI]", "per-seed Δ", "pairs won", "train (s, mean)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summary:
        d = s["vs_baseline"]
        cells = [s["method"], f"{s['labeled_fraction']:.0%} ({s['num_labeled']})", ",".join(map(str, s["seeds"])),
                 f"{_fmt(s['dice_mean'])} ± {_fmt(s['dice_std'])}", f"{_fmt(s['hd95_mean'], 1)} ± {_fmt(s['hd95_std'], 1)}",
                 "n/a" if s["share_of_full"] is None else f"{100 * s['share_of_full']:.1f}%",
                 "—" if d is None else f"{100 * d['mean']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]",
                 "—" if d is None else " ".join(f"{100 * v:+.1f}" for v in d["per_seed"].values()),
                 "—" if d is None else f"{100 * d['win_rate']:.0f}% of {d['num_pairs']}",
                 f"{s['train_s_mean']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Δ in Dice points (×100), method minus baseline on the same test case, trained with the same seed "
              f"(same labeled cases); CI: {num_bootstrap} bootstrap resamples of the test cases.", ""]

    classes = [c for c in results[0]["test"]["fused"]["dice"] if c not in ("mean", "undefined_values")]
    heads = list(results[0]["test"])
    header = ["method", "labeled", "seed", "split seed", "Dice mean"] + [f"Dice {c}" for c in classes]
    header += ["HD95 mean (mm)"] + [f"Dice {h} head" for h in heads[1:]] + ["best val Dice", "train (s)", "eval (s)"]
    lines += ["Every run:", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        fused = r["test"]["fused"]
        cells = [r["method"], f"{r['labeled_fraction']:.0%} ({r['num_labeled']})", str(r["seed"]), str(r["split_seed"]),
                 _fmt(fused["dice"]["mean"])]
        cells += [_fmt(fused["dice"][c]) for c in classes] + [_fmt(fused["hd95"]["mean"], 1)]
        cells += [_fmt(r["test"][h]["dice"]["mean"]) if h in r["test"] else "n/a" for h in heads[1:]]
        cells += [_fmt(r["best_val_mean_dice"]), f"{r['train_s']:.0f}", f"{r['eval_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    machines = _machines(results, info)
    if len(machines) == 1:
        lines += ["", "Machine: " + _machine_text(machines[0][0])]
    else:
        lines += ["", "Machines (runs merged from several reports):", ""]
        lines += [f"- {_machine_text(where)}: {', '.join(names)}" for where, names in machines]
    lines += ["", "Commands (training, then evaluation on the held-out test cases):", ""]
    for r in results:
        lines += [f"- {r['method']} @ {r['labeled_fraction']:.0%}, seed {r['seed']}:", "  ```",
                  f"  {r['train_command']}", f"  {r['eval_command']}", "  ```"]
    return lines


def _num_labeled(datalist: str, fraction: float) -> int:
    with open(datalist, encoding="utf-8") as f:
        n = len(json.load(f).get("training", []))
    return max(1, int(fraction * n + 0.5))


def _previous_runs(path: Path) -> list[dict]:
    """The runs of a JSON report; each keeps the machine it ran on (older reports name it once)."""
    if not path.is_file():
        return []
    content = json.loads(path.read_text())
    if not isinstance(content, dict):
        return content
    return [dict(r, machine=r.get("machine") or content.get("machine") or {}) for r in content["runs"]]


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
    seed_list = [int(s) for s in (_as_list(seed) if seed is not None else _as_list(seeds))]
    if not seed_list:
        raise ValueError("give at least one seed (--seeds).")
    pairs = plan_runs(_as_list(methods), [float(f) for f in _as_list(fractions)], _as_list(runs))
    included = [row for path in _as_list(include) for row in _previous_runs(Path(path).resolve())]
    if not pairs and not included:
        raise ValueError("nothing to run: give --methods and --fractions, or --runs 'method@fraction'.")
    if int(jobs) < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}.")
    base = _as_list(base_configs)
    out = Path(output).resolve()
    root = Path(runs_dir).resolve() if runs_dir else out.parent
    done = {(r["train_command"], r["eval_command"]): r for r in _previous_runs(out.with_suffix(".json"))}
    if not pairs:
        seed_list = sorted({int(r["seed"]) for r in included})
    title = title or f"seeds {seed_list}; split seed {'= seed' if split_seed is None else split_seed}; datalist {datalist}"
    info = machine()
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
            _say(f"{tag}: FAILED: {_failure_text(failure)}")
            with lock:
                failures[index] = failure
            report()

    def train_and_evaluate(index: int, tag: str, step: dict) -> None:
        method, fraction, run_seed = plan[index]
        split, run_dir, (train_cmd, eval_cmd) = prepared[index]
        key = (shlex.join(train_cmd), shlex.join(eval_cmd))
        test_dir = run_dir / ("test_external" if test_datalist else "test")
        if key in done and (test_dir / "metrics.json").is_file():
            _say(f"{tag}: already done, kept")
            with lock:
                results[index] = done[key]
            return
        step.update(stage="training", log=run_dir / "train.log")
        saved = _saved_times(run_dir)
        if saved.get("trained_command") == key[0] and (run_dir / "model.pt").is_file():
            train_s = float(saved.get("train_s", 0.0))  # trained by an earlier attempt whose evaluation failed
            _say(f"{tag}: training done before, kept")
        else:
            _say(f"{tag}: training; live log {step['log']}")
            timer = _Timer(run_dir, "train_s")
            train_s = _run(train_cmd, f"training of {tag}", step["log"], timer)
            timer.save(trained_command=key[0])
        val = json.loads((run_dir / "metrics.json").read_text())
        step.update(stage="evaluation", log=run_dir / "eval.log")
        _say(f"{tag}: evaluating; live log {step['log']}")
        eval_s = _run(eval_cmd, f"evaluation of {tag}", step["log"], _Timer(run_dir, "eval_s"))
        test = json.loads((test_dir / "metrics.json").read_text())
        row = {
            "method": method, "labeled_fraction": fraction, "num_labeled": _num_labeled(datalist, fraction),
            "seed": run_seed, "split_seed": split, "test": test["summary"], "case_dice": _case_dice(test),
            "num_test_cases": test["num_cases"], "best_val_mean_dice": val["best_metric"],
            "best_epoch": val["best_metric_epoch"], "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
            "train_command": key[0], "eval_command": key[1], "machine": info,
        }
        _say(f"{tag}: done, test mean Dice {row['test']['fused']['dice']['mean']:.4f} over {row['num_test_cases']} "
             f"cases, HD95 {_fmt(row['test']['fused']['hd95']['mean'], 1)} mm; train {train_s:.0f} s")
        with lock:
            results[index] = row
        report()  # after every run: a cut-off benchmark keeps what it measured

    if int(jobs) == 1:
        for i in range(len(plan)):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=int(jobs)) as pool:
            for future in [pool.submit(one, i) for i in range(len(plan))]:
                future.result()
    report()
    rows = [results[i] for i in sorted(results)]
    if out.is_file():
        print(out.read_text(), flush=True)
    if failures:
        raise BenchmarkFailures([failures[i] for i in sorted(failures)], len(rows), out)
    return rows + [r for r in included if r not in rows]


def main(argv: Sequence[str]) -> int:
    """The command line: 0 when every run finished, 1 when some failed (listed last, on stderr)."""
    # fire on run_benchmark itself, so that `--help` shows its arguments; nothing printed after the report.
    # A bare `--help` would make fire complain of the missing datalist (exit 2): ask for the help proper.
    argv = ["--", "--help"] if any(a in ("-h", "--help") for a in argv) else list(argv)
    try:
        fire.Fire(run_benchmark, command=argv, serialize=lambda rows: None)
    except BenchmarkFailures as e:
        sys.stdout.flush()
        print(f"\nERROR: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
