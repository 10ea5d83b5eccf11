#!/usr/bin/env python
"""Time the evaluation of the embedded test cases (`train.yaml` + `evaluate.yaml`): the one-pass
`ModalityHeadsWrapper` of the bundle against the two-pass wrapper it replaced, side by side.

Both runs use the same `SupervisedEvaluator` (the same cases, sliding-window inferer, post-processing,
Dice / HD95 / ASD metrics and report), alternately, after one warm-up of each; only the network
differs:

- one pass (the bundle's): the heads run once and the network's prediction is their average
  (`average_heads`);
- two passes (the wrapper before): `network(image)` for the prediction, then `forward_modalities(image)`
  again for the heads.

Both must give the same metrics (checked: the script exits with an error if they differ).

    python scripts/bench_evaluation.py --threads 1 --repeats 3
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import BUNDLE, CONFIGS, format_machine, machine_description, timed  # noqa: E402


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


def build_evaluator(workdir: str, ckpt_dir: str, configs: list[str]) -> Any:
    """The evaluator of ``train.yaml`` + ``configs`` + ``evaluate.yaml`` on the embedded test cases."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in ["train.yaml", *configs, "evaluate.yaml"]])
    overrides = {"bundle_root": str(BUNDLE), "output_dir": os.path.join(workdir, "eval"), "ckpt_dir": ckpt_dir,
                 "num_overlays": 0}
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
    images = [batch["image"].to(evaluator.state.device if evaluator.state.device else "cpu")
              for batch in evaluator.data_loader]

    def infer_all() -> None:
        with torch.no_grad():
            for image in images:
                evaluator.inferer(image, network)

    return timed(infer_all)


def main(repeats: int = 3, threads: int | None = 1, ckpt_dir: str | None = None, configs: tuple = ()) -> dict[str, Any]:
    """Time both wrappers in alternation and print the ratio.

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
        evaluator = build_evaluator(workdir, ckpt_dir or str(BUNDLE / "models"), list(configs))
        one_pass = evaluator.network
        if not isinstance(one_pass, ModalityHeadsWrapper) or not one_pass.has_heads:
            raise SystemExit("the evaluated network has no modality heads: nothing to compare.")
        two_pass = TwoPassHeads(one_pass.network)
        times: dict[str, list[float]] = {"one pass": [], "two passes": []}
        inference: dict[str, list[float]] = {"one pass": [], "two passes": []}
        metrics: dict[str, dict[str, float]] = {}
        for i in range(int(repeats) + 1):
            for name, network in (("one pass", one_pass), ("two passes", two_pass)):
                evaluator.network = network
                seconds, metrics[name] = _timed_run(evaluator)
                network_seconds = _timed_inference(evaluator, network)
                if i:  # the first round warms up (caches, allocations)
                    times[name].append(seconds)
                    inference[name].append(network_seconds)
        if metrics["one pass"].keys() != metrics["two passes"].keys() or any(
            abs(metrics["one pass"][k] - metrics["two passes"][k]) > 1e-5 for k in metrics["one pass"]
        ):
            raise SystemExit(f"the two wrappers' metrics differ: {metrics}")
        cases = len(evaluator.data_loader.dataset)
    one, two = statistics.median(times["one pass"]), statistics.median(times["two passes"])
    paired = statistics.median(a / b for a, b in zip(times["one pass"], times["two passes"], strict=True))
    print(format_machine(machine_description()))
    print(f"[evaluation of the embedded test cases] {cases} cases, {repeats} alternating repeats, torch threads "
          f"{torch.get_num_threads()}, device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    for name, values in times.items():
        print(f"  {name:<10}: {statistics.median(values):7.2f} s  (runs: " + ", ".join(f"{v:.2f}" for v in values) + " s)")
    print(f"  time one pass / two passes: {one / two:.3f} (medians), {paired:.3f} (median of adjacent pairs); "
          f"same metrics ({len(metrics['one pass'])} compared)")
    net_one, net_two = statistics.median(inference["one pass"]), statistics.median(inference["two passes"])
    print("  of which the network (the inferer over the cases, no metrics or report): "
          f"one pass {net_one:.2f} s, two passes {net_two:.2f} s, ratio {net_one / net_two:.3f}")
    return {"cases": cases, "seconds": times, "ratio": one / two, "paired_ratio": paired,
            "network_seconds": inference, "network_ratio": net_one / net_two, "metrics": metrics["one pass"]}


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda result: None)
