"""Evaluation (evaluate.yaml over train.yaml) and inference (inference.yaml alone), run as users run them."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle_runner import BUNDLE, CONFIGS, REPO_ROOT, TINY_SYNTHETIC, config_files, run_bundle, tiny_train_args

MODALITIES = ["t1", "t2", "flair"]
HEADS = ["fused", *MODALITIES]
SHIPPED = BUNDLE / "models" / "model.pt"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A model trained for 2 iterations on a tiny embedded dataset: tmp/models/model.pt, tmp/data/."""
    tmp = tmp_path_factory.mktemp("tiny")
    run_bundle(tiny_train_args(tmp))
    assert (tmp / "models" / "model.pt").is_file()
    return tmp


@pytest.fixture
def shipped_weights() -> Path:
    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED.relative_to(REPO_ROOT)} is absent (shipped weights not trained yet)")
    return SHIPPED


def _testing_cases(data_dir: Path) -> list[dict]:
    return json.loads((data_dir / "datalist.json").read_text())["testing"]


def _infer_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run", "--config_file", str(CONFIGS / "inference.yaml"),
        "--roi_size", json.dumps([32, 32]),
        "--ckpt_dir", str(model_dir / "models"),
        "--output_dir", str(out),
        *extra,
    ]


def _run_expect_failure(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert proc.returncode != 0, f"expected a failure\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _multichannel(case: dict, data_dir: Path, path: Path, flip: bool = False, singleton: bool = False) -> np.ndarray:
    """Writes the case's modalities as ONE NIfTI, modalities on the last axis; returns the affine."""
    images = [nib.load(data_dir / case[m]) for m in MODALITIES]
    array = np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in images], axis=-1)  # (H, W, M)
    affine = images[0].affine.copy()
    if flip:  # same anatomy, stored left-right mirrored (LAS): Orientationd must undo it, Invertd redo it
        array = array[::-1].copy()
        affine[:, 0] *= -1
        affine[0, 3] = images[0].affine[0, 3] + images[0].affine[0, 0] * (array.shape[0] - 1)
    if singleton:
        array = array[:, :, None, :]
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return affine


# ---------------------------------------------------------------- evaluation
def test_evaluate_reports_every_head(tiny_model, tmp_path):
    out = tmp_path / "eval"
    proc = run_bundle([
        "run", "--config_file", config_files("train.yaml", "evaluate.yaml"),
        "--roi_size", json.dumps([32, 32]),
        "--ckpt_dir", str(tiny_model / "models"),
        "--synthetic_dir", str(tiny_model / "data"),
        "--synthetic", json.dumps(TINY_SYNTHETIC),
        "--output_dir", str(out),
        "--num_overlays", "1",
    ])
    case_ids = [c["case"] for c in _testing_cases(tiny_model / "data")]
    report = json.loads((out / "metrics.json").read_text())
    assert report["heads"] == HEADS
    assert report["classes"] == ["outer", "wall", "cavity"]
    assert [c["case"] for c in report["cases"]] == case_ids
    for head in HEADS:
        for metric in ("dice", "hd95", "asd"):
            summary = report["summary"][head][metric]
            assert set(summary) >= {"outer", "wall", "cavity", "mean"}
            if metric == "dice":
                assert 0.0 <= summary["mean"] <= 1.0
            for case in report["cases"]:
                assert set(case[head][metric]) == {"outer", "wall", "cavity", "mean"}
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {r["case"] for r in rows} == {*case_ids, "mean"}
    assert len(rows) == (len(case_ids) + 1) * len(HEADS) * 3
    assert {r["head"] for r in rows} == set(HEADS)
    overlays = sorted((out / "overlays").glob("*.png"))
    assert [p.stem for p in overlays] == case_ids[:1]
    import matplotlib.pyplot as plt

    assert plt.imread(overlays[0]).ndim == 3
    log = proc.stdout + proc.stderr
    assert "evaluation summary" in log and all(h in log for h in HEADS)


def test_evaluate_with_shipped_weights(shipped_weights, tmp_path):
    out = tmp_path / "eval"
    run_bundle([
        "run", "--config_file", config_files("train.yaml", "evaluate.yaml"),
        "--synthetic_dir", str(tmp_path / "data"),
        "--synthetic", json.dumps({"num_training": 1, "num_unlabeled": 0, "num_validation": 1, "num_testing": 4}),
        "--output_dir", str(out), "--num_overlays", "0",
    ])
    report = json.loads((out / "metrics.json").read_text())
    assert report["summary"]["fused"]["dice"]["mean"] > 0.5


def _last_error(proc: subprocess.CompletedProcess) -> str:
    """The last line printed, which must be the bundle's own error (exit status 1, no traceback after it)."""
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    tail = proc.stderr.rstrip()
    message = tail[tail.rfind("\nERROR: ") + 1 :]
    assert message.startswith("ERROR: ") and "Traceback" not in message and "Failed to" not in message, tail[-3000:]
    return message


def _testing_only_datalist(tiny_model: Path, folder: Path) -> Path:
    """An external test set: the tiny dataset's testing cases (labeled), with absolute paths, and no other split."""
    data = tiny_model / "data"
    cases = [
        {"case": c["case"], **{m: str(data / c[m]) for m in MODALITIES}, "label": str(data / c["label"])}
        for c in _testing_cases(data)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "external.json"
    path.write_text(json.dumps({"modalities": MODALITIES, "testing": cases}))
    return path


def test_evaluate_and_infer_on_a_testing_only_datalist(tiny_model, tmp_path):
    """Issue 24: `prepare_datalist.py ... --num_validation 0 --num_testing N` writes a datalist with a
    `testing` list alone; evaluation (as benchmark.py --test_datalist runs it) and inference read it."""
    external = _testing_only_datalist(tiny_model, tmp_path / "external")
    out = tmp_path / "eval"
    run_bundle([
        "run", "--config_file", config_files("train.yaml", "evaluate.yaml"),
        "--roi_size", json.dumps([32, 32]),
        "--ckpt_dir", str(tiny_model / "models"),
        "--datalist_file", str(external),
        "--labeled_fraction", "0.5",  # benchmark.py passes the run's fraction to its evaluation too
        "--output_dir", str(out), "--num_overlays", "0",
    ])
    report = json.loads((out / "metrics.json").read_text())
    assert [c["case"] for c in report["cases"]] == [c["case"] for c in _testing_cases(tiny_model / "data")]
    run_bundle(_infer_args(tiny_model, tmp_path / "seg", "--datalist_file", str(external)))
    assert len(list((tmp_path / "seg").glob("*_seg.nii.gz"))) == len(report["cases"])
    # training still needs labeled training cases
    proc = _run_expect_failure(tiny_train_args(tmp_path / "train") + ["--datalist_file", str(external)])
    assert "split 'training': no cases; at least one labeled training case is required" in _last_error(proc)


def test_a_truncated_model_is_named_at_evaluation_and_inference(tiny_model, tmp_path):
    """Issue 24: a cut-short model.pt stops evaluation and inference with a message naming it, no zip traceback."""
    models = tmp_path / "models"
    models.mkdir()
    raw = (tiny_model / "models" / "model.pt").read_bytes()
    (models / "model.pt").write_bytes(raw[: len(raw) // 2])
    proc = _run_expect_failure([
        "run", "--config_file", config_files("train.yaml", "evaluate.yaml"),
        "--roi_size", json.dumps([32, 32]), "--ckpt_dir", str(models),
        "--synthetic_dir", str(tiny_model / "data"), "--synthetic", json.dumps(TINY_SYNTHETIC),
        "--output_dir", str(tmp_path / "eval"), "--num_overlays", "0",
    ])
    message = _last_error(proc)
    assert message.startswith(f"ERROR: CheckpointError: cannot load {models / 'model.pt'}: ")
    assert "the file is truncated or corrupt" in message and "train again" in message
    cases = str(_testing_only_datalist(tiny_model, tmp_path))
    proc = _run_expect_failure(_infer_args(tmp_path, tmp_path / "seg", "--datalist_file", cases))
    assert _last_error(proc).startswith(f"ERROR: CheckpointError: cannot load {models / 'model.pt'}: ")
    # no model.pt at all: said so, with what to do
    (models / "model.pt").unlink()
    proc = _run_expect_failure(_infer_args(tmp_path, tmp_path / "seg", "--datalist_file", cases))
    message = _last_error(proc)
    assert f"cannot load {models / 'model.pt'}: no such file" in message and "--ckpt_dir" in message


# ---------------------------------------------------------------- inference
def test_inference_writes_label_maps_on_the_input_grid(tiny_model, tmp_path):
    """Per-modality files, one (H, W, M) file stored mirrored (LAS), one (H, W, 1, M) file."""
    data = tiny_model / "data"
    case = _testing_cases(data)[0]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    flip_affine = _multichannel(case, data, inputs / "mirrored.nii.gz", flip=True)
    _multichannel(case, data, inputs / "singleton.nii.gz", singleton=True)
    datalist = {"testing": [
        {"case": "files", "image": [str(data / case[m]) for m in MODALITIES]},
        {"case": "mirrored", "image": "mirrored.nii.gz"},
        {"case": "singleton", "image": "singleton.nii.gz"},
    ]}
    (inputs / "datalist.json").write_text(json.dumps(datalist))
    out = tmp_path / "seg"
    run_bundle(_infer_args(tiny_model, out, "--dataset_dir", str(inputs)))

    reference = nib.load(data / case["t1"])
    seg = {name: nib.load(out / f"{name}_seg.nii.gz") for name in ("files", "mirrored", "singleton")}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}_seg.nii.gz" for n in seg)
    for name, image in seg.items():
        assert image.shape == reference.shape, name
        assert image.get_data_dtype() == np.uint8
        values = np.asarray(image.dataobj)
        assert values.min() >= 0 and values.max() <= 3
    np.testing.assert_allclose(seg["files"].affine, reference.affine)
    np.testing.assert_allclose(seg["singleton"].affine, reference.affine)
    np.testing.assert_allclose(seg["mirrored"].affine, flip_affine)
    files = np.asarray(seg["files"].dataobj)
    # same anatomy: the mirrored input's segmentation is the mirror of the other, voxel for voxel
    np.testing.assert_array_equal(np.asarray(seg["mirrored"].dataobj), files[::-1])
    np.testing.assert_array_equal(np.asarray(seg["singleton"].dataobj), files)
    assert files.max() > 0


def test_inference_single_multichannel_image_from_command_line(tiny_model, tmp_path):
    """What MONAI Label sends: one multi-channel NIfTI path."""
    data = tiny_model / "data"
    case = _testing_cases(data)[1]
    image = tmp_path / "patient7.nii.gz"
    affine = _multichannel(case, data, image)
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    out = tmp_path / "out"
    run_bundle(_infer_args(tiny_model, out, "--image", str(image)))
    seg = nib.load(out / "patient7_seg.nii.gz")
    assert seg.shape == nib.load(image).shape[:2]
    np.testing.assert_allclose(seg.affine, affine)
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before


def test_inference_bad_cases_are_reported_and_the_others_written(tiny_model, tmp_path):
    data = tiny_model / "data"
    good = _testing_cases(data)[0]
    two_channels = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 2), np.float32), np.eye(4)), str(two_channels))
    datalist = {"testing": [
        {"case": "missing", "image": [str(data / good["t1"]), str(tmp_path / "nowhere_t2.nii.gz"), str(data / good["flair"])]},
        {"case": "good", "image": [str(data / good[m]) for m in MODALITIES]},
        {"case": "wrong_channels", "image": str(two_channels)},
    ]}
    (tmp_path / "list.json").write_text(json.dumps(datalist))
    out = tmp_path / "seg"
    proc = _run_expect_failure(_infer_args(tiny_model, out, "--datalist_file", str(tmp_path / "list.json")))
    log = proc.stdout + proc.stderr
    assert (out / "good_seg.nii.gz").is_file()
    assert not (out / "missing_seg.nii.gz").exists() and not (out / "wrong_channels_seg.nii.gz").exists()
    assert "2 of 3 cases failed" in log
    assert "case 'missing'" in log and "nowhere_t2.nii.gz" in log
    assert "case 'wrong_channels'" in log and str(two_channels) in log and "(32, 32, 2)" in log

    # the same run, logging only: exit status 0
    run_bundle(_infer_args(tiny_model, tmp_path / "seg2", "--datalist_file", str(tmp_path / "list.json"),
                           "--raise_on_failure", "false"))
    assert (tmp_path / "seg2" / "good_seg.nii.gz").is_file()


def test_inference_never_overwrites_an_input(tiny_model, tmp_path):
    data = tiny_model / "data"
    case = _testing_cases(data)[0]
    folder = tmp_path / "in"
    folder.mkdir()
    names = ["c_t1.nii.gz", "c_seg.nii.gz", "c_flair.nii.gz"]  # the output of case "c" would be c_seg.nii.gz
    for name, m in zip(names, MODALITIES):
        (folder / name).write_bytes((data / case[m]).read_bytes())
    before = (folder / "c_seg.nii.gz").read_bytes()
    proc = _run_expect_failure(_infer_args(tiny_model, folder, "--image", json.dumps([str(folder / n) for n in names])))
    assert "refusing" in proc.stdout + proc.stderr and "c_seg.nii.gz" in proc.stdout + proc.stderr
    assert (folder / "c_seg.nii.gz").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_inference_input_errors_are_printed_last(tiny_model, tmp_path):
    """Issue 24: an error of the bundle raised while MONAI instantiates a component (here
    inference_cases, 2 files for 3 modalities) is the last thing printed, exit status 1."""
    data = tiny_model / "data"
    case = _testing_cases(data)[0]
    files = json.dumps([str(data / case["t1"]), str(data / case["t2"])])
    proc = _run_expect_failure(_infer_args(tiny_model, tmp_path / "seg", "--image", files))
    assert proc.stderr.rstrip().splitlines()[-1] == (
        "ERROR: InputError: --image: got 2 files for 3 modalities (t1, t2, flair); give one file per modality in "
        "that order, one multi-channel file, or {modality: file} for the sequences you have, e.g. "
        "\"{'flair': 'case.nii.gz'}\"."
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    # evaluation alike: a split without cases
    proc = _run_expect_failure([
        "run", "--config_file", config_files("train.yaml", "evaluate.yaml"), "--roi_size", json.dumps([32, 32]),
        "--ckpt_dir", str(tiny_model / "models"), "--datalist_file", str(_testing_only_datalist(tiny_model, tmp_path)),
        "--eval_split", "validation", "--output_dir", str(tmp_path / "eval"),
    ])
    assert "split 'validation': no cases to evaluate (splits with cases: ['testing'])" in _last_error(proc)


def test_inference_with_shipped_weights(shipped_weights, tmp_path):
    from scripts.data.synthetic import generate_synthetic_dataset

    datalist = generate_synthetic_dataset(str(tmp_path / "data"), spatial_dims=2, modalities=MODALITIES,
                                          num_training=1, num_unlabeled=0, num_validation=1, num_testing=1)
    out = tmp_path / "seg"
    run_bundle(["run", "--config_file", str(CONFIGS / "inference.yaml"), "--datalist_file", datalist,
                "--output_dir", str(out)])
    case = json.loads(Path(datalist).read_text())["testing"][0]
    seg = np.asarray(nib.load(out / f"{case['case']}_seg.nii.gz").dataobj)
    label = np.asarray(nib.load(Path(datalist).parent / case["label"]).dataobj)
    assert seg.shape == label.shape
    assert (seg == label).mean() > 0.8


# ---------------------------------------------------------------- configs
def test_inference_config_stands_alone_and_matches_training_defaults():
    from monai.bundle import ConfigParser

    train, infer = ConfigParser(), ConfigParser()
    train.read_config(str(CONFIGS / "train.yaml"))
    infer.read_config(str(CONFIGS / "inference.yaml"))
    for key in ("bundle_root", "device", "dataset_dir", "network_def", "network", "preprocessing",
                "postprocessing", "inferer", "dataset", "evaluator", "output_dir", "initialize", "run"):
        assert key in infer, key
    for key in ("bundle_root", "spatial_dims", "modalities", "class_names", "num_classes", "roi_size", "axcodes",
                "network", "device"):
        assert infer.get(key) == train.get(key), key
    # the same network; inference's copy first puts the bundle on sys.path (exports run from the root)
    network_def = dict(infer.get("network_def"))
    assert network_def.pop("_requires_") == "@bundle_on_sys_path"
    assert network_def == train.get("network_def")
    assert infer.get("inferer") == train.get("validate#inferer")
    names = lambda transforms: [t["_target_"].split(".")[-1] for t in transforms]  # noqa: E731
    train.parse()  # resolves the `%` copies
    validation = train.get("validate#reading") + train.get("validate#preparation")
    # after the reading (validation also reads and squeezes a label), the same transforms
    after = lambda transforms: names(transforms)[names(transforms).index("Orientationd"):]  # noqa: E731
    assert after(infer.get("preprocessing#transforms")) == after(validation) == ["Orientationd", "NormalizeIntensityd"]
    assert infer.get("preprocessing#transforms")[-1] == validation[-1]
    # outputs go under the bundle (or its writable stand-in, work_root) by default, never next to the inputs
    assert infer.get("output_dir") == "$@work_root + '/eval'"


def test_evaluate_config_layers_on_train():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")])
    assert parser.get("eval_split") == "testing"
    assert parser.get("run") == ["@error_hook", "$@validate#evaluator.run()"]  # no training; errors printed last
    assert parser.get("validate#handlers")[0]["_target_"].endswith("CheckedCheckpointLoader")
    assert parser.get_parsed_content("eval_heads") == HEADS


# ---------------------------------------------------------------- components
def test_ensure_modality_channels_layouts(tmp_path):
    from monai.transforms import LoadImaged

    from scripts.data.transforms import EnsureModalityChannelsd

    load = LoadImaged(keys="image", image_only=True)

    def channels(array, spatial_dims, m=3, name="x.nii.gz"):
        path = tmp_path / name
        nib.save(nib.Nifti1Image(array, np.diag([2.0, 3.0, 4.0, 1.0])), str(path))
        image = EnsureModalityChannelsd("image", m, spatial_dims)(load({"image": str(path)}))["image"]
        return image

    hw = np.random.rand(8, 6, 3).astype(np.float32)
    out = channels(hw, 2)
    assert out.shape == (3, 8, 6)
    np.testing.assert_allclose(out[1].numpy(), hw[..., 1])
    np.testing.assert_allclose(out.affine.numpy(), np.diag([2.0, 3.0, 4.0, 1.0]))
    assert channels(hw[:, :, None, :], 2).shape == (3, 8, 6)
    assert channels(np.random.rand(8, 6, 5, 3).astype(np.float32), 3).shape == (3, 8, 6, 5)
    assert channels(np.random.rand(8, 6).astype(np.float32), 2, m=1).shape == (1, 8, 6)
    # a single-sequence volume is not taken for modalities: a clear error naming the file
    with pytest.raises(ValueError, match=r"brats_like\.nii\.gz: image of shape \(8, 6, 5\)"):
        channels(np.random.rand(8, 6, 5).astype(np.float32), 3, m=4, name="brats_like.nii.gz")
    with pytest.raises(ValueError, match=r"\(H, W, D, 4\)"):
        channels(np.random.rand(8, 6, 5, 3).astype(np.float32), 3, m=4, name="three.nii.gz")
    # one file per modality: stacked by LoadImaged, kept
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"m{i}.nii.gz"))
        nib.save(nib.Nifti1Image(np.full((8, 6), i, np.float32), np.eye(4)), files[-1])
    stacked = EnsureModalityChannelsd("image", 3, 2)(load({"image": files}))["image"]
    assert stacked.shape == (3, 8, 6) and float(stacked[2].mean()) == 2.0
    with pytest.raises(ValueError, match="expected 4"):
        EnsureModalityChannelsd("image", 4, 2)(load({"image": files}))


def test_modality_heads_wrapper_and_split():
    from scripts.evaluation.head_outputs import SplitHeadsd, head_keys
    from scripts.networks.cmc_net import CMCNet
    from scripts.networks.modality_heads import ModalityHeadsWrapper

    net = CMCNet(2, 3, 4, channels=(4, 8)).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        out = ModalityHeadsWrapper(net)(x)
        heads, _ = net.forward_modalities(x)
        fused = net(x)
    assert out.shape == (1, 16, 16, 16)
    d = SplitHeadsd("pred", HEADS)({"pred": out[0]})
    assert head_keys(HEADS) == ["pred", "pred_t1", "pred_t2", "pred_flair"]
    torch.testing.assert_close(d["pred"], fused[0])
    for m, key in enumerate(head_keys(HEADS)[1:]):
        torch.testing.assert_close(d[key], heads[m][0])
    # one pass: the encoders run once per modality, not once for forward and again for the heads
    calls = []
    hooks = [e.register_forward_hook(lambda *_: calls.append(1)) for e in net.encoders]
    with torch.no_grad():
        ModalityHeadsWrapper(net)(x)
    assert len(calls) == 3
    for h in hooks:
        h.remove()
    # Semi-CML's networks: the prediction averages the available modalities only, as forward does
    from scripts.networks.decoupled_net import DecoupledMultiModalNet

    decoupled = DecoupledMultiModalNet(2, 3, 4, channels=(4, 8), strides=(2,), available_modalities=[0, 2]).eval()
    with torch.no_grad():
        out = ModalityHeadsWrapper(decoupled)(x)
        heads, _ = decoupled.forward_modalities(x)
        torch.testing.assert_close(out[:, :4], decoupled(x))
        torch.testing.assert_close(out[:, :4], (heads[0] + heads[2]) / 2)
        torch.testing.assert_close(out[:, 8:12], heads[1])
    # a single network (no forward_modalities) has no heads: its prediction alone
    single = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(ModalityHeadsWrapper(single)(x), single(x))


@pytest.mark.parametrize("heads", [["fused"], HEADS], ids=["single_head", "head_per_modality"])
def test_overlays_are_titled_by_what_they_show(tmp_path, monkeypatch, heads):
    """Issue 24: a single-head network (unet.yaml) is not titled "each modality with its own head"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scripts.evaluation.evaluation_report import EvaluationReport

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    label = torch.zeros(4, 16, 16)
    label[0], label[0, 4:12, 4:12], label[1, 4:12, 4:12] = 1, 0, 1
    output = {"image": torch.rand(3, 16, 16), "label": label, "pred": label.clone()}
    output.update({f"pred_{m}": label.clone() for m in heads[1:]})
    report = EvaluationReport(str(tmp_path), heads, ["outer", "wall", "cavity"], MODALITIES)
    report._overlay("p1", output)
    assert (tmp_path / "overlays" / "p1.png").is_file()
    (figure,) = figures
    title = figure._suptitle.get_text()
    panels = [ax.get_title() for ax in figure.axes]
    drawn = [len(ax.collections) for ax in figure.axes]  # contours: the label's and the prediction's
    if heads == ["fused"]:
        assert title == "case p1: the network's one prediction (fused, from all modalities), drawn on each modality"
        assert panels == MODALITIES and drawn == [2, 2, 2]  # the one prediction on every modality
    else:
        assert title == "case p1: each modality with its own head's prediction; the fused prediction last"
        assert panels == [*MODALITIES, "fused (on t1)"] and drawn == [2, 2, 2, 2]


def test_save_segmentation_refuses_to_overwrite_its_input(tmp_path):
    from monai.transforms import LoadImaged

    from scripts.data.transforms import SaveSegmentationd

    path = tmp_path / "p1_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 6), np.float32), np.eye(4)), str(path))
    before = path.read_bytes()
    pred = LoadImaged(keys="pred", image_only=True, ensure_channel_first=True)({"pred": str(path)})
    saver = SaveSegmentationd("pred", output_dir=str(tmp_path), output_postfix="seg", separate_folder=False, resample=False)
    with pytest.raises(FileExistsError, match="refusing"):
        saver({**pred, "case": "p1"})
    assert path.read_bytes() == before
    saver({**pred, "case": "p2"})
    assert (tmp_path / "p2_seg.nii.gz").is_file()


def test_inference_cases_sources(tmp_path):
    from scripts.data.inference_data import inference_cases

    for name in ("a.nii.gz", "b.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    cases = inference_cases(MODALITIES, dataset_dir=str(tmp_path), image_pattern="*.nii.gz")
    assert [c["case"] for c in cases] == ["a", "b"]
    cases = inference_cases(MODALITIES, image=[str(tmp_path / f"p_{m}.nii.gz") for m in MODALITIES])
    assert cases[0]["case"] == "p" and len(cases[0]["image"]) == 3
    with pytest.raises(ValueError, match="2 files for 3 modalities"):
        inference_cases(MODALITIES, image=["x.nii.gz", "y.nii.gz"])
    with pytest.raises(ValueError, match="no datalist.json"):
        inference_cases(MODALITIES, dataset_dir=str(tmp_path))
    (tmp_path / "datalist.json").write_text(json.dumps({"testing": [{"case": "a", "image": "a.nii.gz"}]}))
    cases = inference_cases(MODALITIES, dataset_dir=str(tmp_path), output_dir=str(tmp_path / "out"))
    a = str(tmp_path / "a.nii.gz")
    assert cases == [{"case": "a", "image": a, "input_files": [a], "sequences": "t1+t2+flair"}]
    # issue 23: the sequences one has, by name or as nulls of a list; none, or unknown names, refused
    for image in ({"flair": a}, [None, None, a]):
        cases = inference_cases(MODALITIES, image=image)
        assert cases[0]["image"] == [None, None, a] and cases[0]["sequences"] == "flair", image
        assert cases[0]["input_files"] == [a]
    with pytest.raises(ValueError, match="no file for modalities \\['t1', 't2'\\]"):
        inference_cases(MODALITIES, image={"flair": a}, allow_missing_modalities=False)
    with pytest.raises(ValueError, match="unknown modalities \\['dwi'\\]"):
        inference_cases(MODALITIES, image={"dwi": a})
    with pytest.raises(ValueError, match="no file given"):
        inference_cases(MODALITIES, image=[None, None, None])
    with pytest.raises(FileExistsError, match="refusing"):
        inference_cases(MODALITIES, dataset_dir=str(tmp_path), output_dir=str(tmp_path), output_postfix="", )


# ---------------------------------------------------------------- boundary distances


def _one_hot_masks(seed: int, shape=(2, 3, 14, 11)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pred = (torch.rand(shape, generator=g) > 0.6).float()
    label = (torch.rand(shape, generator=g) > 0.6).float()
    pred[0, 1], label[1, 2] = 0, 0  # an empty prediction and an empty label
    pred[1, 1], label[1, 1] = 0, 0  # both empty
    return pred, label


@pytest.mark.parametrize("percentile", [95.0, None])
def test_boundary_distances_equal_monai_hausdorff_and_surface_distance(percentile):
    from monai.data import MetaTensor
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    from scripts.evaluation.segmentation_metrics import BoundaryDistances

    spacing = [2.0, 0.7]
    for seed in range(3):
        pred, label = _one_hot_masks(seed)
        affine = torch.diag(torch.tensor([*spacing, 1.0]))
        with pytest.warns(UserWarning):  # MONAI warns about the empty masks
            hd, asd = BoundaryDistances(include_background=False, percentile=percentile)(
                MetaTensor(pred, affine=affine), label
            )
        with pytest.warns(UserWarning):
            hd_monai = compute_hausdorff_distance(pred, label, percentile=percentile, spacing=spacing)
            asd_monai = compute_average_surface_distance(pred, label, symmetric=True, spacing=spacing)
        torch.testing.assert_close(hd, hd_monai, equal_nan=True)
        torch.testing.assert_close(asd, asd_monai, equal_nan=True)
        # the empty-mask cases are exercised: empty prediction, both empty, empty label
        assert torch.isinf(asd[0, 0]) and torch.isnan(asd[1, 0]) and torch.isinf(asd[1, 1])
        assert torch.isfinite(hd[0, 1]) and hd[0, 1] > 0
    # one direction far, the other zero: the label has a second blob the prediction misses
    pred, label = torch.zeros(1, 2, 20, 20), torch.zeros(1, 2, 20, 20)
    pred[0, 1, 2:6, 2:6] = label[0, 1, 2:6, 2:6] = 1
    label[0, 1, 14:18, 14:18] = 1
    hd, asd = BoundaryDistances(percentile=percentile)(MetaTensor(pred, affine=torch.eye(3)), label)
    torch.testing.assert_close(hd, compute_hausdorff_distance(pred, label, percentile=percentile))
    torch.testing.assert_close(asd, compute_average_surface_distance(pred, label, symmetric=True))
    assert hd.item() > 8.0  # the missed blob's boundary, from the label to the prediction


def test_boundary_distances_are_computed_once_for_both_metrics(monkeypatch):
    from monai.data import MetaTensor

    import scripts.evaluation.segmentation_metrics as sm

    calls = []
    real = sm.get_edge_surface_distance
    monkeypatch.setattr(sm, "get_edge_surface_distance", lambda *a, **k: calls.append(1) or real(*a, **k))
    metrics = sm.segmentation_metrics(["fused"])
    hd, asd = metrics["fused_hd95"].metric_fn, metrics["fused_asd"].metric_fn
    pred, label = torch.zeros(1, 3, 12, 12), torch.zeros(1, 3, 12, 12)
    pred[0, 1, 3:6, 3:6], label[0, 1, 4:7, 3:6], pred[0, 2, 8:11, 2:5], label[0, 2, 8:10, 2:5] = 1, 1, 1, 1
    wide = MetaTensor(pred, affine=torch.diag(torch.tensor([3.0, 1.0, 1.0])))
    # as the handlers call them: lists of (C, *spatial) cases, the ASD handler first (order does not matter)
    asd([wide[0].clone()], [label[0].clone()])
    hd([wide[0].clone()], [label[0].clone()])
    assert len(calls) == 2  # two foreground classes, once each
    # the same masks on another grid, or other masks: computed again, and in mm of their own grid
    hd([MetaTensor(pred[0], affine=torch.eye(3))], [label[0]])
    asd([MetaTensor(pred[0], affine=torch.eye(3))], [label[0]])
    assert len(calls) == 4
    values = hd.get_buffer()[:, 0]  # class 1: 1 voxel apart along axis 0
    assert values.tolist() == pytest.approx([3.0, 1.0])
    with pytest.raises(ValueError, match="percentile"):
        sm.PhysicalHausdorffDistanceMetric(False, percentile=50, distances=sm.BoundaryDistances(False, 95))
