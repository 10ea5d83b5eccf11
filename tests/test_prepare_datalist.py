"""Tests of the dataset preparation tool scripts/prepare_datalist.py (tiny synthetic layouts)."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.data.datalist import load_datalist, select_labeled

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOL = REPO_ROOT / "scripts" / "prepare_datalist.py"
SHARED_MYOPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "myops"
SPLITS = ("training", "unlabeled", "validation", "testing")

_spec = importlib.util.spec_from_file_location("prepare_datalist_tool", TOOL)
prep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prep)

MYOPS_CODES = np.array([0, 200, 500, 600, 1220, 2221], dtype=np.int16)


def _nii(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 10.0, 1.0])), str(path))
    return path


def _image(shape=(8, 8, 2)) -> np.ndarray:
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def _myops_label() -> np.ndarray:
    label = np.zeros((8, 8, 2), dtype=np.int16)
    label.flat[: len(MYOPS_CODES)] = MYOPS_CODES  # one voxel of every MyoPS code
    return label


def _make_myops(root: Path, n_labeled: int = 10, n_unlabeled: int = 3) -> Path:
    for i in range(n_labeled):
        case = f"Case30{i:02d}"
        for seq in ("C0", "LGE", "T2"):
            _nii(root / "labeled" / case / f"{case}_{seq}.nii.gz", _image())
        _nii(root / "labeled" / case / f"{case}_gd.nii.gz", _myops_label())
    for i in range(n_unlabeled):
        case = f"Case40{i:02d}"
        for seq in ("C0", "LGE", "T2"):
            _nii(root / "unlabeled" / case / f"{case}_{seq}.nii.gz", _image())
    return root


def _ids(datalist: dict) -> dict[str, list[str]]:
    return {s: [c["case"] for c in datalist.get(s, [])] for s in SPLITS}


def _assert_disjoint(ids: dict[str, list[str]]) -> None:
    flat = [c for s in SPLITS for c in ids[s]]
    assert len(flat) == len(set(flat)), ids


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# MyoPS


def test_myops_default_mapping_splits_and_loads(tmp_path):
    data = _make_myops(tmp_path / "myops")
    gd = data / "labeled" / "Case3000" / "Case3000_gd.nii.gz"
    before = _sha(gd)
    out = tmp_path / "out" / "datalist.json"
    prep.myops(str(data), output=str(out), num_validation=2, num_testing=2, labeled_fraction=0.5, seed=0)

    content = json.loads(out.read_text())
    assert content["modalities"] == ["c0", "lge", "t2"]
    assert content["labels"] == {"background": 0, "lv_myocardium": 1, "lv_blood_pool": 2, "rv_blood_pool": 3}
    ids = _ids(content)
    assert len(ids["validation"]) == 2 and len(ids["testing"]) == 2
    assert len(ids["training"]) == 3  # round(0.5 * 6) of the 6 training cases stay labeled
    assert len(ids["unlabeled"]) == 3 + 3  # 3 moved without label + 3 from unlabeled/
    assert all("label" not in c for c in content["unlabeled"])
    _assert_disjoint(ids)
    expected = [f"Case30{i:02d}" for i in range(10)] + [f"Case40{i:02d}" for i in range(3)]
    assert sorted(c for s in SPLITS for c in ids[s]) == sorted(expected)

    # remapped labels: 200, 1220, 2221 -> 1, 500 -> 2, 600 -> 3; input untouched
    case = content["training"][0]
    label_file = out.parent / case["label"]
    assert label_file.parent == out.parent / "labels"
    remapped = np.asanyarray(nib.load(str(label_file)).dataobj)
    assert remapped.dtype == np.uint8
    assert remapped.flat[: len(MYOPS_CODES)].tolist() == [0, 1, 2, 3, 1, 1]
    np.testing.assert_allclose(nib.load(str(label_file)).affine, np.diag([0.7, 0.7, 10.0, 1.0]))
    assert _sha(gd) == before
    # only cases that keep a label get a label file
    written = sorted(p.name for p in (out.parent / "labels").iterdir())
    assert written == sorted(f"{c}_label.nii.gz" for s in ("training", "validation", "testing") for c in ids[s])

    loaded = load_datalist(str(out))
    assert len(loaded["training"]) == 3 and len(loaded["training"][0]["image"]) == 3


def test_myops_keep_pathology(tmp_path):
    data = _make_myops(tmp_path / "myops", n_labeled=4, n_unlabeled=0)
    out = tmp_path / "dl.json"
    prep.myops(str(data), output=str(out), keep_pathology=True, num_validation=1, num_testing=0)
    content = json.loads(out.read_text())
    assert content["labels"] == {
        "background": 0, "normal_myocardium": 1, "lv_blood_pool": 2, "rv_blood_pool": 3, "edema": 4, "scar": 5,
    }
    remapped = np.asanyarray(nib.load(str(out.parent / content["validation"][0]["label"])).dataobj)
    assert remapped.flat[: len(MYOPS_CODES)].tolist() == [0, 1, 2, 3, 4, 5]
    assert content["unlabeled"] == []
    load_datalist(str(out))


def test_myops_deterministic_by_seed(tmp_path):
    data = _make_myops(tmp_path / "myops")
    args = dict(num_validation=2, num_testing=2, labeled_fraction=0.5)
    a, b, c = (tmp_path / x / "datalist.json" for x in "abc")
    prep.myops(str(data), output=str(a), seed=3, **args)
    prep.myops(str(data), output=str(b), seed=3, **args)
    prep.myops(str(data), output=str(c), seed=4, **args)
    assert a.read_text() == b.read_text()
    for label in (a.parent / "labels").iterdir():
        assert _sha(label) == _sha(b.parent / "labels" / label.name)
    assert _ids(json.loads(a.read_text())) != _ids(json.loads(c.read_text()))


def test_myops_labeled_fraction_nested_and_matches_loader(tmp_path):
    data = _make_myops(tmp_path / "myops", n_labeled=12, n_unlabeled=0)
    full, small = tmp_path / "full" / "d.json", tmp_path / "small" / "d.json"
    prep.myops(str(data), output=str(full), num_validation=2, num_testing=0, seed=1)
    prep.myops(str(data), output=str(small), num_validation=2, num_testing=0, seed=1, labeled_fraction=0.3)
    kept = set(_ids(json.loads(small.read_text()))["training"])
    assert len(kept) == 3  # round(0.3 * 10)
    # the same rule as the bundle's loader: preparing with a fraction == loading with it
    via_loader = load_datalist(str(full), labeled_fraction=0.3, split_seed=1)
    assert kept == {c["case"] for c in via_loader["training"]}


def test_myops_missing_files_reported_together(tmp_path):
    data = _make_myops(tmp_path / "myops", n_labeled=4, n_unlabeled=2)
    (data / "labeled" / "Case3001" / "Case3001_C0.nii.gz").unlink()
    (data / "labeled" / "Case3002" / "Case3002_gd.nii.gz").unlink()
    (data / "unlabeled" / "Case4001" / "Case4001_LGE.nii.gz").unlink()
    out = tmp_path / "out" / "datalist.json"
    with pytest.raises(prep.PreparationError) as info:
        prep.myops(str(data), output=str(out), num_validation=1, num_testing=0)
    message = str(info.value)
    assert "3 problems" in message
    assert "Case3001_C0.nii.gz" in message and str(data / "labeled" / "Case3001") in message
    assert "Case3002_gd.nii.gz" in message and "label" in message
    assert "Case4001_LGE.nii.gz" in message and "unlabeled case 'Case4001'" in message
    assert not out.exists() and not (out.parent / "labels").exists()


def test_myops_unknown_label_code_reported(tmp_path):
    data = _make_myops(tmp_path / "myops", n_labeled=3, n_unlabeled=0)
    label = _myops_label()
    label[0, 0, 1] = 7
    _nii(data / "labeled" / "Case3002" / "Case3002_gd.nii.gz", label)
    with pytest.raises(prep.PreparationError, match=r"Case3002.*unknown codes \[7\]"):
        prep.myops(str(data), output=str(tmp_path / "d.json"), num_validation=1, num_testing=0)


def test_myops_refuses_overwrite_and_input_targets(tmp_path):
    data = _make_myops(tmp_path / "myops", n_labeled=4, n_unlabeled=0)
    out = tmp_path / "d.json"
    prep.myops(str(data), output=str(out), num_validation=1, num_testing=0)
    first = out.read_text()
    with pytest.raises(prep.PreparationError, match="already exists; pass --overwrite"):
        prep.myops(str(data), output=str(out), num_validation=1, num_testing=1)
    assert out.read_text() == first
    prep.myops(str(data), output=str(out), num_validation=1, num_testing=1, overwrite=True)
    assert len(json.loads(out.read_text())["testing"]) == 1
    # an output that is an input file is refused, even with --overwrite
    c0 = data / "labeled" / "Case3000" / "Case3000_C0.nii.gz"
    before = _sha(c0)
    with pytest.raises(prep.PreparationError, match="is one of the input files"):
        prep.myops(str(data), output=str(c0), num_validation=1, num_testing=0, overwrite=True)
    assert _sha(c0) == before


def test_split_arguments_validated(tmp_path):
    data = _make_myops(tmp_path / "myops", n_labeled=4, n_unlabeled=0)
    with pytest.raises(prep.PreparationError) as info:
        prep.myops(str(data), output=str(tmp_path / "d.json"), num_validation=1, validation_fraction=0.2,
                   num_testing=4, labeled_fraction=0)
    message = str(info.value)
    assert "not both" in message and "--labeled_fraction" in message and "no training case" in message


def test_an_external_test_set_puts_every_case_in_testing(tmp_path):
    data = _make_myops(tmp_path / "myops", n_labeled=4, n_unlabeled=0)
    path = prep.myops(str(data), output=str(tmp_path / "d.json"), num_validation=0, num_testing=4)
    datalist = json.loads(open(path).read())
    assert len(datalist["testing"]) == 4 and not datalist["training"] and not datalist["validation"]
    with pytest.raises(prep.PreparationError, match="no training case"):  # a validation case needs training cases
        prep.myops(str(data), output=str(tmp_path / "e.json"), num_validation=1, num_testing=3)


def test_split_cases_is_order_independent():
    ids = [f"c{i}" for i in range(20)]
    a = prep.split_cases(ids, 3, 4, seed=5)
    b = prep.split_cases(list(reversed(ids)), 3, 4, seed=5)
    assert a == b
    assert prep.split_cases(ids, 6, 4, seed=5)["testing"] == a["testing"]
    assert sorted(a["training"] + a["validation"] + a["testing"]) == sorted(ids)


def test_labeled_selection_is_the_loaders():
    assert prep.select_labeled is select_labeled  # one rule for preparing and loading with a fraction
    kept, moved = prep.select_labeled([f"c{i}" for i in range(10)], 0.25, seed=3)
    assert len(kept) == 3 and sorted(kept + moved) == sorted(f"c{i}" for i in range(10))  # round(2.5) == 3


def test_sub_commands_keep_their_command_line():
    """fire builds each sub-command's flags and --help from its signature and docstring."""
    shared = ["num_validation", "num_testing", "validation_fraction", "testing_fraction", "labeled_fraction",
              "seed", "overwrite", "absolute_paths"]
    folder = ["modalities", "label_map", "label_dir", "allow_unlabeled", "check_labels"]
    own = {
        "myops": ["label_dir", "keep_pathology", "modalities", "labeled_subdir", "unlabeled_subdir"],
        "brats2013": folder,
        "brats2021": folder,
        "msd": ["dataset_json", "include_test_images", "check_labels"],
        "amos": ["pairing", "mri_min_id", "include_test_images", "check_labels"],
        "folders": ["modalities", "own_grids", "label_suffix", "allow_missing_modalities", "allow_unlabeled",
                    "class_names", "check_labels"],
    }
    heading = {"myops": "MyoPS 2020", "brats2013": "BRATS 2013/2015", "brats2021": "BraTS 2021-2023",
               "msd": "Medical Segmentation Decathlon", "amos": "AMOS 2022", "folders": "Case folders"}
    # the dataset sub-commands, then `folds`, which reads a datalist instead of a dataset
    assert list(prep.COMMANDS) == [*own, "folds"]
    assert list(inspect.signature(prep.COMMANDS["folds"]).parameters) == ["datalist", "num_folds", "seed", "overwrite"]
    for name in own:
        command = prep.COMMANDS[name]
        parameters = inspect.signature(command).parameters
        assert list(parameters) == ["data_dir", "output", *own[name], *shared], name
        assert parameters["data_dir"].default is inspect.Parameter.empty
        assert parameters["output"].default is None and parameters["labeled_fraction"].default == 1.0
        assert command.__name__ == name and inspect.getdoc(command).startswith(heading[name])
    assert inspect.signature(prep.myops).parameters["modalities"].default == ("c0", "lge", "t2")
    assert inspect.signature(prep.amos).parameters["mri_min_id"].default == 500


def test_cli_runs_from_another_folder(tmp_path):
    data = _make_myops(tmp_path / "myops", n_labeled=4, n_unlabeled=1)
    out = tmp_path / "cli" / "datalist.json"
    cmd = [sys.executable, str(TOOL), "myops", "--data_dir", str(data), "--output", str(out),
           "--num_validation", "1", "--num_testing", "1", "--modalities", "[c0,lge]"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["modalities"] == ["c0", "lge"]
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.skipif(not SHARED_MYOPS.is_dir(), reason=f"real MyoPS data not found at {SHARED_MYOPS}")
def test_myops_on_shared_data(tmp_path):
    out = tmp_path / "datalist.json"
    prep.myops(str(SHARED_MYOPS), output=str(out), num_validation=5, num_testing=5, seed=0)
    content = json.loads(out.read_text())
    ids = _ids(content)
    assert len(ids["training"]) + len(ids["validation"]) + len(ids["testing"]) == 30
    assert len(ids["unlabeled"]) == 25
    _assert_disjoint(ids)
    label_file = out.parent / content["training"][0]["label"]
    assert label_file.parent == tmp_path / "labels"
    values = set(np.unique(np.asanyarray(nib.load(str(label_file)).dataobj)).tolist())
    assert values <= {0, 1, 2, 3} and {1, 2, 3} & values
    loaded = load_datalist(str(out))
    assert len(loaded["unlabeled"]) == 25


# ---------------------------------------------------------------------------------------------
# BraTS


def _make_brats2013(root: Path, n: int = 5, t2_in: int = 3) -> Path:
    for i in range(n):
        folder = root / f"brats_2013_pat{i:04d}_1"
        _nii(folder / "Flair_subtrMeanDivStd.nii.gz", _image())
        _nii(folder / "T1c_subtrMeanDivStd.nii.gz", _image())
        _nii(folder / "brainmask.nii.gz", np.ones((8, 8, 2), np.uint8))
        if i < t2_in:
            _nii(folder / "T2_subtrMeanDivStd.nii.gz", _image())
        _nii(folder / "OTMultiClass.nii.gz", (np.arange(128).reshape(8, 8, 2) % 5).astype(np.uint8))
    return root


def test_brats2013_keeps_codes_and_optional_modalities(tmp_path):
    data = _make_brats2013(tmp_path / "brats")
    out = tmp_path / "d.json"
    prep.brats2013(str(data), output=str(out), num_validation=1, num_testing=1)
    content = json.loads(out.read_text())
    assert content["modalities"] == ["flair", "t1c"]  # t2 only in some cases: left out
    assert content["labels"]["enhancing_tumour"] == 4
    assert content["training"][0]["label"].endswith("OTMultiClass.nii.gz")  # referenced in place
    _assert_disjoint(_ids(content))
    assert len(load_datalist(str(out))["training"]) == 3
    with pytest.raises(prep.PreparationError) as info:
        prep.brats2013(str(data), output=str(tmp_path / "e.json"), modalities=["flair", "t1c", "t2"])
    assert "brats_2013_pat0003_1" in str(info.value) and "T2_subtrMeanDivStd.nii.gz" in str(info.value)
    assert "brats_2013_pat0004_1" in str(info.value) and "2 problems" in str(info.value)


@pytest.mark.parametrize("naming", ["2023", "2021"])
def test_brats2021_naming_and_unlabeled(tmp_path, naming):
    root = tmp_path / "brats"
    suffixes = ["t1n", "t1c", "t2w", "t2f"] if naming == "2023" else ["t1", "t1ce", "t2", "flair"]
    sep = "-" if naming == "2023" else "_"
    et = 3 if naming == "2023" else 4
    for i in range(5):
        case = f"BraTS-GLI-{i:05d}-000" if naming == "2023" else f"BraTS2021_{i:05d}"
        for s in suffixes:
            _nii(root / case / f"{case}{sep}{s}.nii.gz", _image())
        if i < 4:
            _nii(root / case / f"{case}{sep}seg.nii.gz", np.array([0, 1, 2, et] * 32, np.uint8).reshape(8, 8, 2))
    out = tmp_path / "d.json"
    with pytest.raises(prep.PreparationError, match="missing label .*seg.nii.gz"):
        prep.brats2021(str(root), output=str(out), num_validation=1, num_testing=0)
    kwargs = {"label_map": {4: 3}} if naming == "2021" else {}
    prep.brats2021(str(root), output=str(out), num_validation=1, num_testing=0, allow_unlabeled=True, **kwargs)
    content = json.loads(out.read_text())
    assert content["modalities"] == ["t1n", "t1c", "t2w", "t2f"]
    assert content["labels"]["enhancing_tumour"] == 3
    assert len(content["unlabeled"]) == 1 and len(content["training"]) == 3
    label = out.parent / content["training"][0]["label"]
    assert set(np.unique(np.asanyarray(nib.load(str(label)).dataobj)).tolist()) == {0, 1, 2, 3}
    assert (label.parent == out.parent / "labels") == (naming == "2021")
    load_datalist(str(out))


# ---------------------------------------------------------------------------------------------
# MSD and AMOS


def _make_msd(root: Path, n: int = 5, channels: int = 4) -> Path:
    training = []
    for i in range(n):
        _nii(root / "imagesTr" / f"BRATS_{i:03d}.nii.gz", _image((8, 8, 2, channels)))
        _nii(root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", (np.arange(128).reshape(8, 8, 2) % 4).astype(np.uint8))
        training.append({"image": f"./imagesTr/BRATS_{i:03d}.nii.gz", "label": f"./labelsTr/BRATS_{i:03d}.nii.gz"})
    _nii(root / "imagesTs" / "BRATS_900.nii.gz", _image((8, 8, 2, channels)))
    meta = {
        "name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "training": training, "test": ["./imagesTs/BRATS_900.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_single_multichannel_file(tmp_path):
    data = _make_msd(tmp_path / "Task01_BrainTumour")
    out = data / "datalist.json"
    prep.msd(str(data), num_validation=1, num_testing=1)
    content = json.loads(out.read_text())
    assert content["modalities"] == ["flair", "t1w", "t1gd", "t2w"]
    assert content["labels"] == {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3}
    assert content["training"][0]["image"].startswith("imagesTr/")
    assert [c["case"] for c in content["unlabeled"]] == ["BRATS_900"]
    loaded = load_datalist(str(out))
    assert isinstance(loaded["training"][0]["image"], str)


def test_msd_problems_reported(tmp_path):
    data = _make_msd(tmp_path / "Task01", channels=3)
    (data / "labelsTr" / "BRATS_002.nii.gz").unlink()
    with pytest.raises(prep.PreparationError) as info:
        prep.msd(str(data), num_validation=1, num_testing=0)
    message = str(info.value)
    assert "labelsTr/BRATS_002.nii.gz" in message and "file not found" in message
    assert "expected 4 channel(s)" in message
    with pytest.raises(prep.PreparationError, match="dataset.json not found"):
        prep.msd(str(tmp_path / "nowhere"))


def _make_amos(root: Path, n_ct: int = 7, n_mri: int = 4) -> Path:
    ids = [f"amos_{i:04d}" for i in range(1, n_ct + 1)] + [f"amos_{500 + i:04d}" for i in range(1, n_mri + 1)]
    for scan in ids:
        _nii(root / "imagesTr" / f"{scan}.nii.gz", _image())
        _nii(root / "labelsTr" / f"{scan}.nii.gz", (np.arange(128).reshape(8, 8, 2) % 16).astype(np.uint8))
    _nii(root / "imagesTs" / "amos_0100.nii.gz", _image())
    _nii(root / "imagesTs" / "amos_0600.nii.gz", _image())
    return root


@pytest.mark.parametrize("pairing", ["cycle", "truncate"])
def test_amos_pairs_without_leakage(tmp_path, pairing):
    data = _make_amos(tmp_path / "amos")
    out = tmp_path / "d.json"
    prep.amos(str(data), output=str(out), pairing=pairing, num_validation=1, num_testing=1, seed=2)
    content = json.loads(out.read_text())
    assert content["modalities"] == ["ct", "mri"] and content["pairing"]["mode"] == pairing
    scan_split: dict[str, str] = {}
    for split in SPLITS:
        for case in content[split]:
            ct, mri = case["case"].split("+")
            assert int(ct.split("_")[1]) < 500 <= int(mri.split("_")[1])
            assert case["ct"].endswith(f"{ct}.nii.gz") and case["mri"].endswith(f"{mri}.nii.gz")
            if split != "unlabeled":
                assert case["label"] == {"ct": f"amos/labelsTr/{ct}.nii.gz", "mri": f"amos/labelsTr/{mri}.nii.gz"}
            for scan in (ct, mri):
                assert scan_split.setdefault(scan, split) == split  # a scan never in two splits
    ct_training = {c["case"].split("+")[0] for c in content["training"]}
    if pairing == "cycle":
        assert len(ct_training) == 5  # 7 CT - 1 validation - 1 testing, each used once
        assert len(content["training"]) == 5
    else:
        assert len(content["training"]) == 2  # min(5 CT, 2 MRI)
    loaded = load_datalist(str(out))
    assert len(loaded["training"][0]["label"]) == 2
    again = tmp_path / "again.json"
    prep.amos(str(data), output=str(again), pairing=pairing, num_validation=1, num_testing=1, seed=2)
    assert again.read_text() == out.read_text()


def test_amos_missing_label_reported(tmp_path):
    data = _make_amos(tmp_path / "amos")
    (data / "labelsTr" / "amos_0502.nii.gz").unlink()
    (data / "imagesTr" / "amos_0003.nii.gz").unlink()
    with pytest.raises(prep.PreparationError) as info:
        prep.amos(str(data), output=str(tmp_path / "d.json"))
    message = str(info.value)
    assert "amos_0502" in message and "missing label" in message
    assert "labelsTr/amos_0003.nii.gz has no image" in message


def test_cli_boolean_flags_as_text(tmp_path):
    data = _make_myops(tmp_path / "myops", n_labeled=4, n_unlabeled=0)
    out = tmp_path / "d.json"
    assert prep.main(["myops", "--data_dir", str(data), "--output", str(out), "--num_validation", "1",
                      "--num_testing", "0", "--keep_pathology", "false"]) == 0
    assert "edema" not in json.loads(out.read_text())["labels"]
    assert prep.main(["myops", "--data_dir", str(data), "--output", str(out), "--num_validation", "1",
                      "--num_testing", "0", "--keep_pathology", "true", "--overwrite", "true"]) == 0
    assert json.loads(out.read_text())["labels"]["scar"] == 5
    assert prep.main(["myops", "--data_dir", str(data), "--output", str(out), "--overwrite", "maybe"]) == 2


def test_cli_mistyped_option_writes_nothing(tmp_path, capsys):
    # fire would run the command with its defaults first and complain about the option afterwards
    data = _make_myops(tmp_path / "myops", n_labeled=4, n_unlabeled=0)
    out = tmp_path / "out" / "d.json"
    argv = ["myops", str(data), "--output", str(out), "--lable_dir", str(tmp_path / "labels"), "--frob=1",
            "--nooverwrite", "--num-validation", "1"]
    assert prep.main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown option --lable_dir (did you mean --label_dir?)" in err
    assert "unknown option --frob\n" in err and "(2 problems)" in err  # --nooverwrite and --num-validation are fine
    assert "nothing written" in err and err.rstrip().endswith("--validation_fraction)")
    assert not out.parent.exists() and not (tmp_path / "labels").exists() and not (data / "datalist.json").exists()
    assert prep.main(argv[:4] + ["--nooverwrite", "--num-validation", "1", "--num_testing", "0"]) == 0
    assert out.is_file()


def test_cli_number_like_paths_stay_paths(tmp_path, monkeypatch):
    # fire reads `2024` as the number 2024; the tool must still take it as the folder 2024
    _make_myops(tmp_path / "2024", n_labeled=4, n_unlabeled=0)
    monkeypatch.chdir(tmp_path)
    assert prep.main(["myops", "2024", "--output", "123", "--num_validation", "1", "--num_testing", "0"]) == 0
    datalist = json.loads((tmp_path / "123").read_text())
    assert len(datalist["training"]) == 3 and datalist["validation"][0]["c0"].startswith("2024/")


# ---------------------------------------------------------------------------------------------
# AMOS, one case per scan (--pairing none)


def test_amos_pairing_none_one_case_per_scan(tmp_path):
    data = _make_amos(tmp_path / "amos")
    out = tmp_path / "d.json"
    prep.amos(str(data), output=str(out), pairing="none", num_validation=1, num_testing=1, seed=2)
    content = json.loads(out.read_text())
    assert content["modalities"] == ["ct", "mri"] and content["pairing"]["mode"] == "none"
    scan_split: dict[str, str] = {}
    for split in SPLITS:
        for case in content[split]:
            scan = case["case"]
            modality = "mri" if int(scan.split("_")[1]) >= 500 else "ct"
            assert set(case) == ({"case", modality} | ({"label"} if split != "unlabeled" else set())), case
            assert case[modality] == f"amos/{'imagesTs' if scan in ('amos_0100', 'amos_0600') else 'imagesTr'}/{scan}.nii.gz"
            if split != "unlabeled":
                assert case["label"] == {modality: f"amos/labelsTr/{scan}.nii.gz"}
            assert scan not in scan_split  # every scan exactly once
            scan_split[scan] = split
    assert len(scan_split) == 7 + 4 + 2  # every labeled scan and both test images
    # splits per modality, as with pairing: 1 validation and 1 testing scan of each modality
    for split in ("validation", "testing"):
        assert sorted("mri" if int(c["case"][5:]) >= 500 else "ct" for c in content[split]) == ["ct", "mri"]
    # the same scans in each split as the paired modes (the split is per scan, before pairing)
    paired = tmp_path / "paired.json"
    prep.amos(str(data), output=str(paired), pairing="cycle", num_validation=1, num_testing=1, seed=2)
    for split in ("validation", "testing"):
        pairs = json.loads(paired.read_text())[split]
        assert sorted(s for c in pairs for s in c["case"].split("+")) == sorted(c["case"] for c in content[split])
    loaded = load_datalist(str(out), own_grids=True)
    assert len(loaded["training"]) == 5 + 2 and all(sum(p is not None for p in c["image"]) == 1 for c in loaded["training"])
    assert all(isinstance(c["label"], str) for c in loaded["training"])
    with pytest.raises(ValueError, match="missing"):
        load_datalist(str(out))  # one modality per case: an own-grid (or missing-modality) datalist
    again = tmp_path / "again.json"
    prep.amos(str(data), output=str(again), pairing="none", num_validation=1, num_testing=1, seed=2)
    assert again.read_text() == out.read_text()
    with pytest.raises(prep.PreparationError, match="--pairing must be 'none', 'cycle' or 'truncate'"):
        prep.amos(str(data), output=str(tmp_path / "x.json"), pairing="nope")


# ---------------------------------------------------------------------------------------------
# generic case folders (folders)

SHARED_MRUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "prostate_mrus" / "cases"
GRIDS = {"mr": (8, 8, 4), "trus": (6, 7, 5)}


def _mask(shape) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    label[1:4, 1:4, 1:3] = 1
    return label


def _make_folders(root: Path, n: int = 8, own_grids: bool = True, suffix: str = "_gland") -> Path:
    """n case folders p0..: MR and TRUS on their own grids (own_grids) or one grid, labels named with suffix."""
    for i in range(n):
        case = f"p{i}"
        for m, shape in GRIDS.items():
            shape = shape if own_grids else GRIDS["mr"]
            _nii(root / case / f"{case}_{m}.nii.gz", _image(shape))
            if own_grids:
                _nii(root / case / f"{case}_{m}{suffix}.nii.gz", _mask(shape))
        if not own_grids:
            _nii(root / case / f"{case}{suffix}.nii.gz", _mask(GRIDS["mr"]))
    return root


def test_folders_own_grids_per_sequence_labels_and_loads(tmp_path):
    data = _make_folders(tmp_path / "mrus")
    out = tmp_path / "d.json"
    prep.folders(str(data), output=str(out), modalities=["mr", "trus"], own_grids=True, label_suffix="_gland",
                 num_validation=1, num_testing=1, labeled_fraction=0.5, seed=3)
    content = json.loads(out.read_text())
    assert content["modalities"] == ["mr", "trus"] and content["labels"] == {"background": 0, "class_1": 1}
    assert content["preparation"]["own_grids"] is True
    ids = _ids(content)
    _assert_disjoint(ids)
    assert len(ids["training"]) == 3 and len(ids["unlabeled"]) == 3  # 6 training patients, half labeled
    case = next(c for c in content["training"])
    p = case["case"]
    assert case == {"case": p, "mr": f"mrus/{p}/{p}_mr.nii.gz", "trus": f"mrus/{p}/{p}_trus.nii.gz",
                    "label": {"mr": f"mrus/{p}/{p}_mr_gland.nii.gz", "trus": f"mrus/{p}/{p}_trus_gland.nii.gz"}}
    assert all("label" not in c for c in content["unlabeled"])
    # the split is per patient, the same as the co-registered tools' (split_cases + select_labeled)
    parts = prep.split_cases([f"p{i}" for i in range(8)], 1, 1, 3)
    assert ids["validation"] == parts["validation"] and ids["testing"] == parts["testing"]
    loaded = load_datalist(str(out), own_grids=True)
    assert sorted(c["case"] for c in loaded["training"]) == sorted(f"{c}_{m}" for c in ids["training"] for m in GRIDS)
    # the loader splits every case into one case per sequence with that sequence's own label
    first = {c["case"]: c for c in loaded["training"]}[f"{p}_trus"]
    assert first["image"][0] is None and first["label"].endswith(f"{p}_trus_gland.nii.gz")
    again = tmp_path / "again.json"
    prep.folders(str(data), output=str(again), modalities=["mr", "trus"], own_grids=True, label_suffix="_gland",
                 num_validation=1, num_testing=1, labeled_fraction=0.5, seed=3)
    assert again.read_text() == out.read_text()
    with pytest.raises(prep.PreparationError, match="--overwrite"):
        prep.folders(str(data), output=str(out), modalities=["mr", "trus"], own_grids=True, label_suffix="_gland")


def test_folders_missing_sequences(tmp_path):
    data = _make_folders(tmp_path / "mrus", n=6)
    for name in ("p2_trus.nii.gz", "p2_trus_gland.nii.gz", "p4_mr.nii.gz", "p4_mr_gland.nii.gz"):
        (data / name[:2] / name).unlink()
    args = dict(modalities="mr,trus", own_grids=True, label_suffix="_gland", num_validation=1, num_testing=1)
    with pytest.raises(prep.PreparationError) as info:
        prep.folders(str(data), output=str(tmp_path / "d.json"), **args)
    message = str(info.value)
    assert "(2 problems)" in message, message
    assert f"case 'p2': missing p2_trus.nii.gz (trus) in {data / 'p2'}" in message
    assert f"case 'p4': missing p4_mr.nii.gz (mr) in {data / 'p4'}" in message
    assert "--allow_missing_modalities true" in message
    assert not (tmp_path / "d.json").exists()

    out = tmp_path / "d.json"
    prep.folders(str(data), output=str(out), allow_missing_modalities=True, **args)
    cases = {c["case"]: c for s in SPLITS for c in json.loads(out.read_text())[s]}
    assert "trus" not in cases["p2"] and "mr" in cases["p2"] and set(cases["p2"].get("label", {"mr": 0})) == {"mr"}
    assert "mr" not in cases["p4"] and set(cases["p4"].get("label", {"trus": 0})) == {"trus"}
    loaded = load_datalist(str(out), own_grids=True)
    split_ids = {c["case"] for s in SPLITS for c in loaded[s]}
    assert "p2_mr" in split_ids and "p2_trus" not in split_ids and "p4_trus" in split_ids and "p4_mr" not in split_ids


def test_folders_label_problems_reported_together(tmp_path):
    data = _make_folders(tmp_path / "mrus", n=6)
    (data / "p1" / "p1_trus_gland.nii.gz").unlink()  # a labeled patient without its TRUS label
    for m in GRIDS:
        (data / "p3" / f"p3_{m}_gland.nii.gz").unlink()  # an unlabeled patient
    _nii(data / "p5" / "p5_mr_gland.nii.gz", _mask(GRIDS["trus"]))  # the MR label on the TRUS grid
    _nii(data / "p0" / "p0_mr_gland.nii.gz", _mask(GRIDS["mr"]) * 7)  # a code outside --class_names
    args = dict(modalities=["mr", "trus"], own_grids=True, label_suffix="_gland", num_validation=1,
                num_testing=1, class_names=["gland"])
    with pytest.raises(prep.PreparationError) as info:
        prep.folders(str(data), output=str(tmp_path / "d.json"), **args)
    message = str(info.value)
    assert "(4 problems)" in message, message
    assert "case 'p1': missing label p1_trus_gland.nii.gz (trus)" in message
    assert "case 'p3': missing labels p3_mr_gland.nii.gz, p3_trus_gland.nii.gz" in message
    assert "--allow_unlabeled true" in message
    assert "case 'p5': images and label are not on one grid (shapes mr (8, 8, 4), label of mr (6, 7, 5))" in message
    assert "case 'p0': label" in message and "unknown codes [7]" in message
    # the co-registered layout: one shared label per case, whose absence is named with the right rule
    with pytest.raises(prep.PreparationError, match="own_grids true"):
        prep.folders(str(data), output=str(tmp_path / "d.json"), modalities=["mr", "trus"], label_suffix="_gland")
    with pytest.raises(prep.PreparationError, match="--modalities is required"):
        prep.folders(str(data), output=str(tmp_path / "d.json"))
    with pytest.raises(prep.PreparationError, match="would also be image files"):
        prep.folders(str(data), output=str(tmp_path / "d.json"), modalities=["mr", "mr_gland"], own_grids=True,
                     label_suffix="_gland")


def test_folders_coregistered_shared_label(tmp_path):
    data = _make_folders(tmp_path / "paired", n=5, own_grids=False, suffix="_seg")
    (data / "p1" / "p1_trus.nii.gz").unlink()
    (data / "p3" / "p3_seg.nii.gz").unlink()
    out = tmp_path / "d.json"
    prep.folders(str(data), output=str(out), modalities=["mr", "trus"], own_grids=False, label_suffix="_seg",
                 allow_missing_modalities=True, allow_unlabeled=True, class_names=["gland"], num_validation=1,
                 num_testing=1)
    content = json.loads(out.read_text())
    assert content["labels"] == {"background": 0, "gland": 1} and content["preparation"]["own_grids"] is False
    cases = {c["case"]: c for s in SPLITS for c in content[s]}
    assert [c["case"] for c in content["unlabeled"]] == ["p3"] and "label" not in cases["p3"]
    assert "trus" not in cases["p1"]
    labeled = [c for s in ("training", "validation", "testing") for c in content[s]]
    assert all(c["label"] == f"paired/{c['case']}/{c['case']}_seg.nii.gz" for c in labeled)
    loaded = load_datalist(str(out), allow_missing_modalities=True)
    assert len([c for s in SPLITS for c in loaded[s]]) == 5
    # the shared label must lie on the sequences' grid
    _nii(data / "p0" / "p0_seg.nii.gz", _mask(GRIDS["trus"]))
    with pytest.raises(prep.PreparationError, match="case 'p0': images and label are not on one grid"):
        prep.folders(str(data), output=str(tmp_path / "e.json"), modalities=["mr", "trus"], label_suffix="_seg",
                     allow_missing_modalities=True, allow_unlabeled=True)


def test_folders_cli_flags_as_text(tmp_path):
    data = _make_folders(tmp_path / "mrus", n=4)
    out = tmp_path / "d.json"
    cmd = [sys.executable, str(TOOL), "folders", "--data_dir", str(data), "--output", str(out),
           "--modalities", "['mr','trus']", "--own_grids", "true", "--label_suffix", "_gland",
           "--num_validation", "1", "--num_testing", "1"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "unpaired.yaml" in done.stdout
    content = json.loads(out.read_text())
    assert content["modalities"] == ["mr", "trus"] and set(content["training"][0]["label"]) == {"mr", "trus"}


@pytest.mark.skipif(not SHARED_MRUS.is_dir(), reason=f"real prostate MR/TRUS data not found at {SHARED_MRUS}")
def test_folders_on_shared_prostate_mrus(tmp_path):
    out = tmp_path / "datalist.json"
    prep.folders(str(SHARED_MRUS), output=str(out), modalities=["mr", "trus"], own_grids=True,
                 label_suffix="_gland", check_labels=False, seed=0)
    content = json.loads(out.read_text())
    ids = _ids(content)
    _assert_disjoint(ids)
    patients = [c for s in SPLITS for c in content[s]]
    assert len(patients) == 68 and not ids["unlabeled"]
    assert all(set(c["label"]) == {"mr", "trus"} for c in patients)
    loaded = load_datalist(str(out), own_grids=True)
    assert sum(len(loaded[s]) for s in SPLITS) == 2 * 68


# ------------------------------------------------------------------------------ cross-validation folds
def _fold_source(tmp_path: Path, n_training: int = 10, n_validation: int = 3) -> Path:
    """A datalist with relative paths (files need not exist: folds only moves cases between splits)."""
    def case(c: str, labeled: bool = True) -> dict:
        return {"case": c, "t1": f"img/{c}_t1.nii.gz", **({"label": f"lab/{c}.nii.gz"} if labeled else {})}

    content = {
        "name": "toy", "modalities": ["t1"], "labels": {"0": "background", "1": "lesion"},
        "preparation": {"tool": "hand-written", "seed": 7},
        "training": [case(f"p{i:02d}") for i in range(n_training)],
        "validation": [case(f"v{i}") for i in range(n_validation)],
        "unlabeled": [case("u0", labeled=False)],
        "testing": [case("t0"), case("t1")],
    }
    path = tmp_path / "datalist.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def test_folds_partition_the_labeled_cases_and_keep_the_rest(tmp_path):
    source = _fold_source(tmp_path)
    original = json.loads(source.read_text())
    paths = prep.folds(str(source), num_folds=4, seed=0)
    assert paths == [str(tmp_path / f"datalist_fold{k}.json") for k in range(4)]
    labeled = {c["case"]: c for s in ("training", "validation") for c in original[s]}
    seen = []
    for k, path in enumerate(paths):
        fold = json.loads(Path(path).read_text())
        validation = [c["case"] for c in fold["validation"]]
        training = [c["case"] for c in fold["training"]]
        seen += validation
        # each fold trains on every labeled case it does not validate on, entries copied whole
        assert sorted(training + validation) == sorted(labeled) and not set(training) & set(validation)
        assert all(c == labeled[c["case"]] for c in fold["training"] + fold["validation"])
        for key in ("name", "modalities", "labels", "unlabeled", "testing"):
            assert fold[key] == original[key], key
        assert fold["preparation"]["tool"] == "hand-written"
        assert fold["preparation"]["cross_validation"] == {
            "source": str(source), "fold": k, "num_folds": 4, "seed": 0}
        # relative paths still resolve: the folds lie in the source's folder
        loaded = load_datalist(path, check_files=False)
        assert loaded["training"][0]["image"][0] == str(tmp_path / "img" / f"{training[0]}_t1.nii.gz")
    # every labeled case is validated exactly once, in parts of 13 // 4 or one more
    assert sorted(seen) == sorted(labeled)
    assert sorted(len(json.loads(Path(p).read_text())["validation"]) for p in paths) == [3, 3, 3, 4]
    assert json.loads(source.read_text()) == original  # the source is not touched


def test_folds_depend_on_the_case_set_and_seed_only(tmp_path):
    ids = [f"c{i:02d}" for i in range(11)]
    parts = prep.fold_split(ids, 3, seed=5)
    assert parts == prep.fold_split(list(reversed(ids)), 3, seed=5)
    assert parts != prep.fold_split(ids, 3, seed=6)
    # independent computation of the rule: sorted ids, numpy's permutation of the seed, contiguous cuts
    order = np.random.default_rng(5).permutation(11)
    assert parts == [sorted(ids[i] for i in order[a:b]) for a, b in ((0, 4), (4, 8), (8, 11))]
    source = _fold_source(tmp_path)
    first = [Path(p).read_bytes() for p in prep.folds(str(source), num_folds=3, seed=1)]
    again = [Path(p).read_bytes() for p in prep.folds(str(source), num_folds=3, seed=1, overwrite=True)]
    assert first == again


def test_folds_report_every_problem_and_write_nothing(tmp_path, capsys):
    source = _fold_source(tmp_path, n_training=2, n_validation=0)
    content = json.loads(source.read_text())
    content["training"].append({"label": "lab/x.nii.gz"})  # no case id, no image to derive it from
    content["training"].append({"t1": "img/p05_t1.nii.gz", "label": "lab/p05.nii.gz"})  # id p05, derived
    content["training"].append(dict(content["training"][0]))  # duplicate id
    content["testing"].append(dict(content["training"][1]))  # a test case that also trains
    source.write_text(json.dumps(content))
    (tmp_path / "datalist_fold1.json").write_text("{}")
    with pytest.raises(prep.PreparationError) as err:
        prep.folds(str(source), num_folds=3)
    message = str(err.value)
    assert "training[2] has no case id" in message and "p05" not in message
    assert "case p00 appears twice" in message
    assert "case p01 is both a test case and a training/validation case" in message
    assert "datalist_fold1.json already exists" in message
    assert not (tmp_path / "datalist_fold0.json").exists()
    assert (tmp_path / "datalist_fold1.json").read_text() == "{}"
    # too few cases for the folds, a bad count, and the command line's exit status
    small = _fold_source(tmp_path / "small", n_training=2, n_validation=0)
    with pytest.raises(prep.PreparationError, match="2 training and validation cases cannot make 3 folds"):
        prep.folds(str(small), num_folds=3)
    assert prep.main(["folds", str(small), "--num_folds", "1"]) == 2
    assert "--num_folds must be a whole number >= 2, got 1" in capsys.readouterr().err
    assert prep.main(["folds", str(small), "--num_folds", "2"]) == 0
    assert (tmp_path / "small" / "datalist_fold1.json").exists()
