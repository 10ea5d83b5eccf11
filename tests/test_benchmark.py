"""scripts/benchmark.py: run planning, the table, and one real (tiny) train + held-out evaluation run."""

from __future__ import annotations

import importlib.util
import json

import pytest

from bundle_runner import REPO_ROOT, TINY_SYNTHETIC
from scripts.data.datalist import resolve_datalist

_spec = importlib.util.spec_from_file_location("benchmark_tool", REPO_ROOT / "scripts" / "benchmark.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_plan_runs_crosses_methods_and_fractions_then_adds_explicit_runs():
    pairs = bench.plan_runs(["cmc", "semicml"], [0.2, 1.0], ["supervised@1.0", "cmc@0.2"])
    assert pairs == [("cmc", 0.2), ("semicml", 0.2), ("cmc", 1.0), ("semicml", 1.0), ("supervised", 1.0)]
    with pytest.raises(ValueError, match="method@fraction"):
        bench.plan_runs([], [], ["cmc"])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        bench.plan_runs(["cmc"], [1.5], [])


def test_commands_layer_base_and_method_configs(tmp_path):
    train, evaluate = bench.commands("semicml+supervised", 0.2, "/d/datalist.json", ["cardiac"], tmp_path, 3,
                                     {"epochs": 5})
    stack = json.loads(train[train.index("--config_file") + 1])
    assert [p.rsplit("/", 1)[-1] for p in stack] == ["train.yaml", "cardiac.yaml", "semicml.yaml", "supervised.yaml"]
    assert json.loads(evaluate[evaluate.index("--config_file") + 1])[-1].endswith("evaluate.yaml")
    assert train[train.index("--seed") + 1] == "3" and train[train.index("--split_seed") + 1] == "3"
    assert "--epochs" in train and "--epochs" not in evaluate  # training-only overrides stay out of evaluation
    assert evaluate[evaluate.index("--eval_split") + 1] == "testing"
    with pytest.raises(FileNotFoundError, match="no config 'nope'"):
        bench.commands("nope", 0.2, "/d/datalist.json", [], tmp_path, 0, {})


def _summary(dice: float) -> dict:
    per_class = {"a": dice - 0.1, "b": dice + 0.1, "mean": dice, "undefined_values": 0}
    hd = {"a": 3.0, "b": 5.0, "mean": 4.0, "undefined_values": 0}
    return {"fused": {"dice": per_class, "hd95": hd}, "m1": {"dice": dict(per_class, mean=dice / 2), "hd95": hd}}


def test_table_reports_share_of_full_supervision(tmp_path):
    rows = [
        {"method": "supervised", "labeled_fraction": 1.0, "num_labeled": 10, "test": _summary(0.8),
         "best_val_mean_dice": 0.81, "train_s": 10.0, "eval_s": 2.0, "train_command": "t1", "eval_command": "e1"},
        {"method": "cmc", "labeled_fraction": 0.2, "num_labeled": 2, "test": _summary(0.6),
         "best_val_mean_dice": 0.62, "train_s": 20.0, "eval_s": 2.0, "train_command": "t2", "eval_command": "e2"},
    ]
    text = bench.write_table(rows, tmp_path / "t.md", title="seed 0")
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    assert "Dice a" in header and "HD95 b" in header and "Dice m1 head" in header and "undefined" not in header
    cmc = next(line for line in lines if line.startswith("| cmc"))
    assert "| 20% (2) | 0.600 | 0.500 | 0.700 |" in cmc
    assert "75.0%" in cmc  # 0.6 / 0.8
    assert "| 0.300 |" in cmc  # the m1 head's mean Dice
    assert "t2" in text and "e2" in text
    assert json.loads((tmp_path / "t.json").read_text()) == rows


def test_benchmark_trains_evaluates_and_skips_done_runs(tmp_path, capsys):
    data = resolve_datalist(None, None, ["t1", "t2", "flair"], str(tmp_path / "data"), spatial_dims=2,
                            synthetic=TINY_SYNTHETIC)
    assert data["testing"]
    datalist = tmp_path / "data" / "datalist.json"
    kwargs = dict(datalist=str(datalist), runs=["supervised@1.0"], output=str(tmp_path / "bench" / "b.md"),
                  epochs=1, iterations_per_epoch=2, val_interval=1, roi_size=[32, 32], batch_size=2)
    rows = bench.main(**kwargs)
    assert len(rows) == 1 and rows[0]["num_test_cases"] == len(data["testing"])
    assert 0.0 <= rows[0]["test"]["fused"]["dice"]["mean"] <= 1.0
    text = (tmp_path / "bench" / "b.md").read_text()
    assert "| supervised | 100% (4) |" in text and "100.0%" in text and "--eval_split testing" in text
    capsys.readouterr()
    again = bench.main(**kwargs)  # same commands: kept, not retrained
    assert "already done" in capsys.readouterr().out
    assert again == rows
