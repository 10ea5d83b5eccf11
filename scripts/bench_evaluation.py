#!/usr/bin/env python
"""Time the evaluation of the embedded test cases (`train.yaml` + `evaluate.yaml`) as the bundle does
it now against the evaluation before the redesign, side by side.

Both use a `SupervisedEvaluator` built from the same configs (the same cases, sliding-window inferer,
post-processing, Dice / HD95 / ASD handlers and report) and run alternately, after one warm-up each.
The evaluation before differs in two kept references:

- its network wrapper ran the network twice: `network(image)` for the prediction, then
  `forward_modalities(image)` again for the heads (`TwoPassHeads`); the bundle's runs the heads once
  and averages them (`average_heads`);
- its HD95 and ASD handlers were MONAI's metrics on the MetaTensors the post-processing returns
  (`metatensor_metrics`), each extracting the boundaries and their distances; the bundle's share one
  `BoundaryDistances` per head (one extraction for both) and measure on plain tensors once the voxel
  size is read from the affine, which spares MONAI's edge extraction the meta-data handling of each
  of its small steps.

Both must give the same metrics (checked: the script exits with an error if they differ). The
network's share alone (the inferer over the cases, no metrics or report) is timed as well.

    python scripts/bench_evaluation.py --threads 1 --repeats 3
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
from typing import Any

import fire
import torch
from monai.metrics import HausdorffDistanceMetric, SurfaceDistanceMetric

from bench_common import timed
from benchmarking.machine import describe_machine, format_machine
from bundle_path import BUNDLE, CONFIGS, use_bundle_scripts

use_bundle_scripts()
from scripts.evaluation.segmentation_metrics import segmentation_metrics, voxel_spacing  # noqa: E402


class TwoPassHeads(torch.nn.Module):
    """The evaluation wrapper before the one-pass change, kept here as the reference: the network's
    ``forward`` for its prediction, then ``forward_modalities`` again for the heads."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        prediction = self.network(image)
        heads = self.network.forward_modalities(image)[0]
        return torch.cat([prediction, *heads], dim=1)


class _MetaTensorHausdorff(HausdorffDistanceMetric):
    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return super()._compute_tensor(y_pred, y, spacing=voxel_spacing(y_pred), **kwargs)


class _MetaTensorSurfaceDistance(SurfaceDistanceMetric):
    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return super()._compute_tensor(y_pred, y, spacing=voxel_spacing(y_pred), **kwargs)


def metatensor_metrics(heads: list[str]) -> dict[str, Any]:
    """The evaluation's metric handlers before the redesign, kept here as the reference: the same
    handlers as ``segmentation_metrics``, with HD95 and ASD measured on the MetaTensors themselves."""
    metrics = segmentation_metrics(heads)
    for name, handler in metrics.items():
        if name.endswith("_hd95"):
            handler.metric_fn = _MetaTensorHausdorff(include_background=False, percentile=95)
        elif name.endswith("_asd"):
            handler.metric_fn = _MetaTensorSurfaceDistance(include_background=False, symmetric=True)
    return metrics


def build_evaluator(workdir: str, ckpt_dir: str, configs: list[str], before: bool = False) -> Any:
    """The evaluator of ``train.yaml`` + ``configs`` + ``evaluate.yaml`` on the embedded test cases;
    ``before``: with the metric handlers of the evaluation before the redesign."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in ["train.yaml", *configs, "evaluate.yaml"]])
    overrides = {
        "bundle_root": str(BUNDLE),
        "output_dir": os.path.join(workdir, "eval"),
        "ckpt_dir": ckpt_dir,
        "num_overlays": 0,
    }
    if before:
        overrides["validate#evaluator#additional_metrics"] = {
            "_target_": "bench_evaluation.metatensor_metrics",  # this file, importable from its folder
            "heads": "@eval_heads",
        }
    for key, value in overrides.items():
        parser[key] = value
    parser.parse(True)
    if "initialize" in parser:
        parser.get_parsed_content("initialize")
    return parser.get_parsed_content("validate#evaluator")


def _timed_run(evaluator: Any) -> tuple[float, dict[str, float]]:
    seconds = timed(evaluator.run)
    metrics = {k: float(v) for k, v in evaluator.state.metrics.items() if isinstance(v, (int, float))}
    return seconds, metrics


def _timed_inference(evaluator: Any, network: torch.nn.Module) -> float:
    """Seconds to run the evaluator's inferer with ``network`` over its cases (the network's share of
    an evaluation: no post-processing, metrics or report)."""
    network.eval()
    images = [
        batch["image"].to(evaluator.state.device if evaluator.state.device else "cpu")
        for batch in evaluator.data_loader
    ]

    def infer_all() -> None:
        with torch.no_grad():
            for image in images:
                evaluator.inferer(image, network)

    return timed(infer_all)


def main(repeats: int = 3, threads: int | None = 1, ckpt_dir: str | None = None, configs: tuple = ()) -> dict[str, Any]:
    """Time both evaluations in alternation and print the ratios.

    Args:
        repeats: timed evaluations of each wrapper.
        threads: ``torch.set_num_threads`` (1 on a shared CPU machine; None: torch's choice).
        ckpt_dir: folder of the ``model.pt`` to evaluate (default: the shipped ``bundle/models``).
        configs: method overrides layered between ``train.yaml`` and ``evaluate.yaml`` (e.g.
            ``"['semicml.yaml']"`` with a Semi-CML checkpoint).
    """
    from scripts.networks.modality_heads import ModalityHeadsWrapper

    if threads:
        torch.set_num_threads(int(threads))
    logging.basicConfig(level=logging.WARNING, force=True)
    with tempfile.TemporaryDirectory() as workdir:
        ckpt = ckpt_dir or str(BUNDLE / "models")
        now = build_evaluator(os.path.join(workdir, "now"), ckpt, list(configs))
        before = build_evaluator(os.path.join(workdir, "before"), ckpt, list(configs), before=True)
        one_pass = now.network
        if not isinstance(one_pass, ModalityHeadsWrapper) or not one_pass.has_heads:
            raise SystemExit("the evaluated network has no modality heads: nothing to compare.")
        before.network = TwoPassHeads(before.network.network)
        runs = {"now": now, "before": before}
        times: dict[str, list[float]] = {name: [] for name in runs}
        inference: dict[str, list[float]] = {name: [] for name in runs}
        metrics: dict[str, dict[str, float]] = {}
        for i in range(int(repeats) + 1):
            for name, evaluator in runs.items():
                seconds, metrics[name] = _timed_run(evaluator)
                network_seconds = _timed_inference(evaluator, evaluator.network)
                if i:  # the first round warms up (caches, allocations)
                    times[name].append(seconds)
                    inference[name].append(network_seconds)
        if metrics["now"].keys() != metrics["before"].keys() or any(
            abs(metrics["now"][k] - metrics["before"][k]) > 1e-5 for k in metrics["now"]
        ):
            raise SystemExit(f"the two evaluations' metrics differ: {metrics}")
        cases = len(now.data_loader.dataset)
    ratio = statistics.median(times["now"]) / statistics.median(times["before"])
    paired = statistics.median(a / b for a, b in zip(times["now"], times["before"], strict=True))
    print(format_machine(describe_machine()))
    print(
        f"[evaluation of the embedded test cases] {cases} cases, {repeats} alternating repeats, torch threads "
        f"{torch.get_num_threads()}, device {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    for name, values in times.items():
        print(
            f"  {name:<7}: {statistics.median(values):7.2f} s  (runs: " + ", ".join(f"{v:.2f}" for v in values) + " s)"
        )
    print(
        f"  time now / before: {ratio:.3f} (medians), {paired:.3f} (median of adjacent pairs); "
        f"same metrics ({len(metrics['now'])} compared)"
    )
    net_now, net_before = statistics.median(inference["now"]), statistics.median(inference["before"])
    print(
        "  of which the network (the inferer over the cases, no metrics or report): "
        f"now {net_now:.2f} s (one pass), before {net_before:.2f} s (two passes), ratio {net_now / net_before:.3f}"
    )
    return {
        "cases": cases,
        "seconds": times,
        "ratio": ratio,
        "paired_ratio": paired,
        "network_seconds": inference,
        "network_ratio": net_now / net_before,
        "metrics": metrics["now"],
    }


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda result: None)
