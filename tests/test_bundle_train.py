"""End-to-end `monai.bundle run` training on the embedded dataset, as a user runs it."""

from __future__ import annotations

import json

import torch

from bundle_runner import BUNDLE, run_bundle, tiny_train_args


def _check_outputs(tmp_path):
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["key_metric"] == "val_mean_dice"
    assert 0.0 <= metrics["val_mean_dice"] <= 1.0
    assert set(metrics["metrics"]["val_class_dice"]) == {"outer", "wall", "cavity"}
    # best checkpoint: a plain state dict that loads with weights_only=True, no DDP prefix
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and state
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert not any(k.startswith("module.") for k in state)
    # tensorboard event files for the loss terms and the validation Dice
    assert list((tmp_path / "out").glob("events.out.tfevents.*"))
    return metrics


def test_train_cmc_with_unlabeled(tmp_path):
    proc = run_bundle(tiny_train_args(tmp_path))
    _check_outputs(tmp_path)
    log = proc.stdout + proc.stderr
    # every CMC loss term is logged separately
    for term in ("loss_sup", "loss_csc", "loss_cac"):
        assert term in log, f"{term} not logged"


def test_train_cmc_without_unlabeled_falls_back_to_supervised(tmp_path):
    proc = run_bundle(tiny_train_args(tmp_path, synthetic={"num_unlabeled": 0}))
    _check_outputs(tmp_path)
    log = proc.stdout + proc.stderr
    assert "loss_sup" in log
    assert "loss_cac" not in log  # no unlabeled batch, so no anatomical consistency term


def test_train_cmc_3d(tmp_path):
    run_bundle(tiny_train_args(tmp_path, synthetic={"image_size": 16}, spatial_dims=3))
    _check_outputs(tmp_path)
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(v.ndim == 5 for v in state.values())  # 3D convolution kernels


def test_train_supervised_override(tmp_path):
    run_bundle(tiny_train_args(tmp_path, "train.yaml", "supervised.yaml"))
    _check_outputs(tmp_path)


def test_shipped_configs_have_model_zoo_ids():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    for key in ("bundle_root", "device", "dataset_dir", "network_def", "network", "train#trainer",
                "train#dataset", "validate#evaluator", "val_interval"):
        assert key in parser, key


def test_train_semicml_runs_both_stages(tmp_path):
    # epochs = mutual_epochs + prel_epochs in semicml.yaml; --epochs of tiny_train_args overrides it, so pass 2
    args = tiny_train_args(tmp_path, "train.yaml", "semicml.yaml", epochs=2)
    args += ["--mutual_epochs", "1", "--prel_epochs", "1"]
    proc = run_bundle(args)
    _check_outputs(tmp_path)
    log = proc.stdout + proc.stderr
    for term in ("loss_sup", "loss_asc", "loss_mse", "loss_prel"):  # mutual stage, then PReL
        assert term in log, f"{term} not logged"
    assert "per-modality validation Dice" in log
    assert "PReL teacher" in log
    state = torch.load(next((tmp_path / "out").glob("training_state*.pt")), map_location="cpu", weights_only=True)
    extra = state["method"]["_extra_state"]
    assert extra["stage"] == "prel" and 0 <= extra["teacher_modality"] < 3
    assert any(k.startswith("teacher.") for k in state["method"])


def test_train_mean_teacher_override(tmp_path):
    proc = run_bundle(tiny_train_args(tmp_path, "train.yaml", "mean_teacher.yaml"))
    _check_outputs(tmp_path)
    log = proc.stdout + proc.stderr
    assert "loss_consistency" in log
    state = torch.load(next((tmp_path / "out").glob("training_state*.pt")), map_location="cpu", weights_only=True)
    assert int(state["method"]["teacher.n_averaged"]) == 2
