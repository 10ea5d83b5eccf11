"""The cardiac (MyoPS-style) configuration: slice-axis orientation, 2-D slice sampling from anisotropic
volumes, distances in millimetres, and a short real-data run when ../shared/data/myops is present."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.utils import set_determinism

from bundle_runner import CONFIGS, REPO_ROOT, config_files, run_bundle
from scripts.data.slice_axis import SliceAxisLastd, through_plane_axis
from scripts.evaluation.segmentation_metrics import PhysicalHausdorffDistanceMetric, PhysicalSurfaceDistanceMetric

SHARED_MYOPS = REPO_ROOT.parent / "shared" / "data" / "myops"


# ---------------------------------------------------------------------------------------------
# slice axis


def test_through_plane_axis():
    assert through_plane_axis(np.diag([0.7, 0.7, 12.0, 1.0])) == 2
    assert through_plane_axis(np.diag([10.0, 0.7, 0.8, 1.0])) == 0
    assert through_plane_axis(np.diag([1.0, 1.0, 1.2, 1.0])) is None  # isotropic enough: no slice axis
    rotated = np.array([[0, 0, -0.7, 0], [0, 0.7, 0, 0], [12.0, 0, 0, 0], [0, 0, 0, 1]])
    assert through_plane_axis(rotated) == 0


def test_slice_axis_last_moves_the_coarse_axis_and_keeps_world_coordinates():
    affine = np.array([[0, 0, -0.7, 10.0], [0, 0.7, 0, 20.0], [12.0, 0, 0, 30.0], [0, 0, 0, 1]])
    image = MetaTensor(torch.arange(5 * 8 * 9, dtype=torch.float32).reshape(1, 5, 8, 9), affine=torch.tensor(affine))
    label = MetaTensor((image > 200).float(), affine=torch.tensor(affine))
    transform = SliceAxisLastd(keys=["image", "label"])
    out = transform({"image": image, "label": label})
    assert out["image"].shape == (1, 8, 9, 5) and out["label"].shape == (1, 8, 9, 5)
    spacing = np.sqrt((out["image"].affine.numpy()[:3, :3] ** 2).sum(0))
    np.testing.assert_allclose(spacing, [0.7, 0.7, 12.0])
    # every voxel keeps its world position
    for value in (0.0, 123.0, 359.0):
        before = (image[0] == value).nonzero()[0].tolist()
        after = (out["image"][0] == value).nonzero()[0].tolist()
        np.testing.assert_allclose(affine @ np.array(before + [1]), out["image"].affine.numpy() @ np.array(after + [1]))
    assert torch.equal(out["label"][0] > 0, out["image"][0] > 200)
    back = transform.inverse(out)
    assert torch.equal(back["image"], image) and np.allclose(back["image"].affine, affine)


def test_slice_axis_last_leaves_a_slice_last_stack_alone():
    affine = torch.tensor(np.diag([0.7, 0.7, 12.0, 1.0]))
    image = MetaTensor(torch.rand(2, 6, 7, 3), affine=affine)
    out = SliceAxisLastd(keys="image")({"image": image})["image"]
    assert torch.equal(out, image) and out.shape == image.shape


def test_slice_axis_last_rejects_a_2d_image():
    with pytest.raises(ValueError, match="channel-first 3-D"):
        SliceAxisLastd(keys="image")({"image": MetaTensor(torch.rand(1, 6, 7))})


# ---------------------------------------------------------------------------------------------
# distances in millimetres


def _squares(shift: int, spacing: tuple[float, float]):
    pred, label = torch.zeros(1, 2, 32, 32), torch.zeros(1, 2, 32, 32)
    pred[0, 1, 8:16, 8:16] = 1
    label[0, 1, 8 + shift : 16 + shift, 8:16] = 1
    pred[0, 0], label[0, 0] = 1 - pred[0, 1], 1 - label[0, 1]
    affine = torch.eye(3, dtype=torch.float64)
    affine[0, 0], affine[1, 1] = spacing
    return MetaTensor(pred, affine=affine), label


def test_hausdorff_and_surface_distance_use_the_voxel_size():
    pred, label = _squares(shift=4, spacing=(2.0, 3.0))
    hd = PhysicalHausdorffDistanceMetric(include_background=False)
    # the squares are 4 voxels apart along axis 0, whose voxels are 2 mm: 8 mm (4 in voxels)
    assert hd(pred, label).item() == pytest.approx(8.0)
    assert hd(pred.as_tensor(), label).item() == pytest.approx(4.0)  # no affine: voxels
    # every distance vector is scaled by 2 mm along axis 0 and 3 mm along axis 1, so the average
    # surface distance in mm lies between 2x and 3x its value in voxels
    asd = PhysicalSurfaceDistanceMetric(include_background=False, symmetric=True)
    in_mm, in_voxels = asd(pred, label).item(), asd(pred.as_tensor(), label).item()
    assert 0.0 < in_voxels < 4.0
    assert 2.0 * in_voxels - 1e-6 <= in_mm <= 3.0 * in_voxels + 1e-6


# ---------------------------------------------------------------------------------------------
# the cardiac preprocessing


def _write_case(folder: Path, name: str, with_label: bool, foreground_slice: int = 2) -> dict:
    rng = np.random.default_rng(0)
    affine = np.diag([0.75, 0.75, 12.0, 1.0])
    case: dict = {"case": name}
    for modality in ("c0", "lge", "t2"):
        path = folder / f"{name}_{modality}.nii.gz"
        nib.save(nib.Nifti1Image(rng.normal(100, 20, size=(200, 200, 6)).astype(np.float32), affine), str(path))
        case[modality] = str(path)
    if with_label:
        label = np.zeros((200, 200, 6), dtype=np.uint8)
        label[90:110, 90:110, foreground_slice] = 1  # only one of six slices has foreground
        label[95:105, 95:105, foreground_slice] = 2
        path = folder / f"{name}_label.nii.gz"
        nib.save(nib.Nifti1Image(label, affine), str(path))
        case["label"] = str(path)
    return case


def _cardiac_parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml"), str(CONFIGS / "planned.yaml"), str(CONFIGS / "cardiac.yaml")])
    for key, value in overrides.items():
        parser[key] = value
    return parser


@pytest.mark.slow  # long in-process training
def test_cardiac_training_samples_2d_slices_with_foreground_first(tmp_path):
    set_determinism(seed=0)
    case = _write_case(tmp_path, "a", with_label=True)
    parser = _cardiac_parser()
    transform = parser.get_parsed_content("train#preprocessing")
    item = {"image": [case["c0"], case["lge"], case["t2"]], "label": case["label"]}
    with_foreground = 0
    draws = 0
    for _ in range(30):
        for sample in transform(item):  # slices_per_volume samples per volume
            assert sample["image"].shape == (3, 96, 96) and sample["label"].shape == (1, 96, 96)
            with_foreground += bool(sample["label"].max() > 0)
            draws += 1
    assert draws == 60
    # 1 slice in 6 has foreground: uniform slice sampling would give ~17% foreground slices; the
    # sampler centres 3 patches in 4 on foreground
    assert with_foreground / draws > 0.6
    set_determinism(seed=None)


def test_cardiac_unlabeled_and_validation_preprocessing(tmp_path):
    case = _write_case(tmp_path, "u", with_label=False)
    labeled = _write_case(tmp_path, "v", with_label=True)
    parser = _cardiac_parser()
    unlabeled = parser.get_parsed_content("train#unlabeled_preprocessing")
    samples = unlabeled({"image": [case["c0"], case["lge"], case["t2"]]})
    assert len(samples) == 2 and all(s["image"].shape == (3, 96, 96) for s in samples)
    validate = parser.get_parsed_content("validate#preprocessing")
    volume = validate({"image": [labeled["c0"], labeled["lge"], labeled["t2"]], "label": labeled["label"]})
    # 200 x 0.75 mm resampled to 1.5 mm (100 px), padded to the 192 mm field of view (128 px); slices kept
    assert volume["image"].shape == (3, 128, 128, 6) and volume["label"].shape == (1, 128, 128, 6)
    spacing = np.sqrt((volume["image"].affine.numpy()[:3, :3] ** 2).sum(0))
    np.testing.assert_allclose(spacing, [1.5, 1.5, 12.0])
    # each sequence normalised on its own
    means = volume["image"].reshape(3, -1).mean(1)
    assert torch.allclose(means, torch.zeros(3), atol=1e-4)
    assert set(torch.unique(volume["label"]).tolist()) == {0.0, 1.0, 2.0}
    inferer = parser.get_parsed_content("validate#inferer")
    net = torch.nn.Conv2d(3, 4, 3, padding=1)
    assert inferer(volume["image"][None], net).shape == (1, 4, 128, 128, 6)  # 2-D network on a volume


# ---------------------------------------------------------------------------------------------
# real data


@pytest.mark.skipif(not SHARED_MYOPS.is_dir(), reason=f"shared MyoPS data not found at {SHARED_MYOPS}")
def test_cardiac_train_and_evaluate_on_myops(tmp_path):
    spec = importlib.util.spec_from_file_location("prepare_datalist_tool", REPO_ROOT / "scripts" / "prepare_datalist.py")
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    datalist = tmp_path / "myops" / "datalist.json"
    prep.myops(str(SHARED_MYOPS), output=str(datalist), label_dir=str(tmp_path / "myops" / "labels"),
               num_validation=2, num_testing=2, labeled_fraction=0.2, seed=0)
    content = json.loads(datalist.read_text())
    # keep the run short: 2 unlabeled cases
    content["unlabeled"] = content["unlabeled"][:2]
    datalist.write_text(json.dumps(content))
    common = ["--datalist_file", str(datalist), "--ckpt_dir", str(tmp_path / "models")]
    run_bundle(["run", "--config_file", config_files("train.yaml", "planned.yaml", "cardiac.yaml"), *common,
                "--epochs", "1", "--iterations_per_epoch", "2", "--val_interval", "1",
                "--output_dir", str(tmp_path / "out")])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics["metrics"]["val_class_dice"]) == {"lv_myocardium", "lv_blood_pool", "rv_blood_pool"}
    run_bundle(["run", "--config_file", config_files("train.yaml", "planned.yaml", "cardiac.yaml", "evaluate.yaml"), *common,
                "--output_dir", str(tmp_path / "eval")])
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["num_cases"] == 2 and report["distance_unit"] == "mm"
    assert 0.0 <= report["summary"]["fused"]["dice"]["mean"] <= 1.0
    assert set(report["heads"]) == {"fused", "c0", "lge", "t2"}


# ---------------------------------------------------------------------------------------------
# volume inference


def _describe(transforms) -> list[tuple]:
    """Type and main arguments of each transform (keys aside: inference has no label)."""
    out = []
    for t in transforms:
        args = {}
        for name in ("pixdim", "lower", "upper", "b_min", "b_max", "clip", "channel_wise", "min_ratio", "thin_ratio", "schemes"):
            if hasattr(t, name):
                args[name] = getattr(t, name)
        for inner in ("spacing_transform", "cropper", "padder", "scaler"):
            obj = getattr(t, inner, None)
            for name in ("pixdim", "roi_size", "spatial_size", "lower", "upper", "clip", "channel_wise"):
                if obj is not None and hasattr(obj, name):
                    value = getattr(obj, name)
                    args[f"{inner}.{name}"] = value.tolist() if hasattr(value, "tolist") else value
        out.append((type(t).__name__, repr(args)))
    return out


def test_cardiac_inference_preprocessing_matches_training_validation():
    inference = ConfigParser()
    inference.read_config([str(CONFIGS / "inference.yaml"), str(CONFIGS / "planned_inference.yaml"), str(CONFIGS / "cardiac_inference.yaml")])
    validation = _cardiac_parser().get_parsed_content("validate#preprocessing").transforms
    infer = inference.get_parsed_content("preprocessing").transforms
    # both read one file per modality or one multi-channel file (validation also reads a label); what
    # follows the reading (everything after EnsureTyped) is the same
    def after_reading(transforms):
        names = [type(t).__name__ for t in transforms]
        return transforms[names.index("EnsureTyped") + 1 :]

    assert len(after_reading(validation)) >= 5
    assert _describe(after_reading(infer)) == _describe(after_reading(validation))
    for key in ("roi_size", "class_names", "modalities", "spatial_dims"):
        assert inference[key] == _cardiac_parser()[key], key
    assert type(inference.get_parsed_content("inferer")).__name__ == "SliceInferer"


def test_cardiac_inference_writes_each_volume_on_its_own_grid(tmp_path):
    case = _write_case(tmp_path, "vol", with_label=False)
    inference = ConfigParser()
    inference.read_config([str(CONFIGS / "inference.yaml"), str(CONFIGS / "planned_inference.yaml"), str(CONFIGS / "cardiac_inference.yaml")])
    (tmp_path / "models").mkdir()
    torch.save(inference.get_parsed_content("network_def").state_dict(), tmp_path / "models" / "model.pt")
    run_bundle(["run", "--config_file", config_files("inference.yaml", "planned_inference.yaml", "cardiac_inference.yaml"),
                "--image", json.dumps([case["c0"], case["lge"], case["t2"]]),
                "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "out")])
    seg = nib.load(str(tmp_path / "out" / "vol_seg.nii.gz"))
    source = nib.load(case["c0"])
    assert seg.shape == source.shape and np.allclose(seg.affine, source.affine)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 3}


def test_cardiac_misalignment_switch_moves_sequences_in_plane_only():
    off = _cardiac_parser().get_parsed_content("train#preprocessing").transforms
    assert "RandModalityMisalignd" not in [type(t).__name__ for t in off]
    on = _cardiac_parser(misalign_train="true", misalign_max_shift_mm=4.0, misalign_max_rotation_deg=7.0)
    for pipeline in ("train#preprocessing", "train#unlabeled_preprocessing"):
        transforms = on.get_parsed_content(pipeline).transforms
        names = [type(t).__name__ for t in transforms]
        index = names.index("RandModalityMisalignd")
        # on the volume, after intensity normalisation and before the slices are sampled
        assert names[index - 1] == "ModalityIntensityd" and names[index + 1].startswith("Rand")
        misalign = transforms[index]
        assert list(misalign.max_shift_mm) == [4.0, 4.0, 0.0]  # no shift across slices
        assert list(misalign.max_rotation_deg) == [0.0, 0.0, 7.0]  # rotation about the slice axis only
