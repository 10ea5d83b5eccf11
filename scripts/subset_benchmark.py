#!/usr/bin/env python
"""Evaluate the runs of a finished benchmark on every non-empty subset of the sequences (missing ones zeroed).

A patient may lack a sequence. The bundle's convention for a missing sequence is a channel of zeros after
intensity normalisation; `evaluate.yaml`'s `eval_modalities` evaluates with a subset of the modalities and
zeroes the others. This tool takes the JSON report of `scripts/benchmark.py` and, for every selected run
(method x labeled fraction x seed), evaluates its checkpoint on each of the `2**M - 1` non-empty subsets of
the `M` modalities (7 for 3, 3 for 2):

- each evaluation is the run's own recorded evaluation command (`eval_command`: its config stack,
  `--ckpt_dir`, `--datalist_file`, `--eval_split`, seeds and overrides) with `--eval_modalities <subset>`
  and its own `--output_dir` (`<runs_dir>/<method>_<fraction>_seed<seed>/<subset>`); the bundle's configs
  of the stack are taken from this checkout (`bundle/configs`), other config files (plans) from where the
  benchmark found them, and the command runs with this Python;
- a rerun keeps every evaluation whose command is unchanged and whose `metrics.json` was written; a failed
  evaluation does not stop the others, is listed in the report, and is retried by the next run (exit status 1).

Report (Markdown and JSON, rewritten after every evaluation): per method and fraction, per subset, the mean
+- std over seeds of the held-out fused Dice and HD95 and the share of the method's all-sequence Dice; the
mean over all subsets (per seed, then mean +- std over seeds); and the paired difference of that
mean-over-subsets Dice against `--baseline` (the method's supervised twin, same fraction and seed): per test
case (its Dice averaged over the subsets) and seed, with a 95% bootstrap CI over test cases
(`benchmarking.statistics.paired_difference`).

Example (after the benchmark of bundle/docs/README.md):
    python scripts/subset_benchmark.py /tmp/myops/bench/myops.json --baseline unet+supervised \
        --fractions "[0.1]" --jobs 2 --num_threads 1
"""

from __future__ import annotations

import json
import shlex
import sys
import threading
from collections.abc import Sequence
from pathlib import Path


from benchmarking.commands import as_list, bundle_run_command
from benchmarking.machine import describe_machine
from benchmarking.report import failure_text, fmt, previous_runs
from benchmarking.runs import BenchmarkFailures, RunFailed, Timer, fire_main, run_all, run_logged, saved_times, say
from benchmarking.statistics import case_dice, mean_std, paired_difference
from bundle_path import CONFIGS, use_bundle_scripts

use_bundle_scripts()
from scripts.data.modality_subset import modality_subsets  # noqa: E402


def select_runs(
    runs: Sequence[dict], methods: Sequence[str] = (), fractions: Sequence[float] = (), seeds: Sequence[int] = (),
    baseline: str | None = None,
) -> list[dict]:
    """The runs of a benchmark report to evaluate: those of ``methods`` (and always ``baseline``), ``fractions``
    and ``seeds``; an empty selection keeps all."""
    methods = {str(m) for m in methods} | ({str(baseline)} if methods and baseline else set())
    fractions = {float(f) for f in fractions}
    seeds = {int(s) for s in seeds}
    return [
        r for r in runs
        if (not methods or r["method"] in methods) and (not fractions or float(r["labeled_fraction"]) in fractions)
        and (not seeds or int(r["seed"]) in seeds)
    ]


def parse_bundle_command(command: str) -> tuple[list[str], dict[str, str]]:
    """The config stack and the ``--id value`` overrides of a ``python -m monai.bundle run`` command line
    (as benchmark.py records it); the bundle's own configs are mapped to this checkout's ``bundle/configs``."""
    tokens = shlex.split(command)
    if tokens[1:4] != ["-m", "monai.bundle", "run"] or len(tokens[4:]) % 2:
        raise ValueError(f"not a 'python -m monai.bundle run --id value ...' command: {command}")
    ids = {}
    for key, value in zip(tokens[4::2], tokens[5::2], strict=True):
        if not key.startswith("--"):
            raise ValueError(f"{key!r} is not an '--id' in {command}")
        ids[key[2:]] = value
    stack = []
    for path in json.loads(ids.pop("config_file")):
        p = Path(path)
        here = CONFIGS / p.name
        stack.append(str(here) if p.parent.name == "configs" and p.parent.parent.name == "bundle" and here.is_file()
                     else path)
    if Path(stack[-1]).name != "evaluate.yaml":
        raise ValueError(f"not an evaluation command (its last config is not evaluate.yaml): {command}")
    return stack, ids


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def run_modalities(stack: Sequence[str], ids: dict[str, str]) -> list[str]:
    """The ``modalities`` of a run: its command's ``--modalities``, else its config stack's."""
    if "modalities" in ids:
        return [str(m) for m in _value(ids["modalities"])]
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(stack))
    return [str(m) for m in parser.get_parsed_content("modalities")]


def subset_name(subset: Sequence[str]) -> str:
    return "+".join(subset)


def run_name(run: dict) -> str:
    split = run.get("split_seed", run["seed"])
    return f"{run['method']}_{float(run['labeled_fraction']):g}_seed{run['seed']}" + (
        "" if split == run["seed"] else f"_split{split}")


def summarise_subsets(evaluations: list[dict], subsets: list[list[str]], baseline: str,
                      num_bootstrap: int = 10000) -> list[dict]:
    """One entry per (method, fraction): per subset, the mean +- std over seeds of Dice and HD95 and the share of
    the all-sequence Dice; the mean over subsets (mean +- std over seeds, seeds with every subset evaluated) and
    its paired difference against ``baseline`` at the same fraction (:func:`benchmarking.statistics.paired_difference` on each
    test case's Dice averaged over the subsets)."""
    names = [subset_name(s) for s in subsets]
    groups: dict[tuple[str, float], list[dict]] = {}
    for e in evaluations:
        groups.setdefault((e["method"], e["labeled_fraction"]), []).append(e)

    def over_subsets(rows: list[dict]) -> list[dict]:
        """Per seed with every subset evaluated: the mean Dice over subsets, and per case (cases of every subset)."""
        out = []
        for seed in sorted({r["seed"] for r in rows}):
            by_subset = {r["subset_name"]: r for r in rows if r["seed"] == seed}
            if set(names) - set(by_subset):
                continue
            cases = set.intersection(*(set(by_subset[n]["case_dice"]) for n in names))
            case_dice = {c: sum(by_subset[n]["case_dice"][c] for n in names) / len(names) for c in sorted(cases)}
            dice = [by_subset[n]["dice"] for n in names]
            mean = None if any(d is None for d in dice) else sum(dice) / len(dice)
            out.append({"seed": seed, "dice": mean, "case_dice": case_dice})
        return out

    summary = []
    for (method, fraction), rows in groups.items():
        per_subset = {}
        for name in names:
            of = [r for r in rows if r["subset_name"] == name]
            dice_mean, dice_std = mean_std([r["dice"] for r in of])
            hd_mean, hd_std = mean_std([r["hd95"] for r in of])
            per_subset[name] = {"seeds": sorted(r["seed"] for r in of), "dice_mean": dice_mean, "dice_std": dice_std,
                                "hd95_mean": hd_mean, "hd95_std": hd_std}
        full = per_subset[names[0]]["dice_mean"]
        for entry in per_subset.values():
            entry["share_of_all"] = entry["dice_mean"] / full if full and entry["dice_mean"] is not None else None
        mean_rows = over_subsets(rows)
        mean, std = mean_std([r["dice"] for r in mean_rows])
        vs = None
        if method != baseline and (baseline, fraction) in groups:
            vs = paired_difference(mean_rows, over_subsets(groups[(baseline, fraction)]), num_bootstrap)
        summary.append({
            "method": method, "labeled_fraction": fraction, "num_labeled": rows[0].get("num_labeled"),
            "subsets": per_subset, "mean_over_subsets": {"seeds": [r["seed"] for r in mean_rows], "dice_mean": mean,
                                                         "dice_std": std},
            "vs_baseline": vs,
        })
    return summary


def _labeled(s: dict) -> str:
    return f"{s['labeled_fraction']:.0%}" + (f" ({s['num_labeled']})" if s.get("num_labeled") else "")


def write_subset_report(evaluations: list[dict], subsets: list[list[str]], output: Path, baseline: str,
                        num_bootstrap: int = 10000, title: str = "", info: dict | None = None,
                        failures: Sequence[dict] = ()) -> str:
    """Markdown tables at ``output`` (Dice, share of the all-sequence Dice, HD95, per subset; the mean over
    subsets and its paired difference against ``baseline``) and a ``.json`` beside it with every figure and
    command; failed evaluations are listed last."""
    names = [subset_name(s) for s in subsets]
    summary = summarise_subsets(evaluations, subsets, baseline, num_bootstrap) if evaluations else []
    lines = ([title, ""] if title else []) + [
        f"Held-out fused mean Dice with only the sequences of each subset (the others missing: zeroed after "
        f"normalisation), mean ± std over seeds; the first subset has every sequence. Baseline of the paired "
        f"differences: `{baseline}`.", ""]
    header = ["method", "labeled", *names, "mean over subsets", f"Δ mean over subsets vs {baseline} [95% CI]",
              "pairs won"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summary:
        d, m = s["vs_baseline"], s["mean_over_subsets"]
        cells = [s["method"], _labeled(s)]
        cells += [f"{fmt(s['subsets'][n]['dice_mean'])} ± {fmt(s['subsets'][n]['dice_std'])}" for n in names]
        cells += [f"{fmt(m['dice_mean'])} ± {fmt(m['dice_std'])}",
                  "—" if d is None else f"{100 * d['mean']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]",
                  "—" if d is None else f"{100 * d['win_rate']:.0f}% of {d['num_pairs']}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Δ in Dice points (×100): each test case's Dice averaged over the subsets, method minus baseline "
              f"trained with the same seed; CI: {num_bootstrap} bootstrap resamples of the test cases.", "",
              "Share of the method's all-sequence Dice:", "",
              "| " + " | ".join(["method", "labeled", *names]) + " |", "|" + "---|" * (len(names) + 2)]
    for s in summary:
        shares = [s["subsets"][n]["share_of_all"] for n in names]
        cells = ["n/a" if v is None else f"{100 * v:.1f}%" for v in shares]
        lines.append("| " + " | ".join([s["method"], _labeled(s), *cells]) + " |")
    lines += ["", "HD95 (mm), mean ± std over seeds (n/a: undefined, e.g. nothing predicted):", "",
              "| " + " | ".join(["method", "labeled", *names]) + " |", "|" + "---|" * (len(names) + 2)]
    for s in summary:
        cells = [f"{fmt(s['subsets'][n]['hd95_mean'], 1)} ± {fmt(s['subsets'][n]['hd95_std'], 1)}" for n in names]
        lines.append("| " + " | ".join([s["method"], _labeled(s), *cells]) + " |")
    lines += ["", f"{len(evaluations)} evaluations; every command and figure: {output.with_suffix('.json').name}."]
    if failures:
        lines += ["", f"Failed evaluations ({len(failures)}; not in the tables above; the same command retries them):",
                  ""]
        lines += [f"- {failure_text(f)}" for f in failures]
    text = "\n".join(lines) + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    output.with_suffix(".json").write_text(json.dumps({
        "subsets": subsets, "baseline": baseline, "summary": summary, "evaluations": evaluations,
        "machine": info, "failures": list(failures)}, indent=2) + "\n")
    return text


def run_subset_benchmark(
    report: str,
    baseline: str = "supervised",
    methods: Sequence[str] | str = (),
    fractions: Sequence[float] | float = (),
    seeds: Sequence[int] | int = (),
    output: str | None = None,
    runs_dir: str | None = None,
    jobs: int = 1,
    num_threads: int | None = None,
    num_overlays: int = 0,
    num_bootstrap: int = 10000,
    title: str = "",
    **overrides,
) -> list[dict]:
    """Evaluate every selected run of a benchmark report on every non-empty subset of its modalities; returns
    every evaluation's row (see the module docstring). Failed evaluations are reported, the others go on, and
    :class:`benchmarking.runs.BenchmarkFailures` is raised at the end (the command line exits with status 1).

    Args:
        report: the JSON report of `scripts/benchmark.py` (its `runs`, each with its `eval_command`).
        baseline: the method the others are compared with (same fraction and seed), e.g. `unet+supervised`.
        methods: the methods whose runs are evaluated (default: all); the baseline's runs are always kept.
        fractions: the labeled fractions evaluated (default: all).
        seeds: the seeds evaluated (default: all).
        output: Markdown report, with a `.json` beside it (default: `<report folder>/subsets/subset_benchmark.md`).
        runs_dir: parent of the evaluation folders (default: the folder of `output`).
        jobs: evaluations run at the same time (on a CPU machine with 2 cores: 2, with `--num_threads 1`).
        num_threads: torch threads of each evaluation (the config's `num_threads`); default: the run's own.
        num_overlays: overlay PNGs per evaluation (evaluate.yaml's `num_overlays`).
        num_bootstrap: bootstrap resamples of the confidence intervals.
        title: a line written above the tables.
        overrides: further config overrides for every evaluation, e.g. `--num_workers 0`.
    """
    source = Path(report).resolve()
    if not source.is_file():
        raise FileNotFoundError(f"benchmark report not found: {source}")
    if int(jobs) < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}.")
    runs = select_runs(previous_runs(source), as_list(methods), as_list(fractions), as_list(seeds), baseline)
    if not runs:
        raise ValueError(f"no run of {source} matches the selection (methods {methods}, fractions {fractions}, "
                         f"seeds {seeds}).")
    out = Path(output).resolve() if output else source.parent / "subsets" / "subset_benchmark.md"
    root = Path(runs_dir).resolve() if runs_dir else out.parent
    names = [run_name(r) for r in runs]
    if len(set(names)) < len(names):
        raise ValueError(f"the report holds the same run twice: {sorted(n for n in names if names.count(n) > 1)}")
    settings = {"num_overlays": int(num_overlays), **({"num_threads": int(num_threads)} if num_threads else {}),
                **overrides}
    parsed = [parse_bundle_command(r["eval_command"]) for r in runs]
    modalities = [run_modalities(stack, ids) for stack, ids in parsed]
    if any(m != modalities[0] for m in modalities):
        raise ValueError(f"the selected runs have different modalities: {sorted(set(map(tuple, modalities)))}")
    subsets = modality_subsets(modalities[0])
    plan = []  # (run, subset, folder, command)
    for run, name, (stack, ids) in zip(runs, names, parsed, strict=True):
        for subset in subsets:
            folder = root / name / subset_name(subset)
            values = dict(ids, **settings, output_dir=str(folder), eval_modalities=subset)
            plan.append((run, subset, folder, bundle_run_command(stack, **values)))
    info = describe_machine(torch_threads=False)
    title = title or f"benchmark {source}; modalities {modalities[0]}; {len(runs)} runs x {len(subsets)} subsets"
    results: dict[int, dict] = {}
    failures: dict[int, dict] = {}
    lock = threading.Lock()

    def write() -> None:
        with lock:
            write_subset_report([results[i] for i in sorted(results)], subsets, out, baseline, num_bootstrap, title,
                                info, [failures[i] for i in sorted(failures)])

    def one(index: int) -> None:
        run, subset, folder, cmd = plan[index]
        tag = f"[{index + 1}/{len(plan)}] {run['method']} @ {float(run['labeled_fraction']):.0%}, seed {run['seed']}, " \
              f"sequences {subset_name(subset)}"
        log = folder / "eval.log"
        try:
            key = shlex.join(cmd)
            metrics = folder / "metrics.json"
            if saved_times(folder).get("evaluated_command") == key and metrics.is_file():
                say(f"{tag}: already done, kept")
                eval_s = float(saved_times(folder).get("eval_s", 0.0))
            else:
                metrics.unlink(missing_ok=True)  # no stale report of an earlier command
                say(f"{tag}: evaluating; live log {log}")
                timer = Timer(folder, "eval_s")
                eval_s = run_logged(cmd, f"evaluation of {tag}", log, timer)
                timer.save(evaluated_command=key)
            test = json.loads(metrics.read_text())
            if test.get("eval_modalities") != subset:
                raise RuntimeError(f"{metrics} was evaluated with {test.get('eval_modalities')}, not {subset}")
            fused = test["summary"]["fused"]
            row = {"method": run["method"], "labeled_fraction": float(run["labeled_fraction"]),
                   "num_labeled": run.get("num_labeled"), "seed": int(run["seed"]),
                   "split_seed": run.get("split_seed", run["seed"]), "subset": subset,
                   "subset_name": subset_name(subset), "dice": fused["dice"]["mean"], "hd95": fused["hd95"]["mean"],
                   "case_dice": case_dice(test), "num_cases": test["num_cases"], "eval_s": round(eval_s, 1),
                   "command": key, "output_dir": str(folder)}
            say(f"{tag}: done, mean Dice {fmt(row['dice'], 4)}, HD95 {fmt(row['hd95'], 1)} mm")
            with lock:
                results[index] = row
        except Exception as e:  # noqa: BLE001 - one failed evaluation must leave the others running
            reason = f"exit {e.returncode}" if isinstance(e, RunFailed) else f"{type(e).__name__}: {e}"
            failure = {"run": tag.split("] ", 1)[-1], "method": run["method"],
                       "labeled_fraction": float(run["labeled_fraction"]), "seed": int(run["seed"]),
                       "subset": subset, "stage": "evaluation", "reason": reason.splitlines()[0], "log": str(log)}
            say(f"{tag}: FAILED: {failure_text(failure)}")
            with lock:
                failures[index] = failure
        write()

    run_all(one, len(plan), jobs)
    write()
    print(out.read_text(), flush=True)
    rows = [results[i] for i in sorted(results)]
    if failures:
        raise BenchmarkFailures([failures[i] for i in sorted(failures)], len(rows), out)
    return rows


def main(argv: Sequence[str]) -> int:
    """The command line: 0 when every evaluation finished, 1 when some failed (listed last, on stderr)."""
    return fire_main(run_subset_benchmark, list(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
