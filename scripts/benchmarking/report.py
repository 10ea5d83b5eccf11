"""The report of ``benchmark.py``: Markdown tables (the summary over seeds with the paired differences, every
run, the machines, the commands) and a JSON beside it with every figure and command; and reading a report's
runs back (to skip finished runs, or to merge reports)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from benchmarking.machine import machine_text
from benchmarking.statistics import summarise


def fmt(value, digits: int = 3) -> str:
    """A figure with ``digits`` decimals, or ``n/a``."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def failure_text(failure: dict) -> str:
    """One line for a failed run (see ``benchmark.run_benchmark``)."""
    return f"{failure['run']}: {failure['stage']} failed ({failure['reason']}); log: {failure['log']}"


def distinct_machines(results: list[dict], info: dict | None) -> list[tuple[dict, list[str]]]:
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
    ``benchmark.run_benchmark``) are listed after the tables, each with its log."""
    if not results and not failures:
        return ""
    lines = ([title, ""] if title else [])
    if results:
        lines += result_lines(results, baseline, num_bootstrap, info)
    if failures:
        lines += ["", f"Failed runs ({len(failures)}; not in the tables above; the same command retries them):", ""]
        lines += [f"- {failure_text(f)}" for f in failures]
    text = "\n".join(lines) + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    output.with_suffix(".json").write_text(json.dumps({
        "summary": summarise(results, baseline, num_bootstrap) if results else [], "runs": results, "machine": info,
        "baseline": baseline, "failures": list(failures)}, indent=2) + "\n")
    return text


def result_lines(results: list[dict], baseline: str, num_bootstrap: int, info: dict | None) -> list[str]:
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
                 f"{fmt(s['dice_mean'])} ± {fmt(s['dice_std'])}", f"{fmt(s['hd95_mean'], 1)} ± {fmt(s['hd95_std'], 1)}",
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
                 fmt(fused["dice"]["mean"])]
        cells += [fmt(fused["dice"][c]) for c in classes] + [fmt(fused["hd95"]["mean"], 1)]
        cells += [fmt(r["test"][h]["dice"]["mean"]) if h in r["test"] else "n/a" for h in heads[1:]]
        cells += [fmt(r["best_val_mean_dice"]), f"{r['train_s']:.0f}", f"{r['eval_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    machines = distinct_machines(results, info)
    if len(machines) == 1:
        lines += ["", "Machine: " + machine_text(machines[0][0])]
    else:
        lines += ["", "Machines (runs merged from several reports):", ""]
        lines += [f"- {machine_text(where)}: {', '.join(names)}" for where, names in machines]
    lines += ["", "Commands (training, then evaluation on the held-out test cases):", ""]
    for r in results:
        lines += [f"- {r['method']} @ {r['labeled_fraction']:.0%}, seed {r['seed']}:", "  ```",
                  f"  {r['train_command']}", f"  {r['eval_command']}", "  ```"]
    return lines


def previous_runs(path: Path) -> list[dict]:
    """The runs of a JSON report; each keeps the machine it ran on (older reports name it once)."""
    if not path.is_file():
        return []
    content = json.loads(path.read_text())
    if not isinstance(content, dict):
        return content
    return [dict(r, machine=r.get("machine") or content.get("machine") or {}) for r in content["runs"]]
