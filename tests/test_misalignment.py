"""Misalignment transforms (scripts.data.misalignment), the train.yaml switch and the benchmark CLI."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle_runner import CONFIGS, REPO_ROOT, TINY_SYNTHETIC, run_bundle, tiny_train_args
from scripts.data.misalignment import (
    ModalityMisalignd,
    ModalityMotion,
    RandModalityMisalignd,
    move_channel,
    rotation_matrix,
)

SPACING_2D = (2.0, 0.5)  # mm: axis 0 coarse, axis 1 fine


def _affine(spacing) -> torch.Tensor:
    """A 4x4 NIfTI-like affine (as LoadImage gives for 2-D files too)."""
    return torch.diag(torch.tensor([*spacing, *[1.0] * (4 - len(spacing))], dtype=torch.float64))


def _square_case(spacing=SPACING_2D, shape=(40, 48), channels=3, label_channels=1) -> dict:
    """Every modality: a bright square at rows 10:18, columns 12:20 (plus a per-channel texture)."""
    image = torch.zeros(channels, *shape)
    image[:, 10:18, 12:20] = 1.0
    image = image * torch.arange(1, channels + 1).view(-1, 1, 1)  # channels differ
    mask = (image[:1] > 0).float()
    return {
        "image": MetaTensor(image, affine=_affine(spacing)),
        "label": MetaTensor(mask.repeat(label_channels, 1, 1), affine=_affine(spacing)),
    }


def _centroid(a: torch.Tensor) -> np.ndarray:
    a = np.asarray(torch.as_tensor(a), dtype=np.float64).clip(min=0)
    grids = np.meshgrid(*[np.arange(n) for n in a.shape], indexing="ij")
    return np.array([(g * a).sum() / a.sum() for g in grids])


def _blob(shape, spacing, centre_vox, sigma_mm=3.0) -> torch.Tensor:
    """A Gaussian blob, isotropic in millimetres, on an anisotropic grid."""
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre_vox, spacing))
    return torch.as_tensor(np.exp(-r2 / (2 * sigma_mm**2)), dtype=torch.float32)


# ---------------------------------------------------------------- fixed misalignment
def test_shift_in_mm_respects_spacing_and_leaves_the_rest_untouched():
    case = _square_case()
    original = {k: v.clone() for k, v in case.items()}
    # 4 mm along axis 0 (2 mm voxels) = 2 voxels; 1.5 mm along axis 1 (0.5 mm voxels) = 3 voxels
    out = ModalityMisalignd(keys="image", shift_mm=[4.0, 1.5], modalities=[1])(case)
    image = out["image"]
    assert isinstance(image, MetaTensor) and torch.equal(image.affine, original["image"].affine)
    np.testing.assert_allclose(_centroid(image[1]) - _centroid(original["image"][1]), [2.0, 3.0], atol=1e-4)
    expected = torch.zeros_like(original["image"][1])
    expected[12:20, 15:23] = 2.0
    torch.testing.assert_close(image[1].as_tensor(), expected, atol=1e-5, rtol=0)
    # the other modalities and the single-channel label: bit-identical
    assert torch.equal(image[0].as_tensor(), original["image"][0].as_tensor())
    assert torch.equal(image[2].as_tensor(), original["image"][2].as_tensor())
    assert torch.equal(out["label"].as_tensor(), original["label"].as_tensor())
    # a scalar shift goes along shift_axis; the default moves every modality but 0
    out = ModalityMisalignd(keys="image", shift_mm=1.0, shift_axis=1)(_square_case())
    for m in (1, 2):
        np.testing.assert_allclose(_centroid(out["image"][m]) - _centroid(original["image"][m]), [0.0, 2.0], atol=1e-4)
    assert torch.equal(out["image"][0].as_tensor(), original["image"][0].as_tensor())


@pytest.mark.parametrize("angle", [90.0, 10.0, -25.0])
def test_rotation_is_rigid_in_mm_about_the_image_centre(angle):
    shape, spacing = (41, 41), (1.0, 2.0)
    centre = np.array([20.0, 20.0])
    point = np.array([30.0, 20.0])  # 10 mm from the centre along axis 0
    image = torch.stack([_blob(shape, spacing, point), _blob(shape, spacing, point)])
    case = {"image": MetaTensor(image, affine=_affine(spacing))}
    out = ModalityMisalignd(keys="image", label_keys=None, rotation_deg=angle)(case)
    moved_mm = rotation_matrix(angle, 2) @ ((point - centre) * spacing)
    expected = centre + moved_mm / np.array(spacing)
    np.testing.assert_allclose(_centroid(out["image"][1]), expected, atol=0.1)
    assert torch.equal(out["image"][0].as_tensor(), image[0])
    if angle == 90.0:  # axis 0 turns towards axis 1: 10 mm along axis 1 is 5 voxels of 2 mm
        np.testing.assert_allclose(_centroid(out["image"][1]), [20.0, 25.0], atol=0.1)


def test_per_modality_labels_move_with_their_modality():
    case = _square_case(label_channels=3)
    label = case["label"].clone()
    out = ModalityMisalignd(keys="image", shift_mm=[6.0, -2.0])(case)  # (+3, -4) voxels for modalities 1, 2
    assert torch.equal(out["label"][0].as_tensor(), label[0].as_tensor())
    for m in (1, 2):
        assert set(out["label"][m].unique().tolist()) == {0.0, 1.0}  # nearest: still a label map
        assert torch.equal(out["label"][m].as_tensor(), (out["image"][m] > 0.5).float().as_tensor())
        np.testing.assert_allclose(_centroid(out["label"][m]) - _centroid(label[m]), [3.0, -4.0], atol=1e-6)
    # a rotated modality keeps its label on it as well
    out = ModalityMisalignd(keys="image", rotation_deg=30.0, modalities=[2])(_square_case(label_channels=3))
    np.testing.assert_allclose(_centroid(out["label"][2]), _centroid(out["image"][2]), atol=0.35)


def test_three_dimensional_images():
    spacing = (1.5, 1.5, 3.0)
    shape = (20, 24, 16)
    image = torch.stack([_blob(shape, spacing, (10, 12, 8)), _blob(shape, spacing, (10, 12, 8))])
    label = MetaTensor((image > 0.5).float(), affine=_affine(spacing))
    case = {"image": MetaTensor(image, affine=_affine(spacing)), "label": label}
    out = ModalityMisalignd(keys="image", shift_mm=[3.0, 0.0, 6.0])(case)  # (2, 0, 2) voxels
    np.testing.assert_allclose(_centroid(out["image"][1]) - _centroid(image[1]), [2.0, 0.0, 2.0], atol=1e-3)
    # the label has one channel per modality here: channel 1 moves with modality 1, channel 0 stays
    assert torch.equal(out["label"][0].as_tensor(), label[0].as_tensor())
    np.testing.assert_allclose(_centroid(out["label"][1]) - _centroid(label[1]), [2.0, 0.0, 2.0], atol=1e-6)
    single = ModalityMisalignd(keys="image", shift_mm=[3.0, 0.0, 6.0])({"image": case["image"], "label": label[:1]})
    assert torch.equal(single["label"].as_tensor(), label[:1].as_tensor())
    # a single angle turns in the plane of axes (0, 1) about the grid centre (9.5, 11.5, 7.5): the content
    # stays on its slices; 4.5 voxels (6.75 mm) along axis 0 become 4.5 voxels along axis 1
    blob = torch.stack([_blob(shape, spacing, (14.0, 11.5, 5.0))] * 2)
    off_centre = {"image": MetaTensor(blob, affine=_affine(spacing))}
    out = ModalityMisalignd(keys="image", label_keys=None, rotation_deg=90.0)(dict(off_centre))
    np.testing.assert_allclose(_centroid(out["image"][1]), [9.5, 16.0, 5.0], atol=0.1)
    # three angles (about axes 0, 1, 2), then the shift (3 mm = 2 voxels along axis 0)
    out = ModalityMisalignd(keys="image", label_keys=None, shift_mm=3.0, rotation_deg=[0.0, 0.0, 90.0])(dict(off_centre))
    np.testing.assert_allclose(_centroid(out["image"][1]), [11.5, 16.0, 5.0], atol=0.1)
    # about axis 0 (axis 1 towards axis 2): (0, -7.5 mm) from the centre in the (1, 2) plane becomes (7.5 mm, 0)
    out = ModalityMisalignd(keys="image", label_keys=None, rotation_deg=[90.0, 0.0, 0.0])(dict(off_centre))
    np.testing.assert_allclose(_centroid(out["image"][1]), [14.0, 16.5, 7.5], atol=0.1)
    rand = RandModalityMisalignd(keys="image", prob=1.0, max_shift_mm=[3, 3, 0], max_rotation_deg=[0, 0, 10], elastic_mm=1.0)
    rand.set_random_state(0)
    out = rand({"image": case["image"].clone(), "label": label.clone()})
    assert out["image"].shape == image.shape and out["label"].shape == (2, *shape)
    assert torch.equal(out["image"].affine, case["image"].affine)
    assert rand.motions[1].shift_mm[2] == 0.0


# ---------------------------------------------------------------- random misalignment
def _rand(seed: int, **kwargs) -> RandModalityMisalignd:
    args = dict(keys="image", prob=1.0, max_shift_mm=5.0, max_rotation_deg=10.0, elastic_mm=1.0)
    return RandModalityMisalignd(**{**args, **kwargs}).set_random_state(seed)


def test_random_misalignment_is_seeded_and_independent_per_modality():
    a = _rand(42)(_square_case())
    b = _rand(42)(_square_case())
    c = _rand(43)(_square_case())
    assert torch.equal(a["image"].as_tensor(), b["image"].as_tensor())
    assert not torch.equal(a["image"].as_tensor(), c["image"].as_tensor())
    original = _square_case()
    assert torch.equal(a["image"][0].as_tensor(), original["image"][0].as_tensor())
    assert torch.equal(a["label"].as_tensor(), original["label"].as_tensor())
    t = _rand(7)
    t(_square_case())
    assert set(t.motions) == {1, 2}
    assert not np.allclose(t.motions[1].shift_mm, t.motions[2].shift_mm)
    for motion in t.motions.values():
        assert np.all(np.abs(motion.shift_mm) <= 5.0)
        angle = math.degrees(math.atan2(motion.rotation[1, 0], motion.rotation[0, 0]))
        assert abs(angle) <= 10.0
        assert np.abs(motion.displacement_mm).max() <= 1.0 + 1e-9


def test_displacement_moves_the_content_after_the_rigid_motion():
    shape, spacing = (41, 45), np.array([1.0, 2.0])
    blob = _blob(shape, spacing, (28.0, 22.0))
    rotation = rotation_matrix(30.0, 2)
    # a uniform field is a shift applied after the rotation (at the content's new position)
    uniform = np.broadcast_to(np.array([3.0, -4.0])[:, None, None], (2, *shape)).copy()
    moved = move_channel(blob, spacing, ModalityMotion(rotation, np.zeros(2), uniform), "bilinear")
    shifted = move_channel(blob, spacing, ModalityMotion(rotation, np.array([3.0, -4.0])), "bilinear")
    torch.testing.assert_close(moved, shifted, atol=1e-4, rtol=0)
    # a field that varies: every output voxel y shows the input at y - displacement(y)
    rand = _rand(5, max_shift_mm=0.0, max_rotation_deg=0.0, elastic_mm=2.0, modalities=[1])
    out = rand({"image": MetaTensor(torch.stack([blob, blob]), affine=_affine(spacing))})
    field_vox = rand.motions[1].displacement_mm / spacing.reshape(2, 1, 1)
    assert np.abs(field_vox).max() > 0.5  # a displacement large enough for its direction to show
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r2 = sum(((g - f - c) * s) ** 2 for g, f, c, s in zip(grids, field_vox, (28.0, 22.0), spacing, strict=True))
    expected = torch.as_tensor(np.exp(-r2 / (2 * 3.0**2)), dtype=torch.float32)
    torch.testing.assert_close(out["image"][1].as_tensor(), expected, atol=0.08, rtol=0)  # bilinear error < 0.06


def test_random_shift_is_in_mm_and_prob_zero_changes_nothing():
    t = _rand(3, max_rotation_deg=0.0, elastic_mm=0.0, modalities=[2])
    case = _square_case(shape=(60, 80))
    before = _centroid(case["image"][2])
    out = t(case)
    expected = t.motions[2].shift_mm / np.array(SPACING_2D)
    np.testing.assert_allclose(_centroid(out["image"][2]) - before, expected, atol=0.02)
    case = _square_case()
    out = _rand(0, prob=0.0)(case)
    assert out["image"] is case["image"] and out["label"] is case["label"]
    out = _rand(0)({"image": _square_case()["image"]})  # an unlabeled case
    assert set(out) == {"image"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prob": 1.5}, "prob"),
        ({"max_shift_mm": -1.0}, "max_shift_mm"),
        ({"max_shift_mm": float("nan")}, "max_shift_mm"),
        ({"max_rotation_deg": 200.0}, "180"),
        ({"max_rotation_deg": [1.0, 2.0]}, "max_rotation_deg"),
        ({"elastic_mm": -0.5}, "elastic_mm"),
        ({"elastic_control_points": 1}, "elastic_control_points"),
        ({"modalities": [0, 1]}, "reference"),
        ({"modalities": [1, 1]}, "distinct"),
        ({"modalities": [-1]}, "modalities"),
        ({"reference_modality": "t1"}, "reference_modality"),
        ({"mode": "bicubic"}, "mode"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandModalityMisalignd(keys="image", **kwargs)


@pytest.mark.parametrize(
    "transform, case, match",
    [
        (ModalityMisalignd(keys="image", shift_mm=1.0, modalities=[5]), _square_case(), "do not exist"),
        (ModalityMisalignd(keys="image", shift_mm=[1.0, 2.0, 3.0]), _square_case(), "spatial axes"),
        (ModalityMisalignd(keys="image", shift_mm=1.0, shift_axis=2), _square_case(), "shift_axis"),
        (ModalityMisalignd(keys="image", rotation_deg=[1.0, 2.0, 3.0]), _square_case(), "one angle"),
        (ModalityMisalignd(keys="image", shift_mm=1.0), _square_case(label_channels=2), "1 channel"),
        (ModalityMisalignd(keys="image", shift_mm=1.0), {"image": torch.zeros(3, 8)}, "channel-first"),
        (RandModalityMisalignd(keys="image", max_shift_mm=[1.0, 2.0, 3.0]), _square_case(), "spatial axes"),
    ],
)
def test_arguments_that_do_not_fit_the_image_raise_value_errors(transform, case, match):
    with pytest.raises(ValueError, match=match):
        transform(case)


def test_fixed_transform_argument_checks():
    with pytest.raises(ValueError, match="shift_mm"):
        ModalityMisalignd(keys="image", shift_mm="five")
    with pytest.raises(ValueError, match="rotation_deg"):
        ModalityMisalignd(keys="image", rotation_deg=float("inf"))
    with pytest.raises(ValueError, match="shift_axis"):
        ModalityMisalignd(keys="image", shift_axis=3)


# ---------------------------------------------------------------- train.yaml switch
def _train_preprocessing(**overrides) -> list[str]:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    for key, value in overrides.items():
        parser[key] = value
    compose = parser.get_parsed_content("train#preprocessing")
    return list(compose.transforms)


def test_train_yaml_switch():
    names = [type(t).__name__ for t in _train_preprocessing()]
    assert "RandModalityMisalignd" not in names  # off by default: the pipeline is unchanged
    transforms = _train_preprocessing(misalign_train="true", misalign_prob=0.3, misalign_max_shift_mm=4.0)
    names = [type(t).__name__ for t in transforms]
    i = names.index("RandModalityMisalignd")
    assert names.index("NormalizeIntensityd") < i < names.index("RandSpatialCropd")
    t = transforms[i]
    assert t.prob == 0.3 and t.max_shift_mm == (4.0,) and t.max_rotation_deg == (5.0,)
    assert "RandModalityMisalignd" not in [type(t).__name__ for t in _train_preprocessing(misalign_train="false")]


# ---------------------------------------------------------------- benchmark
def _benchmark_module():
    spec = importlib.util.spec_from_file_location("misalignment_benchmark", REPO_ROOT / "scripts" / "misalignment_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_trained_with_misalignment(tmp_path_factory) -> Path:
    """`train.yaml --misalign_train true` (every non-reference modality moved in every case), tiny."""
    tmp = tmp_path_factory.mktemp("misaligned_training")
    run_bundle(tiny_train_args(tmp) + ["--misalign_train", "true", "--misalign_prob", "1.0", "--misalign_elastic_mm", "1.0"])
    assert (tmp / "models" / "model.pt").is_file()
    return tmp


def test_benchmark_inserts_after_normalisation():
    from monai.bundle import ConfigParser

    mb = _benchmark_module()
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")])
    misalign = ModalityMisalignd(keys="image", shift_mm=5.0)
    names = [type(t).__name__ for t in mb.with_misalignment(parser.get_parsed_content("validate#preprocessing"), misalign).transforms]
    assert names[names.index("NormalizeIntensityd") + 1] == "ModalityMisalignd"
    if (CONFIGS / "cardiac.yaml").is_file():  # volumes: after the percentile scaling and the normalisation
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / n) for n in ("train.yaml", "planned.yaml", "cardiac.yaml", "evaluate.yaml")])
        preprocessing = mb.with_misalignment(parser.get_parsed_content("validate#preprocessing"), misalign)
        assert [type(t).__name__ for t in preprocessing.transforms][-2:] == ["ModalityIntensityd", "ModalityMisalignd"]
    levels = mb.misalignment_levels([0, 2, 5], [0, 10])
    assert [lv["name"] for lv in levels] == ["aligned", "shift_2mm", "shift_5mm", "rotation_10deg"]
    levels = mb.misalignment_levels([0], [0], drop_sequences=[2, 0])
    assert [(lv["name"], lv["dropped"]) for lv in levels] == [("aligned", []), ("without_2", [2]), ("without_0", [0])]
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        mb.parse_methods([{"name": "a", "configs": ["train.yaml"], "checkpoint": "/nonexistent/model.pt"}])
    with pytest.raises(ValueError, match="name"):
        mb.parse_methods([{"name": "a b", "configs": ["train.yaml"], "checkpoint": __file__}])


def test_benchmark_smoke(model_trained_with_misalignment, tmp_path):
    mb = _benchmark_module()
    tiny = model_trained_with_misalignment
    checkpoint = str(tiny / "models" / "model.pt")
    methods = [
        {"name": "cmc", "configs": ["train.yaml"], "checkpoint": checkpoint},
        {"name": "supervised", "configs": ["train.yaml", "supervised.yaml"], "checkpoint": checkpoint},
    ]
    out = tmp_path / "bench"
    mb.main(
        methods, output_dir=str(out), shifts=[0, 5], rotations=[10], eval_split="testing", drop_sequences=[1],
        synthetic_dir=str(tiny / "data"), synthetic=TINY_SYNTHETIC, roi_size=[32, 32],
    )
    table = (out / "misalignment_benchmark.md").read_text()
    for text in ("| cmc |", "| supervised |", "aligned", "shift 5 mm", "rotation 10°", "Dice drop at 5 mm",
                 "without sequence 1"):
        assert text in table
    results = json.loads((out / "misalignment_benchmark.json").read_text())
    for method in ("cmc", "supervised"):
        row = results["fused_mean_dice"][method]
        assert set(row) == {"aligned", "shift_5mm", "rotation_10deg", "without_1"}
        assert all(0.0 <= v <= 1.0 for v in row.values())
        assert results["dice_drop"][method] == pytest.approx(row["aligned"] - row["shift_5mm"])
        assert (out / "runs" / method / "shift_5mm" / "metrics.json").is_file()
    import matplotlib.pyplot as plt

    assert plt.imread(out / "misalignment_benchmark.png").ndim == 3
    with pytest.raises(FileExistsError):  # never writes over an input
        mb.main([{"name": "x", "configs": ["train.yaml"], "checkpoint": str(out / "runs" / "cmc" / "aligned" / "metrics.json")}],
                output_dir=str(out))


def test_voxel_spacing_of_an_oblique_slice_counts_every_world_axis():
    from monai.data import MetaTensor

    from scripts.data.misalignment import voxel_spacing_of

    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, 0] = torch.tensor([0.6, 0.0, 0.8]) * 2.0  # first in-plane axis tilted out of the x-y plane, 2 mm
    affine[:3, 1] = torch.tensor([0.0, 1.5, 0.0])
    img = MetaTensor(torch.zeros(1, 4, 5), affine=affine)
    np.testing.assert_allclose(voxel_spacing_of(img, 2), [2.0, 1.5])  # not 1.2 (x and y components only)
