"""`--tracking mlflow` logs the executed config as an artifact, also with an explicit `--output_dir`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundle_runner import run_bundle, tiny_train_args


def test_repair_artifact_path(tmp_path):
    from scripts.run_management.tracking_artifacts import repair_artifact_path

    assert repair_artifact_path(f"{tmp_path} + '/config_1.json'") == str(tmp_path / "config_1.json")
    assert repair_artifact_path(str(tmp_path)) == str(tmp_path)  # an existing path stays
    assert repair_artifact_path(None) is None


def test_mlflow_logs_the_config_artifact_with_output_dir(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = tiny_train_args(tmp_path)  # gives --output_dir <tmp>/out
    assert "--output_dir" in args
    run_bundle(args + ["--tracking", "mlflow", "--tracking_uri", uri, "--experiment_name", "artifacts"])
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("artifacts").experiment_id])
    names = [a.path for a in client.list_artifacts(run.info.run_id)]
    configs = [n for n in names if n.startswith("config_") and n.endswith(".json")]
    assert configs, names
    local = Path(client.download_artifacts(run.info.run_id, configs[0], str(tmp_path / "dl")))
    assert json.loads(local.read_text())["output_dir"] == str(tmp_path / "out")
