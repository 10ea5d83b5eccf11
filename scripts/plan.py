#!/usr/bin/env python
"""Plan a bundle run from the dataset itself, as nnU-Net does: analyse the datalist's training pool
(MONAI Auto3DSeg's DataAnalyzer, plus the headers and label geometry) and write a bundle override
that sets the network's dimensionality, slice axis, target spacing, field-of-view crop, ROI, batch,
foreground sampling, per-modality intensity normalisation, UNet width and depth, and the iteration
budget of the machine. Every decision is printed with its reason and written as a comment above its
id; the same datalist always gives the same plan. The rules: bundle/docs/planning.md.

    python scripts/plan.py /data/mine/datalist.json --output /data/mine/plan.yaml
    python scripts/plan.py /data/mine/datalist.json --output plan.yaml --device gpu
    # then train with it (or scripts/plan_and_train.py for both steps)
    python -m monai.bundle run --config_file "['bundle/configs/train.yaml','bundle/configs/planned.yaml',\\
        'bundle/configs/unet.yaml','bundle/configs/weak_strong.yaml','plan.yaml']" --datalist_file /data/mine/datalist.json
"""

from __future__ import annotations

import json
import os
import sys

import fire

from planning import dataset_fingerprint, plan_from_fingerprint, plan_yaml


def main(datalist: str, output: str | None = None, device: str | None = None, modalities: list | None = None,
         fingerprint: str | None = None, overwrite: bool = False, allow_missing_modalities: bool = False,
         own_grids: bool = False) -> str:
    """
    Args:
        datalist: the bundle datalist JSON (its `training` and `unlabeled` cases are analysed).
        output: the plan file to write (default: `plan.yaml` beside the datalist); an existing file is
            kept unless `overwrite`.
        device: `cpu` or `gpu`, the machine the run is planned for (default: `gpu` when torch sees one).
        modalities: the modality names, when the datalist has no top-level `modalities` list.
        fingerprint: also write the dataset fingerprint (JSON) there.
        overwrite: replace an existing plan file.
        allow_missing_modalities: cases may lack sequences (as the run's option of the same name).
        own_grids: the sequences are on their own grids, each with its own label (as the run's option,
            `bundle/configs/unpaired.yaml`): every sequence is planned as a case of its own.
    """
    output = output or os.path.join(os.path.dirname(os.path.abspath(datalist)), "plan.yaml")
    if os.path.exists(output) and not overwrite:
        raise SystemExit(f"plan.py: {output} exists; give --overwrite true to replace it, or another --output.")
    if device is None:
        import torch

        device = "gpu" if torch.cuda.is_available() else "cpu"
    fp = dataset_fingerprint(datalist, modalities, allow_missing_modalities=bool(allow_missing_modalities),
                             own_grids=bool(own_grids))
    plan = plan_from_fingerprint(fp, device=str(device))
    for keys, reason in plan.decisions:
        print(f"{', '.join(f'{k} = {json.dumps(plan.ids[k])}' for k in keys)}\n    because {reason}")
    if fingerprint:
        with open(fingerprint, "w") as f:
            json.dump(fp, f, indent=1)
    text = plan_yaml(plan, os.path.abspath(datalist), str(device))
    tmp = output + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, output)
    print(f"plan written to {output}")
    return output


def cli() -> int:
    """fire's entry point; a bad datalist or option ends with its message printed last and status 1."""
    try:
        fire.Fire(main)
    except (OSError, ValueError) as e:  # the bundle's DatalistError is a ValueError
        print(f"plan.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
