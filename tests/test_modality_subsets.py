"""Issue 23: evaluation with a subset of the sequences (evaluate.yaml's `eval_modalities`, the missing ones
zeroed) and scripts/subset_benchmark.py, which evaluates benchmark runs on every non-empty subset."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from benchmarking.commands import bundle_run_command
from benchmarking.runs import RunFailed
from bundle_runner import CONFIGS, REPO_ROOT
from scripts.data.modality_subset import KeepModalitiesd, kept_modalities, modality_subsets

_spec = importlib.util.spec_from_file_location("subset_benchmark", REPO_ROOT / "scripts" / "subset_benchmark.py")
sb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sb)

MODALITIES = ["t1", "t2", "flair"]


# ---------------------------------------------------------------- the transform
def test_kept_channels_are_unchanged_and_the_others_exactly_zero():
    image = MetaTensor(torch.randn(3, 5, 6) + 3.0, affine=torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0])))
    original = image.clone()
    out = KeepModalitiesd("image", ["flair", "t1"], MODALITIES)({"image": image, "label": "kept"})
    assert out["label"] == "kept" and out["image"].shape == (3, 5, 6)
    assert torch.equal(out["image"][0], image[0]) and torch.equal(out["image"][2], image[2])
    assert torch.count_nonzero(out["image"][1]) == 0
    assert torch.equal(image, original), "the input is not modified"
    assert torch.equal(out["image"].affine, image.affine)
    assert KeepModalitiesd("image", ["t2"], MODALITIES).dropped == [0, 2]
    every = KeepModalitiesd("image", MODALITIES, MODALITIES)({"image": image})["image"]
    assert torch.equal(every, image)


def test_bad_subsets_are_refused_naming_the_problem():
    with pytest.raises(ValueError, match=r"is empty: keep at least one of \['t1', 't2', 'flair'\]"):
        KeepModalitiesd("image", [], MODALITIES)
    with pytest.raises(ValueError, match=r"\['t3'\] not among the modalities \['t1', 't2', 'flair'\]"):
        KeepModalitiesd("image", ["t1", "t3"], MODALITIES)
    with pytest.raises(ValueError, match=r"\['t1'\] given more than once"):
        KeepModalitiesd("image", ["t1", "t1"], MODALITIES)
    with pytest.raises(ValueError, match="is None"):
        KeepModalitiesd("image", None, MODALITIES)
    with pytest.raises(ValueError, match="4 channels, but 3 modalities"):
        KeepModalitiesd("image", ["t1"], MODALITIES)({"image": torch.ones(4, 2, 2)})
    # the config's checked id: null (also as the command line's string) keeps all; one name alone is a list
    assert kept_modalities(None, MODALITIES) is None and kept_modalities("null", MODALITIES) is None
    assert kept_modalities("flair", MODALITIES) == ["flair"]
    assert kept_modalities(["flair", "t1"], MODALITIES) == ["t1", "flair"]  # channel order


def test_every_non_empty_subset_all_first():
    assert modality_subsets(["a", "b"]) == [["a", "b"], ["a"], ["b"]]
    subsets = modality_subsets(MODALITIES)
    assert len(subsets) == 7 and subsets[0] == MODALITIES and len({tuple(s) for s in subsets}) == 7
    assert all(s and [m for m in MODALITIES if m in s] == s for s in subsets)


@pytest.mark.parametrize("stack, normalisation", [
    (["train", "evaluate"], "NormalizeIntensityd"),
    (["train", "planned", "unet", "weak_strong", "evaluate"], "ModalityIntensityd"),
    (["train", "planned", "cardiac", "evaluate"], "ModalityIntensityd"),
])
def test_evaluate_yaml_zeroes_after_the_normalisation_of_every_pipeline(stack, normalisation):
    """planned.yaml and cardiac.yaml replace validate#preparation; evaluate.yaml's step follows it."""
    def transforms(eval_modalities):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / f"{name}.yaml") for name in stack])
        parser["bundle_root"] = str(REPO_ROOT / "bundle")
        parser["eval_modalities"] = eval_modalities
        return parser.get_parsed_content("validate#preprocessing").transforms

    modalities = ["c0", "lge", "t2"] if "cardiac" in stack else MODALITIES
    steps = transforms(modalities[1:2])
    assert type(steps[-2]).__name__ == normalisation and isinstance(steps[-1], KeepModalitiesd)
    assert steps[-1].dropped == [0, 2]
    assert not any(isinstance(t, KeepModalitiesd) for t in transforms(None))  # default: nothing zeroed


# ---------------------------------------------------------------- a known model on a known dataset
NET = "tests.channel_threshold_net.ChannelThresholdNet"
SUBSETS_3 = ["a+b+c", "a+b", "a+c", "b+c", "a", "b", "c"]
# foreground where channel b (= the label) or c (a disjoint square of the label's size) is bright:
# Dice 2/3 with both, 1 with b alone, 0 without b; the baseline reads b only
FUSION_DICE = [2 / 3, 1.0, 0.0, 2 / 3, 0.0, 1.0, 0.0]
BASE_DICE = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def _known_dataset(root: Path) -> Path:
    """Three 24 x 24 cases with modalities a (noise), b (the label, bright) and c (a square of the label's
    size elsewhere, bright); only a `testing` list."""
    rng = np.random.default_rng(0)
    cases = []
    for i, (y, x, s) in enumerate([(3, 4, 6), (10, 2, 5), (5, 12, 8)]):
        label = np.zeros((24, 24), np.float32)
        label[y:y + s, x:x + s] = 1
        other = np.zeros((24, 24), np.float32)
        other[-s:, -s:] = 1
        assert not (label * other).any()
        case = {"case": f"c{i}", "label": f"c{i}_label.nii.gz"}
        channels = {"a": rng.normal(size=(24, 24)).astype(np.float32), "b": label * 100 + 20, "c": other * 50 + 5}
        for m, array in channels.items():
            nib.save(nib.Nifti1Image(array, np.eye(4)), str(root / f"c{i}_{m}.nii.gz"))
            case[m] = f"c{i}_{m}.nii.gz"
        nib.save(nib.Nifti1Image(label.astype(np.uint8), np.eye(4)), str(root / case["label"]))
        cases.append(case)
    (root / "datalist.json").write_text(json.dumps({"testing": cases}))
    return root / "datalist.json"


def _benchmark_row(method: str, channels: list[int], seed: int, datalist: Path, tmp: Path) -> dict:
    """A run as scripts/benchmark.py records it, with the fixed network's checkpoint in its folder."""
    from channel_threshold_net import ChannelThresholdNet

    run_dir = tmp / "bench" / f"{method}_0.5_seed{seed}"
    run_dir.mkdir(parents=True)
    torch.save(ChannelThresholdNet(channels).state_dict(), run_dir / "model.pt")
    command = bundle_run_command(
        [str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")], datalist_file=str(datalist),
        labeled_fraction=0.5, seed=seed, split_seed=seed, ckpt_dir=str(run_dir), output_dir=str(run_dir / "test"),
        eval_split="testing", modalities=["a", "b", "c"], class_names=["fg"], roi_size=[24, 24],
        network_def={"_target_": NET, "channels": channels})
    return {"method": method, "labeled_fraction": 0.5, "num_labeled": 2, "seed": seed, "split_seed": seed,
            "eval_command": shlex.join(command)}


@pytest.mark.slow  # starts bundle runs through the tool
def test_subset_benchmark_of_a_known_model(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    datalist = _known_dataset(data)
    runs = [_benchmark_row("fusion", [1, 2], 0, datalist, tmp_path), _benchmark_row("base", [1], 0, datalist, tmp_path)]
    report = tmp_path / "bench" / "bench.json"
    report.write_text(json.dumps({"runs": runs, "machine": {}}))
    rows = sb.run_subset_benchmark(str(report), baseline="base", jobs=2, num_threads=1, num_bootstrap=200)
    assert len(rows) == 14
    for method, expected in (("fusion", FUSION_DICE), ("base", BASE_DICE)):
        got = {r["subset_name"]: r for r in rows if r["method"] == method}
        assert list(got) == SUBSETS_3
        for name, dice in zip(SUBSETS_3, expected, strict=True):
            assert got[name]["dice"] == pytest.approx(dice, abs=1e-6), (method, name)
            assert got[name]["case_dice"] == pytest.approx({"c0": dice, "c1": dice, "c2": dice}, abs=1e-6)
            if dice == 1.0:
                assert got[name]["hd95"] == pytest.approx(0.0, abs=1e-6)
    # each evaluation in its own folder, its report naming the modalities it read and those it zeroed
    folder = tmp_path / "bench" / "subsets" / "fusion_0.5_seed0" / "a+c"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["eval_modalities"] == ["a", "c"] and metrics["missing_modalities"] == ["b"]
    assert "--eval_modalities" in (folder / "eval.log").read_text()

    saved = json.loads((tmp_path / "bench" / "subsets" / "subset_benchmark.json").read_text())
    fusion = next(s for s in saved["summary"] if s["method"] == "fusion")
    assert fusion["subsets"]["b"]["share_of_all"] == pytest.approx(1.5)
    assert fusion["subsets"]["c"]["share_of_all"] == pytest.approx(0.0)
    assert fusion["mean_over_subsets"]["dice_mean"] == pytest.approx(10 / 21)
    d = fusion["vs_baseline"]
    assert d["mean"] == pytest.approx(10 / 21 - 4 / 7) and d["ci95"] == pytest.approx([-2 / 21, -2 / 21])
    assert d["num_pairs"] == 3 and d["win_rate"] == 0.0
    assert next(s for s in saved["summary"] if s["method"] == "base")["vs_baseline"] is None
    text = (tmp_path / "bench" / "subsets" / "subset_benchmark.md").read_text()
    assert "| fusion | 50% (2) | 0.667 ± 0.000 | 1.000 ± 0.000 | 0.000 ± 0.000 |" in text
    assert "| 0.476 ± 0.000 | -9.5 [-9.5, -9.5] | 0% of 3 |" in text
    assert "| fusion | 50% (2) | 100.0% | 150.0% | 0.0% | 100.0% | 0.0% | 150.0% | 0.0% |" in text
    # a rerun keeps every finished evaluation
    capsys.readouterr()
    again = sb.run_subset_benchmark(str(report), baseline="base", jobs=2, num_threads=1, num_bootstrap=200)
    assert capsys.readouterr().out.count("already done, kept") == 14
    assert [(r["method"], r["subset"], r["dice"]) for r in again] == [(r["method"], r["subset"], r["dice"]) for r in rows]


# ---------------------------------------------------------------- the report over seeds, failures and retries
# fused Dice of (method, seed) per subset of [x, y]: x+y, x, y
_DICE = {("sup", 0): [0.8, 0.6, 0.4], ("sup", 1): [0.9, 0.7, 0.5], ("ws", 0): [0.8, 0.8, 0.5], ("ws", 1): [0.9, 0.8, 0.7]}


@pytest.fixture
def fake_evaluations(tmp_path, monkeypatch):
    """benchmark's runner replaced by one that writes what evaluate.yaml writes (case Dice from _DICE), or
    fails when <flags>/<method>_<seed>_<subset> exists; returns (report, flags, calls)."""
    flags = tmp_path / "flags"
    flags.mkdir()
    calls = []

    def fake_run(cmd, what, log, timer):
        ids = dict(zip(cmd[4::2], cmd[5::2], strict=True))
        subset, folder = json.loads(ids["--eval_modalities"]), Path(ids["--output_dir"])
        method, seed = Path(ids["--ckpt_dir"]).name, int(ids["--seed"])
        calls.append(f"{method} {seed} {'+'.join(subset)}")
        if (flags / f"{method}_{seed}_{'+'.join(subset)}").exists():
            raise RunFailed(f"{what} failed (exit 3); log: {log}", log, 3)
        dice = _DICE[(method, seed)][[["x", "y"], ["x"], ["y"]].index(subset)]
        cases = [{"case": c, "fused": {"dice": {"mean": dice}}} for c in ("c1", "c2")]
        summary = {"fused": {"dice": {"mean": dice}, "hd95": {"mean": 10 * dice}}}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps(
            {"summary": summary, "cases": cases, "num_cases": 2, "eval_modalities": subset}))
        return 0.5

    monkeypatch.setattr(sb, "run_logged", fake_run)
    runs = []
    for (method, seed) in _DICE:
        command = bundle_run_command([str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")],
                                           seed=seed, ckpt_dir=str(tmp_path / method), modalities=["x", "y"])
        runs.append({"method": method, "labeled_fraction": 0.2, "num_labeled": 4, "seed": seed, "split_seed": seed,
                     "eval_command": shlex.join(command)})
    report = tmp_path / "bench.json"
    report.write_text(json.dumps({"runs": runs}))
    return report, flags, calls


def test_report_over_seeds_and_a_retry_of_the_failed_evaluation_only(fake_evaluations, tmp_path, capsys):
    report, flags, calls = fake_evaluations
    (flags / "ws_1_y").touch()
    output = tmp_path / "out" / "s.md"
    args = [str(report), "--baseline", "sup", "--output", str(output), "--num_bootstrap", "100", "--jobs", "2"]
    assert sb.main(args) == 1
    assert len(calls) == 12
    text = output.read_text()
    assert "- ws @ 20%, seed 1, sequences y: evaluation failed (exit 3); log: " in text
    assert "ws @ 20%, seed 1, sequences y: evaluation failed" in capsys.readouterr().err
    saved = json.loads(output.with_suffix(".json").read_text())
    ws = next(s for s in saved["summary"] if s["method"] == "ws")
    assert ws["mean_over_subsets"]["seeds"] == [0]  # seed 1 lacks a subset: left out of the mean over subsets
    assert ws["vs_baseline"]["num_pairs"] == 2 and ws["vs_baseline"]["mean"] == pytest.approx(0.1)

    (flags / "ws_1_y").unlink()
    calls.clear()
    assert sb.main(args) == 0
    assert calls == ["ws 1 y"]  # only the failed one again
    saved = json.loads(output.with_suffix(".json").read_text())
    ws = next(s for s in saved["summary"] if s["method"] == "ws")
    x_y, x, y = (ws["subsets"][n] for n in ("x+y", "x", "y"))
    assert x_y["dice_mean"] == pytest.approx(0.85) and x_y["dice_std"] == pytest.approx(0.0707107, abs=1e-6)
    assert y["dice_mean"] == pytest.approx(0.6) and y["dice_std"] == pytest.approx(0.1414214, abs=1e-6)
    assert x["share_of_all"] == pytest.approx(0.8 / 0.85) and y["share_of_all"] == pytest.approx(0.6 / 0.85)
    assert y["hd95_mean"] == pytest.approx(6.0)
    # mean over subsets: 0.7 (seed 0) and 0.8 (seed 1); the baseline's 0.6 and 0.7: +10 points on every case
    mean = ws["mean_over_subsets"]
    assert mean["seeds"] == [0, 1] and mean["dice_mean"] == pytest.approx(0.75)
    assert mean["dice_std"] == pytest.approx(0.0707107, abs=1e-6)
    assert ws["vs_baseline"]["mean"] == pytest.approx(0.1) and ws["vs_baseline"]["ci95"] == pytest.approx([0.1, 0.1])
    assert ws["vs_baseline"]["num_pairs"] == 4 and ws["vs_baseline"]["win_rate"] == 1.0
    text = output.read_text()
    assert "| ws | 20% (4) | 0.850 ± 0.071 | 0.800 ± 0.000 | 0.600 ± 0.141 | 0.750 ± 0.071 | +10.0 [+10.0, +10.0] |" in text
    assert "| ws | 20% (4) | 100.0% | 94.1% | 70.6% |" in text and "Failed" not in text
    # a selection: one seed; the baseline is kept whatever --methods says
    assert [(r["method"], r["seed"]) for r in sb.select_runs(json.loads(report.read_text())["runs"], ["ws"], [], [1],
                                                             "sup")] == [("sup", 1), ("ws", 1)]


def test_commands_come_from_the_benchmark_with_this_checkout_s_configs(tmp_path):
    elsewhere = "/old/checkout/bundle/configs"
    plan = tmp_path / "plan.yaml"
    command = bundle_run_command([f"{elsewhere}/train.yaml", str(plan), f"{elsewhere}/evaluate.yaml"],
                                       num_threads=2, eval_split="testing")
    stack, ids = sb.parse_bundle_command(shlex.join(command))
    assert stack == [str(CONFIGS / "train.yaml"), str(plan), str(CONFIGS / "evaluate.yaml")]
    assert ids == {"num_threads": "2", "eval_split": "testing"}
    with pytest.raises(ValueError, match="not an evaluation command"):
        sb.parse_bundle_command(shlex.join(bundle_run_command([str(CONFIGS / "train.yaml")])))
    assert sb.run_modalities([str(CONFIGS / "train.yaml"), str(CONFIGS / "planned.yaml"), str(CONFIGS / "cardiac.yaml")],
                             {}) == ["c0", "lge", "t2"]
