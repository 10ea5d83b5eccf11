"""Tests of the datalist loader (scripts.data.datalist)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from scripts.data.datalist import DatalistError, load_datalist, resolve_datalist
from scripts.data.synthetic import generate_synthetic_dataset

MODALITIES = ["t1", "t2", "flair"]
SPLITS = ("training", "unlabeled", "validation", "testing")


def _touch(root: Path, *rels: str) -> None:
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def _write(path: Path, content: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return str(path)


def _per_modality_case(root: Path, case_id: str, split: str = "training", label: bool = True) -> dict:
    """A form (a) case whose files exist under ``root``."""
    case = {"case": case_id, **{m: f"{split}/{case_id}_{m}.nii.gz" for m in MODALITIES}}
    _touch(root, *(case[m] for m in MODALITIES))
    if label:
        case["label"] = f"{split}/{case_id}_label.nii.gz"
        _touch(root, case["label"])
    return case


def _ids(cases: list[dict]) -> list[str]:
    return [c["case"] for c in cases]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dl") / "synthetic"
    generate_synthetic_dataset(
        str(root), image_size=24, num_training=4, num_unlabeled=2, num_validation=2, num_testing=1
    )
    return root


def test_loads_synthetic_datalist(synthetic_root):
    data = load_datalist(str(synthetic_root / "datalist.json"))
    assert list(data) == list(SPLITS)
    assert [len(data[s]) for s in SPLITS] == [4, 2, 2, 1]
    case = data["training"][0]
    assert case["case"] == "syn_0001"
    assert case["image"] == [str(synthetic_root / "training" / f"syn_0001_{m}.nii.gz") for m in MODALITIES]
    assert case["label"] == str(synthetic_root / "training" / "syn_0001_label.nii.gz")
    assert set(case) == {"case", "image", "label"}, "per-modality keys are consumed into 'image'"
    assert all("label" not in c for c in data["unlabeled"])
    assert all(os.path.isabs(p) and os.path.isfile(p) for s in SPLITS for c in data[s] for p in c["image"])


def test_modality_order_follows_argument(synthetic_root):
    data = load_datalist(str(synthetic_root / "datalist.json"), modalities=["flair", "t1"])
    names = [os.path.basename(p) for p in data["training"][0]["image"]]
    assert names == ["syn_0001_flair.nii.gz", "syn_0001_t1.nii.gz"]


def test_image_forms_and_path_resolution(tmp_path):
    data_root = tmp_path / "images"
    absolute = tmp_path / "elsewhere" / "abs_t2.nii.gz"
    _touch(tmp_path, "elsewhere/abs_t2.nii.gz")
    _touch(data_root, "a/pat1_t1.nii.gz", "a/pat1_flair.nii.gz", "a/pat1_seg.nii.gz")
    _touch(data_root, "b/pat2_t1.nii.gz", "b/pat2_t2.nii.gz", "b/pat2_flair.nii.gz", "b/pat2_seg.nii.gz")
    _touch(data_root, "c/pat3.nii.gz", "c/pat3_seg.nii.gz")
    datalist = {
        "modalities": MODALITIES,
        "training": [
            # (a) one key per modality, one absolute path, no case id
            {
                "t1": "a/pat1_t1.nii.gz",
                "t2": str(absolute),
                "flair": "a/pat1_flair.nii.gz",
                "label": "a/pat1_seg.nii.gz",
                "site": "A",
            },
            # (b) list of paths in modality order
            {"image": ["b/pat2_t1.nii.gz", "b/pat2_t2.nii.gz", "b/./pat2_flair.nii.gz"], "label": "b/pat2_seg.nii.gz"},
            # (c) one multi-channel file
            {"image": "c/pat3.nii.gz", "label": "c/pat3_seg.nii.gz"},
        ],
    }
    # the datalist lives in another folder than the images: dataset_dir decides
    path = _write(tmp_path / "lists" / "my_list.json", datalist)
    data = load_datalist(path, dataset_dir=str(data_root))
    a, b, c = data["training"]
    assert a == {
        "case": "pat1",
        "image": [str(data_root / "a/pat1_t1.nii.gz"), str(absolute), str(data_root / "a/pat1_flair.nii.gz")],
        "label": str(data_root / "a/pat1_seg.nii.gz"),
        "site": "A",
    }
    assert b["case"] == "pat2"
    assert b["image"] == [str(data_root / f"b/pat2_{m}.nii.gz") for m in MODALITIES]
    assert c["case"] == "pat3"
    assert c["image"] == str(data_root / "c/pat3.nii.gz"), "a multi-channel file stays a plain string"
    assert c["label"] == str(data_root / "c/pat3_seg.nii.gz")
    assert data["unlabeled"] == data["validation"] == data["testing"] == []
    # without dataset_dir the datalist's folder is the base: the files are not there
    with pytest.raises(DatalistError, match="file not found"):
        load_datalist(path)
    assert load_datalist(path, check_files=False)["training"][1]["image"][0] == str(tmp_path / "lists/b/pat2_t1.nii.gz")


def test_per_modality_labels(tmp_path):
    _touch(tmp_path, *(f"x_{m}.nii.gz" for m in MODALITIES), *(f"x_seg_{m}.nii.gz" for m in MODALITIES))
    _touch(tmp_path, *(f"y_{m}.nii.gz" for m in MODALITIES))
    datalist = {
        "modalities": MODALITIES,
        "training": [
            {"case": "x", **{m: f"x_{m}.nii.gz" for m in MODALITIES},
             "label": {m: f"x_seg_{m}.nii.gz" for m in reversed(MODALITIES)}},
        ],
        "testing": [
            {
                "case": "y",
                **{m: f"y_{m}.nii.gz" for m in MODALITIES},
                "label": [f"x_seg_{m}.nii.gz" for m in MODALITIES],
            },
            {"case": "z", "image": [f"y_{m}.nii.gz" for m in MODALITIES]},
        ],
    }
    data = load_datalist(_write(tmp_path / "datalist.json", datalist))
    expected = [str(tmp_path / f"x_seg_{m}.nii.gz") for m in MODALITIES]
    assert data["training"][0]["label"] == expected, "label dict becomes a list in modality order"
    assert data["testing"][0]["label"] == expected
    assert "label" not in data["testing"][1], "testing cases may come without a label"


def test_unlabeled_labels_are_dropped(tmp_path):
    datalist = {
        "modalities": MODALITIES,
        "training": [_per_modality_case(tmp_path, "l1")],
        "unlabeled": [_per_modality_case(tmp_path, "u1", split="unlabeled", label=True)],
    }
    data = load_datalist(_write(tmp_path / "datalist.json", datalist))
    assert "label" not in data["unlabeled"][0]


def test_missing_modalities_and_files(tmp_path):
    path = _write(tmp_path / "datalist.json", {"training": [{"case": "a", "image": ["x", "y"], "label": "z"}]})
    with pytest.raises(DatalistError, match="no modalities"):
        load_datalist(path)
    with pytest.raises(FileNotFoundError, match="datalist file not found"):
        load_datalist(str(tmp_path / "absent.json"), modalities=MODALITIES)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DatalistError, match="not valid JSON"):
        load_datalist(str(tmp_path / "broken.json"), modalities=MODALITIES)


def test_all_problems_in_one_error(tmp_path):
    root = tmp_path
    missing_key = _per_modality_case(root, "syn_0001")
    del missing_key["t2"]
    wrong_count = {
        "case": "syn_0002",
        "image": ["training/syn_0001_t1.nii.gz"],
        "label": "training/syn_0001_label.nii.gz",
    }
    missing_file = _per_modality_case(root, "syn_0003")
    missing_file["t2"] = "training/gone_t2.nii.gz"
    label_dict = _per_modality_case(root, "syn_0004")
    _touch(root, "training/syn_0004_label_t1.nii.gz", "training/syn_0004_label_t2.nii.gz")
    label_dict["label"] = {"t1": "training/syn_0004_label_t1.nii.gz", "t2": "training/syn_0004_label_t2.nii.gz"}
    no_label = _per_modality_case(root, "syn_0005", label=False)
    leaked = _per_modality_case(root, "syn_0006")
    duplicate = _per_modality_case(root, "syn_0007", split="validation")
    datalist = {
        "modalities": MODALITIES,
        "training": [missing_key, wrong_count, missing_file, label_dict, no_label, leaked],
        "validation": [duplicate, dict(duplicate), _per_modality_case(root, "syn_0006", split="validation")],
    }
    with pytest.raises(DatalistError) as info:
        load_datalist(_write(root / "datalist.json", datalist))
    message = str(info.value)
    lines = message.splitlines()
    assert "datalist.json (7 problems)" in lines[0]
    expected = [
        "training case 'syn_0001': key 't2': missing",
        "training case 'syn_0002': key 'image': expected 3 paths",
        f"training case 'syn_0003': key 't2': file not found: {root / 'training/gone_t2.nii.gz'}",
        "training case 'syn_0004': key 'label': no label for modality 'flair'",
        "training case 'syn_0005': key 'label': missing",
        "validation case 'syn_0007': key 'case': duplicate case id",
        "validation case 'syn_0006': key 'case': also in split 'training' (data leakage)",
    ]
    for fragment in expected:
        assert sum(fragment in line for line in lines[1:]) == 1, f"expected one line with {fragment!r} in:\n{message}"
    assert len(info.value.problems) == len(expected) == len(lines) - 1


def test_a_testing_only_datalist_is_read_for_evaluation(tmp_path):
    """Issue 24: an external test set (`prepare_datalist.py ... --num_validation 0`) holds `testing` alone."""
    from scripts.data.datalist import labeled_cases
    from scripts.errors import InputError

    path = _write(tmp_path / "external.json", {"modalities": MODALITIES, "testing": [_per_modality_case(tmp_path, "p1")]})
    with pytest.raises(DatalistError, match="split 'training': no cases; at least one labeled training case"):
        load_datalist(path)  # training needs its cases
    data = load_datalist(path, require_training=False, labeled_fraction=0.5)  # as evaluate.yaml reads it
    assert _ids(data["testing"]) == ["p1"] and data["training"] == [] and data["unlabeled"] == []
    assert _ids(labeled_cases(data, "testing")) == ["p1"]
    with pytest.raises(DatalistError, match=r"split 'validation': no cases to evaluate \(splits with cases: \['testing'\]\)"):
        labeled_cases(data, "validation")
    with pytest.raises(InputError, match="eval_split 'test' is not a datalist split"):
        labeled_cases(data, "test")
    unlabeled = load_datalist(_write(tmp_path / "u.json", {"modalities": MODALITIES, "testing": [
        _per_modality_case(tmp_path, "p2", label=False)]}), require_training=False)
    with pytest.raises(DatalistError, match=r"split 'testing': evaluation needs one label file per case; .* \['p2'\]"):
        labeled_cases(unlabeled, "testing")


def test_empty_training_and_shared_files(tmp_path):
    case = _per_modality_case(tmp_path, "p1")
    with pytest.raises(DatalistError, match="split 'training': no cases"):
        load_datalist(_write(tmp_path / "empty.json", {"modalities": MODALITIES, "training": [], "validation": [case]}))
    # the same files listed under another id in another split are leakage too
    renamed = dict(case, case="p1_copy")
    shared = _write(tmp_path / "shared.json", {"modalities": MODALITIES, "training": [case], "testing": [renamed]})
    expected = "testing case 'p1_copy': key 'image': file also used by training case 'p1'"
    with pytest.raises(DatalistError, match=expected) as info:
        load_datalist(shared)
    assert len(info.value.problems) == 1, "one line per pair of cases, not per file"


def test_check_files_false(tmp_path):
    datalist = {"modalities": MODALITIES, "training": [{"case": "ghost", "image": ["a", "b", "c"], "label": "d"}]}
    data = load_datalist(_write(tmp_path / "datalist.json", datalist), check_files=False)
    assert data["training"][0]["image"] == [str(tmp_path / p) for p in "abc"]


def _fraction_datalist(root: Path, n: int = 10) -> dict:
    return {
        "modalities": MODALITIES,
        "training": [_per_modality_case(root, f"case_{i:02d}") for i in range(n)],
        "unlabeled": [_per_modality_case(root, "extra", split="unlabeled", label=False)],
        "validation": [_per_modality_case(root, "val", split="validation")],
    }


def test_labeled_fraction_split(tmp_path):
    content = _fraction_datalist(tmp_path)
    path = _write(tmp_path / "datalist.json", content)
    full = load_datalist(path)
    data = load_datalist(path, labeled_fraction=0.3, split_seed=1)
    assert len(data["training"]) == 3
    assert len(data["unlabeled"]) == 1 + 7
    assert data["unlabeled"][0]["case"] == "extra", "moved cases are appended after the unlabeled ones"
    moved = data["unlabeled"][1:]
    assert all("label" not in c for c in moved)
    assert all("label" in c for c in data["training"])
    assert sorted(_ids(data["training"]) + _ids(moved)) == sorted(_ids(full["training"]))
    assert data["validation"] == full["validation"]
    ids = [i for s in SPLITS for i in _ids(data[s])]
    assert len(ids) == len(set(ids)), "no case may appear in two splits"
    # moved cases keep everything but the label, and the original order is kept
    by_id = {c["case"]: c for c in full["training"]}
    assert all(c == {k: v for k, v in by_id[c["case"]].items() if k != "label"} for c in moved)
    assert _ids(data["training"]) == [i for i in _ids(full["training"]) if i in set(_ids(data["training"]))]

    # deterministic, seed-dependent, independent of the list order, nested across fractions
    assert load_datalist(path, labeled_fraction=0.3, split_seed=1) == data
    selections = {tuple(_ids(load_datalist(path, labeled_fraction=0.3, split_seed=s)["training"])) for s in range(5)}
    assert len(selections) > 1
    shuffled = dict(content, training=random.Random(0).sample(content["training"], len(content["training"])))
    shuffled_data = load_datalist(_write(tmp_path / "shuffled.json", shuffled), labeled_fraction=0.3, split_seed=1)
    assert set(_ids(shuffled_data["training"])) == set(_ids(data["training"]))
    larger = load_datalist(path, labeled_fraction=0.6, split_seed=1)
    assert set(_ids(data["training"])) < set(_ids(larger["training"]))
    assert len(larger["training"]) == 6


@pytest.mark.parametrize("fraction, kept", [(1.0, 10), (0.25, 3), (0.05, 1), (0.001, 1), (0.95, 10)])
def test_labeled_fraction_counts(tmp_path, fraction, kept):
    path = _write(tmp_path / "datalist.json", _fraction_datalist(tmp_path))
    data = load_datalist(path, labeled_fraction=fraction)
    assert len(data["training"]) == kept
    assert len(data["unlabeled"]) == 1 + 10 - kept


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("nan"), "half"])
def test_invalid_labeled_fraction(tmp_path, fraction):
    path = _write(tmp_path / "datalist.json", _fraction_datalist(tmp_path, n=2))
    with pytest.raises(ValueError, match="labeled_fraction"):
        load_datalist(path, labeled_fraction=fraction)


def test_resolve_synthetic(tmp_path):
    synthetic_dir = tmp_path / "embedded"
    options = {"image_size": 24, "num_training": 4, "num_unlabeled": 1, "num_validation": 1, "num_testing": 1}
    data = resolve_datalist(
        None, None, ["t1", "t2"], str(synthetic_dir), labeled_fraction=0.5, split_seed=0, synthetic=options
    )
    assert (synthetic_dir / "datalist.json").is_file()
    assert [len(data[s]) for s in SPLITS] == [2, 3, 1, 1]
    assert all(len(c["image"]) == 2 for s in SPLITS for c in data[s])
    manifest = json.loads((synthetic_dir / "synthetic.json").read_text())
    assert manifest["parameters"]["modalities"] == ["t1", "t2"]
    assert manifest["parameters"]["spatial_dims"] == 2
    with pytest.raises(ValueError, match="spatial_dims"):
        resolve_datalist(None, None, ["t1", "t2"], str(synthetic_dir), synthetic={"spatial_dims": 3})


def test_resolve_user_dataset(tmp_path, monkeypatch):
    dataset = tmp_path / "dataset"
    content = {"modalities": MODALITIES, "training": [_per_modality_case(dataset, "u1")]}
    _write(dataset / "datalist.json", content)
    data = resolve_datalist(str(dataset), None, MODALITIES, str(tmp_path / "unused"))
    assert data["training"][0]["image"][0] == str(dataset / "training/u1_t1.nii.gz")
    assert not (tmp_path / "unused").exists(), "a user dataset must not trigger the synthetic generator"

    # a relative datalist_file is relative to the working directory, images to dataset_dir
    _write(tmp_path / "lists" / "fold0.json", content)
    monkeypatch.chdir(tmp_path)
    data = resolve_datalist(str(dataset), os.path.join("lists", "fold0.json"), MODALITIES, str(tmp_path / "unused"))
    assert data["training"][0]["label"] == str(dataset / "training/u1_label.nii.gz")
    # only a datalist file: paths relative to its own folder
    data = resolve_datalist(None, str(dataset / "datalist.json"), MODALITIES, str(tmp_path / "unused"))
    assert data["training"][0]["image"][2] == str(dataset / "training/u1_flair.nii.gz")


# ---------------------------------------------------------------- names a datalist declares for itself
def test_declared_names_read_the_datalists_modalities_and_labels(tmp_path):
    from scripts.data.datalist import declared_names

    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"modalities": ["mr", "trus"], "labels": {"0": "background", "2": "zone", "1": "gland"}}))
    assert declared_names(None, str(path), "modalities", ["t1"]) == ["mr", "trus"]
    assert declared_names(None, str(path), "labels", ["x"]) == ["gland", "zone"]  # ordered by label value
    assert declared_names(str(tmp_path), None, "labels", ["x"]) == ["gland", "zone"]  # <dataset_dir>/datalist.json
    path.write_text(json.dumps({"labels": {"background": 0, "myo": 1, "lv": 2}}))  # name -> value
    assert declared_names(None, str(path), "labels", ["x"]) == ["myo", "lv"]
    # a label map that merged regions into one value (prepare_datalist brats2013 --label_map) names their union
    path.write_text(json.dumps({"labels": {"background": 0, "necrosis": 1, "edema": 1, "enhancing": 1}}))
    assert declared_names(None, str(path), "labels", ["x"]) == ["necrosis+edema+enhancing"]
    assert declared_names(None, str(path), "modalities", ["t1", "t2"]) == ["t1", "t2"]  # not declared
    assert declared_names(None, None, "labels", ["a", "b"]) == ["a", "b"]  # synthetic
    assert declared_names(None, str(tmp_path / "absent.json"), "labels", ["a"]) == ["a"]  # reported later
    for bad, key in (({"labels": {"1": "a", "3": "b"}}, "labels"), ({"modalities": "mr"}, "modalities")):
        path.write_text(json.dumps(bad))
        with pytest.raises(DatalistError, match=f"{path}: key '{key}'"):
            declared_names(None, str(path), key, ["d"])


def test_a_run_takes_its_modalities_and_classes_from_the_datalist(tmp_path):
    from monai.bundle import ConfigParser

    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"modalities": ["mr", "trus"], "labels": {"1": "gland"}, "training": []}))
    for name in ("train.yaml", "inference.yaml"):
        parser = ConfigParser()
        parser.read_config(str(Path(__file__).resolve().parents[1] / "bundle" / "configs" / name))
        parser["datalist_file"] = str(path)
        assert parser.get_parsed_content("modalities") == ["mr", "trus"], name
        assert parser.get_parsed_content("num_classes") == 2, name
        parser["class_names"] = ["a", "b"]  # the command line wins
        assert parser.get_parsed_content("num_classes", lazy=False) == 3, name
