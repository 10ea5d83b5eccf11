"""Experiment tracking (MLflow), TensorBoard event contents and the training plots."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bundle_runner import REPO_ROOT, run_bundle, tiny_train_args


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    run_bundle(tiny_train_args(tmp))
    return tmp / "out"


def test_tensorboard_events_hold_every_loss_term_and_val_dice(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tiny_run))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"loss", "loss_sup", "loss_csc", "loss_cac", "weight_csc", "weight_cac", "val_mean_dice"} <= tags
    assert [e.step for e in accumulator.Scalars("loss")] == [1, 2]
    assert 0.0 <= accumulator.Scalars("val_mean_dice")[-1].value <= 1.0


def test_plot_training(tiny_run, tmp_path):
    import matplotlib.pyplot as plt

    proc = subprocess.run(
        [sys.executable, "scripts/plot_training.py", str(tiny_run), "--output_dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )
    for name in ("losses.png", "val_dice.png"):
        assert str(tmp_path / name) in proc.stdout
        assert plt.imread(tmp_path / name).shape[0] > 100


def test_plot_training_without_logs_fails_clearly(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/plot_training.py", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert proc.returncode != 0 and "no TensorBoard event file" in proc.stderr


def test_mlflow_tracking(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_bundle(tiny_train_args(tmp_path) + ["--tracking", "mlflow", "--tracking_uri", uri, "--experiment_name", "tiny"])
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    assert {"train_loss", "val_mean_dice", "val_class_dice_outer", "val_class_dice_wall", "val_class_dice_cavity"} <= set(metrics)
    history = client.get_metric_history(runs[0].info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]
