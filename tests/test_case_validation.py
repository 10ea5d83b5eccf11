"""Tests of the checks of the files of every case (scripts.data.case_validation, scripts/check_datalist.py)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.data.case_validation import (
    CaseValidationError,
    check_datalist_cases,
    inspect_cases,
    validate_cases,
)
from scripts.data.datalist import load_datalist

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOL = REPO_ROOT / "scripts" / "check_datalist.py"
MODALITIES = ["t1", "t2", "flair"]
NUM_CLASSES = 4
SIZE = (16, 16)


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _image(seed: int = 0, shape=SIZE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _label(shape=SIZE) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    label[4:12, 4:12] = 1
    label[6:10, 6:10] = 3
    return label


def _case(root: Path, case_id: str, split: str = "training", label: bool = True) -> dict:
    """A clean per-modality case written under ``root``; returns its datalist entry."""
    entry = {"case": case_id}
    for i, m in enumerate(MODALITIES):
        entry[m] = f"{split}/{case_id}_{m}.nii.gz"
        _nifti(root / entry[m], _image(i))
    if label:
        entry["label"] = f"{split}/{case_id}_label.nii.gz"
        _nifti(root / entry["label"], _label())
    return entry


def _truncate(path: Path, keep: int | None = None, cut: int | None = None) -> None:
    """Keep the first ``keep`` bytes of ``path``, or all but the last ``cut``."""
    data = path.read_bytes()
    path.write_bytes(data[: keep if keep is not None else len(data) - cut])


def _write_datalist(root: Path, content: dict) -> str:
    path = root / "datalist.json"
    path.write_text(json.dumps({"modalities": MODALITIES, **content}, indent=1))
    return str(path)


def _bad_dataset(root: Path) -> dict:
    """One case per problem (plus a clean one); returns {name: (case id, key, absolute path)}."""
    training = [_case(root, "good")]

    training.append(_case(root, "trunc"))  # t2: valid file, then its last 100 bytes cut off
    _truncate(root / training[-1]["t2"], cut=100)

    training.append(_case(root, "header"))  # t1: only 20 bytes left, no readable header
    _truncate(root / training[-1]["t1"], keep=20)

    training.append(_case(root, "shape"))  # flair on a 14x16 grid
    _nifti(root / training[-1]["flair"], _image(2, shape=(14, 16)))

    training.append(_case(root, "affine"))  # t2 moved by 2 mm
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    _nifti(root / training[-1]["t2"], _image(1), shifted)

    training.append(_case(root, "nan"))  # t1 with NaN voxels
    array = _image(0)
    array[0, :5] = np.nan
    _nifti(root / training[-1]["t1"], array)

    training.append(_case(root, "range"))  # label value 7 with 4 classes
    label = _label()
    label[0, 0] = 7
    _nifti(root / training[-1]["label"], label)

    # one multi-channel file with 2 channels for 3 modalities
    multi = {"case": "multi", "image": "validation/multi.nii.gz", "label": "validation/multi_label.nii.gz"}
    _nifti(root / multi["image"], np.stack([_image(0), _image(1)], axis=-1))
    _nifti(root / multi["label"], _label())

    _write_datalist(root, {"training": training, "validation": [multi]})
    p = lambda rel: str(root / rel)  # noqa: E731
    return {
        "trunc": ("trunc", "'image[1]' (t2)", p("training/trunc_t2.nii.gz")),
        "header": ("header", "'image[0]' (t1)", p("training/header_t1.nii.gz")),
        "shape": ("shape", "'image[2]' (flair)", p("training/shape_flair.nii.gz")),
        "affine": ("affine", "'image[1]' (t2)", p("training/affine_t2.nii.gz")),
        "nan": ("nan", "'image[0]' (t1)", p("training/nan_t1.nii.gz")),
        "range": ("range", "'label'", p("training/range_label.nii.gz")),
        "multi": ("multi", "'image'", p("validation/multi.nii.gz")),
    }


def _find(problems: list[str], case: str, key: str, path: str, text: str) -> str:
    """The one problem of ``case``/``key``/``path`` containing ``text``."""
    prefix = f"case '{case}': key {key}: "
    hits = [p for p in problems if prefix in p and p.endswith(f": {path}") and text in p]
    assert len(hits) == 1, f"expected one problem '{prefix}...{text}...: {path}' in:\n" + "\n".join(problems)
    return hits[0]


# what each problem's message must contain, with and without reading voxels
EXPECTED_WITH_VOXELS = {
    "trunc": "voxel data unreadable (EOFError",
    "header": "unreadable header (",
    "shape": "spatial shape (14, 16) differs from image[0] (t1) (16, 16)",
    "affine": "affine differs from image[0] (t1) by up to 2",
    "nan": "5 non-finite voxels of 256 (5 NaN, 0 Inf)",
    "range": "label values outside [0, 4): 7 in 1 voxels",
    "multi": (
        "multi-channel image of shape (16, 16, 2) has 2 channels on its last axis, expected 3 "
        "(one per modality: t1, t2, flair)"
    ),
}
EXPECTED_HEADERS_ONLY = {
    "trunc": "truncated compressed stream: it ends after",
    "header": "unreadable header (",
    "shape": EXPECTED_WITH_VOXELS["shape"],
    "affine": EXPECTED_WITH_VOXELS["affine"],
    "multi": EXPECTED_WITH_VOXELS["multi"],
}


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cases") / "bad"
    return root, _bad_dataset(root)


def test_every_problem_in_one_report(bad_root):
    root, where = bad_root
    data = load_datalist(str(root / "datalist.json"))
    problems = validate_cases(data, NUM_CLASSES, modalities=MODALITIES, spatial_dims=2)
    for name, text in EXPECTED_WITH_VOXELS.items():
        message = _find(problems, *where[name], text)
        split = "validation" if name == "multi" else "training"
        assert message.startswith(f"{split} case '{where[name][0]}': ")
    assert len(problems) == len(EXPECTED_WITH_VOXELS), "\n".join(problems)
    assert not [p for p in problems if "'good'" in p]

    with pytest.raises(CaseValidationError) as info:
        check_datalist_cases(data, NUM_CLASSES, modalities=MODALITIES)
    assert info.value.problems == validate_cases(data, NUM_CLASSES, modalities=MODALITIES)
    assert str(info.value).startswith(f"invalid case files ({len(EXPECTED_WITH_VOXELS)} problems):\n")
    assert isinstance(info.value, ValueError)


def test_headers_only_skips_voxel_checks(bad_root):
    root, where = bad_root
    data = load_datalist(str(root / "datalist.json"))
    report = inspect_cases(data, NUM_CLASSES, read_voxels=False, modalities=MODALITIES, spatial_dims=2)
    problems = report.problems
    for name, text in EXPECTED_HEADERS_ONLY.items():
        _find(problems, *where[name], text)
    assert len(problems) == len(EXPECTED_HEADERS_ONLY), "\n".join(problems)
    assert not [p for p in problems if "non-finite" in p or "label values" in p]
    assert report.checked_files == 7 * 4 + 2


def test_clean_dataset_returns_datalist_unchanged(tmp_path):
    multi = {"case": "m1", "image": "m1.nii.gz", "label": "m1_label.nii.gz"}
    _nifti(tmp_path / multi["image"], np.stack([_image(i) for i in range(3)], axis=-1))
    _nifti(tmp_path / multi["label"], _label())
    unlabeled = _case(tmp_path, "u1", "unlabeled", label=False)
    _write_datalist(tmp_path, {"training": [_case(tmp_path, "a"), multi], "unlabeled": [unlabeled]})
    data = load_datalist(str(tmp_path / "datalist.json"))
    before = json.dumps(data)
    assert validate_cases(data, NUM_CLASSES, modalities=MODALITIES, spatial_dims=2) == []
    assert check_datalist_cases(data, num_classes=NUM_CLASSES, modalities=MODALITIES, spatial_dims=2) is data
    assert json.dumps(data) == before
    # the modality count comes from the image lists when modalities are not given
    assert validate_cases(data, NUM_CLASSES) == []


def test_synthetic_dataset_is_clean(tmp_path):
    from scripts.data.synthetic import generate_synthetic_dataset

    datalist = generate_synthetic_dataset(
        str(tmp_path / "syn"), image_size=24, num_training=2, num_unlabeled=1, num_validation=1, num_testing=1,
        misalignment_mm=2.0,
    )
    data = load_datalist(datalist)
    assert validate_cases(data, NUM_CLASSES, modalities=MODALITIES, spatial_dims=2) == []


def test_affine_within_float_noise_but_not_stackable(tmp_path):
    """MONAI's LoadImage refuses to stack files whose affines differ by more than allclose's tolerance."""
    from monai.transforms import LoadImaged

    entry = _case(tmp_path, "tiny")
    nudged = np.eye(4)
    nudged[1, 3] = 1e-6
    _nifti(tmp_path / entry["t2"], _image(1), nudged)
    label_nudged = np.eye(4)
    label_nudged[1, 3] = 1e-4  # labels are loaded alone: within affine_atol
    _nifti(tmp_path / entry["label"], _label(), label_nudged)
    _write_datalist(tmp_path, {"training": [entry]})
    data = load_datalist(str(tmp_path / "datalist.json"))
    problems = validate_cases(data, NUM_CLASSES, modalities=MODALITIES)
    assert len(problems) == 1, problems
    _find(problems, "tiny", "'image[1]' (t2)", str(tmp_path / entry["t2"]), "numpy.allclose")
    with pytest.raises(RuntimeError, match="affine"):
        LoadImaged(keys="image", image_only=True)(data["training"][0])
    assert validate_cases(data, NUM_CLASSES, modalities=MODALITIES, coregistered=False) == []
    # a label further away than affine_atol
    assert len(validate_cases(data, NUM_CLASSES, affine_atol=1e-5)) == 2


def test_label_checks(tmp_path):
    entry = _case(tmp_path, "lab")
    label = _label().astype(np.float32)
    label[0, 0] = 1.5
    label[0, 1] = np.inf
    label[0, 2] = -1
    _nifti(tmp_path / entry["label"], label, np.diag([1.0, 1.0, 1.0, 1.0]))
    _write_datalist(tmp_path, {"training": [entry]})
    data = load_datalist(str(tmp_path / "datalist.json"))
    path = str(tmp_path / entry["label"])
    problems = validate_cases(data, NUM_CLASSES)
    _find(problems, "lab", "'label'", path, "1 non-finite voxels of 256 (0 NaN, 1 Inf)")
    _find(problems, "lab", "'label'", path, "1 voxels with non-integer label values (e.g. 1.5)")
    _find(problems, "lab", "'label'", path, "label values outside [0, 4): -1 in 1 voxels")
    assert len(problems) == 3
    # no range check without num_classes, none of these without voxels
    assert len(validate_cases(data, None)) == 2
    assert validate_cases(data, NUM_CLASSES, read_voxels=False) == []


def test_per_modality_labels_on_their_own_grid(tmp_path):
    """Unpaired data: label[m] must be on image[m]'s grid, even when the modalities are not coregistered."""
    entry = {"case": "ct_mr", "image": ["ct.nii.gz", "mr.nii.gz"], "label": {"ct": "ct_l.nii.gz", "mr": "mr_l.nii.gz"}}
    _nifti(tmp_path / "ct.nii.gz", _image(0, shape=(20, 20)))
    _nifti(tmp_path / "ct_l.nii.gz", _label(shape=(20, 20)))
    _nifti(tmp_path / "mr.nii.gz", _image(1))
    _nifti(tmp_path / "mr_l.nii.gz", _label(shape=(20, 20)))  # on the CT grid: wrong
    (tmp_path / "datalist.json").write_text(json.dumps({"modalities": ["ct", "mr"], "training": [entry]}))
    data = load_datalist(str(tmp_path / "datalist.json"))
    problems = validate_cases(data, NUM_CLASSES, coregistered=False, modalities=["ct", "mr"])
    assert len(problems) == 1, problems
    _find(problems, "ct_mr", "'label[1]' (mr)", str(tmp_path / "mr_l.nii.gz"),
          "spatial shape (20, 20) differs from image[1] (mr) (16, 16) (a label must be on the grid of its image)")
    problems = validate_cases(data, NUM_CLASSES, modalities=["ct", "mr"])
    _find(problems, "ct_mr", "'image[1]' (mr)", str(tmp_path / "mr.nii.gz"), "differs from image[0] (ct) (20, 20)")


def test_layouts_with_spatial_dims(tmp_path):
    entry = _case(tmp_path, "vol")
    _nifti(tmp_path / entry["t1"], _image(0, shape=(16, 16, 5)))  # a 3-D volume in a 2-D dataset
    m4 = {"case": "m4", "image": "m4.nii.gz", "label": "m4_label.nii.gz"}
    _nifti(tmp_path / "m4.nii.gz", _image(0, shape=(16, 16, 1, 3)))  # (H, W, 1, M): 2-D, or 3-D with D=1
    _nifti(tmp_path / "m4_label.nii.gz", _label())  # (H, W): on the grid of the multi-channel file
    m3 = {"case": "m3", "image": "m3.nii.gz"}
    _nifti(tmp_path / "m3.nii.gz", _image(0, shape=(16, 16, 3)))  # (H, W, M): 2-D only
    _write_datalist(tmp_path, {"training": [entry], "testing": [m4, m3]})
    data = load_datalist(str(tmp_path / "datalist.json"))
    problems = validate_cases(data, NUM_CLASSES, spatial_dims=2, modalities=MODALITIES)
    assert len(problems) == 1, problems
    _find(problems, "vol", "'image[0]' (t1)", str(tmp_path / entry["t1"]),
          "per-modality image of shape (16, 16, 5) is not a 2-D image (spatial_dims=2")
    problems = validate_cases(data, NUM_CLASSES, spatial_dims=3, modalities=MODALITIES)
    _find(problems, "m3", "'image'", str(tmp_path / "m3.nii.gz"),
          "image of shape (16, 16, 3) cannot be read as 3 modalities (one per modality: t1, t2, flair): "
          "expected a multi-channel file of shape (H, W, D, 3)")
    assert not [p for p in problems if "'m4'" in p]


def test_singleton_axis_is_a_different_grid_for_stacked_files(tmp_path):
    """(16, 16, 1) and (16, 16) cannot be stacked by LoadImage, nor cropped together with their label."""
    entry = _case(tmp_path, "sing")
    _nifti(tmp_path / entry["t2"], _image(1, shape=(16, 16, 1)))
    _nifti(tmp_path / entry["label"], _label()[..., None])
    _write_datalist(tmp_path, {"training": [entry]})
    data = load_datalist(str(tmp_path / "datalist.json"))
    problems = validate_cases(data, NUM_CLASSES, modalities=MODALITIES)
    assert len(problems) == 2, problems
    text = "spatial shape (16, 16, 1) differs from image[0] (t1) (16, 16)"
    _find(problems, "sing", "'image[1]' (t2)", str(tmp_path / entry["t2"]), text)
    _find(problems, "sing", "'label'", str(tmp_path / entry["label"]), text)


def test_uncompressed_truncation_and_concatenated_gzip(tmp_path):
    entry = _case(tmp_path, "raw")
    entry["t1"] = "training/raw_t1.nii"
    _nifti(tmp_path / entry["t1"], _image(0))
    _truncate(tmp_path / entry["t1"], keep=600)
    # a valid .nii.gz made of two gzip members: not truncated
    member = tmp_path / entry["t2"]
    raw = gzip.decompress(member.read_bytes())
    member.write_bytes(gzip.compress(raw[:400]) + gzip.compress(raw[400:]))
    _write_datalist(tmp_path, {"training": [entry]})
    data = load_datalist(str(tmp_path / "datalist.json"))
    path = str(tmp_path / entry["t1"])
    expected = ((False, "truncated file: 600 bytes, the header needs 1376"), (True, "voxel data unreadable"))
    for read_voxels, text in expected:
        problems = validate_cases(data, NUM_CLASSES, read_voxels=read_voxels, modalities=MODALITIES)
        assert len(problems) == 1, problems
        _find(problems, "raw", "'image[0]' (t1)", path, text)


def test_other_formats_are_not_opened(tmp_path):
    entry = _case(tmp_path, "npy")
    entry["t1"] = "training/npy_t1.npy"
    np.save(tmp_path / entry["t1"], _image(0))
    _write_datalist(tmp_path, {"training": [entry]})
    report = inspect_cases(load_datalist(str(tmp_path / "datalist.json")), NUM_CLASSES)
    assert report.problems == []
    assert report.unchecked_files == [str(tmp_path / entry["t1"])]
    assert report.checked_files == 3


def test_missing_file_reported_by_validate_cases(tmp_path):
    entry = _case(tmp_path, "gone")
    _write_datalist(tmp_path, {"training": [entry]})
    data = load_datalist(str(tmp_path / "datalist.json"))
    os.remove(tmp_path / entry["flair"])
    path = str(tmp_path / entry["flair"])
    assert validate_cases(data, NUM_CLASSES, modalities=MODALITIES) == [
        f"training case 'gone': key 'image[2]' (flair): file not found: {path}"
    ]
    assert inspect_cases(data, NUM_CLASSES, report_missing=False).problems == []


# ------------------------------------------------------------------------------------------------
# command-line tool


def _run_tool(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=str(cwd), capture_output=True, text=True, timeout=120,
        env=dict(os.environ, **(env or {})),
    )


@pytest.fixture(scope="module")
def bad_with_missing(tmp_path_factory) -> tuple[Path, dict]:
    """The bad dataset plus a testing case whose t1 file does not exist."""
    root = tmp_path_factory.mktemp("cli") / "bad"
    where = _bad_dataset(root)
    content = json.loads((root / "datalist.json").read_text())
    missing = _case(root, "missing", "testing", label=False)
    os.remove(root / missing["t1"])
    content["testing"] = [missing]
    (root / "datalist.json").write_text(json.dumps(content))
    where["missing"] = ("missing", "'t1'", str(root / missing["t1"]))
    return root, where


@pytest.mark.parametrize("from_repo_root", [True, False], ids=["cwd=repo", "cwd=tmp"])
def test_cli_reports_everything_and_fails(bad_with_missing, tmp_path, from_repo_root):
    root, where = bad_with_missing
    if from_repo_root:
        cwd, tool, datalist = REPO_ROOT, "scripts/check_datalist.py", os.path.relpath(root / "datalist.json", REPO_ROOT)
    else:
        cwd, tool, datalist = tmp_path, str(TOOL), str(root / "datalist.json")
    proc = _run_tool(
        [tool, "--datalist", datalist, "--modalities", "['t1','t2','flair']", "--num_classes", "4"], cwd
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    _find(lines, *where["missing"], "file not found")
    for name, text in EXPECTED_WITH_VOXELS.items():
        _find(lines, *where[name], text)
    count = len(EXPECTED_WITH_VOXELS) + 1
    assert len(lines) == count + 1, proc.stdout
    assert lines[-1] == (
        f"summary: {datalist}: {count} problems (9 cases, 32 files opened; headers and voxels)"
    ), lines[-1]
    assert proc.stderr == ""


def test_cli_headers_only_and_clean(bad_with_missing, tmp_path):
    root, where = bad_with_missing
    args = [str(TOOL), "--datalist", str(root / "datalist.json"), "--num_classes", "4", "--no_voxels"]
    proc = _run_tool(args, tmp_path)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    for name, text in EXPECTED_HEADERS_ONLY.items():
        _find(lines, *where[name], text)
    assert len(lines) == len(EXPECTED_HEADERS_ONLY) + 2 and lines[-1].endswith("; headers only)")

    clean = tmp_path / "clean"
    clean.mkdir()
    _write_datalist(clean, {"training": [_case(clean, "a")], "testing": [_case(clean, "b", "testing")]})
    # --dataset_dir with a datalist elsewhere, and a `scripts` package of the user's on PYTHONPATH
    moved = tmp_path / "lists" / "datalist.json"
    moved.parent.mkdir()
    moved.write_text((clean / "datalist.json").read_text())
    decoy = tmp_path / "decoy" / "scripts"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError('decoy scripts package imported')\n")
    proc = _run_tool(
        ["scripts/check_datalist.py", "--datalist", str(moved), "--dataset_dir", str(clean), "--num_classes", "4"],
        REPO_ROOT, env={"PYTHONPATH": f"{decoy.parent}{os.pathsep}{REPO_ROOT}"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == f"summary: {moved}: no problems (2 cases, 8 files opened; headers and voxels)\n"


def test_cli_structure_problems_and_unreadable_datalist(tmp_path):
    root = tmp_path / "ds"
    entry = _case(root, "a")
    del entry["label"]  # a training case without a label: structure problem, files not checked
    _write_datalist(root, {"training": [entry]})
    proc = _run_tool([str(TOOL), "--datalist", str(root / "datalist.json")], tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "training case 'a': key 'label': missing (every training case needs a label)",
        f"summary: {root / 'datalist.json'}: 1 problem "
        "(case files not checked (fix the datalist first); headers and voxels)",
    ]
    proc = _run_tool([str(TOOL), "--datalist", str(tmp_path / "nope.json")], tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0] == f"error: datalist file not found: {tmp_path / 'nope.json'}"


# ---------------------------------------------------------------------------------------------
# check_datalist with sequences on their own grids (--own_grids) and missing sequences


def _own_grid_dataset(root: Path) -> str:
    """Two patients with MR and US on different grids (shape, spacing, origin), one label each; the
    second patient lacks its US sequence. Returns the datalist path."""
    us_affine = np.diag([1.5, 1.5, 1.0, 1.0])
    us_affine[:3, 3] = [30.0, -12.0, 0.0]
    cases = []
    for name, has_us in (("p1", True), ("p2", False)):
        case = {"case": name, "mr": f"{name}_mr.nii.gz", "label": {"mr": f"{name}_mr_seg.nii.gz"}}
        _nifti(root / case["mr"], _image(1))
        _nifti(root / case["label"]["mr"], _label())
        if has_us:
            case["us"] = f"{name}_us.nii.gz"
            case["label"]["us"] = f"{name}_us_seg.nii.gz"
            _nifti(root / case["us"], _image(2, shape=(12, 10)), us_affine)
            _nifti(root / case["label"]["us"], _label(shape=(12, 10)), us_affine)
        cases.append(case)
    path = root / "datalist.json"
    path.write_text(json.dumps({"modalities": ["mr", "us"], "training": cases}, indent=1))
    return str(path)


def test_cli_own_grids(tmp_path):
    datalist = _own_grid_dataset(tmp_path / "ds")
    proc = _run_tool([str(TOOL), "--datalist", datalist, "--num_classes", "4", "--own_grids", "true"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == (
        f"summary: {datalist}: no problems (3 cases (one per sequence: own grids), 6 files opened; headers and voxels)\n"
    )
    # as one grid: the missing US sequence and the per-modality labels are refused, unchecked
    proc = _run_tool([str(TOOL), "--datalist", datalist], tmp_path)
    assert proc.returncode == 1 and "training case 'p2': key 'us': missing" in proc.stdout, proc.stdout


def test_check_own_grids_checks_each_label_on_its_own_image(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_datalist_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    root = tmp_path / "ds"
    datalist = _own_grid_dataset(root)
    # with every sequence present, the co-registration check (without --own_grids) compares US with MR
    content = json.loads(Path(datalist).read_text())
    content["training"] = content["training"][:1]
    one = root / "one.json"
    one.write_text(json.dumps(content))
    assert tool.check(str(one)) == 1
    out = capsys.readouterr().out
    assert "training case 'p1': key 'image[1]' (us): spatial shape (12, 10) differs from image[0] (mr)" in out
    assert tool.check(str(one), own_grids=True) == 0
    capsys.readouterr()
    # own grids: a label off its own image's grid is reported on the split case; the other sequence is not
    bad_affine = np.diag([1.5, 1.5, 1.0, 1.0])
    _nifti(root / "p1_us_seg.nii.gz", _label(shape=(12, 10)), bad_affine)  # US label, origin moved
    _nifti(root / "p2_mr_seg.nii.gz", _label(shape=(12, 10)))  # MR label on another shape
    assert tool.check(datalist, own_grids="true") == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("training case 'p1_us': key 'label': ") and "p1_us_seg.nii.gz" in lines[0]
    assert lines[1].startswith("training case 'p2_mr': key 'label': ") and "(12, 10)" in lines[1]
    assert lines[2].endswith("2 problems (3 cases (one per sequence: own grids), 6 files opened; headers and voxels)")


def test_check_allow_missing_modalities(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_datalist_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    root = tmp_path / "ds"
    entry = _case(root, "a")
    del entry["t2"]  # a co-registered case lacking one sequence, one label on the shared grid
    datalist = _write_datalist(root, {"training": [entry, _case(root, "b")]})
    assert tool.check(datalist, num_classes=4) == 1
    assert "key 't2': missing" in capsys.readouterr().out
    assert tool.check(datalist, num_classes=4, allow_missing_modalities=True) == 0
    assert capsys.readouterr().out.endswith("no problems (2 cases, 7 files opened; headers and voxels)\n")
    assert tool.check(datalist, allow_missing_modalities="maybe") == 1
    assert "--allow_missing_modalities must be true or false" in capsys.readouterr().out
