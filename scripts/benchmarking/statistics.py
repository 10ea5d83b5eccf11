"""The statistics of the benchmarks: per-case Dice of an evaluation, mean and std over seeds, the paired
per-case difference against a baseline with its bootstrap confidence interval, and the summary per method
and labeled fraction."""

from __future__ import annotations

import numpy as np


def case_dice(test: dict) -> dict[str, float]:
    """Fused mean Dice of every test case with a defined value (from an evaluation's ``metrics.json``)."""
    out = {}
    for entry in test.get("cases", []):
        value = entry.get("fused", {}).get("dice", {}).get("mean")
        if value is not None and np.isfinite(value):
            out[str(entry["case"])] = float(value)
    return out


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (0 for one value) of the values that are not None; ``(None, None)`` without any."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)


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


def summarise(results: list[dict], baseline: str, num_bootstrap: int = 10000) -> list[dict]:
    """One entry per (method, fraction): mean +- std over seeds, share of full supervision, paired difference."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["labeled_fraction"]), []).append(r)
    full = groups.get((baseline, 1.0), [])
    full_mean = mean_std([r["test"]["fused"]["dice"]["mean"] for r in full])[0] if full else None
    summary = []
    for (method, fraction), rows in groups.items():
        dice_mean, dice_std = mean_std([r["test"]["fused"]["dice"]["mean"] for r in rows])
        hd_mean, hd_std = mean_std([r["test"]["fused"]["hd95"]["mean"] for r in rows])
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
