"""The paper presets (cmc_paper.yaml, semicml_paper.yaml): what they configure, and a 2-iteration training run each."""

from __future__ import annotations

import math

import pytest
import torch

from bundle_runner import CONFIGS, run_bundle, tiny_train_args
from scripts.methods.rampup import ConstantWeight, CosineRampDown, SigmoidRampUp


def _parse(*names, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in names])
    for key, value in overrides.items():
        parser[key] = value
    return parser


def test_cmc_paper_preset_configures_the_published_setting():
    parser = _parse("train.yaml", "cmc_paper.yaml", epochs=10)
    network = parser.get_parsed_content("network_def")
    assert network.share_decoder is True and network.share_encoder is True
    assert network.feature_source == "encoder"
    method = parser.get_parsed_content("method")
    assert method.csc_on == "unlabeled"
    assert method.semi_start_epoch == pytest.approx(7.0)  # 70% of training
    dice = method.supervised_loss.loss.dice
    assert dice.squared_pred is True and dice.smooth_nr == 0.0 and dice.smooth_dr == pytest.approx(1e-6)
    assert method.supervised_loss.reduction == "mean"  # (ct_loss + mri_loss) / 2
    assert isinstance(method.csc_schedule, SigmoidRampUp) and isinstance(method.cac_schedule, CosineRampDown)
    for epoch in (7.0, 8.5, 10.0):  # both measured from epoch 0 over the whole training
        assert method.csc_schedule(epoch) == pytest.approx(math.exp(-5 * (1 - epoch / 10) ** 2))
        assert method.cac_schedule(epoch) == pytest.approx(0.5 * (math.cos(math.pi * epoch / 10) + 1))


def test_semicml_paper_preset_configures_the_published_setting():
    parser = _parse("train.yaml", "semicml.yaml", "semicml_paper.yaml")
    method = parser.get_parsed_content("method")
    assert isinstance(method.asc_schedule, ConstantWeight)
    assert method.asc_schedule(0.0) == 3.5 and method.asc_schedule(19.5) == 3.5  # fixed, no ramp-up
    assert method.prel_convex is True
    assert method.prel_weights() == pytest.approx((1 - method.prel_alpha, method.prel_alpha))
    assert method.prel_noise_clip == (0.0, 0.2)
    assert method.supervised_loss.reduction == "sum"
    # the tuned defaults are untouched without the preset
    default = _parse("train.yaml", "semicml.yaml").get_parsed_content("method")
    assert isinstance(default.asc_schedule, SigmoidRampUp) and default.prel_convex is False
    assert default.prel_noise_clip is None and default.supervised_loss.reduction == "mean"


def test_train_cmc_paper_preset_two_iterations(tmp_path):
    # semi-supervised terms from 70% of training; with 1 epoch of 2 iterations start them at the 2nd iteration
    args = tiny_train_args(tmp_path, "train.yaml", "cmc_paper.yaml") + ["--semi_start_epoch", "0.5"]
    proc = run_bundle(args)
    log = proc.stdout + proc.stderr
    for term in ("loss_sup", "loss_csc", "loss_cac"):
        assert term in log, f"{term} not logged"
    # at epoch 0.5 of 1: w_csc = exp(-5 * 0.5^2), w_cac = 0.5 * (cos(0.5 pi) + 1)
    assert f"weight_csc: {math.exp(-1.25):.4f}" in log and "weight_cac: 0.5000" in log
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("decoders.1.") for k in state)  # one shared decoder


def test_train_semicml_paper_preset_two_iterations(tmp_path):
    # mutual stage at the 1st iteration (epoch 0), PReL at the 2nd (epoch 0.5)
    args = tiny_train_args(tmp_path, "train.yaml", "semicml.yaml", "semicml_paper.yaml")
    args += ["--mutual_epochs", "0.5", "--prel_epochs", "0.5"]
    proc = run_bundle(args)
    log = proc.stdout + proc.stderr
    for term in ("loss_sup", "loss_asc", "loss_mse", "loss_prel"):
        assert term in log, f"{term} not logged"
    assert "weight_asc: 3.5000" in log  # mutual stage: ASC fixed at 3.5
    assert "weight_prel: 0.9000 " in log and "weight_asc: 0.1000" in log  # PReL: (1 - alpha), alpha
    state = torch.load(next((tmp_path / "out").glob("training_state*.pt")), map_location="cpu", weights_only=True)
    assert state["method"]["_extra_state"]["stage"] == "prel"
