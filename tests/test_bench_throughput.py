"""Smoke test of scripts/bench_throughput.py at tiny sizes: the structure of its results, never timings."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from monai.losses import ContrastiveLoss

from bundle_runner import REPO_ROOT, TINY_SYNTHETIC

_spec = importlib.util.spec_from_file_location("bench_throughput", REPO_ROOT / "scripts" / "bench_throughput.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

TINY_CHANNELS = (4, 8)


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: one thread is faster, and immune to stalls when the cores are shared
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_peak_memory_counts_live_tensors():
    def allocate():
        a = torch.empty(4 * 2**20 // 4)  # 4 MiB
        b = torch.empty(2 * 2**20 // 4)  # 2 MiB, 6 MiB live
        del a
        c = torch.empty(1 * 2**20 // 4)  # 3 MiB live
        return b, c

    peak = bench.peak_memory_bytes(allocate) / 2**20
    assert 5.9 <= peak <= 6.5


def test_official_csc_reference_is_the_row_wise_nt_xent():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, 2, 2, 2, generator=g), torch.randn(2, 4, 2, 2, 2, generator=g)
    expected = torch.stack(
        [ContrastiveLoss(temperature=0.5)(a[i].reshape(-1, 4), b[i].reshape(-1, 4)) for i in range(2)]
    ).mean()
    assert torch.allclose(bench.official_csc_reference(a, b, 0.5), expected, atol=1e-5)


def test_csc_memory_structure():
    result = bench.csc_memory(crop_sizes=(16, 24), batch_size=1, channels=8, target_crop=64)
    assert [r["crop"] for r in result["measured"]] == [16, 24]
    for row in result["measured"]:
        assert row["bundle_peak_mib"] > 0 and row["official_peak_mib"] > 0
        assert row["rows_N"] == (row["crop"] // 8) ** 3
    extrapolated = result["extrapolated"]
    assert extrapolated["feature_shape"] == [1, 8, 8, 8, 8]
    assert extrapolated["bundle_peak_mib"] > 0 and extrapolated["official_peak_mib"] > 0


def test_training_throughput_structure(tmp_path):
    result = bench.training_throughput(
        iterations=2, repeats=1, batch_size=2, synthetic_dir=str(tmp_path / "data"),
        synthetic=dict(TINY_SYNTHETIC), roi_size=TINY_SYNTHETIC["image_size"], min_ratio=0.0,
    )
    assert result["input_shape"] == [2, 3, 32, 32]
    assert result["samples_per_iteration"] == 4  # 2 labeled + 2 unlabeled
    assert len(result["bundle_seconds"]) == len(result["manual_seconds"]) == 1
    for key in ("bundle_samples_per_s", "manual_samples_per_s", "ratio_bundle_over_manual", "paired_ratio_median"):
        assert result[key] > 0 and math.isfinite(result[key])
    assert "profile" not in result
    assert result["loader"] == "DataLoader"  # the config's loaders, timed against background-thread loaders
    other = result["compare_loader"]
    assert other["loader"] == "ThreadDataLoader" and len(other["seconds"]) == 1
    assert other["samples_per_s"] > 0 and math.isfinite(other["paired_ratio_median"])


def test_inference_timings_structure(tmp_path):
    brain = bench.brain_volume_inference(
        shape=(16, 16, 24), modalities=2, classes=2, roi_size=16, repeats=1, channels=TINY_CHANNELS
    )
    assert brain["volume_shape"] == [1, 2, 16, 16, 24] and brain["median_seconds"] > 0
    assert "skipped" in bench.cardiac_case_inference(case_dir=str(tmp_path / "Case9999"))


@pytest.mark.skipif(not bench.MYOPS_CASE.is_dir(), reason="MyoPS data (../shared/data/myops) absent")
def test_cardiac_inference_on_real_case():
    result = bench.cardiac_case_inference(roi_size=128, repeats=1, channels=TINY_CHANNELS)
    assert result["case"] == "Case3001"
    assert result["slices"] == 5 and result["volume_shape"][1] == 3
    assert result["median_seconds"] > 0


def test_report_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench.run_benchmarks(sections=["memory"], crop_sizes=[16], output=str(out))
    printed = capsys.readouterr().out
    assert "CSC loss peak memory" in printed and "machine:" in printed and "(extrapolated)" in printed
    saved = json.loads(out.read_text())
    assert saved["machine"]["nproc"] >= 1 and saved["machine"]["torch"] == torch.__version__
    assert results["csc_memory"]["measured"][0]["crop"] == 16


def test_evaluation_benchmark_compares_like_with_like():
    # the two-pass reference of scripts/bench_evaluation.py gives exactly the one-pass wrapper's output
    spec = importlib.util.spec_from_file_location("bench_evaluation", REPO_ROOT / "scripts" / "bench_evaluation.py")
    evaluation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluation)
    from scripts.networks.cmc_net import CMCNet
    from scripts.networks.modality_heads import ModalityHeadsWrapper

    net = CMCNet(2, 3, 4, channels=(4, 8)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ModalityHeadsWrapper(net)(x), evaluation.TwoPassHeads(net)(x))
    # and its metric reference measures what the bundle's handlers measure, in mm, on MetaTensors
    from monai.data import MetaTensor

    from scripts.evaluation.segmentation_metrics import segmentation_metrics

    pred, label = torch.zeros(1, 2, 12, 10), torch.zeros(1, 2, 12, 10)
    pred[0, 1, 2:7, 3:8], label[0, 1, 3:9, 2:8] = 1, 1
    pred[0, 0], label[0, 0] = 1 - pred[0, 1], 1 - label[0, 1]
    affine = torch.diag(torch.tensor([2.0, 0.5, 1.0]))  # 2 mm x 0.5 mm pixels
    values = {}
    handlers = {"bundle": segmentation_metrics(["fused"]), "reference": evaluation.metatensor_metrics(["fused"])}
    for name, metrics in handlers.items():
        for key in ("fused_hd95", "fused_asd"):
            fn = metrics[key].metric_fn
            fn(MetaTensor(pred.clone(), affine=affine), MetaTensor(label.clone(), affine=affine))
            values[name, key] = float(fn.aggregate())
    assert values["bundle", "fused_hd95"] == pytest.approx(values["reference", "fused_hd95"])
    assert values["bundle", "fused_asd"] == pytest.approx(values["reference", "fused_asd"])
    # in mm (MONAI's function given the spacing), not in voxels
    from monai.metrics import compute_hausdorff_distance

    in_mm = float(compute_hausdorff_distance(pred, label, percentile=95, spacing=[2.0, 0.5]))
    in_voxels = float(compute_hausdorff_distance(pred, label, percentile=95))
    assert values["bundle", "fused_hd95"] == pytest.approx(in_mm) and abs(in_mm - in_voxels) > 0.5
