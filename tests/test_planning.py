"""The dataset planner (scripts/plan.py, scripts/planning/): each rule on hand-made fingerprints, the
written plan, the per-modality intensity transform, and 2-iteration runs of planned configurations
on a stack dataset and on a 3-D one."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from bundle_runner import CONFIGS, REPO_ROOT, config_files, run_bundle

from planning import dataset_fingerprint, plan_from_fingerprint, plan_yaml  # the tools' folder: conftest.py
from planning.rules import DEVICES

from scripts.data.intensity import ModalityIntensityd  # noqa: E402
from scripts.data.slice_axis import SliceAxisLastd, thin_axis  # noqa: E402


def _mr(mean=100.0, std=30.0, dtype="float32"):
    return {"dtype": dtype, "p00_5": 0.0, "p99_5": mean + 3 * std, "mean": mean, "std": std,
            "fg_p00_5": mean - std, "fg_p99_5": mean + 2 * std, "fg_mean": mean + 10, "fg_std": std / 2}


def _case(shape, spacing, halfwidth=None, slice_share=None, class_share=None, labeled=True, ras=None):
    return {"case": f"c{shape}", "labeled": labeled, "shape": list(shape), "spacing": list(spacing),
            "ras_shape": list(ras[0] if ras else shape), "ras_spacing": list(ras[1] if ras else spacing),
            "fg_halfwidth_mm": halfwidth, "fg_slice_share": slice_share, "class_share": class_share or {"1": 0.05}}


def _fingerprint(cases, modalities=("t1", "t2"), intensity=None, num_classes=2):
    return {"modalities": list(modalities), "num_classes": num_classes, "cases": cases,
            "intensity": intensity or {m: _mr() for m in modalities}}


def _reasons(plan):
    return {keys[0]: reason for keys, reason in plan.decisions}


# ---------------------------------------------------------------------------------------------
# geometry


def test_thick_slice_stacks_are_planned_2d_at_the_median_in_plane_spacing():
    # cardiac-like: 0.75 mm in-plane, 12 mm slices; slice axis stored first in one case (oblique stack)
    cases = [_case((400, 400, 5), (0.75, 0.75, 12.0), [50, 60, 30], [1, 1, 0.8], {"1": 0.01, "2": 0.005}),
             _case((8, 480, 480), (10.0, 0.7, 0.7), [40, 55, 58], [0.75, 1, 1]),
             _case((420, 420, 6), (0.8, 0.8, 14.0), [55, 50, 40], [1, 1, 1])]
    plan = plan_from_fingerprint(_fingerprint(cases), "cpu")
    ids = plan.ids
    assert ids["spatial_dims"] == 2 and ids["image_spatial_dims"] == 3
    assert "thin_slice_ratio" not in ids  # the spacing marks the slice axis
    assert ids["pixdim"][0] == ids["pixdim"][1]
    # the foreground lies within 60 mm of the centre: a crop of 2 * (60 * 1.1 + 8) = 148 -> 152 mm (multiple of 8)
    assert ids["crop_fov_mm"] == [152.0, 152.0]
    # 152 mm at the median 0.75 mm is 203 px > 128: the spacing is coarsened to fit (152/128 = 1.19 mm, < 2x)
    assert ids["pixdim"] == [pytest.approx(152 / 128, abs=1e-4)] * 2
    assert ids["roi_size"] == [128, 128]
    assert "anisotropy" in _reasons(plan)["spatial_dims"] and "coarsened" in _reasons(plan)["pixdim"]


def test_coarsening_is_limited_and_the_rest_slides():
    cases = [_case((600, 600, 5), (0.5, 0.5, 10.0), [140, 140, 10], [1, 1, 1])]
    ids = plan_from_fingerprint(_fingerprint(cases), "cpu").ids
    # 2 * (140 * 1.1 + 8) = 324 -> 328 mm; 328 / 128 = 2.56 mm > 2 x 0.5: at most 1.0 mm, and the ROI stays 128
    assert ids["pixdim"] == [1.0, 1.0] and ids["roi_size"] == [128, 128]


def test_thin_stacks_with_isotropic_headers_are_planned_2d_by_shape():
    # LGG-like: 128 x 128 slices, 20-60 of them, nominal 1 mm everywhere; abnormality anywhere
    cases = [_case((128, 128, n), (1.0, 1.0, 1.0), [60, 58, 10], [0.6, 0.5, 0.3]) for n in (20, 36, 60)]
    plan = plan_from_fingerprint(_fingerprint(cases), "cpu")
    ids = plan.ids
    assert ids["spatial_dims"] == 2 and ids["thin_slice_ratio"] == 0.5
    assert ids["pixdim"] == [1.0, 1.0] and ids["crop_fov_mm"] is None and ids["roi_size"] == [128, 128]
    assert ids["batch_size"] * ids["samples_per_volume"] * 128 * 128 <= DEVICES["cpu"].batch_voxels_2d
    assert ids["unet_channels"] == [16, 32, 64, 128, 256]
    assert ids["epochs"] * ids["iterations_per_epoch"] == 2000
    # 30% of slices hold foreground: two in three labeled patches centred on it
    assert (ids["foreground_pos"], ids["foreground_neg"]) == (2, 1)
    assert "few slices" in _reasons(plan)["spatial_dims"]


def test_isotropic_volumes_are_planned_3d_within_the_cpu_budget():
    ras = ((240, 240, 155), (1.0, 1.0, 1.0))
    cases = [_case((240, 240, 155), (1.0, 1.0, 1.0), [60, 70, 40], [0.3, 0.3, 0.3], ras=ras) for _ in range(3)]
    plan = plan_from_fingerprint(_fingerprint(cases), "cpu")
    ids = plan.ids
    assert ids["spatial_dims"] == 3 and ids["pixdim"] == [1.0, 1.0, 1.0]
    roi = ids["roi_size"]
    assert roi[0] == roi[1] and all(r % 16 == 0 for r in roi)
    assert int(np.prod(roi)) <= DEVICES["cpu"].batch_voxels_3d // 2
    assert ids["batch_size"] == 2 and ids["samples_per_volume"] == 1
    assert roi == [48, 48, 48] and ids["unet_channels"] == [16, 32, 64, 128]  # 48 -> 6 at the bottom (>= 4)
    minutes = float(_reasons(plan)["epochs"].split("takes about ")[1].split(" min")[0])
    assert minutes <= DEVICES["cpu"].minutes_3d
    gpu = plan_from_fingerprint(_fingerprint(cases), "gpu").ids
    assert int(np.prod(gpu["roi_size"])) > int(np.prod(roi)) and gpu["unet_channels"][0] == 32


def test_the_budget_counts_the_handling_of_large_volumes():
    # the same 48^3 ROI and batch; one dataset of small volumes, one of large ones (foreground everywhere: no crop)
    def planned(shape):
        ras = (shape, (1.0, 1.0, 1.0))
        cases = [_case(shape, (1.0, 1.0, 1.0), [100, 100, 90], [0.3, 0.3, 0.3], ras=ras) for _ in range(3)]  # no crop
        return plan_from_fingerprint(_fingerprint(cases), "cpu")

    small, large = planned((64, 64, 64)), planned((320, 320, 200))
    assert small.ids["roi_size"] == large.ids["roi_size"] == [48, 48, 48]
    seconds = {}
    for name, plan in (("small", small), ("large", large)):
        reason = _reasons(plan)["epochs"]
        seconds[name] = float(reason.split("estimated at ")[1].split(" s")[0])
        minutes = float(reason.split("takes about ")[1].split(" min")[0])
        assert minutes <= DEVICES["cpu"].minutes_3d + 0.5  # the budget holds for both
    # 2 labeled and 2 unlabeled volumes of 320 x 320 x 200 voxels are copied (and the labeled searched) each iteration
    cost = DEVICES["cpu"].volume_s_per_voxel
    assert 4 * 320 * 320 * 200 * cost > 0.1
    assert seconds["large"] - seconds["small"] == pytest.approx(4 * (320 * 320 * 200 - 64 ** 3) * cost, abs=0.011)
    assert "copy and sample 4 volumes of 20 M voxels" in _reasons(large)["epochs"]
    # the large volumes' iterations are cut to keep the run within the budget
    iterations = {n: p.ids["epochs"] * p.ids["iterations_per_epoch"] for n, p in (("small", small), ("large", large))}
    assert iterations["small"] == 2000 and iterations["large"] < 2000


def _zero_padded(nonzero, outside=0, shape=(240, 240, 155)):
    ras = (shape, (1.0, 1.0, 1.0))
    return [dict(_case(shape, (1.0, 1.0, 1.0), [100, 100, 70], [0.2, 0.2, 0.2], ras=ras), case=f"p{i}",
                 content_ras_shape=list(nonzero), fg_outside_content=outside if i == 1 else 0) for i in range(3)]


def test_zero_padded_volumes_are_cropped_to_their_content():
    # a skull-stripped brain: its content fills 140 x 170 x 140 of 240 x 240 x 155 voxels (37%)
    cropped = plan_from_fingerprint(_fingerprint(_zero_padded((140, 170, 140))), "cpu")
    assert cropped.ids["crop_to_content"] is True and cropped.ids["crop_fov_mm"] is None
    assert "37% of the image" in _reasons(cropped)["crop_to_content"]
    # the time a drawn volume costs is that of the box: 4 volumes of 140 x 170 x 140 instead of 240 x 240 x 155
    whole = plan_from_fingerprint(_fingerprint(_zero_padded((240, 240, 155))), "cpu")
    assert whole.ids["crop_to_content"] is False and "fills 100% of an image" in _reasons(whole)["crop_to_content"]
    seconds = {n: float(_reasons(p)["epochs"].split("estimated at ")[1].split(" s")[0]) for n, p in (("c", cropped), ("w", whole))}
    cost = DEVICES["cpu"].volume_s_per_voxel
    assert seconds["w"] - seconds["c"] == pytest.approx(4 * (240 * 240 * 155 - 140 * 170 * 140) * cost, abs=0.011)
    assert cropped.ids["epochs"] > whole.ids["epochs"]
    # labeled voxels outside a case's content box: no crop, and the case is named
    cut = plan_from_fingerprint(_fingerprint(_zero_padded((140, 170, 140), outside=12)), "cpu")
    assert cut.ids["crop_to_content"] is False and "p1" in _reasons(cut)["crop_to_content"]
    # 2-D plans are not cropped
    stacks = [dict(_case((128, 128, 12), (1.0, 1.0, 8.0), [60, 58, 40], [0.6, 0.5, 0.3]), content_ras_shape=[60, 60, 12])]
    assert plan_from_fingerprint(_fingerprint(stacks), "cpu").ids["crop_to_content"] is False


def test_content_extent_from_hand_made_images(tmp_path):
    from planning.fingerprint import content_extent

    from scripts.data.image_content import above_background

    a = np.zeros((20, 10, 6), np.float32)  # zero background (skull-stripped)
    a[3:9, 2:5, 1:4] = 1.0
    b = np.full((20, 10, 6), -3.6, np.float32)  # a z-scored export: its background is its minimum, not zero
    b[12, 7, 2] = 0.5
    missing = np.zeros((20, 10, 6), np.float32)  # constant: no content
    label = np.zeros((20, 10, 6), np.uint8)
    label[4, 3, 2] = 1
    label[15, 1, 5] = 1  # outside the box of a and b (rows 3..12, columns 2..7, slices 1..3)
    for name, data in (("a", a), ("b", b), ("m", missing), ("l", label)):
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    files = [str(tmp_path / f"{n}.nii.gz") for n in ("a", "m", "b")]
    assert content_extent(files, str(tmp_path / "l.nii.gz")) == {"content_shape": [10, 6, 3], "fg_outside_content": 1}
    assert content_extent(files[:1]) == {"content_shape": [6, 3, 3]}
    assert content_extent(files[1:2]) == {"content_shape": [20, 10, 6]}  # nothing above the background: the whole image
    # the transform's mask is the same, per channel, for arrays and tensors
    stacked = np.stack([a, missing, b])
    mask = above_background(stacked)
    assert mask.shape == stacked.shape and mask[0].sum() == 54 and not mask[1].any() and mask[2].sum() == 1
    assert torch.equal(above_background(torch.from_numpy(stacked)), torch.from_numpy(mask))


def test_ct_intensities_get_a_foreground_window():
    ct = {"dtype": "int16", "p00_5": -1024.0, "p99_5": 1500.0, "mean": -400.0, "std": 500.0,
          "fg_p00_5": -50.0, "fg_p99_5": 250.0, "fg_mean": 80.0, "fg_std": 60.0}
    cases = [_case((64, 64, 64), (1.0, 1.0, 1.0), [20, 20, 20], [0.5, 0.5, 0.5])]
    schemes = plan_from_fingerprint(_fingerprint(cases, ("ct", "mr"), {"ct": ct, "mr": _mr()}), "cpu").ids["intensity_schemes"]
    assert schemes[0] == {"scheme": "window", "low": -50.0, "high": 250.0, "mean": 80.0, "std": 60.0}
    assert schemes[1]["scheme"] == "zscore"
    # recognised by its values too, whatever its name
    named = plan_from_fingerprint(_fingerprint(cases, ("a", "b"), {"a": ct, "b": _mr()}), "cpu").ids["intensity_schemes"]
    assert named[0]["scheme"] == "window" and named[0]["low"] == -50.0


def test_uint8_data_keeps_its_scale():
    cases = [_case((64, 64, 64), (1.0, 1.0, 1.0), [20, 20, 20], [0.5, 0.5, 0.5])]
    us = _mr(mean=40.0, std=20.0, dtype="uint8")
    schemes = plan_from_fingerprint(_fingerprint(cases, ("us", "mr"), {"us": us, "mr": _mr()}), "cpu").ids["intensity_schemes"]
    assert schemes[0] == {"scheme": "window", "low": 0.0, "high": 255.0, "mean": 40.0, "std": 20.0}
    assert schemes[1] == {"scheme": "zscore", "lower": 1.0, "upper": 99.0}


def test_tiny_foreground_classes_get_three_in_four_foreground_patches():
    big = [_case((64, 64, 64), (1.0, 1.0, 1.0), [20, 20, 20], [0.9, 0.9, 0.9], {"1": 0.2})]
    ids = plan_from_fingerprint(_fingerprint(big), "cpu").ids
    assert (ids["foreground_pos"], ids["foreground_neg"]) == (1, 2)  # foreground everywhere: nnU-Net's one in three
    tiny = [_case((64, 64, 64), (1.0, 1.0, 1.0), [20, 20, 20], [0.9, 0.9, 0.9], {"1": 0.2, "2": 0.0002})]
    plan = plan_from_fingerprint(_fingerprint(tiny, num_classes=3), "cpu")
    assert (plan.ids["foreground_pos"], plan.ids["foreground_neg"]) == (3, 1)
    assert "smallest class" in _reasons(plan)["foreground_pos"]
    assert plan.ids["class_names"] == ["class_1", "class_2"]


def test_class_visibility_against_pairwise_counting():
    from planning.fingerprint import class_visibility

    rng = np.random.default_rng(0)
    label = np.zeros((12, 12, 3), dtype=np.uint8)
    label[4:8, 4:8, 1] = 1
    shows = np.where(label > 0, 100.0, 10.0) + rng.normal(0, 1, label.shape)      # never overlaps its ring
    hides = rng.normal(50, 5, label.shape)                                           # class like its ring
    dark = np.where(label > 0, 5.0, 60.0)                                           # darker: shown all the same
    partial = rng.integers(0, 4, label.shape).astype(float) + 2.0 * label            # overlapping, with ties
    scores = class_visibility([shows, hides, None, dark, partial], label, spacing=(1.0, 1.0, 5.0), ring_mm=2.0)
    assert list(scores) == ["1"]
    s = scores["1"]
    assert s[0] == 1.0 and s[3] == 1.0 and s[2] is None and s[1] < 0.5
    # the ring: every voxel within 2 mm of the class in 3-D with 5 mm slices, i.e. in-plane only
    fg = label > 0
    ring = np.zeros_like(fg)
    for i, j in zip(*np.nonzero(fg[:, :, 1])):
        for di in range(-2, 3):
            for dj in range(-2, 3):
                if di * di + dj * dj <= 4:
                    ring[i + di, j + dj, 1] = True
    ring &= ~fg
    for image, score in ((hides, s[1]), (partial, s[4])):
        a, b = image[fg], image[ring]
        auc = ((a[:, None] > b[None, :]).sum() + 0.5 * (a[:, None] == b[None, :]).sum()) / (a.size * b.size)
        assert score == pytest.approx(abs(2 * auc - 1), abs=1e-4)


def _visible(scores):
    case = _case((128, 128, 20), (1.0, 1.0, 1.0), [40, 40, 8], [0.5, 0.5, 0.4])
    return dict(case, visibility={"1": scores})


def test_a_sequence_that_alone_shows_a_class_is_never_dropped(tmp_path):
    cases = [_visible([0.21, 0.84, 0.32]), _visible([0.25, 0.80, 0.35]), _visible([0.1, 0.9, 0.3])]
    plan = plan_from_fingerprint(_fingerprint(cases, modalities=("pre", "flair", "post")))
    assert plan.ids["strong_sequences_kept"] == ["flair"]
    assert "only flair shows it" in _reasons(plan)["strong_sequences_kept"]
    # the written plan reaches the strong views of a weak-to-strong run
    path = tmp_path / "plan.yaml"
    path.write_text(plan_yaml(plan, "d.json", "cpu"))
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in ("train.yaml", "planned.yaml", "unet.yaml", "weak_strong.yaml")] + [str(path)])
    assert parser.get_parsed_content("strong_view").sequence_dropout.kept == [1]
    # a second sequence at half the clearest's separation shows the class too: nothing is kept
    cases = [_visible([0.21, 0.84, 0.45]), _visible([0.25, 0.80, 0.42]), _visible([0.1, 0.9, 0.5])]
    plan = plan_from_fingerprint(_fingerprint(cases, modalities=("pre", "flair", "post")))
    assert plan.ids["strong_sequences_kept"] == []
    assert "flair, post show it" in _reasons(plan)["strong_sequences_kept"]
    # a class no sequence shows decides nothing; one-sequence cases (own grids) give no visibility
    plan = plan_from_fingerprint(_fingerprint([_visible([0.05, 0.02, 0.01])], modalities=("pre", "flair", "post")))
    assert plan.ids["strong_sequences_kept"] == [] and "no sequence shows it" in _reasons(plan)["strong_sequences_kept"]
    plan = plan_from_fingerprint(_fingerprint([_case((128, 128, 20), (1.0, 1.0, 1.0))]))
    assert plan.ids["strong_sequences_kept"] == [] and "own grids" in _reasons(plan)["strong_sequences_kept"]


def test_class_names_are_the_datalists_declared_labels():
    cases = [_case((64, 64, 64), (1.0, 1.0, 1.0), [20, 20, 20], [0.9, 0.9, 0.9], {"1": 0.2, "2": 0.01})]
    declared = dict(_fingerprint(cases, num_classes=3), class_names=["myocardium", "blood_pool"])
    plan = plan_from_fingerprint(declared, "cpu")
    assert plan.ids["class_names"] == ["myocardium", "blood_pool"]
    assert "declared labels" in _reasons(plan)["class_names"]
    # a declared class absent from the labeled cases keeps its name (the label space is the datalist's)
    plan = plan_from_fingerprint(dict(declared, class_names=["a", "b", "c"]), "cpu")
    assert plan.ids["class_names"] == ["a", "b", "c"] and "hold classes 1..2" in _reasons(plan)["class_names"]
    # fewer names than the labels hold: the labels win, named by their values
    plan = plan_from_fingerprint(dict(declared, class_names=["a"]), "cpu")
    assert plan.ids["class_names"] == ["class_1", "class_2"] and "declares 1" in _reasons(plan)["class_names"]


def test_same_fingerprint_same_plan_and_a_loadable_file(tmp_path):
    cases = [_case((128, 128, n), (1.0, 1.0, 1.0), [60, 58, 10], [0.6, 0.5, 0.3]) for n in (20, 36, 60)]
    first = plan_yaml(plan_from_fingerprint(_fingerprint(cases), "cpu"), "/d/datalist.json", "cpu")
    second = plan_yaml(plan_from_fingerprint(_fingerprint(cases), "cpu"), "/d/datalist.json", "cpu")
    assert first == second
    ids = yaml.safe_load(first)
    assert ids == plan_from_fingerprint(_fingerprint(cases), "cpu").ids
    # every decision's reason is a comment right above its id
    lines = first.splitlines()
    assert lines[lines.index("spatial_dims: 2") - 1].startswith("#")


def test_bad_device_and_empty_fingerprint():
    with pytest.raises(ValueError, match="device"):
        plan_from_fingerprint(_fingerprint([_case((8, 8, 8), (1, 1, 1))]), "tpu")
    with pytest.raises(ValueError, match="no cases"):
        plan_from_fingerprint(_fingerprint([]), "cpu")


# ---------------------------------------------------------------------------------------------
# transforms the plan drives


def test_modality_intensity_applies_each_scheme_to_its_channel():
    rng = np.random.default_rng(0)
    mr = rng.normal(300.0, 50.0, size=(16, 16, 4))
    mr[0, 0, 0] = 5000.0  # an outlier the percentile clip removes
    ct = rng.uniform(-1000.0, 1000.0, size=(16, 16, 4))
    image = MetaTensor(torch.tensor(np.stack([mr, ct]), dtype=torch.float32), affine=torch.diag(torch.tensor([2.0, 2.0, 5.0, 1.0])))
    out = ModalityIntensityd("image", [{"scheme": "zscore", "lower": 1, "upper": 99},
                                       {"scheme": "window", "low": -100, "high": 300, "mean": 50, "std": 100}])({"image": image})["image"]
    lo, hi = np.percentile(mr, [1, 99])
    expected_mr = np.clip(mr, lo, hi)
    expected_mr = (expected_mr - expected_mr.mean()) / expected_mr.std()
    np.testing.assert_allclose(out[0].numpy(), expected_mr, atol=1e-4)
    np.testing.assert_allclose(out[1].numpy(), (np.clip(ct, -100, 300) - 50) / 100, atol=1e-5)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, image.affine)
    with pytest.raises(ValueError, match="2 channels but 1"):
        ModalityIntensityd("image", [{"scheme": "zscore", "lower": 1, "upper": 99}])({"image": image})
    with pytest.raises(ValueError, match="lacks"):
        ModalityIntensityd("image", [{"scheme": "window", "low": 0}])


def test_thin_axis_and_slice_axis_last_for_isotropic_headers():
    assert thin_axis((128, 128, 30)) == 2 and thin_axis((30, 128, 128)) == 0
    assert thin_axis((128, 128, 100)) is None  # not a thin stack
    image = MetaTensor(torch.rand(1, 20, 64, 64), affine=torch.eye(4))
    assert SliceAxisLastd("image")({"image": image})["image"].shape == (1, 20, 64, 64)  # off by default
    moved = SliceAxisLastd("image", thin_ratio=0.5)({"image": image})["image"]
    assert moved.shape == (1, 64, 64, 20)


# ---------------------------------------------------------------------------------------------
# written plans, end to end


def _write_dataset(folder: Path, shape, spacing, n_cases=6, modalities=("t1", "flair"), dtype=np.float32, zero_border=0) -> Path:
    rng = np.random.default_rng(1)
    affine = np.diag(list(spacing) + [1.0])
    cases = []
    for i in range(n_cases):
        case = {"case": f"p{i}"}
        label = np.zeros(shape, dtype=np.uint8)
        centre = [s // 2 for s in shape]
        label[centre[0] - 4 : centre[0] + 4, centre[1] - 5 : centre[1] + 3, max(0, centre[2] - 3) : centre[2] + 2] = 1
        for m, name in enumerate(modalities):
            img = np.clip(rng.normal(60.0 + 10 * m, 10.0, size=shape) + 40.0 * label, 1, 255)
            if zero_border:  # zero-padded, as skull-stripped volumes are
                inner = np.zeros(shape, dtype=bool)
                inner[tuple(slice(zero_border, s - zero_border) for s in shape)] = True
                img[~inner] = 0
            path = folder / f"p{i}_{name}.nii.gz"
            nib.save(nib.Nifti1Image(np.clip(img, 0, 255).astype(dtype), affine), str(path))
            case[name] = path.name
        nib.save(nib.Nifti1Image(label, affine), str(folder / f"p{i}_seg.nii.gz"))
        case["label"] = f"p{i}_seg.nii.gz"
        cases.append(case)
    datalist = {"modalities": list(modalities), "training": cases[:3], "unlabeled": [{k: v for k, v in cases[3].items() if k != "label"}],
                "validation": [cases[4]], "testing": [cases[5]]}
    path = folder / "datalist.json"
    path.write_text(json.dumps(datalist))
    return path


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plan_tool():
    return _load_tool("plan")


@pytest.mark.parametrize("geometry", ["stack", "volume"])
def test_planned_run_trains_evaluates_and_infers(tmp_path, geometry):
    shape, spacing = ((48, 48, 10), (1.0, 1.0, 1.0)) if geometry == "stack" else ((40, 40, 36), (1.5, 1.5, 1.5))
    # the volumes are zero-padded (4 voxels each side): the plan crops them to their content, and
    # inference must pad the prediction back onto the input's grid
    datalist = _write_dataset(tmp_path, shape, spacing, dtype=np.uint8 if geometry == "stack" else np.float32,
                              zero_border=0 if geometry == "stack" else 4)
    plan = tmp_path / "plan.yaml"
    _plan_tool().main(str(datalist), output=str(plan), device="cpu")
    ids = yaml.safe_load(plan.read_text())
    assert ids["spatial_dims"] == (2 if geometry == "stack" else 3)
    assert ids["crop_to_content"] is (geometry == "volume")
    with pytest.raises(SystemExit, match="exists"):
        _plan_tool().main(str(datalist), output=str(plan), device="cpu")  # never overwritten silently
    stack = ["train.yaml", "planned.yaml", "unet.yaml", "weak_strong.yaml"]
    common = ["--datalist_file", str(datalist), "--ckpt_dir", str(tmp_path / "run")]
    if geometry == "stack":  # the one-command path: plan_and_train.py reuses the written plan and trains
        tool = _load_tool("plan_and_train")
        assert tool.stacks(str(plan))[0] == [str(CONFIGS / c) for c in stack] + [str(plan)]
        assert tool.main(str(datalist), str(tmp_path / "run"), plan=str(plan), epochs=1, iterations_per_epoch=2, val_interval=1) == 0
    else:
        run_bundle(["run", "--config_file", json.dumps([str(CONFIGS / c) for c in stack] + [str(plan)]), *common,
                    "--epochs", "1", "--iterations_per_epoch", "2", "--val_interval", "1",
                    "--output_dir", str(tmp_path / "run")])
    assert (tmp_path / "run" / "model.pt").is_file()
    run_bundle(["run", "--config_file", json.dumps([str(CONFIGS / c) for c in stack] + [str(plan), str(CONFIGS / "evaluate.yaml")]),
                *common, "--output_dir", str(tmp_path / "eval")])
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["num_cases"] == 1
    # inference with the run's own preprocessing, on the input's grid
    source = json.loads(datalist.read_text())["testing"][0]
    run_bundle(["run", "--config_file",
                json.dumps([str(CONFIGS / c) for c in ("inference.yaml", "planned_inference.yaml", "unet.yaml")] + [str(plan)]),
                "--image", json.dumps([str(tmp_path / source["t1"]), str(tmp_path / source["flair"])]),
                "--ckpt_dir", str(tmp_path / "run"), "--output_dir", str(tmp_path / "seg")])
    seg = nib.load(str(tmp_path / "seg" / "p5_seg.nii.gz"))
    ref = nib.load(str(tmp_path / source["t1"]))
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    if geometry == "volume":  # padded back: the zero border outside the cropped box is background
        inner = np.zeros(seg.shape, dtype=bool)
        inner[4:-4, 4:-4, 4:-4] = True
        assert np.asarray(seg.dataobj)[~inner].max() == 0 and np.asarray(seg.dataobj)[inner].max() == 1


@pytest.mark.parametrize("geometry", ["stack", "zero-padded volume"])
def test_planned_inference_preprocessing_matches_training_validation(tmp_path, geometry):
    if geometry == "stack":
        cases = [_case((128, 128, n), (1.0, 1.0, 1.0), [60, 58, 10], [0.6, 0.5, 0.3]) for n in (20, 36, 60)]
    else:
        cases = _zero_padded((140, 170, 140))
    planned = plan_from_fingerprint(_fingerprint(cases), "cpu")
    assert planned.ids["crop_to_content"] is (geometry != "stack")
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_yaml(planned, "d.json", "cpu"))
    train, infer = ConfigParser(), ConfigParser()
    train.read_config([str(CONFIGS / c) for c in ("train.yaml", "planned.yaml", "unet.yaml")] + [str(plan)])
    infer.read_config([str(CONFIGS / c) for c in ("inference.yaml", "planned_inference.yaml", "unet.yaml")] + [str(plan)])

    def after_reading(parser, key):
        transforms = parser.get_parsed_content(key).transforms
        names = [type(t).__name__ for t in transforms]
        return [(type(t).__name__, repr({k: getattr(t, k) for k in ("thin_ratio", "schemes", "min_ratio") if hasattr(t, k)}))
                for t in transforms[names.index("EnsureTyped") + 1 :]]

    steps = after_reading(infer, "preprocessing")
    assert steps == after_reading(train, "validate#preprocessing")
    assert (steps[0][0] == "CropForegroundd") is (geometry != "stack")
    if geometry != "stack":  # a command line's --crop_to_content false arrives as a string
        for parser, key in ((train, "validate#preprocessing"), (infer, "preprocessing")):
            parser.update({"crop_to_content": "false"})
            assert "CropForegroundd" not in [name for name, _ in after_reading(parser, key)]
    assert type(infer.get_parsed_content("inferer")).__name__ == type(train.get_parsed_content("validate#inferer")).__name__
    assert infer.get_parsed_content("network_def").state_dict().keys() == train.get_parsed_content("network_def").state_dict().keys()


LGG = REPO_ROOT.parent / "shared" / "data" / "lgg" / "labeled"


@pytest.mark.skipif(not LGG.is_dir(), reason=f"shared LGG data not found at {LGG}")
def test_fingerprint_of_real_lgg_stacks(tmp_path):
    patients = sorted(p.name for p in LGG.iterdir())[:4]
    cases = [{"case": p, **{m: str(LGG / p / f"{p}_{m}.nii.gz") for m in ("pre", "flair", "post", "seg")}} for p in patients]
    for c in cases:
        c["label"] = c.pop("seg")
    (tmp_path / "datalist.json").write_text(json.dumps({"modalities": ["pre", "flair", "post"], "training": cases}))
    fp = dataset_fingerprint(str(tmp_path / "datalist.json"))
    assert fp["num_classes"] == 2 and len(fp["cases"]) == 4
    assert all(fp["intensity"][m]["dtype"] == "uint8" for m in ("pre", "flair", "post"))
    ids = plan_from_fingerprint(fp, "cpu").ids
    assert ids["spatial_dims"] == 2 and ids["roi_size"] == [128, 128] and ids["pixdim"] == [1.0, 1.0]


def test_keep_largest_component_only_for_classes_that_are_one_structure():
    one = _case((64, 64, 64), (1.0, 1.0, 1.0), [20, 20, 20], [0.5, 0.5, 0.5], {"1": 0.01, "2": 0.01})
    one["largest_component_share"] = {"1": 1.0, "2": 0.55}  # class 2: scattered (e.g. lesions)
    other = dict(one, largest_component_share={"1": 0.95, "2": 0.6})
    plan = plan_from_fingerprint(_fingerprint([one, other], num_classes=3), "cpu")
    assert plan.ids["keep_largest_component"] == [1]
    scattered = dict(one, largest_component_share={"1": 0.5, "2": 0.5})
    assert plan_from_fingerprint(_fingerprint([scattered], num_classes=3), "cpu").ids["keep_largest_component"] is None


def test_label_geometry_from_a_hand_made_label(tmp_path):
    from planning.fingerprint import label_geometry

    label = np.zeros((20, 10, 4), dtype=np.uint8)
    label[2:4, 4:6, 1] = 1  # rows 2-3 of 20: centre 9.5, farthest |2 - 9.5| + 0.5 = 8 voxels
    label[15, 5, 1] = 1  # a second, single-voxel component of class 1
    label[10:12, 1:3, 2] = 2
    nib.save(nib.Nifti1Image(label, np.diag([2.0, 1.0, 5.0, 1.0])), str(tmp_path / "l.nii.gz"))
    geo = label_geometry(str(tmp_path / "l.nii.gz"), [2.0, 1.0, 5.0])
    assert geo["fg_halfwidth_mm"][0] == pytest.approx(8.0 * 2.0)
    assert geo["fg_slice_share"] == [pytest.approx(5 / 20), pytest.approx(4 / 10), pytest.approx(2 / 4)]
    assert geo["class_share"] == {"1": pytest.approx(5 / 800), "2": pytest.approx(4 / 800)}
    assert geo["largest_component_share"] == {"1": pytest.approx(4 / 5), "2": 1.0}


def test_plan_tool_reports_a_bad_datalist_last(tmp_path):
    import subprocess

    missing = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "plan.py"), str(tmp_path / "nope.json"),
                              "--output", str(tmp_path / "plan.yaml")], capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == f"plan.py: datalist file not found: {tmp_path / 'nope.json'}"
    (tmp_path / "d.json").write_text(json.dumps({"training": []}))
    bad = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "plan.py"), str(tmp_path / "d.json"),
                          "--output", str(tmp_path / "plan.yaml")], capture_output=True, text=True)
    assert bad.returncode == 1 and "no modalities" in bad.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "plan.yaml").exists()
