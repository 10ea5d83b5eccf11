"""The plan as a bundle override file: one id per decision, its reason as a comment above it."""

from __future__ import annotations

import json
import textwrap

from .rules import Plan

__all__ = ["plan_yaml"]


def _value(value) -> str:
    # JSON is YAML: flow style, exact numbers, and strings that no YAML rule reinterprets
    return json.dumps(value)


def plan_yaml(plan: Plan, datalist_file: str, device: str) -> str:
    """The text of the override: a header saying how to layer it, then every id with its reason."""
    lines = [
        f"# Dataset plan written by scripts/plan.py for {datalist_file} (device: {device}).",
        "# Layer it LAST, after train.yaml, planned.yaml, the network and the method, e.g.",
        "#   python -m monai.bundle run --config_file \"['bundle/configs/train.yaml','bundle/configs/planned.yaml',"
        "'bundle/configs/unet.yaml','bundle/configs/weak_strong.yaml','<this file>']\" --datalist_file <datalist>",
        "# and for inference after inference.yaml, planned_inference.yaml and unet.yaml. Rules: bundle/docs/planning.md.",
    ]
    for keys, reason in plan.decisions:
        lines.append("")
        lines += ["# " + line for line in textwrap.wrap(f"{keys[0]}: {reason}", 100)]
        lines += [f"{key}: {_value(plan.ids[key])}" for key in keys]
    return "\n".join(lines) + "\n"
