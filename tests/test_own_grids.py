"""Issue 22: modalities on their own grids (not registered, or unpaired cohorts), each with its own label."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_runner import config_files, run_bundle, write_datalist

MODALITIES = ["mr", "us"]


def _touch(path: Path) -> str:
    path.write_bytes(b"")
    return str(path)


def _paired(root: Path, name: str, label: bool = True) -> dict:
    case = {"case": name, "mr": _touch(root / f"{name}_mr.nii.gz"), "us": _touch(root / f"{name}_us.nii.gz")}
    if label:
        case["label"] = {m: _touch(root / f"{name}_{m}_seg.nii.gz") for m in MODALITIES}
    return case


def _write(root: Path, content: dict) -> str:
    return write_datalist(root, MODALITIES, content)


def test_every_case_becomes_one_case_per_sequence_with_its_own_label(tmp_path):
    from scripts.data.datalist import load_datalist
    from scripts.data.own_grids import GRID_MODALITY_KEY, SOURCE_CASE_KEY

    ct_only = {"case": "c", "mr": _touch(tmp_path / "c_mr.nii.gz"), "label": {"mr": _touch(tmp_path / "c_seg.nii.gz")}}
    us_only = {"case": "u", "us": _touch(tmp_path / "u_us.nii.gz")}  # an unpaired, unlabeled patient
    content = {
        "training": [_paired(tmp_path, "a"), ct_only],
        "unlabeled": [us_only],
        "validation": [_paired(tmp_path, "v")],
    }
    datalist = load_datalist(_write(tmp_path, content), own_grids=True)
    training = {c["case"]: c for c in datalist["training"]}
    assert sorted(training) == ["a_mr", "a_us", "c_mr"]
    assert training["a_us"]["image"] == [None, str(tmp_path / "a_us.nii.gz")]
    assert training["a_us"]["label"] == str(tmp_path / "a_us_seg.nii.gz")
    assert training["a_mr"]["label"] == str(tmp_path / "a_mr_seg.nii.gz")
    assert training["a_us"][GRID_MODALITY_KEY] == "us" and training["a_us"][SOURCE_CASE_KEY] == "a"
    assert [c["case"] for c in datalist["unlabeled"]] == ["u_us"] and "label" not in datalist["unlabeled"][0]
    assert [c["case"] for c in datalist["validation"]] == ["v_mr", "v_us"]


def test_the_labeled_fraction_is_drawn_per_patient(tmp_path):
    from scripts.data.datalist import load_datalist

    content = {"training": [_paired(tmp_path, f"p{i}") for i in range(10)], "validation": [_paired(tmp_path, "v")]}
    datalist = load_datalist(_write(tmp_path, content), own_grids=True, labeled_fraction=0.3, split_seed=1)
    labeled = {c["source_case"] for c in datalist["training"]}
    unlabeled = {c["source_case"] for c in datalist["unlabeled"]}
    assert len(labeled) == 3 and not labeled & unlabeled and len(unlabeled) == 7
    assert len(datalist["training"]) == 6 and all("label" in c for c in datalist["training"])  # both sequences each
    assert len(datalist["unlabeled"]) == 14 and not any("label" in c for c in datalist["unlabeled"])


def test_own_grid_labels_are_checked_per_sequence(tmp_path):
    from scripts.data.datalist import DatalistError, load_datalist

    single = dict(_paired(tmp_path, "s"), label=_touch(tmp_path / "s_seg.nii.gz"))
    lacking = _paired(tmp_path, "l")
    del lacking["label"]["us"]
    extra = {"case": "x", "mr": _touch(tmp_path / "x_mr.nii.gz"),
             "label": {"mr": _touch(tmp_path / "x_seg.nii.gz"), "us": _touch(tmp_path / "x_us_seg.nii.gz")}}
    content = {"training": [single, lacking, extra], "validation": [_paired(tmp_path, "v")]}
    with pytest.raises(DatalistError) as info:
        load_datalist(_write(tmp_path, content), own_grids=True)
    message = str(info.value)
    assert "training case 's': key 'label': modalities on their own grids need one label per modality" in message
    assert "training case 'l': key 'label': no label for modality 'us'" in message
    assert "training case 'x': key 'label': labels for modalities without an image: ['us']" in message


# ---------------------------------------------------------------- a tiny unregistered dataset, end to end


def _volume(shape, spacing, origin, seed, box):
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 0.2, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[box] = 1
    image[label > 0] += 2.0
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return image, label, affine


def _own_grid_dataset(root: Path) -> str:
    """Six patients: an MR of 20 x 18 x 10 voxels at 1 mm and an 'ultrasound' of 14 x 16 x 8 at 1.5 mm with
    another origin, each with its own label; no voxel of one corresponds to a voxel of the other."""
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(6):
        name = f"p{i}"
        case = {"case": name, "label": {}}
        for m, (shape, spacing, origin, box) in {
            "mr": ((20, 18, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.s_[5 + i % 3 : 13, 6:12, 2:8]),
            "us": ((14, 16, 8), (1.5, 1.5, 1.5), (7.0, -3.0, 2.0), np.s_[3:9, 4 + i % 2 : 10, 2:6]),
        }.items():
            image, label, affine = _volume(shape, spacing, origin, 10 * i + len(m), box)
            nib.save(nib.Nifti1Image(image, affine), str(root / f"{name}_{m}.nii.gz"))
            nib.save(nib.Nifti1Image(label, affine), str(root / f"{name}_{m}_seg.nii.gz"))
            case[m] = f"{name}_{m}.nii.gz"
            case["label"][m] = f"{name}_{m}_seg.nii.gz"
        cases.append(case)
    content = {"modalities": MODALITIES, "labels": {"1": "gland"}, "training": cases[:3], "unlabeled": [dict(cases[3], label=None)],
               "validation": cases[4:5], "testing": cases[5:]}
    del content["unlabeled"][0]["label"]
    path = root / "datalist.json"
    path.write_text(json.dumps(content))
    return str(path)


OWN_GRID_IDS = [
    "--spatial_dims", "3", "--image_spatial_dims", "3", "--pixdim", "[1.5,1.5,1.5]", "--roi_size", "[16,16,16]",
    "--unet_channels", "[8,16]", "--batch_size", "2", "--samples_per_volume", "1",
    "--modalities", json.dumps(MODALITIES), "--class_names", '["gland"]',
]


def test_training_evaluation_and_inference_on_own_grids(tmp_path):
    datalist = _own_grid_dataset(tmp_path / "data")
    stack = ["train.yaml", "planned.yaml", "unpaired.yaml", "unet.yaml", "weak_strong.yaml"]
    run_bundle([
        "run", "--config_file", config_files(*stack), *OWN_GRID_IDS, "--datalist_file", datalist,
        "--epochs", "1", "--iterations_per_epoch", "2", "--val_interval", "1",
        "--output_dir", str(tmp_path / "run"), "--ckpt_dir", str(tmp_path / "run"),
    ])
    run_bundle([
        "run", "--config_file", config_files(*stack, "evaluate.yaml"), *OWN_GRID_IDS, "--datalist_file", datalist,
        "--ckpt_dir", str(tmp_path / "run"), "--output_dir", str(tmp_path / "eval"), "--num_overlays", "0",
    ])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert [c["case"] for c in metrics["cases"]] == ["p5_mr", "p5_us"]
    by_case = {c["case"]: c["fused"]["dice"]["mean"] for c in metrics["cases"]}
    for m in MODALITIES:  # each sequence scored alone, against its own label
        assert metrics["summary_by_modality"][m]["fused"]["dice"]["mean"] == pytest.approx(by_case[f"p5_{m}"])
    run_bundle([
        "run", "--config_file", config_files("inference.yaml", "planned_inference.yaml", "unet.yaml", "unpaired.yaml"),
        *OWN_GRID_IDS, "--ckpt_dir", str(tmp_path / "run"), "--output_dir", str(tmp_path / "seg"),
        "--image", json.dumps([str(tmp_path / "data" / "p5_mr.nii.gz"), str(tmp_path / "data" / "p5_us.nii.gz")]),
    ])
    for m in MODALITIES:  # one segmentation per input file, on that file's grid
        source = nib.load(tmp_path / "data" / f"p5_{m}.nii.gz")
        seg = nib.load(tmp_path / "seg" / f"p5_{m}_seg.nii.gz")
        assert seg.shape == source.shape, m
        np.testing.assert_allclose(seg.affine, source.affine, atol=1e-5)


# ---------------------------------------------------------------- unpaired.yaml: every method, layered like cardiac.yaml
UNPAIRED_IDS = ["--roi_size", "[16,16,16]", "--unet_channels", "[8,16]", "--batch_size", "2"]


@pytest.fixture(scope="module")
def own_grid_data(tmp_path_factory):
    return _own_grid_dataset(tmp_path_factory.mktemp("own_grids") / "data")


@pytest.mark.parametrize(
    "method,expected",
    [
        (["unet.yaml", "supervised.yaml"], "loss_sup"),
        (["unet.yaml", "weak_strong.yaml"], "loss_unsup"),  # the strong view of one sequence
        (["cmc.yaml"], "loss_sup"),
        (["cmc_strong_views.yaml"], "loss_cac_strong"),  # a head against itself across views
        (["cmc_weak_strong.yaml"], "loss_unsup"),  # each head on the strong view of its own sequence
        (["semicml.yaml"], "loss_prel"),  # the teacher's own sequence
    ],
)
def test_every_method_trains_on_own_grids(own_grid_data, tmp_path, method, expected):
    """Two iterations per epoch of each method on train.yaml + unpaired.yaml (no --modalities: the
    datalist declares them); the pairing terms find no pair and stay out of the loss."""
    extra = ["--mutual_epochs", "1", "--prel_epochs", "1"] if "semicml.yaml" in method else ["--epochs", "1"]
    proc = run_bundle([
        "run", "--config_file", config_files("train.yaml", "unpaired.yaml", *method), *UNPAIRED_IDS,
        "--datalist_file", own_grid_data, "--iterations_per_epoch", "2", "--val_interval", "1", "--log_interval", "1",
        "--output_dir", str(tmp_path), "--ckpt_dir", str(tmp_path), *extra,
    ])
    text = proc.stdout + proc.stderr
    assert expected in text and (tmp_path / "model.pt").is_file()
    for pairing in ("loss_cac", "loss_csc", "loss_asc", "loss_mse"):  # no case holds two sequences: absent or 0
        values = {float(v) for v in re.findall(rf"{pairing}: ([-0-9.]+)", text)}
        assert values <= {0.0}, (pairing, values)


@pytest.fixture(scope="module")
def unpaired_model(own_grid_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("unpaired_model")
    run_bundle([
        "run", "--config_file", config_files("train.yaml", "unpaired.yaml", "unet.yaml", "supervised.yaml"),
        *UNPAIRED_IDS, "--datalist_file", own_grid_data, "--epochs", "2", "--iterations_per_epoch", "4",
        "--val_interval", "2", "--output_dir", str(run), "--ckpt_dir", str(run),
    ])
    return run


def _infer(model: Path, out: Path, images: list[str]) -> None:
    run_bundle([
        "run", "--config_file", config_files("inference.yaml", "unet.yaml", "unpaired.yaml"), *UNPAIRED_IDS,
        "--modalities", json.dumps(MODALITIES), "--class_names", '["gland"]',
        "--ckpt_dir", str(model), "--output_dir", str(out), "--image", json.dumps(images),
    ])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


def test_per_modality_metrics_match_dice_computed_by_hand(own_grid_data, unpaired_model, tmp_path):
    data = Path(own_grid_data).parent
    run_bundle([
        "run", "--config_file", config_files("train.yaml", "unpaired.yaml", "unet.yaml", "supervised.yaml", "evaluate.yaml"),
        *UNPAIRED_IDS, "--datalist_file", own_grid_data, "--ckpt_dir", str(unpaired_model),
        "--output_dir", str(tmp_path / "eval"), "--num_overlays", "0",
    ])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    _infer(unpaired_model, tmp_path / "seg", [str(data / "p5_mr.nii.gz"), str(data / "p5_us.nii.gz")])
    for m in MODALITIES:  # the written label map on the file's grid, against the file's own label
        seg = nib.load(tmp_path / "seg" / f"p5_{m}_seg.nii.gz").get_fdata() > 0
        truth = nib.load(data / f"p5_{m}_seg.nii.gz").get_fdata() > 0
        by_hand = _dice(seg, truth)
        assert metrics["summary_by_modality"][m]["fused"]["dice"]["mean"] == pytest.approx(by_hand, abs=1e-4), m


def test_moving_one_files_origin_changes_nothing_in_the_other_output(own_grid_data, unpaired_model, tmp_path):
    data = Path(own_grid_data).parent
    moved = tmp_path / "p5_us.nii.gz"
    us = nib.load(data / "p5_us.nii.gz")
    affine = us.affine.copy()
    affine[:3, 3] += [40.0, -25.0, 13.0]
    nib.save(nib.Nifti1Image(np.asarray(us.dataobj), affine), str(moved))
    _infer(unpaired_model, tmp_path / "a", [str(data / "p5_mr.nii.gz"), str(data / "p5_us.nii.gz")])
    _infer(unpaired_model, tmp_path / "b", [str(data / "p5_mr.nii.gz"), str(moved)])
    mr_a, mr_b = (nib.load(tmp_path / r / "p5_mr_seg.nii.gz") for r in ("a", "b"))
    np.testing.assert_array_equal(np.asarray(mr_a.dataobj), np.asarray(mr_b.dataobj))
    np.testing.assert_allclose(mr_a.affine, mr_b.affine)
    us_b = nib.load(tmp_path / "b" / "p5_us_seg.nii.gz")  # the moved file's output follows its new origin
    np.testing.assert_allclose(us_b.affine, affine, atol=1e-5)
    assert us_b.shape == us.shape


def test_training_patches_keep_each_sequences_own_grid(own_grid_data):
    """Each training sample is one sequence read on its own file's grid (its affine, its voxels), the
    other channel empty, its label that sequence's own."""
    from monai.bundle import ConfigParser

    from bundle_runner import BUNDLE

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) for c in ("train.yaml", "unpaired.yaml", "unet.yaml", "supervised.yaml")])
    parser["datalist_file"] = own_grid_data
    parser["roi_size"] = [16, 16, 16]
    cases = parser.get_parsed_content("datalist")["training"]
    reading = parser.get_parsed_content("train#reading")
    data = Path(own_grid_data).parent
    from monai.transforms import Compose

    for case in cases:
        m = MODALITIES.index(case["grid_modality"])
        item = Compose(reading)(dict(case))
        source = nib.load(data / f"{case['source_case']}_{case['grid_modality']}.nii.gz")
        image, label = item["image"], item["label"]
        assert tuple(image.shape[1:]) == source.shape and tuple(label.shape[1:]) == source.shape
        np.testing.assert_allclose(np.asarray(image.affine), source.affine, atol=1e-5)
        np.testing.assert_allclose(np.asarray(image[m]), np.asarray(source.dataobj), atol=1e-5)
        assert float(image[1 - m].abs().max()) == 0.0  # the other sequence is absent, not resampled here
        own_label = nib.load(data / f"{case['source_case']}_{case['grid_modality']}_seg.nii.gz")
        np.testing.assert_array_equal(np.asarray(label[0]), np.asarray(own_label.dataobj))
        patch = parser.get_parsed_content("train#preprocessing")(dict(case))
        patch = patch[0] if isinstance(patch, list) else patch
        assert tuple(patch["image"].shape) == (2, 16, 16, 16) and tuple(patch["label"].shape) == (1, 16, 16, 16)
        other = patch["image"][1 - m]
        assert float(other.max() - other.min()) == 0.0  # still absent (constant) after the augmentation
        assert float(patch["image"][m].std()) > 0


@pytest.mark.parametrize(
    "stack, expected",
    [
        (("train.yaml", "unpaired.yaml", "unet.yaml", "weak_strong.yaml"), 0.99),
        (("train.yaml", "planned.yaml", "unpaired.yaml", "unet.yaml", "weak_strong.yaml"), 0.99),
        (("train.yaml", "unet.yaml", "weak_strong.yaml"), None),
        (("train.yaml", "planned.yaml", "unet.yaml", "weak_strong.yaml"), None),
        (("train.yaml", "unpaired.yaml", "cmc_weak_strong.yaml"), 0.99),  # the same term inside CMC
        (("train.yaml", "cmc_weak_strong.yaml"), None),
    ],
)
def test_weak_strong_takes_pseudo_labels_from_an_ema_teacher_on_own_grids_only(stack, expected):
    """unpaired.yaml's runs of weak-to-strong draw pseudo-labels from an EMA teacher (0.99, chosen on
    prostate MR/TRUS validation patients); every other mode keeps the network itself, and an explicit
    --ws_ema_decay still wins."""
    from monai.bundle import ConfigParser

    from bundle_runner import BUNDLE

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) for c in stack])
    assert parser.get_parsed_content("ws_ema_decay") == expected
    assert parser.get("weak_strong_method")["ema_decay"] == "@ws_ema_decay"
    parser["ws_ema_decay"] = 0.9
    assert parser.get_parsed_content("ws_ema_decay") == 0.9
