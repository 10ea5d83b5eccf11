# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""The evaluation report (``configs/evaluate.yaml``): :class:`EvaluationReport` writes ``metrics.json``
and ``metrics.csv`` (per case, per class, and the summary), overlay PNGs of the first cases, and
prints the summary table."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..data.own_grids import GRID_MODALITY_KEY
from .head_outputs import head_keys, metric_name
from .segmentation_metrics import METRICS

__all__ = ["EvaluationReport"]


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _nanmean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "nan" if value is None else f"{value:.{digits}f}"


class EvaluationReport:
    """
    Attach to the evaluator of ``evaluate.yaml``: collects the case ids in iteration order and, at
    the end, writes in ``output_dir``:

    - ``metrics.json``: ``summary[head][metric]`` (per class and ``mean``, averaged over cases,
      ignoring undefined values), ``cases``: a list of ``{"case": id, head: {metric: {class:
      value, "mean": value}}}``, and the names of heads, metrics and classes, the ``modalities``, those the
      evaluation read (``eval_modalities``) and those missing (zeroed: ``missing_modalities``);
    - ``metrics.csv``: one row per case, head and metric with the per-class values and their mean,
      then the summary rows (case ``mean``);
    - ``overlays/<case>.png`` for the first ``num_overlays`` cases: a slice of every modality with
      the prediction (solid) and the label (dashed) as contours, titled by what they show: with a
      head per modality (``CMCNet``), each modality with its own head's prediction and the fused
      prediction last, on the first modality; with one prediction only (a single network that
      reads every modality, ``unet.yaml``), that prediction on every modality;

    and prints the summary table (one line per head: mean Dice, HD95 and ASD).

    A distance is undefined (``null`` in JSON, empty in CSV) when the prediction or the label of a
    class is empty in a case.

    Args:
        output_dir: folder of the report (created).
        heads: head names, the fused prediction first.
        class_names: names of the evaluated (foreground) classes.
        modalities: modality names, in channel order of the image.
        eval_modalities: the modalities the evaluation read (``evaluate.yaml``'s ``eval_modalities``; the
            others were missing: zeroed); ``None``: all. ``metrics.json`` records them (``eval_modalities``,
            in channel order, and ``missing_modalities``) and the printed table names the missing ones.
        num_overlays: number of cases drawn.
        case_key: key of the case id in the batch.
        image_key, label_key, pred_key: keys in the evaluator's output.
    """

    def __init__(
        self,
        output_dir: str,
        heads: Sequence[str],
        class_names: Sequence[str],
        modalities: Sequence[str],
        eval_modalities: Sequence[str] | None = None,
        num_overlays: int = 4,
        case_key: str = "case",
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
    ) -> None:
        self.output_dir = str(output_dir)
        self.heads = [str(h) for h in heads]
        self.class_names = [str(c) for c in class_names]
        self.modalities = [str(m) for m in modalities]
        kept = self.modalities if eval_modalities is None else {str(m) for m in eval_modalities}
        self.eval_modalities = [m for m in self.modalities if m in kept]
        self.missing_modalities = [m for m in self.modalities if m not in kept]
        self.num_overlays = int(num_overlays)
        self.case_key = case_key
        self.image_key = image_key
        self.label_key = label_key
        self.pred_key = pred_key
        self.case_ids: list[str] = []
        # the sequence of each case when the modalities are on their own grids (scripts.data.own_grids)
        self.case_grids: list[str | None] = []
        self.logger = logging.getLogger(self.__class__.__name__)
        self.files: dict[str, str] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._report)

    def _reset(self, engine: Engine) -> None:
        self.case_ids = []
        self.case_grids = []

    # ---------------------------------------------------------------- per iteration
    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch
        items = batch if isinstance(batch, list) else [batch]
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for item, output in zip(items, outputs, strict=False):
            case_id = item.get(self.case_key) if isinstance(item, Mapping) else None
            if isinstance(case_id, (list, tuple)):
                case_id = case_id[0]
            case_id = str(case_id) if case_id is not None else f"case_{len(self.case_ids):04d}"
            self.case_ids.append(case_id)
            grid = item.get(GRID_MODALITY_KEY) if isinstance(item, Mapping) else None
            if isinstance(grid, (list, tuple)):
                grid = grid[0] if grid else None
            self.case_grids.append(str(grid) if grid is not None else None)
            if len(self.case_ids) <= self.num_overlays:
                try:
                    self._overlay(case_id, output)
                except Exception as e:  # noqa: BLE001 - a picture must not stop the evaluation
                    self.logger.warning(f"case {str(case_id)!r}: overlay not drawn: {e}")

    def _overlay(self, case_id: str, output: Mapping) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        image = _numpy(output[self.image_key])  # (M, *spatial)
        label = np.argmax(_numpy(output[self.label_key]), axis=0)  # one-hot -> indices
        keys = head_keys(self.heads, self.pred_key)
        preds = {h: np.argmax(_numpy(output[k]), axis=0) for h, k in zip(self.heads, keys, strict=False) if k in output}
        if label.ndim == 3:  # 3D: the axial slice with the most labeled voxels
            z = int(np.argmax((label > 0).reshape(-1, label.shape[-1]).sum(0)))
            image, label = image[..., z], label[..., z]
            preds = {h: p[..., z] for h, p in preds.items()}
        fused = self.heads[0]
        if all(m in preds for m in self.modalities):  # a head per modality, then the fused prediction
            panels = [(m, i, preds[m]) for i, m in enumerate(self.modalities)]
            panels.append((f"{fused} (on {self.modalities[0]})", 0, preds.get(fused)))
            what = "each modality with its own head's prediction; the fused prediction last"
        else:  # one prediction from every modality at once: the same one on each
            panels = [(m, i, preds.get(fused)) for i, m in enumerate(self.modalities)]
            what = f"the network's one prediction ({fused}, from all modalities), drawn on each modality"
        colors = plt.get_cmap("tab10")
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
        for ax, (title, channel, pred) in zip(axes[0], panels, strict=False):
            ax.imshow(image[channel].T, cmap="gray", origin="lower")
            for c in range(1, len(self.class_names) + 1):
                color = colors(c - 1)
                if (label == c).any():
                    ax.contour(
                        (label == c).T.astype(float), levels=[0.5], colors=[color], linestyles="dashed", linewidths=1
                    )
                if pred is not None and (pred == c).any():
                    ax.contour((pred == c).T.astype(float), levels=[0.5], colors=[color], linewidths=1.2)
            ax.set_title(title, fontsize=10)
            ax.axis("off")
        handles = [
            matplotlib.lines.Line2D([], [], color=colors(i), label=n) for i, n in enumerate(self.class_names)
        ] + [
            matplotlib.lines.Line2D([], [], color="k", label="prediction"),
            matplotlib.lines.Line2D([], [], color="k", linestyle="dashed", label="label"),
        ]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
        fig.suptitle(f"case {case_id}: {what}", fontsize=10)
        fig.tight_layout(rect=(0, 0.06, 1, 0.95))
        folder = os.path.join(self.output_dir, "overlays")
        os.makedirs(folder, exist_ok=True)
        fig.savefig(os.path.join(folder, f"{case_id.replace(os.sep, '_')}.png"), dpi=80)
        plt.close(fig)

    # ---------------------------------------------------------------- end of the run
    def _details(self, engine: Engine) -> dict[str, dict[str, np.ndarray]]:
        details = getattr(engine.state, "metric_details", {}) or {}
        table: dict[str, dict[str, np.ndarray]] = {}
        for head in self.heads:
            for metric in METRICS:
                values = details.get(metric_name(head, metric))
                if values is None:
                    continue
                array = _numpy(values).astype(np.float64).reshape(len(self.case_ids), -1)
                table.setdefault(head, {})[metric] = array
        return table

    def _report(self, engine: Engine) -> None:
        table = self._details(engine)
        cases = []
        for i, case_id in enumerate(self.case_ids):
            entry: dict[str, Any] = {"case": case_id}
            for head, per_metric in table.items():
                entry[head] = {}
                for metric, array in per_metric.items():
                    values = [_finite(v) for v in array[i]]
                    row = dict(zip(self.class_names, values, strict=False))
                    row["mean"] = _nanmean(values)
                    entry[head][metric] = row
            cases.append(entry)
        summary = self._summary(table, np.arange(len(self.case_ids)))
        # modalities on their own grids: every case is one sequence, scored against its own label
        by_grid = {
            grid: self._summary(table, np.array([i for i, g in enumerate(self.case_grids) if g == grid]))
            for grid in dict.fromkeys(g for g in self.case_grids if g is not None)
        }
        os.makedirs(self.output_dir, exist_ok=True)
        content = {
            "heads": self.heads,
            "metrics": {k: v for k, v in METRICS.items() if any(k in m for m in table.values())},
            "classes": self.class_names,
            "modalities": self.modalities,
            "eval_modalities": self.eval_modalities,
            "missing_modalities": self.missing_modalities,
            "num_cases": len(self.case_ids),
            "distance_unit": "mm",
            "summary": summary,
            **({"summary_by_modality": by_grid} if by_grid else {}),
            "cases": cases,
        }
        json_path = os.path.join(self.output_dir, "metrics.json")
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)
        csv_path = os.path.join(self.output_dir, "metrics.csv")
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["case", "head", "metric", *self.class_names, "mean"])
            for entry in cases:
                for head in table:
                    for metric in table[head]:
                        row = entry[head][metric]
                        writer.writerow(
                            [entry["case"], head, metric, *[_csv(row[c]) for c in self.class_names], _csv(row["mean"])]
                        )
            for head in table:
                for metric in table[head]:
                    row = summary[head][metric]
                    writer.writerow(
                        ["mean", head, metric, *[_csv(row[c]) for c in self.class_names], _csv(row["mean"])]
                    )
        self.files = {"json": json_path, "csv": csv_path}
        print(self.summary_table(summary), flush=True)
        for grid, grid_summary in by_grid.items():
            count = sum(g == grid for g in self.case_grids)
            print(self.summary_table(grid_summary, f"{grid} ({count} cases, each on its own grid)"), flush=True)
        self.logger.info(f"evaluation of {len(self.case_ids)} cases written to {json_path} and {csv_path}")

    def _summary(self, table: Mapping[str, Mapping[str, np.ndarray]], rows: np.ndarray) -> dict[str, Any]:
        """Per head and metric: the per-class and mean values over the cases ``rows``, and the count of
        undefined values."""
        summary: dict[str, Any] = {}
        for head, per_metric in table.items():
            summary[head] = {}
            for metric, full in per_metric.items():
                array = full[rows.astype(int)] if len(rows) else full[:0]
                per_class = {
                    name: _nanmean([_finite(v) for v in array[:, c]]) for c, name in enumerate(self.class_names)
                }
                per_class["mean"] = _nanmean([_finite(v) for v in array.reshape(-1)])
                per_class["undefined_values"] = int((~np.isfinite(array)).sum())
                summary[head][metric] = per_class
        return summary

    def summary_table(self, summary: Mapping[str, Any], subset: str | None = None) -> str:
        """The summary as a text table: one line per head, mean and per-class value of each metric."""
        metrics = [m for m in METRICS if any(m in v for v in summary.values())]
        width = max([len(h) for h in self.heads] + [6])
        header = f"{'head':<{width}}  " + "  ".join(
            f"{METRICS[m] + ' mean':>10}  " + " ".join(f"{c[:8]:>8}" for c in self.class_names) for m in metrics
        )
        missing = (
            f"; missing (zeroed) modalities: {', '.join(self.missing_modalities)}" if self.missing_modalities else ""
        )
        title = f"evaluation summary ({len(self.case_ids)} cases; distances in mm{missing})"
        if subset:
            title = f"evaluation summary, {subset}; distances in mm"
        lines = [title, header, "-" * len(header)]
        for head, per_metric in summary.items():
            cells = []
            for m in metrics:
                row = per_metric.get(m, {})
                cells.append(
                    f"{_fmt(row.get('mean')):>10}  " + " ".join(f"{_fmt(row.get(c)):>8}" for c in self.class_names)
                )
            lines.append(f"{head:<{width}}  " + "  ".join(cells))
        return "\n".join(lines)


def _csv(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
