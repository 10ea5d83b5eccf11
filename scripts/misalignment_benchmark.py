#!/usr/bin/env python
"""Dice of trained models when the non-reference modalities are misaligned by a known amount.

Every method (a name, its config stack and its checkpoint) is evaluated with the bundle's own
evaluation (`evaluate.yaml` layered on the method's configs, run in-process with
`monai.bundle.ConfigParser`), once on the aligned data and once per misalignment level: every
modality but the reference one (index 0) shifted by each of `shifts` mm along `shift_axis`, then
rotated by each of `rotations` degrees about the image centre (in the plane of array axes 0 and 1),
with `scripts.data.misalignment.ModalityMisalignd` inserted into `validate#preprocessing` right after
the intensity normalisation. The label stays on the reference modality's grid, so the score measures
how well a model segments the reference anatomy from inputs that are no longer co-registered.
The network is run through the config's `validate#inferer`, so a 2-D network on 3-D volumes
(`SliceInferer`) works as it does in `evaluate.yaml`.

Outputs in `output_dir` (inputs are never written):
    misalignment_benchmark.md    method x misalignment table of the fused mean Dice (foreground
                                 classes), and the Dice drop at `drop_at_mm` relative to 0 mm
    misalignment_benchmark.json  every figure (each head's Dice, HD95, ASD), settings, config stacks
    misalignment_benchmark.png   Dice vs shift and Dice vs rotation, one line per method
    runs/<method>/<level>/       evaluate.yaml's report of every evaluation

Example (methods as a list of dicts: name, configs, checkpoint, optional per-method overrides;
config names without a folder are looked up in bundle/configs; evaluate.yaml is added last;
every other `--id value` is a config override passed to every evaluation):
    python scripts/misalignment_benchmark.py \
        --methods "[{'name': 'cmc', 'configs': ['train.yaml', 'planned.yaml', 'cardiac.yaml'], 'checkpoint': 'runs/cmc/model.pt'},
                    {'name': 'semicml', 'configs': ['train.yaml', 'planned.yaml', 'cardiac.yaml', 'semicml.yaml'],
                     'checkpoint': 'runs/semicml/model.pt'}]" \
        --output_dir runs/misalignment --shifts "[0,2,5,10]" --rotations "[0,5,10]" \
        --datalist_file /data/myops/datalist.json --eval_split testing
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fire

from benchmarking.commands import find_config
from bundle_path import BUNDLE, use_bundle_scripts

use_bundle_scripts()  # the bundle's components, `scripts.<module>.<Name>`

TABLE_NAME = "misalignment_benchmark.md"
RESULTS_NAME = "misalignment_benchmark.json"
PLOT_NAME = "misalignment_benchmark.png"
# transforms after which the misalignment is inserted (the last one found); else it goes last
_NORMALISATION = ("NormalizeIntensity", "ScaleIntensity", "ClipIntensityPercentiles", "HistogramNormalize", "ModalityIntensity")


def parse_methods(methods: Any) -> list[dict]:
    """
    The methods to compare, each ``{"name", "configs", "checkpoint", "overrides"}`` with resolved paths.

    Args:
        methods: a list of dicts (or a path to a JSON/YAML file holding one), each with ``name``,
            ``configs`` (config files of the method, without ``evaluate.yaml``, which is added last),
            ``checkpoint`` (the weights: a plain state dict such as ``model.pt``, or a training
            state holding ``model``) and optional ``overrides`` (config ids of this method only).
    """
    if isinstance(methods, (str, os.PathLike)):
        path = Path(methods)
        if not path.is_file():
            raise FileNotFoundError(f"methods: '{methods}' is neither a list of methods nor a file.")
        from monai.bundle import ConfigParser

        methods = ConfigParser.load_config_file(str(path))
    if isinstance(methods, Mapping):
        methods = [methods]
    if not isinstance(methods, Sequence) or not methods:
        raise ValueError("methods must be a non-empty list of {'name', 'configs', 'checkpoint'} entries.")
    parsed, names = [], set()
    for i, entry in enumerate(methods):
        if not isinstance(entry, Mapping) or not {"name", "configs", "checkpoint"} <= set(entry):
            raise ValueError(f"methods[{i}] must be a dict with 'name', 'configs' and 'checkpoint', got {entry!r}.")
        unknown = set(entry) - {"name", "configs", "checkpoint", "overrides"}
        if unknown:
            raise ValueError(f"methods[{i}]: unknown keys {sorted(unknown)}.")
        name = str(entry["name"])
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+\-]*", name) or name in names:
            raise ValueError(f"methods[{i}]: name '{name}' must be unique and made of letters, digits, '_.+-'.")
        names.add(name)
        configs = [entry["configs"]] if isinstance(entry["configs"], (str, os.PathLike)) else list(entry["configs"])
        files = [find_config(c) for c in configs]
        files = [f for f in files if f.name != "evaluate.yaml"] + [find_config("evaluate.yaml")]
        checkpoint = Path(entry["checkpoint"]).expanduser().resolve()
        if not checkpoint.is_file():
            raise FileNotFoundError(f"method '{name}': checkpoint {checkpoint} not found.")
        overrides = dict(entry.get("overrides") or {})
        parsed.append({"name": name, "configs": [str(f) for f in files], "checkpoint": str(checkpoint), "overrides": overrides})
    return parsed


def misalignment_levels(
    shifts: Sequence[float], rotations: Sequence[float], drop_sequences: Sequence[int] = ()
) -> list[dict]:
    """The aligned level first, then every non-zero shift (no rotation), then every non-zero rotation
    (no shift), then one level per dropped sequence (that channel zeroed, aligned otherwise):
    ``[{"name", "shift_mm", "rotation_deg", "dropped"}]``."""
    def values(name: str, v: Any) -> list[float]:
        out = [float(x) for x in ([v] if isinstance(v, (int, float)) else v)]
        if not all(math.isfinite(x) for x in out):
            raise ValueError(f"{name} must be finite numbers, got {v!r}.")
        return out

    levels = [{"name": "aligned", "shift_mm": 0.0, "rotation_deg": 0.0}]
    for s in dict.fromkeys(values("shifts", shifts)):
        if s != 0:
            levels.append({"name": f"shift_{s:g}mm", "shift_mm": s, "rotation_deg": 0.0})
    for r in dict.fromkeys(values("rotations", rotations)):
        if r != 0:
            levels.append({"name": f"rotation_{r:g}deg", "shift_mm": 0.0, "rotation_deg": r})
    for level in levels:
        level["dropped"] = []
    for m in dict.fromkeys(int(i) for i in ([drop_sequences] if isinstance(drop_sequences, int) else drop_sequences)):
        if m < 0:
            raise ValueError(f"drop_sequences are channel indices >= 0, got {m}.")
        levels.append({"name": f"without_{m}", "shift_mm": 0.0, "rotation_deg": 0.0, "dropped": [m]})
    return levels


def with_misalignment(preprocessing: Any, misalignment: Any) -> Any:
    """A new ``Compose``: the transforms of ``preprocessing`` with ``misalignment`` inserted after the
    last intensity normalisation (or at the end when there is none)."""
    from monai.transforms import Compose

    transforms = list(preprocessing.transforms)
    names = [type(t).__name__ for t in transforms]
    after = max((i for i, n in enumerate(names) if n.startswith(_NORMALISATION)), default=len(transforms) - 1)
    return Compose(transforms[: after + 1] + [misalignment] + transforms[after + 1 :])


def evaluate(
    method: Mapping, level: Mapping, run_dir: Path, overrides: Mapping, shift_axis: int = 0, reference_modality: int = 0
) -> dict:
    """
    Evaluates one method at one misalignment level with the bundle's evaluation, in this process.

    Returns the evaluator's metrics (``val_mean_dice``: fused mean Dice of the foreground classes;
    ``<head>_dice``, ``<head>_hd95``, ``<head>_asd`` of every head) as floats.
    """
    from monai.bundle import ConfigParser

    from scripts.data.misalignment import ModalityMisalignd
    from scripts.data.modality_subset import DropSequencesd

    parser = ConfigParser()
    parser.read_config(method["configs"])
    settings = {"bundle_root": str(BUNDLE), **dict(overrides), **dict(method["overrides"])}
    settings.update({"output_dir": str(run_dir)})
    for key, value in settings.items():
        parser[key] = value
    loaders = [
        i for i, h in enumerate(parser.get("validate#handlers") or [])
        if isinstance(h, Mapping) and str(h.get("_target_", "")).endswith("CheckpointLoader")
    ]
    if not loaders:
        raise ValueError(f"method '{method['name']}': no CheckpointLoader in validate#handlers of {method['configs']}.")
    for i in loaders:
        parser[f"validate#handlers#{i}#load_path"] = method["checkpoint"]
    if level["shift_mm"] or level["rotation_deg"]:
        misalignment = ModalityMisalignd(
            keys="image",
            label_keys="label",
            shift_mm=level["shift_mm"],
            shift_axis=shift_axis,
            rotation_deg=level["rotation_deg"],
            reference_modality=reference_modality,
        )
        preprocessing = parser.get_parsed_content("validate#preprocessing")
        parser["validate#dataset#transform"] = with_misalignment(preprocessing, misalignment)
    if level.get("dropped"):
        preprocessing = parser.get_parsed_content("validate#preprocessing")
        parser["validate#dataset#transform"] = with_misalignment(preprocessing, DropSequencesd("image", level["dropped"]))
    run_dir.mkdir(parents=True, exist_ok=True)
    if "initialize" in parser:
        parser.get_parsed_content("initialize")
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    metrics = {}
    for key, value in evaluator.state.metrics.items():
        try:
            metrics[key] = float(value)
        except (TypeError, ValueError):
            continue  # per-class tensors
    return metrics


def _cell(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _level_header(level: Mapping) -> str:
    if level["name"] == "aligned":
        return "aligned"
    if level.get("dropped"):
        return "without sequence " + ",".join(map(str, level["dropped"]))
    if level["shift_mm"]:
        return f"shift {level['shift_mm']:g} mm"
    return f"rotation {level['rotation_deg']:g}°"


def dice_drop(row: Mapping[str, float], levels: Sequence[Mapping], at_mm: float) -> float | None:
    """Dice at 0 mm minus Dice at a shift of ``at_mm`` (None when that shift was not evaluated)."""
    at = [lv["name"] for lv in levels if lv["shift_mm"] == at_mm and not lv["rotation_deg"] and not lv.get("dropped")]
    if not at or "aligned" not in row or at[0] not in row:
        return None
    return row["aligned"] - row[at[0]]


def markdown_table(results: Mapping[str, Mapping[str, float]], levels: Sequence[Mapping], drop_at_mm: float) -> str:
    """``results[method][level name]`` (fused mean Dice) as a Markdown table, one row per method."""
    header = ["method", *[_level_header(lv) for lv in levels], f"Dice drop at {drop_at_mm:g} mm"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in results.items():
        cells = [_cell(row.get(lv["name"])) for lv in levels]
        drop = dice_drop(row, levels, drop_at_mm)
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {_cell(drop)} |")
    return "\n".join(lines) + "\n"


def plot(results: Mapping[str, Mapping[str, float]], levels: Sequence[Mapping], path: Path) -> None:
    """Dice vs shift (left) and vs rotation (right), one line per method; the aligned Dice is at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for method, row in results.items():
        for ax, key in zip(axes, ("shift_mm", "rotation_deg")):
            other = "rotation_deg" if key == "shift_mm" else "shift_mm"
            points = sorted((lv[key], row[lv["name"]]) for lv in levels
                            if not lv[other] and not lv.get("dropped") and lv["name"] in row)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    axes[0].set_xlabel("shift of the non-reference modalities (mm)")
    axes[1].set_xlabel("rotation of the non-reference modalities (degrees)")
    axes[0].set_ylabel("mean Dice (fused, foreground classes)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Segmentation under inter-modality misalignment")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(
    methods: Any,
    output_dir: str = "bundle/runs/misalignment_benchmark",
    shifts: Sequence[float] = (0, 2, 5, 10),
    rotations: Sequence[float] = (0, 5, 10),
    eval_split: str = "testing",
    shift_axis: int = 0,
    reference_modality: int = 0,
    drop_at_mm: float = 5.0,
    num_overlays: int = 0,
    drop_sequences: Sequence[int] = (),
    **overrides: Any,
) -> None:
    """Evaluate every method at every misalignment level; write and print the table and the plot.

    Args:
        methods: list of ``{'name', 'configs', 'checkpoint'[, 'overrides']}`` (or a JSON/YAML file
            holding it); see :func:`parse_methods`.
        output_dir: folder of the table, plot, JSON and per-evaluation reports (created).
        shifts: shifts (mm) of the non-reference modalities along ``shift_axis``.
        rotations: rotations (degrees) of the non-reference modalities about the image centre, in the
            plane of array axes 0 and 1 (in-plane for a stack of slices whose slice axis is last).
        eval_split: datalist split evaluated (``testing`` or ``validation``; cases need labels).
        shift_axis: array axis (after the config's orientation transform) of the shifts.
        reference_modality: channel index of the modality that never moves (the label's grid).
        drop_at_mm: shift at which the Dice drop relative to 0 mm is reported.
        num_overlays: overlay PNGs per evaluation (evaluate.yaml's ``num_overlays``).
        drop_sequences: channel indices; each is also evaluated zeroed (a missing sequence), aligned.
        overrides: config overrides for every evaluation, e.g. ``--dataset_dir /data/x``.
    """
    parsed = parse_methods(methods)
    levels = misalignment_levels(shifts, rotations, drop_sequences)
    out = Path(output_dir).expanduser().resolve()
    inputs = {os.path.realpath(p) for m in parsed for p in [*m["configs"], m["checkpoint"]]}
    for key in ("datalist_file",):
        if overrides.get(key):
            inputs.add(os.path.realpath(str(overrides[key])))
    runs = Path(os.path.realpath(out / "runs"))
    written = {os.path.realpath(out / name) for name in (TABLE_NAME, RESULTS_NAME, PLOT_NAME)}
    clash = sorted(p for p in inputs if p in written or Path(p).is_relative_to(runs))
    if clash:
        raise FileExistsError(f"output_dir {out}: writing there could overwrite input files {clash}; choose another output_dir.")
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(overrides, eval_split=eval_split, num_overlays=int(num_overlays))

    dice: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, dict]] = {}
    for method in parsed:
        dice[method["name"]], details[method["name"]] = {}, {}
        method_settings = dict(settings)
        for level in levels:
            run_dir = out / "runs" / method["name"] / level["name"]
            print(f"[{method['name']} | {level['name']}] evaluating {method['checkpoint']}", flush=True)
            start = time.perf_counter()
            metrics = evaluate(method, level, run_dir, method_settings, shift_axis, reference_modality)
            # the method's first evaluation checked every file of its datalist; the others read the same files
            method_settings.setdefault("validate_voxels", False)
            dice[method["name"]][level["name"]] = metrics.get("val_mean_dice", float("nan"))
            details[method["name"]][level["name"]] = {**level, "metrics": metrics, "seconds": round(time.perf_counter() - start, 1)}
            print(f"[{method['name']} | {level['name']}] fused mean Dice {_cell(dice[method['name']][level['name']])}", flush=True)

    table = markdown_table(dice, levels, drop_at_mm)
    note = (
        f"Fused mean Dice (foreground classes) on `{eval_split}`; every modality but {reference_modality} "
        f"shifted along array axis {shift_axis} or rotated about the image centre; the label stays on "
        f"modality {reference_modality}'s grid.\n\n"
    )
    (out / TABLE_NAME).write_text(note + table)
    plot(dice, levels, out / PLOT_NAME)
    content = {
        "settings": {
            "shifts_mm": [lv["shift_mm"] for lv in levels if not lv["rotation_deg"]],
            "rotations_deg": [lv["rotation_deg"] for lv in levels if not lv["shift_mm"]],
            "eval_split": eval_split,
            "shift_axis": shift_axis,
            "reference_modality": reference_modality,
            "drop_at_mm": drop_at_mm,
            "overrides": {k: v for k, v in overrides.items()},
        },
        "methods": parsed,
        "levels": levels,
        "fused_mean_dice": dice,
        "dice_drop": {m: dice_drop(row, levels, drop_at_mm) for m, row in dice.items()},
        "details": details,
    }
    (out / RESULTS_NAME).write_text(json.dumps(content, indent=2, default=str) + "\n")
    print(table, flush=True)
    print(f"written: {out / TABLE_NAME}, {out / PLOT_NAME}, {out / RESULTS_NAME}", flush=True)


if __name__ == "__main__":
    fire.Fire(main)
