"""Runs bundle workflows the way users do: `python -m monai.bundle run ...` from the repository root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundle"
CONFIGS = BUNDLE / "configs"

# a tiny embedded dataset, so that a workflow test takes seconds
TINY_SYNTHETIC = {"num_training": 4, "num_unlabeled": 4, "num_validation": 2, "num_testing": 2, "image_size": 32}


def write_datalist(folder: Path, modalities: list[str], content: dict) -> str:
    """``folder/datalist.json`` declaring ``modalities`` and holding ``content`` (its splits); its path."""
    path = Path(folder) / "datalist.json"
    path.write_text(json.dumps(dict(modalities=modalities, **content)))
    return str(path)


def config_files(*names: str) -> str:
    return json.dumps([str(CONFIGS / n) for n in names])


def run_bundle(args: list[str], timeout: float = 600, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """Run `python -m monai.bundle <args>` in a subprocess and fail with its output if it fails."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=str(cwd),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"monai.bundle {' '.join(args)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def tiny_train_args(
    tmp: Path, *configs: str, epochs: int = 1, iterations: int = 2, synthetic: dict | None = None, spatial_dims: int = 2
) -> list[str]:
    """Arguments of a short training run that writes only under `tmp`."""
    synthetic = dict(TINY_SYNTHETIC, **(synthetic or {}))
    size = synthetic["image_size"]
    return [
        "run",
        "--config_file", config_files(*(configs or ("train.yaml",))),
        "--epochs", str(epochs),
        "--iterations_per_epoch", str(iterations),
        "--val_interval", "1",
        "--log_interval", "1",
        "--spatial_dims", str(spatial_dims),
        "--roi_size", json.dumps([size] * spatial_dims),
        "--batch_size", "2",
        "--output_dir", str(tmp / "out"),
        "--ckpt_dir", str(tmp / "models"),
        "--synthetic_dir", str(tmp / "data"),
        "--synthetic", json.dumps(synthetic),
    ]
