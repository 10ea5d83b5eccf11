"""The checks of the MONAI Model Zoo's `ci/verify_bundle.py` (full mode), on a copy of bundle/ as the zoo holds it.

The zoo verifies `models/<bundle name>/` in this order; each test below names the zoo function it mirrors
(written from what the zoo checks, no zoo code):

- `verify_bundle_directory`: files it must have (`configs/metadata.json`, `LICENSE`: a bundle is zipped
  and shipped on its own) and files it should have (`models/model.pt`, `configs/inference.{json,yaml,yml}`);
- `verify_version_changes`: `version` and `changelog` in the metadata, the version in the changelog;
- `verify_metadata_format`: the metadata against the bundle schema (offline copy in ../shared);
- `verify_bundle_properties`: only for metadata with `supported_apps` (this bundle has none);
- `verify_data_shape`: `monai.bundle.verify_net_in_out` on `network_def` of the inference config;
- `verify_torchscript`: `monai.bundle.ckpt_export` of `models/model.pt` to `models/verify_model.ts`
  (and a provided `models/model.ts` loads).

The last two run in a fresh interpreter whose `sys.path` starts with the bundle folder and whose
working directory is the zoo root, as the zoo's script runs; nothing else of this repository is on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bundle_runner import BUNDLE, REPO_ROOT

NAME = "multimodal_mri_semisupervised_segmentation"
SCHEMA = REPO_ROOT.parent / "shared" / "schemas" / "meta_schema_20240725.json"
# not part of a shipped bundle: git-ignored run outputs and caches
NOT_SHIPPED = {"runs", "data", "eval", "__pycache__"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """A zoo checkout's layout: <root>/models/<bundle name>/ holding a copy of bundle/."""
    root = tmp_path_factory.mktemp("zoo")

    def ignore(folder: str, names: list[str]) -> list[str]:
        top, models = Path(folder) == BUNDLE, Path(folder) == BUNDLE / "models"
        return [n for n in names if n == "__pycache__" or (top and n in NOT_SHIPPED)
                or (models and n.endswith((".ts", ".onnx")))]

    shutil.copytree(BUNDLE, root / "models" / NAME, ignore=ignore)
    return root


def _find_config(folder: Path, stem: str) -> Path | None:
    for suffix in ("json", "yaml", "yml"):
        if (folder / f"{stem}.{suffix}").is_file():
            return folder / f"{stem}.{suffix}"
    return None


def test_verify_bundle_directory(zoo):
    bundle = zoo / "models" / NAME
    assert _find_config(bundle, "large_files") is None, "large files to download: the zoo would fetch them first"
    for necessary in ("configs/metadata.json", "LICENSE"):
        assert (bundle / necessary).is_file(), f"necessary file {necessary} is not existing"
    assert (bundle / "models" / "model.pt").is_file(), "preferred file models/model.pt is not existing"
    assert _find_config(bundle / "configs", "inference") is not None, "inference config file is not existing"
    assert "Apache License" in (bundle / "LICENSE").read_text()


def test_verify_version_changes(zoo):
    meta = json.loads((zoo / "models" / NAME / "configs" / "metadata.json").read_text())
    assert "version" in meta and "changelog" in meta
    assert meta["version"] in meta["changelog"], f"version {meta['version']} is missing in 'changelog'"


@pytest.mark.skipif(not SCHEMA.is_file(), reason="../shared/schemas/meta_schema_20240725.json is absent")
def test_verify_metadata_format(zoo):
    from monai.bundle import verify_metadata

    bundle = zoo / "models" / NAME
    # the zoo's prepare_schema.py puts the schema named by the metadata at eval/schema.json
    (bundle / "eval").mkdir(exist_ok=True)
    shutil.copy(SCHEMA, bundle / "eval" / "schema.json")
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(bundle / "eval" / "schema.json"))
    shutil.rmtree(bundle / "eval")


def test_verify_bundle_properties(zoo):
    meta = json.loads((zoo / "models" / NAME / "configs" / "metadata.json").read_text())
    # with supported_apps the zoo checks the inference config against each app's bundle_properties.py
    assert "supported_apps" not in meta, "supported_apps set: add the zoo's property check of each app here"


_SHAPE_AND_TORCHSCRIPT = """
import os, sys
import torch
bundle = os.path.join("models", {name!r})
sys.path = [bundle] + sys.path
from monai.bundle import ckpt_export, verify_net_in_out
config = os.path.join(bundle, {config!r})
meta = os.path.join(bundle, "configs", "metadata.json")
verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, bundle_root=bundle)
print("data shape is verified correctly.")
ckpt_export(net_id="network_def", filepath=os.path.join(bundle, "models", "verify_model.ts"),
            ckpt_file=os.path.join(bundle, "models", "model.pt"), meta_file=meta, config_file=config,
            bundle_root=bundle)
print("export weights into TorchScript module successfully.")
if os.path.exists(os.path.join(bundle, "models", "model.ts")):
    torch.jit.load(os.path.join(bundle, "models", "model.ts"))
torch.jit.load(os.path.join(bundle, "models", "verify_model.ts"))
"""


def test_verify_data_shape_and_verify_torchscript(zoo):
    bundle = zoo / "models" / NAME
    config = _find_config(bundle / "configs", "inference").relative_to(bundle)
    code = _SHAPE_AND_TORCHSCRIPT.format(name=NAME, config=str(config))
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(zoo), capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "data shape is verified correctly." in out and "export weights into TorchScript" in out
    assert (bundle / "models" / "verify_model.ts").is_file()
    (bundle / "models" / "verify_model.ts").unlink()
