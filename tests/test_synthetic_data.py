"""Tests of the embedded synthetic dataset generator (scripts.data.synthetic: dataset, anatomy, rendering)."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.data.synthetic import dataset as synthetic
from scripts.data.misalignment import rotation_matrix
from scripts.data.synthetic import SYNTHETIC_LABELS, generate_synthetic_dataset

SMALL = {"num_training": 6, "num_unlabeled": 2, "num_validation": 2, "num_testing": 2}


def _load(root: str | Path, rel: str) -> np.ndarray:
    return np.asarray(nib.load(os.path.join(root, rel)).dataobj)


def _datalist(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _labeled_cases(datalist: dict) -> list[dict]:
    return [case for split in ("training", "validation", "testing") for case in datalist[split]]


def _all_files(root: str | Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def dataset_2d(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("syn2d") / "data"
    path = generate_synthetic_dataset(str(root), spatial_dims=2, seed=3, **SMALL)
    return root, _datalist(path)


def test_layout_and_datalist(dataset_2d):
    root, datalist = dataset_2d
    assert datalist["modalities"] == ["t1", "t2", "flair"]
    assert datalist["labels"] == {"background": 0, "outer": 1, "wall": 2, "cavity": 3}
    expected_counts = {"training": 6, "unlabeled": 2, "validation": 2, "testing": 2}
    ids = []
    for split, count in expected_counts.items():
        assert len(datalist[split]) == count
        for case in datalist[split]:
            ids.append(case["case"])
            assert case["case"].startswith("syn_") and len(case["case"]) == 8
            for m in datalist["modalities"]:
                assert case[m] == f"{split}/{case['case']}_{m}.nii.gz"
                assert (root / case[m]).is_file()
            if split == "unlabeled":
                assert "label" not in case
                assert not (root / split / f"{case['case']}_label.nii.gz").exists()
            else:
                assert case["label"] == f"{split}/{case['case']}_label.nii.gz"
                assert (root / case["label"]).is_file()
    assert len(ids) == len(set(ids)), "case ids must be unique across splits"
    manifest = json.loads((root / "synthetic.json").read_text())
    assert manifest["parameters"]["image_size"] == 64
    assert manifest["parameters"]["seed"] == 3


def test_nifti_content_2d(dataset_2d):
    root, datalist = dataset_2d
    for case in _labeled_cases(datalist):
        label_img = nib.load(root / case["label"])
        label = np.asarray(label_img.dataobj)
        assert label.dtype == np.uint8 and label.shape == (64, 64)
        assert set(np.unique(label)) <= set(SYNTHETIC_LABELS.values())
        assert {1, 2, 3} <= set(np.unique(label).tolist()), f"{case['case']} misses a foreground class"
        assert np.allclose(label_img.header.get_zooms()[:2], 1.0)
        for m in datalist["modalities"]:
            img = nib.load(root / case[m])
            assert img.get_data_dtype() == np.float32
            assert img.shape == (64, 64)
            assert np.allclose(img.affine, label_img.affine)
            assert np.isfinite(np.asarray(img.dataobj)).all()


def test_shapes_vary_between_cases(dataset_2d):
    root, datalist = dataset_2d
    labels = [_load(root, case["label"]) for case in datalist["training"]]
    areas = {tuple(np.bincount(lab.ravel(), minlength=4)[1:]) for lab in labels}
    assert len(areas) == len(labels)
    for a, b in itertools.combinations(labels, 2):
        assert not np.array_equal(a, b)


def test_3d_shapes_and_default_size(tmp_path):
    path = generate_synthetic_dataset(
        str(tmp_path / "d3"), spatial_dims=3, num_training=1, num_unlabeled=0, num_validation=0, num_testing=0
    )
    datalist = _datalist(path)
    case = datalist["training"][0]
    label = _load(tmp_path / "d3", case["label"])
    assert label.shape == (40, 40, 40)
    assert {0, 1, 2, 3} == set(np.unique(label).tolist())
    img = nib.load(tmp_path / "d3" / case["t1"])
    assert img.shape == (40, 40, 40) and img.get_data_dtype() == np.float32
    assert np.allclose(img.header.get_zooms(), 1.0)


def test_default_2d_size(tmp_path):
    path = generate_synthetic_dataset(
        str(tmp_path / "d2"), num_training=1, num_unlabeled=0, num_validation=0, num_testing=0
    )
    case = _datalist(path)["training"][0]
    assert _load(tmp_path / "d2", case["flair"]).shape == (64, 64)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_determinism(tmp_path, spatial_dims):
    kwargs = dict(
        spatial_dims=spatial_dims, image_size=24, num_training=2, num_unlabeled=1, num_validation=1, num_testing=0
    )
    a = generate_synthetic_dataset(str(tmp_path / "a"), seed=5, **kwargs)
    b = generate_synthetic_dataset(str(tmp_path / "b"), seed=5, **kwargs)
    c = generate_synthetic_dataset(str(tmp_path / "c"), seed=6, **kwargs)
    files_a = [p.relative_to(tmp_path / "a") for p in _all_files(tmp_path / "a") if p.suffix == ".gz"]
    assert files_a == [p.relative_to(tmp_path / "b") for p in _all_files(tmp_path / "b") if p.suffix == ".gz"]
    assert _datalist(a) == _datalist(b)
    differs = False
    for rel in files_a:
        arr_a, arr_b, arr_c = (_load(tmp_path / d, str(rel)) for d in ("a", "b", "c"))
        assert np.array_equal(arr_a, arr_b), f"{rel} differs for the same seed"
        differs = differs or not np.array_equal(arr_a, arr_c)
    assert differs, "a different seed must give different data"
    assert _datalist(a) == _datalist(c), "the file layout does not depend on the seed"


def test_cached_second_call_does_not_rewrite(tmp_path):
    root = tmp_path / "cache"
    kwargs = dict(image_size=24, num_training=2, num_unlabeled=1, num_validation=1, num_testing=1)
    first = generate_synthetic_dataset(str(root), **kwargs)
    past = 1_000_000_000
    files = _all_files(root)
    for p in files:
        os.utime(p, ns=(past, past))
    second = generate_synthetic_dataset(str(root), **kwargs)
    assert first == second == str(root / "datalist.json")
    assert _all_files(root) == files
    assert all(p.stat().st_mtime_ns == past for p in files), "a cached dataset must not be rewritten"


def test_mismatched_parameters_raise(tmp_path):
    root = tmp_path / "mismatch"
    kwargs = dict(image_size=24, num_training=2, num_unlabeled=0, num_validation=0, num_testing=0)
    generate_synthetic_dataset(str(root), seed=0, **kwargs)
    before = {p: p.read_bytes() for p in _all_files(root)}
    with pytest.raises(FileExistsError, match=r"different parameters(.|\n)*seed: existing 0, requested 1(.|\n)*Delete"):
        generate_synthetic_dataset(str(root), seed=1, **kwargs)
    with pytest.raises(FileExistsError, match="modalities"):
        generate_synthetic_dataset(str(root), modalities=("t1", "t2"), **kwargs)
    assert {p: p.read_bytes() for p in _all_files(root)} == before


def test_existing_folders(tmp_path):
    kwargs = dict(image_size=24, num_training=1, num_unlabeled=0, num_validation=0, num_testing=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert os.path.isfile(generate_synthetic_dataset(str(empty), **kwargs))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        generate_synthetic_dataset(str(foreign), **kwargs)
    assert (foreign / "notes.txt").read_text() == "keep me"
    incomplete = tmp_path / "incomplete"
    generate_synthetic_dataset(str(incomplete), **kwargs)
    (incomplete / "datalist.json").unlink()
    with pytest.raises(FileExistsError, match="incomplete"):
        generate_synthetic_dataset(str(incomplete), **kwargs)


def test_interrupted_generation_leaves_no_dataset(tmp_path, monkeypatch):
    kwargs = dict(image_size=24, num_training=3, num_unlabeled=0, num_validation=0, num_testing=0)
    original = synthetic._save_nifti
    calls = {"n": 0}

    def failing_save(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt("simulated kill")
        original(*args, **kw)

    monkeypatch.setattr(synthetic, "_save_nifti", failing_save)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == [], "the partial folder must be cleaned up"
    monkeypatch.setattr(synthetic, "_save_nifti", original)
    assert os.path.isfile(generate_synthetic_dataset(str(tmp_path / "out"), **kwargs))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"modalities": ("t1",)}, "at least 2 modalities"),
        ({"modalities": "t1t2"}, "sequence of modality names"),
        ({"modalities": ("t1", "t1")}, "unique"),
        ({"modalities": ("t1", "label")}, "reserved"),
        ({"modalities": ("t1", "a/b")}, "invalid modality name"),
        ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3"),
        ({"num_training": 0}, "num_training"),
        ({"num_testing": -1}, "num_testing"),
        ({"misalignment_mm": -1.0}, "misalignment_mm"),
        ({"image_size": 8}, "image_size"),
        ({"seed": -3}, "seed"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_synthetic_dataset(str(tmp_path / "x"), **kwargs)
    assert not (tmp_path / "x").exists()


def _class_means(root: Path, datalist: dict) -> dict[str, np.ndarray]:
    """Mean intensity of every class per modality, pooled over the labeled cases."""
    sums = {m: np.zeros(4) for m in datalist["modalities"]}
    counts = np.zeros(4)
    for case in _labeled_cases(datalist):
        label = _load(root, case["label"]).astype(int)
        counts += np.bincount(label.ravel(), minlength=4)
        for m in datalist["modalities"]:
            sums[m] += np.bincount(label.ravel(), weights=_load(root, case[m]).ravel(), minlength=4)
    return {m: s / counts for m, s in sums.items()}


@pytest.mark.parametrize(
    "modalities",
    [("t1", "t2"), ("t1", "t2", "flair"), ("t1", "t2", "flair", "pd"), ("a", "b", "c", "d", "e", "f", "g")],
)
def test_each_modality_has_an_ambiguous_pair_resolved_by_another(tmp_path, modalities):
    root = tmp_path / "contrast"
    path = generate_synthetic_dataset(
        str(root), modalities=modalities, num_training=4, num_unlabeled=0, num_validation=0, num_testing=0
    )
    datalist = _datalist(path)
    assert datalist["modalities"] == list(modalities)
    means = _class_means(root, datalist)
    ranges = {m: means[m].max() - means[m].min() for m in modalities}
    pairs = list(itertools.combinations((1, 2, 3), 2))
    for m in modalities:
        ambiguous = [p for p in pairs if abs(means[m][p[0]] - means[m][p[1]]) < 0.1 * ranges[m]]
        assert ambiguous, f"modality {m}: every foreground pair is separable (means {means[m]})"
        for a, b in ambiguous:
            separated_by = [o for o in modalities if o != m and abs(means[o][a] - means[o][b]) > 0.25 * ranges[o]]
            assert separated_by, f"modality {m}: pair ({a}, {b}) is ambiguous in every modality"
    # the modalities really differ from one another
    for m, o in itertools.combinations(modalities, 2):
        assert not np.allclose(means[m], means[o], atol=0.05)


def _residual(image: np.ndarray, label: np.ndarray) -> float:
    """Sum of squared deviations of ``image`` from its per-class means under ``label``."""
    label = label.astype(int).ravel()
    values = image.ravel().astype(np.float64)
    counts = np.maximum(np.bincount(label, minlength=4), 1)
    means = np.bincount(label, weights=values, minlength=4) / counts
    return float(((values - means[label]) ** 2).sum())


def test_misalignment(tmp_path):
    kwargs = dict(image_size=64, num_training=3, num_unlabeled=1, num_validation=1, num_testing=0, seed=11)
    aligned_root, moved_root = tmp_path / "aligned", tmp_path / "moved"
    aligned = _datalist(generate_synthetic_dataset(str(aligned_root), **kwargs))
    moved = _datalist(generate_synthetic_dataset(str(moved_root), misalignment_mm=3.0, **kwargs))
    assert "label" not in moved["unlabeled"][0]
    for case_a, case_m in zip(_labeled_cases(aligned), _labeled_cases(moved), strict=True):
        cid = case_m["case"]
        split = case_m["label"]["t1"].split("/")[0]
        assert case_m["label"] == {m: f"{split}/{cid}_label_{m}.nii.gz" for m in ("t1", "t2", "flair")}
        reference = _load(aligned_root, case_a["label"])
        # the reference modality and the common-grid label do not move
        assert np.array_equal(_load(moved_root, case_m["label"]["t1"]), reference)
        assert np.array_equal(_load(moved_root, case_m["t1"]), _load(aligned_root, case_a["t1"]))
        ref_centroid = np.argwhere(reference > 0).mean(0)
        for m in ("t2", "flair"):
            own = _load(moved_root, case_m["label"][m])
            assert not np.array_equal(own, reference), f"{cid}: {m} label did not move"
            assert np.array_equal(np.bincount(own.ravel(), minlength=4) > 0, [True] * 4)
            shift = np.linalg.norm(np.argwhere(own > 0).mean(0) - ref_centroid)
            assert 0.5 <= shift <= 4.0, f"{cid}: {m} moved by {shift:.2f} mm for misalignment_mm=3"
            # the moved image is explained by its own label better than by the reference label
            image = _load(moved_root, case_m[m])
            assert _residual(image, own) < _residual(image, reference)


def _training_cases_only(folder: Path, num_training: int, **options) -> str:
    """A synthetic dataset of ``num_training`` training cases and no other split."""
    return generate_synthetic_dataset(
        str(folder), num_training=num_training, num_unlabeled=0, num_validation=0, num_testing=0, **options
    )


def test_misalignment_3d(tmp_path):
    path = _training_cases_only(tmp_path / "m3", 1, spatial_dims=3, image_size=24, misalignment_mm=2.0)
    case = _datalist(path)["training"][0]
    labels = {m: _load(tmp_path / "m3", p) for m, p in case["label"].items()}
    assert all(lab.shape == (24, 24, 24) for lab in labels.values())
    assert not np.array_equal(labels["t1"], labels["t2"])


# Label voxel counts per modality and image means of two misaligned cases: the documented results and
# the thresholds of other tests depend on these exact data. A deliberate change of the draws bumps
# synthetic.GENERATOR_VERSION and updates these values.
_PINNED = json.loads((Path(__file__).parent / "data" / "pinned_synthetic.json").read_text())


@pytest.mark.parametrize("spatial_dims, image_size", [(2, 32), (3, 20)])
def test_generated_data_is_pinned(tmp_path, spatial_dims, image_size):
    assert synthetic.GENERATOR_VERSION == 2
    path = _training_cases_only(
        tmp_path / "pin", 2, spatial_dims=spatial_dims, image_size=image_size, misalignment_mm=2.0, seed=1
    )
    for case in _datalist(path)["training"]:
        pinned = _PINNED[str(spatial_dims)][case["case"]]
        counts, means = pinned["label_voxel_counts"], pinned["image_means"]
        for m, rel in case["label"].items():
            assert np.bincount(_load(tmp_path / "pin", rel).ravel(), minlength=4).tolist() == counts[m], (case, m)
        for m, mean in means.items():
            image = _load(tmp_path / "pin", case[m]).astype(np.float64)
            assert image.mean() == pytest.approx(mean, abs=2e-6), (case["case"], m)


def test_2d_misalignment_rotation_matches_the_generated_data():
    """The 2-D misalignment rotation is ``rotation_matrix``; the datasets generated so far used the
    cosine and sine of ``np.deg2rad(angle)``, which it has to match bit for bit."""
    for angle in np.random.default_rng(0).uniform(-3.0, 3.0, 2000):
        radians = np.deg2rad(float(angle))
        expected = np.array([[np.cos(radians), -np.sin(radians)], [np.sin(radians), np.cos(radians)]])
        assert np.array_equal(rotation_matrix(float(angle), 2), expected), angle
