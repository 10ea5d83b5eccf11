"""The bundle as shipped: installed read-only, and exported with the commands the README gives.

- A Model Zoo download in a shared location is read-only: training on the embedded default and
  inference must write their data and outputs to the user's cache (scripts.run_management.work_root), and the
  bundle folder must stay exactly as it was. The test makes the copy read-only with `chmod -R a-w`
  and compares every file before and after (as root, the write bits are the only thing that says
  read-only: root may write anyway, so an unchanged tree is the check).
- `ckpt_export` / `onnx_export` from the repository root with `--bundle_root bundle` (README).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bundle_runner import BUNDLE, REPO_ROOT, TINY_SYNTHETIC


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _set_writable(root: Path, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _bundle(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"monai.bundle {' '.join(args)} exited {proc.returncode}:\n{out[-6000:]}"
    return out


@pytest.fixture
def read_only_bundle(tmp_path):
    bundle = tmp_path / "multimodal_mri_semisupervised_segmentation"
    shutil.copytree(BUNDLE, bundle, ignore=lambda folder, names: [
        n for n in names if n == "__pycache__" or (Path(folder) == BUNDLE and n in ("runs", "data", "eval"))
        or (Path(folder) == BUNDLE / "models" and n != "model.pt")])
    _set_writable(bundle, False)
    yield bundle
    _set_writable(bundle, True)


def test_read_only_bundle_trains_and_infers_into_the_cache(tmp_path, read_only_bundle):
    cache = tmp_path / "cache"
    env = dict(os.environ, MMSEG_BUNDLE_CACHE=str(cache), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    before = _snapshot(read_only_bundle)
    # as the Model Zoo documents it: from inside the bundle folder, the default dataset and folders
    _bundle(["run", "--config_file", "configs/train.yaml", "--epochs", "1", "--iterations_per_epoch", "2",
             "--val_interval", "1", "--batch_size", "2", "--roi_size", "[32,32]",
             "--synthetic", json.dumps(TINY_SYNTHETIC)], cwd=read_only_bundle, env=env)
    assert (cache / "models" / "model.pt").is_file()
    assert (cache / "runs" / "train" / "metrics.json").is_file()
    assert (cache / "data" / "synthetic_2d" / "datalist.json").is_file()
    # the testing cases of the (tiny) embedded dataset the training generated
    out = _bundle(["run", "--config_file", "configs/inference.yaml", "--dataset_dir", str(cache / "data" / "synthetic_2d")],
                  cwd=read_only_bundle, env=env)
    written = sorted((cache / "eval").glob("*_seg.nii.gz"))
    assert len(written) == TINY_SYNTHETIC["num_testing"], sorted(p.name for p in cache.rglob("*"))
    # the weights just trained (in the cache), not the bundle's own
    assert str(cache / "models" / "model.pt") in out, out[-3000:]
    assert _snapshot(read_only_bundle) == before, "the read-only bundle folder was written"


def test_work_root_is_the_bundle_folder_when_writable(tmp_path):
    from scripts.run_management.work_root import writable_root

    folder = tmp_path / "b"
    folder.mkdir()
    assert writable_root(str(folder)) == str(folder)
    folder.chmod(0o555)
    try:
        os.environ["MMSEG_BUNDLE_CACHE"] = str(tmp_path / "c")
        assert writable_root(str(folder)) == str(tmp_path / "c")
    finally:
        del os.environ["MMSEG_BUNDLE_CACHE"]
        folder.chmod(0o755)


@pytest.mark.parametrize("command", ["ckpt_export", "onnx_export"])
def test_exports_run_from_the_repository_root(tmp_path, command):
    """The README's export commands, from the root with --bundle_root bundle and no PYTHONPATH."""
    target = tmp_path / ("model.ts" if command == "ckpt_export" else "model.onnx")
    args = [command, "network_def", "--filepath", str(target), "--ckpt_file", "bundle/models/model.pt",
            "--meta_file", "bundle/configs/metadata.json", "--config_file", "bundle/configs/inference.yaml",
            "--bundle_root", "bundle"]
    if command == "onnx_export":
        args += ["--input_shape", "[1, 3, 64, 64]", "--use_trace", "True"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _bundle(args, cwd=REPO_ROOT, env=env)
    assert target.is_file() and target.stat().st_size > 0
