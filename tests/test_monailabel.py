"""The bundle under the real MONAI Label (0.8.5): BundleInferTask and BundleTrainTask, as the server runs them.

MONAI Label and the packages it imports at module level are installed with `pip --no-deps --target`
into `.venv/monailabel-0.8.5` (once; about 20 s and 650 MB, most of it ITK, whose writer MONAI Label
uses for NIfTI results), and put on the PYTHONPATH of the subprocesses that run the tasks only, so the
rest of the suite never sees them. The tests skip, saying why, when that install fails (no registry).

torchvision: MONAI Label imports `torchvision.utils.make_grid` / `save_image` at module level (for
DeepEdit's TensorBoard images, which these tasks never call). PyPI has no CPU build of torchvision
for torch 2.13.0+cpu: its 0.28.0 wheel (the release for torch 2.13) is built against CUDA torch and
fails to import (`operator torchvision::nms does not exist`). When `import torchvision.utils`
fails, the subprocesses get a stub `torchvision` package (those two functions, raising if called)
from `.venv/monailabel-0.8.5-torchvision-stub`; an importable torchvision is used as it is.

Each task runs in its own process, as the MONAI Label server runs train and infer requests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle_runner import BUNDLE, CONFIGS, REPO_ROOT, run_bundle

MONAILABEL_VERSION = "0.8.5"
# monailabel itself, and what its task modules import at module level that monai's requirements lack
MONAILABEL_PACKAGES = [
    f"monailabel=={MONAILABEL_VERSION}",
    "expiring_dict==1.1.2",
    "sortedcontainers==2.4.0",
    "pydantic-settings==2.16.3",
    "itk-core==5.4.7",
    "itk-io==5.4.7",
    "pynrrd==1.1.3",
    "scikit-image==0.26.0",
    "lazy_loader==0.6",
    "shapely==2.2.0",
]
SITE = Path(sys.prefix) / f"monailabel-{MONAILABEL_VERSION}"
STUB = Path(sys.prefix) / f"monailabel-{MONAILABEL_VERSION}-torchvision-stub"
DRIVER = Path(__file__).resolve().parent / "monailabel_driver.py"
NAME = "multimodal_mri_semisupervised_segmentation"
IMPORT_CHECK = "import monailabel.tasks.infer.bundle, monailabel.tasks.train.bundle"

# a non-trivial grid: flipped axes, anisotropic voxels, an offset
AFFINE = np.array([[-0.8, 0.0, 0.0, 12.0], [0.0, 0.9, 0.0, -5.0], [0.0, 0.0, 3.0, 2.0], [0.0, 0.0, 0.0, 1.0]])


def _env(paths: list[Path]) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in paths] + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _write_stub(folder: Path) -> None:
    pkg = folder / "torchvision"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""Stub for MONAI Label\'s module-level imports (see tests/test_monailabel.py)."""\n')
    (pkg / "utils.py").write_text(
        "def make_grid(*args, **kwargs):\n    raise NotImplementedError('torchvision stub')\n\n\n"
        "def save_image(*args, **kwargs):\n    raise NotImplementedError('torchvision stub')\n"
    )


@pytest.fixture(scope="module")
def monailabel_env() -> dict[str, str]:
    """Environment of a subprocess that imports the real MONAI Label."""
    ok = SITE / ".installed"
    if not ok.is_file():
        shutil.rmtree(SITE, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--target", str(SITE), *MONAILABEL_PACKAGES]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            pytest.skip(f"pip install of monailabel=={MONAILABEL_VERSION} timed out (no package registry?)")
        if proc.returncode != 0:
            shutil.rmtree(SITE, ignore_errors=True)
            pytest.skip(f"cannot install monailabel=={MONAILABEL_VERSION} (no package registry?): {proc.stderr[-800:]}")
        ok.write_text(" ".join(MONAILABEL_PACKAGES) + "\n")
    paths = [SITE]
    tv = subprocess.run([sys.executable, "-c", "import torchvision.utils"], capture_output=True, text=True)
    if tv.returncode != 0:
        _write_stub(STUB)
        paths.append(STUB)
    env = _env(paths)
    check = subprocess.run([sys.executable, "-c", IMPORT_CHECK], env=env, capture_output=True, text=True)
    assert check.returncode == 0, f"monailabel installed but its bundle tasks do not import:\n{check.stderr[-3000:]}"
    return env


def _driver(env: dict[str, str], *args: str, cwd: Path, timeout: float = 600) -> str:
    proc = subprocess.run([sys.executable, str(DRIVER), *args], env=env, cwd=str(cwd), capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"monailabel_driver {' '.join(args)} exited {proc.returncode}:\n{out[-6000:]}"
    return out


def _app_bundle(app: Path, bundle: Path = BUNDLE) -> Path:
    """The bundle as MONAI Label's monaibundle app holds it: <app>/model/<name> (without run outputs)."""
    target = app / "model" / NAME

    def ignore(folder: str, names: list[str]) -> list[str]:
        top = Path(folder) == bundle
        return [n for n in names if n == "__pycache__" or (top and n in ("runs", "data", "eval"))]

    shutil.copytree(bundle, target, ignore=ignore)
    return target


def _edit(path: Path, *pairs: tuple[str, str]) -> None:
    text = path.read_text()
    for old, new in pairs:
        assert old in text, f"{path.name} no longer has {old!r}"
        text = text.replace(old, new)
    path.write_text(text)


def _study(path: Path, shape: tuple[int, ...], seed: int = 0) -> Path:
    data = np.random.RandomState(seed).rand(*shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


def _bundle_label(tmp: Path, image: Path, *extra: str) -> np.ndarray:
    """The bundle's own inference.yaml result for `image`, squeezed."""
    out = tmp / f"own_{image.name.split('.')[0]}"
    run_bundle(["run", "--config_file", str(CONFIGS / "inference.yaml"), "--image", str(image),
                "--output_dir", str(out), "--synthetic_dir", str(tmp / "data"), *extra])
    (written,) = list(out.glob("*.nii.gz"))
    return np.squeeze(np.asarray(nib.load(str(written)).dataobj))


def test_bundle_infer_task_writes_the_label_on_the_study_grid(tmp_path, monailabel_env):
    app2 = _app_bundle(tmp_path / "app2")
    # a 3-D copy: inference.yaml set to 3-D, a 3-D network of the same definition (untrained weights)
    app3 = _app_bundle(tmp_path / "app3")
    _edit(app3 / "configs" / "inference.yaml", ("\nspatial_dims: 2\n", "\nspatial_dims: 3\n"),
          ('roi_size: "$[64] * @spatial_dims"', 'roi_size: "$[32] * @spatial_dims"'))
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(app3 / "configs" / "inference.yaml"))
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), str(app3 / "models" / "model.pt"))

    cases = [
        (app2, (40, 48, 1, 3), (40, 48, 1), []),  # 2-D study as a 4-D NIfTI with a singleton slice
        (app2, (40, 48, 3), (40, 48), []),  # 2-D study as a 3-D NIfTI, modalities last
        (app3, (20, 24, 18, 3), (20, 24, 18),
         ["--spatial_dims", "3", "--roi_size", "[32,32,32]", "--ckpt_dir", str(app3 / "models")]),
    ]
    for i, (bundle, shape, spatial, extra) in enumerate(cases):
        image = _study(tmp_path / f"study{i}.nii.gz", shape, seed=i)
        result = tmp_path / f"result{i}.json"
        _driver(monailabel_env, "infer", str(bundle), str(image), str(result), cwd=tmp_path)
        label = nib.load(json.loads(result.read_text())["label"])
        data = np.asarray(label.dataobj)
        # the study's spatial shape (a 2-D one as its one-slice volume) and its affine
        assert data.shape[: len(spatial)] == spatial and int(np.prod(data.shape[len(spatial):])) == 1, (shape, data.shape)
        np.testing.assert_allclose(label.affine, AFFINE, atol=1e-4, err_msg=str(shape))
        # voxel for voxel what the bundle's own inference writes
        np.testing.assert_array_equal(np.squeeze(data), _bundle_label(tmp_path, image, *extra), err_msg=str(shape))
        assert not (bundle / "data").exists(), "inference generated the embedded dataset in the app's model folder"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _scalar_tags(folder: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for f in folder.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags.update(acc.Tags()["scalars"])
    return tags


def test_bundle_train_task_trains_on_the_app_studies_only(tmp_path, monailabel_env):
    app = _app_bundle(tmp_path / "app")
    # one short epoch, validated: 2 iterations of 2 tiny images (train.yaml's defaults are 20 x 8 of 64 x 64)
    _edit(app / "configs" / "train.yaml", ("iterations_per_epoch: 20", "iterations_per_epoch: 2"), ("val_interval: 2", "val_interval: 1"),
          ("batch_size: 8", "batch_size: 2"), ('roi_size: "$[64] * @spatial_dims"', 'roi_size: "$[32] * @spatial_dims"'))
    studies = []
    rng = np.random.RandomState(0)
    for i in range(5):
        shape = (32, 36, 1, 3) if i % 2 else (32, 36, 3)  # both 2-D multi-channel layouts
        image = _study(tmp_path / f"s{i}.nii.gz", shape, seed=i)
        label = tmp_path / f"s{i}_label.nii.gz"
        nib.save(nib.Nifti1Image(rng.randint(0, 4, size=(32, 36, 1)).astype(np.uint8), AFFINE), str(label))
        studies.append({"image": str(image), "label": str(label)})
    (tmp_path / "studies.json").write_text(json.dumps(studies))
    model = app / "models" / "model.pt"
    runs = app / "runs" / "train"

    hashes = [_md5(model)]
    for attempt in range(2):
        out = _driver(monailabel_env, "train", str(app), str(tmp_path / "studies.json"), "1", cwd=tmp_path)
        assert "Epoch[1] Complete" in out, out[-4000:]  # trained, the second time too: no resume, no skip
        assert "already complete" not in out, out[-4000:]
        hashes.append(_md5(model))
        # the app's studies only: no embedded synthetic dataset generated, no unlabeled term trained
        assert not (app / "data").exists(), sorted(p.name for p in app.iterdir())
        tags = _scalar_tags(runs)
        assert "loss_sup" in tags and "loss_cac" not in tags, tags
        for f in runs.glob("events.out.tfevents.*"):
            f.unlink()
    assert len(set(hashes)) == 3, "model.pt was not retrained by each training"
