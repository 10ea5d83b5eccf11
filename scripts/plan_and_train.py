#!/usr/bin/env python
"""From a datalist to the recommended semi-supervised run in one command: plan the dataset
(scripts/plan.py; an existing plan is reused, so a rerun resumes the same run), then train
weak-to-strong consistency on a UNet with the planned configuration. Every other `--id value` is
passed to `monai.bundle run` (e.g. `--labeled_fraction 0.1`, `--seed 1`, `--num_threads 2`).

    python scripts/plan_and_train.py /data/mine/datalist.json --output_dir /data/mine/run
    python scripts/plan_and_train.py /data/mine/datalist.json --output_dir /data/mine/sup --method supervised

It prints the evaluation and inference commands of the trained run at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import fire

import plan as plan_tool
from bundle_path import CONFIGS, use_bundle_scripts

use_bundle_scripts()
from scripts.errors import as_bool  # noqa: E402


def stacks(plan_file: str, method: str = "weak_strong", own_grids: bool = False) -> tuple[list[str], list[str], list[str]]:
    """The training, evaluation and inference config stacks of a planned run of ``method`` (with
    ``unpaired.yaml`` before the network when the sequences are on their own grids; the plan, last,
    overrides its geometry)."""
    extra = ["unpaired.yaml"] if own_grids else []
    train = [os.path.join(CONFIGS, c) for c in ("train.yaml", "planned.yaml", *extra, "unet.yaml", f"{method}.yaml")]
    train += [plan_file]
    evaluate = train + [os.path.join(CONFIGS, "evaluate.yaml")]
    infer = [os.path.join(CONFIGS, c) for c in ("inference.yaml", "planned_inference.yaml", *extra, "unet.yaml")]
    return train, evaluate, infer + [plan_file]


def main(datalist: str, output_dir: str, plan: str | None = None, method: str = "weak_strong",
         device: str | None = None, allow_missing_modalities: bool = False, own_grids: bool = False,
         **overrides) -> int:
    """
    Args:
        datalist: the bundle datalist JSON.
        output_dir: the run's folder (logs, checkpoints, model.pt).
        plan: the plan file (default `<output_dir>/plan.yaml`); written when absent, reused when present.
        method: the method's override config: `weak_strong` (recommended), `supervised`, `mean_teacher`.
        device: `cpu` or `gpu` for the plan (default: what torch sees).
        allow_missing_modalities: cases may lack sequences (bundle/docs/README.md, "Patients with a missing
            sequence"): planned, trained, evaluated and inferred with the presence mask as input.
        own_grids: the sequences are on their own grids, each with its own label (`unpaired.yaml`).
        overrides: further `--id value` pairs for `monai.bundle run`.
    """
    if not os.path.isfile(os.path.join(CONFIGS, f"{method}.yaml")):
        raise SystemExit(f"plan_and_train.py: no method config {method}.yaml in {CONFIGS}.")
    missing, own = as_bool(allow_missing_modalities, "allow_missing_modalities"), as_bool(own_grids, "own_grids")
    os.makedirs(output_dir, exist_ok=True)
    plan = plan or os.path.join(output_dir, "plan.yaml")
    if os.path.isfile(plan):
        print(f"using the existing plan {plan}")
    else:
        plan_tool.main(datalist, output=plan, device=device, allow_missing_modalities=missing, own_grids=own)
    train, evaluate, infer = stacks(os.path.abspath(plan), method, own_grids=own)
    args = ["--datalist_file", os.path.abspath(datalist), "--output_dir", os.path.abspath(output_dir)]
    if missing and not own:  # unpaired.yaml sets both itself
        overrides = {"allow_missing_modalities": True, "modality_presence_input": True, **overrides}
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)]
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(train), *args]
    print("training:", subprocess.list2cmdline(command), flush=True)
    status = subprocess.call(command)
    if status == 0:
        print("evaluate:", subprocess.list2cmdline([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                                                     json.dumps(evaluate), *args[:2], "--ckpt_dir", os.path.abspath(output_dir),
                                                     "--output_dir", os.path.join(os.path.abspath(output_dir), "eval")]))
        presence = ["--modality_presence_input", "true"] if missing and not own else []
        print("infer:   ", subprocess.list2cmdline([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                                                     json.dumps(infer), "--ckpt_dir", os.path.abspath(output_dir),
                                                     *presence, "--image", "<one file per modality>"]))
    return status


if __name__ == "__main__":
    sys.exit(fire.Fire(main))
