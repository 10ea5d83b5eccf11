"""Bad input a new user's messy data holds (issue 13): each is reported up front, naming the split,
case, key and path, printed last, with a non-zero exit status, and nothing written before is lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle_runner import BUNDLE, CONFIGS, REPO_ROOT, config_files
from scripts.data.case_validation import validate_cases
from scripts.data.datalist import DatalistError, load_datalist
from scripts.errors import FlagError, as_bool, bundle_error_of, check_bool

MODALITIES = ["t1", "t2", "flair"]
SIZE = 32


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# ------------------------------------------------------------------------------- tiny datasets
def _label(shape=(SIZE, SIZE)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[4:28, 4:28] = 1
    label[8:24, 8:24] = 2
    label[12:20, 12:20] = 3
    return label


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _case(root: Path, split: str, name: str, shape=(SIZE, SIZE), label: bool = True, form: str = "keys") -> dict:
    """Writes one case (images a noisy copy of the label, one file per modality); its datalist entry."""
    lab = _label(shape[:2]).reshape(shape)
    rng = np.random.default_rng(abs(hash(name)) % 1000)
    paths = {}
    for i, m in enumerate(MODALITIES):
        img = (lab * (i + 1) + rng.normal(0, 0.1, shape)).astype(np.float32)
        paths[m] = _save(root / split / f"{name}_{m}.nii.gz", img)
    entry: dict = {"case": name}
    if form == "keys":
        entry.update({m: os.path.relpath(p, root) for m, p in paths.items()})
    else:
        entry["image"] = [os.path.relpath(paths[m], root) for m in MODALITIES]
    if label:
        entry["label"] = os.path.relpath(_save(root / split / f"{name}_label.nii.gz", lab), root)
    return entry


def _dataset(root: Path, validation: int = 1, testing: int = 0, shape=(SIZE, SIZE), **extra) -> dict:
    content = {
        "modalities": MODALITIES,
        "training": [_case(root, "training", f"tr{i}", shape) for i in range(2)],
        "validation": [_case(root, "validation", f"va{i}", shape) for i in range(validation)],
        "testing": [_case(root, "testing", f"te{i}", shape, label=False) for i in range(testing)],
        **extra,
    }
    _write_datalist(root, content)
    return content


def _write_datalist(root: Path, content: dict) -> None:
    (root / "datalist.json").write_text(json.dumps(content, indent=1))


def _bundle(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=str(REPO_ROOT),
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _train(tmp: Path, data: Path, *extra: str, epochs: int = 1) -> subprocess.CompletedProcess:
    return _bundle([
        "run", "--config_file", config_files("train.yaml"),
        "--dataset_dir", str(data), "--epochs", str(epochs), "--iterations_per_epoch", "1", "--val_interval", "1",
        "--roi_size", json.dumps([SIZE, SIZE]), "--batch_size", "2", "--cache_rate", "0",
        "--output_dir", str(tmp / "out"), "--ckpt_dir", str(tmp / "models"), *extra,
    ])


def _infer(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return _bundle(["run", "--config_file", config_files("inference.yaml"), "--output_dir", str(tmp / "seg"), *extra])


def _error(proc: subprocess.CompletedProcess, kind: str) -> str:
    """The bundle error printed last (after everything else), with exit status 1; its text."""
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    tail = proc.stderr.rstrip()
    start = tail.rfind("\nERROR: ")
    assert start >= 0, tail[-3000:]
    message = tail[start + 1 :]
    assert message.startswith(f"ERROR: {kind}: "), message
    assert "Traceback" not in message and "Failed to instantiate" not in message
    return message


def _snapshot(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for f in folders if f.is_dir() for p in sorted(f.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------- 1, truncated case
def test_inference_refuses_nan_and_names_only_the_bad_file(tmp_path):
    data = tmp_path / "data"
    content = _dataset(data, testing=3)
    nan_t1 = data / content["testing"][0]["t1"]
    img = nib.load(nan_t1)
    arr = np.asarray(img.dataobj).copy()
    arr[3:5, 3:5] = np.nan
    _save(nan_t1, arr)
    trunc_t2 = data / content["testing"][1]["t2"]
    raw = trunc_t2.read_bytes()
    trunc_t2.write_bytes(raw[: len(raw) - 200])
    proc = _infer(tmp_path, "--dataset_dir", str(data))
    message = _error(proc, "CaseFailuresError")
    assert "2 of 3 cases failed" in message
    assert f"inference case 'te0': key 'image[0]' (t1): 4 non-finite voxels of 1024 (4 NaN, 0 Inf): {nan_t1}" in message
    trunc_line = next(line for line in message.splitlines() if "'te1'" in line)
    assert "key 'image[1]' (t2)" in trunc_line and str(trunc_t2) in trunc_line
    assert str(data / content["testing"][1]["t1"]) not in message  # only the bad file is named
    written = sorted(p.name for p in (tmp_path / "seg").iterdir())
    assert written == ["te2_seg.nii.gz"]  # no all-background segmentation for the NaN case


# ------------------------------------------------------------------------------- 2, 3, empty folders
def test_training_without_validation_cases_is_refused_before_anything_is_written(tmp_path):
    data = tmp_path / "data"
    content = _dataset(data, validation=1)
    content["validaton"] = content.pop("validation")  # misspelled
    content["trainig"] = []
    _write_datalist(data, content)
    proc = _train(tmp_path, data)
    message = _error(proc, "DatalistError")
    assert "key 'validaton': unknown top-level key; did you mean 'validation'?" in message
    assert "key 'trainig': unknown top-level key; did you mean 'training'?" in message
    assert "split 'validation': no cases" in message and str(data / "datalist.json") in message
    # nothing written, and the output folders this run created are removed again
    assert not (tmp_path / "out").exists() and not (tmp_path / "models").exists()


def test_training_that_never_validates_fails_without_model(tmp_path):
    """val_interval beyond epochs: no validation round, so model.pt is never written; the run must not exit 0."""
    data = tmp_path / "data"
    _dataset(data, validation=1)
    models = tmp_path / "models"
    message = _error(_train(tmp_path, data, "--val_interval", "5"), "TrainingOutputError")
    assert f"training finished without writing {models / 'model.pt'}: no validation round ran (val_interval = 5" in message


def test_a_single_case_datalist_is_refused_for_training(tmp_path):
    data = tmp_path / "data"
    _write_datalist(data, {"modalities": MODALITIES, "training": [_case(data, "training", "only")]})
    with pytest.raises(DatalistError, match="split 'validation': no cases; training selects and writes model.pt"):
        load_datalist(str(data / "datalist.json"), require_validation=True)
    assert load_datalist(str(data / "datalist.json"))["validation"] == []  # other uses need none


# ------------------------------------------------------------------------------- 4
def test_modalities_in_another_order_reorder_every_form_of_case(tmp_path):
    data = tmp_path / "data"
    content = {
        "modalities": MODALITIES,
        "training": [_case(data, "training", "named"), _case(data, "training", "listed", form="list")],
    }
    _write_datalist(data, content)
    order = ["flair", "t1", "t2"]
    result = load_datalist(str(data / "datalist.json"), modalities=order)
    for case in result["training"]:
        assert [Path(p).name for p in case["image"]] == [f"{case['case']}_{m}.nii.gz" for m in order]
    # a subset is picked from the lists too
    result = load_datalist(str(data / "datalist.json"), modalities=["t2"])
    assert [Path(result["training"][1]["image"][0]).name] == ["listed_t2.nii.gz"]
    # a multi-channel file cannot be reordered; a modality the datalist lacks cannot be matched
    content["training"].append({"case": "multi", "image": "training/named_t1.nii.gz", "label": "training/named_label.nii.gz"})
    _write_datalist(data, content)
    with pytest.raises(DatalistError) as error:
        load_datalist(str(data / "datalist.json"), modalities=order)
    assert "training case 'multi': key 'image': a multi-channel file holds the modalities in the datalist's order" in str(error.value)
    with pytest.raises(DatalistError, match="training case 'listed': key 'image': cannot match its paths to --modalities"):
        load_datalist(str(data / "datalist.json"), modalities=["t1", "t2", "dwi"])


# ------------------------------------------------------------------------------- 5
def test_one_boolean_parser_for_every_flag():
    for text in ("true", "True", "yes", "1", "y", " TRUE "):
        assert as_bool(text) is True
    for text in ("false", "False", "no", "0", "n"):
        assert as_bool(text) is False
    assert as_bool(1) is True and as_bool(0) is False and as_bool(True) is True
    with pytest.raises(FlagError, match=r"--misalign_train must be true or false .* got 'maybe'"):
        as_bool("maybe", "misalign_train")
    # components take the parsed value: text that bypassed the configs' `flags` is refused, not read as true
    assert check_bool(False, "amp") is False
    with pytest.raises(TypeError, match="amp must be a bool"):
        check_bool("false", "amp")


def test_misalign_train_given_as_text_switches_misalignment(tmp_path):
    from monai.bundle import ConfigParser

    def transforms(value):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "train.yaml"))
        parser.update({"misalign_train": value})
        return [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]

    assert "RandModalityMisalignd" in transforms("yes")
    assert "RandModalityMisalignd" in transforms("True")
    assert "RandModalityMisalignd" not in transforms("false")
    assert "RandModalityMisalignd" not in transforms("no")


def test_validate_voxels_false_is_obeyed_and_nonfinite_loss_names_the_cases(tmp_path):
    """`--validate_voxels false` skips the voxel checks (a NaN image passes them), so training meets a NaN
    loss, which names the cases of the batch."""
    data = tmp_path / "data"
    content = _dataset(data)
    path = data / content["training"][1]["t2"]
    arr = np.asarray(nib.load(path).dataobj).copy()
    arr[0, 0] = np.nan
    _save(path, arr)
    message = _error(_train(tmp_path, data), "CaseValidationError")  # voxels checked by default
    assert f"training case 'tr1': key 'image[1]' (t2): 1 non-finite voxels of 1024 (1 NaN, 0 Inf): {path}" in message
    proc = _train(tmp_path, data, "--validate_voxels", "false")
    message = _error(proc, "NonFiniteLossError")
    assert "non-finite loss at iteration 1" in message and "labeled cases: " in message and "tr1" in message
    assert not (tmp_path / "models" / "model.pt").exists()


# ------------------------------------------------------------------------------- 6, 7
def test_resume_with_changed_settings_is_refused_and_keeps_the_run(tmp_path):
    data = tmp_path / "data"
    _dataset(data)
    first = _train(tmp_path, data)
    assert first.returncode == 0, first.stderr[-3000:]
    before = _snapshot(tmp_path / "out", tmp_path / "models")
    proc = _train(tmp_path, data, "--learning_rate", "1e6", "--epochs", "2")
    message = _error(proc, "ResumeConflictError")
    assert "learning_rate: saved 0.002, now 1000000.0" in message and "--resume false" in message
    assert str(tmp_path / "out" / "training_state_checkpoint_epoch=1.pt") in message
    after = _snapshot(tmp_path / "out", tmp_path / "models")
    assert {k: after.get(k) for k in before} == before  # nothing overwritten or lost
    # more epochs with the same settings continue the run
    proc = _train(tmp_path, data, "--epochs", "2")
    assert proc.returncode == 0 and "resuming from" in proc.stderr + proc.stdout
    # issue 24: the training state cut short (full disk, interrupted copy): named, with what to do, no zip traceback
    state = tmp_path / "out" / "training_state_checkpoint_epoch=2.pt"
    raw = state.read_bytes()
    state.write_bytes(raw[: len(raw) // 2])
    proc = _train(tmp_path, data, "--epochs", "3")
    message = _error(proc, "CheckpointError")
    assert message.startswith(f"ERROR: CheckpointError: cannot resume: cannot load {state}: the file is truncated or corrupt")
    assert message.endswith("Delete it to start from scratch, or pass --resume false (or another --output_dir).")
    assert state.stat().st_size == len(raw) // 2  # left for the user to look at


def test_second_run_into_the_same_output_dir_is_refused(tmp_path):
    data = tmp_path / "data"
    _dataset(data)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; sys.path.insert(0, sys.argv[1]);"
            "from scripts.run_management.output_folders import check_output_folders;"
            "check_output_folders({'output_dir': sys.argv[2]}, lock='output_dir'); print('locked', flush=True);"
            "time.sleep(120)"
        ), str(BUNDLE), str(out)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = _train(tmp_path, data)
        message = _error(proc, "OutputFolderError")
        assert f"output folder output_dir '{out}' is in use by another run (pid {holder.pid}" in message
        assert not (tmp_path / "models" / "model.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    assert _train(tmp_path, data).returncode == 0  # the lock dies with its process


# ------------------------------------------------------------------------------- 8, metrics.json mode
def test_2d_images_with_a_singleton_third_axis_train(tmp_path):
    data = tmp_path / "data"
    _dataset(data, shape=(SIZE, SIZE, 1))
    proc = _train(tmp_path, data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = tmp_path / "models" / "model.pt"
    metrics = tmp_path / "out" / "metrics.json"
    assert model.is_file()
    assert metrics.stat().st_mode & 0o777 == model.stat().st_mode & 0o777  # not mkstemp's 0600


def test_mixed_h_x_w_x_1_and_h_x_w_exports_train_in_one_batch(tmp_path):
    """Issue 24: cases written by different export tools, some H x W x 1 and some H x W (images and
    labels), in one batch: no collate error (`stack expects each tensor to be equal size`)."""
    data = tmp_path / "data"
    content = {
        "modalities": MODALITIES,
        "training": [_case(data, "training", "flat", (SIZE, SIZE)), _case(data, "training", "slab", (SIZE, SIZE, 1))],
        "validation": [_case(data, "validation", "va0", (SIZE, SIZE, 1)), _case(data, "validation", "va1", (SIZE, SIZE))],
    }
    _write_datalist(data, content)
    proc = _train(tmp_path, data)  # batch_size 2: every batch holds both kinds
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()


# ------------------------------------------------------------------------------- 9, 10, 11
def test_every_problem_is_reported_at_once_with_a_missing_file(tmp_path):
    data = tmp_path / "data"
    content = _dataset(data, validation=2)
    training = content["training"]
    training[0]["dwi"] = "training/tr0_dwi.nii.gz"  # an extra modality key
    _save(data / training[0]["dwi"], np.zeros((SIZE, SIZE), np.float32))
    os.remove(data / training[1]["flair"])  # a missing file ...
    _save(data / content["validation"][0]["label"], _label() + 4)  # ... and file problems of other cases
    _save(data / content["validation"][1]["t2"], np.zeros((SIZE, SIZE + 2), np.float32))
    _write_datalist(data, content)
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.pt").write_bytes(b"an earlier model")
    proc = _train(tmp_path, data)
    message = _error(proc, "DatalistError")
    assert f"training case 'tr0': key 'dwi': an image file under a key that is not a modality of this run" in message
    assert str(data / "training" / "tr0_dwi.nii.gz") in message
    # fix the extra key: the missing file is reported with the problems of every other file
    del training[0]["dwi"]
    _write_datalist(data, content)
    proc = _train(tmp_path, data)
    message = _error(proc, "CaseValidationError")
    assert f"training case 'tr1': key 'flair': file not found: {data / 'training' / 'tr1_flair.nii.gz'}" in message
    assert "validation case 'va0': key 'label': label values outside [0, 4)" in message
    assert "validation case 'va1': key 'image[1]' (t2): spatial shape (32, 34) differs from image[0] (t1)" in message
    assert "coregistered=False" not in message and "resample them onto the grid of image[0]" in message
    assert (models / "model.pt").read_bytes() == b"an earlier model"


# ------------------------------------------------------------------------------- 12
def test_inference_checks_its_output_folder_first(tmp_path):
    data = tmp_path / "data"
    _dataset(data, testing=1)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = _bundle([
        "run", "--config_file", config_files("inference.yaml"), "--dataset_dir", str(data),
        "--output_dir", str(blocker / "seg"),
    ])
    message = _error(proc, "OutputFolderError")
    assert f"output folder output_dir '{blocker / 'seg'}' cannot be created: Not a directory" in message
    assert "cases segmented" not in proc.stderr + proc.stdout  # stopped before any case
    assert blocker.read_text() == "not a folder"


# ------------------------------------------------------------------------------- 13
def test_bundle_errors_are_found_through_monai_wrappers():
    inner = DatalistError(["training case 'a': key 'label': missing"])
    try:
        try:
            raise inner
        except DatalistError as e:
            raise RuntimeError("Failed to instantiate component 'x'") from e
    except RuntimeError as outer:
        assert bundle_error_of(outer) is inner
    assert bundle_error_of(RuntimeError("other")) is None


# ------------------------------------------------------------------------------- smaller ones
def test_gzip_without_trailer_is_reported_alike_with_and_without_voxels(tmp_path):
    data = tmp_path / "data"
    content = _dataset(data)
    path = data / content["training"][0]["t1"]
    raw = path.read_bytes()
    path.write_bytes(raw[:-6])  # the gzip trailer (CRC, size) cut
    datalist = load_datalist(str(data / "datalist.json"))
    for read_voxels in (True, False):
        problems = validate_cases(datalist, 4, read_voxels=read_voxels, modalities=MODALITIES)
        assert len(problems) == 1, problems
        assert problems[0].startswith("training case 'tr0': key 'image[0]' (t1): incomplete gzip file: the voxel data")
        assert "the header needs" not in problems[0] and problems[0].endswith(str(path))


def test_fractional_labels_are_counted_in_voxels(tmp_path):
    data = tmp_path / "data"
    content = _dataset(data)
    path = data / content["training"][0]["label"]
    _save(path, _label().astype(np.float32) * 0.5)
    problems = validate_cases(load_datalist(str(data / "datalist.json")), 4, modalities=MODALITIES)
    count = int(np.count_nonzero(_label() % 2))
    assert problems == [
        f"training case 'tr0': key 'label': {count} voxels with non-integer label values (e.g. 0.5); "
        f"a label map holds class indices: {path}"
    ]
