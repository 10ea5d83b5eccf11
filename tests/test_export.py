"""Model Zoo conformance and exports: verify_net_in_out, TorchScript and ONNX round-trips, weights format, sizes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle_runner import BUNDLE, CONFIGS, REPO_ROOT, run_bundle

SHIPPED = BUNDLE / "models" / "model.pt"
META = CONFIGS / "metadata.json"
INFERENCE = CONFIGS / "inference.yaml"
MAX_FILE_BYTES = 25 * 1024 * 1024


@pytest.fixture
def shipped_weights() -> Path:
    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED.relative_to(REPO_ROOT)} is absent (shipped weights not trained yet)")
    return SHIPPED


def _network_def():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    return parser.get_parsed_content("network_def").eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A randomly initialised network_def and its plain state dict (enough for round-trip equality)."""
    torch.manual_seed(0)
    net = _network_def()
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(net.state_dict(), path)
    return path, net


def _export_args(command: str, ckpt: Path, filepath: Path, *extra: str) -> list[str]:
    # run from inside the bundle, as Model Zoo does, so that `scripts` is the bundle's package
    return [command, "network_def", "--filepath", str(filepath), "--ckpt_file", str(ckpt),
            "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.yaml", *extra]


def test_verify_net_in_out():
    # spatial_shape ["16*n", "16*n"]: n=1 (16x16) is the smallest input the instance norms accept
    proc = run_bundle(["verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                       "--config_file", "configs/inference.yaml"], cwd=BUNDLE)
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


def test_torchscript_export_round_trip(weights, tmp_path):
    ckpt, net = weights
    ts_path = tmp_path / "model.ts"
    run_bundle(_export_args("ckpt_export", ckpt, ts_path), cwd=BUNDLE)
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(ts_path), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["name"] == json.loads(META.read_text())["name"]
    assert "network_def" in json.loads(extra["inference.json"])
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=1e-4)


def test_onnx_export_round_trip(weights, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    ckpt, net = weights
    onnx_path = tmp_path / "model.onnx"
    dynamic = {"image": {0: "batch", 2: "h", 3: "w"}, "pred": {0: "batch", 2: "h", 3: "w"}}
    kwargs = {"input_names": ["image"], "output_names": ["pred"], "dynamic_axes": dynamic}
    run_bundle(_export_args("onnx_export", ckpt, onnx_path, "--input_shape", "[1, 3, 64, 64]", "--use_trace", "True",
                            "--converter_kwargs", repr(kwargs)), cwd=BUNDLE)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    for shape in ((1, 3, 64, 64), (2, 3, 32, 48)):
        x = torch.randn(*shape)
        out = session.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(out, net(x).numpy(), rtol=0, atol=1e-4)


def test_shipped_weights_are_a_plain_state_dict(shipped_weights):
    state = torch.load(shipped_weights, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert not any(k.startswith("module.") for k in state)
    expected = _network_def().state_dict()
    assert set(state) == set(expected)
    assert all(state[k].shape == expected[k].shape for k in state)


def test_no_bundle_file_exceeds_25_mb():
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "bundle"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    files = {REPO_ROOT / f for f in listed}
    if SHIPPED.is_file():
        files.add(SHIPPED)
    assert files, "no file listed under bundle/"
    too_big = {str(f.relative_to(REPO_ROOT)): f.stat().st_size for f in files if f.is_file() and f.stat().st_size > MAX_FILE_BYTES}
    assert not too_big, f"files over 25 MB: {too_big}"
