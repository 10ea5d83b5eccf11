"""Issue 23: patients with a missing sequence, in the datalist, the reading, the networks, training and inference."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_runner import TINY_SYNTHETIC, config_files, run_bundle, tiny_train_args, write_datalist

MODALITIES = ["t1", "t2", "flair"]


# ---------------------------------------------------------------- datalist


def _case(root: Path, name: str, keys=MODALITIES, label: bool = True) -> dict:
    case = {"case": name}
    for m in keys:
        path = root / f"{name}_{m}.nii.gz"
        path.write_bytes(b"")
        case[m] = str(path)
    if label:
        (root / f"{name}_seg.nii.gz").write_bytes(b"")
        case["label"] = str(root / f"{name}_seg.nii.gz")
    return case


def _datalist(tmp_path: Path, content: dict) -> str:
    return write_datalist(tmp_path, MODALITIES, content)


def test_missing_keys_are_refused_by_default_and_named(tmp_path):
    from scripts.data.datalist import DatalistError, load_datalist

    lacking_t2 = _case(tmp_path, "a", ["t1", "flair"])
    null_t1 = dict(_case(tmp_path, "b"), t1=None)
    path = _datalist(tmp_path, {"training": [lacking_t2, null_t1], "validation": [_case(tmp_path, "v")]})
    with pytest.raises(DatalistError) as info:
        load_datalist(path)
    message = str(info.value)
    assert "training case 'a': key 't2': missing" in message
    assert "training case 'b': key 't1': null" in message
    assert message.count("--allow_missing_modalities true") == 2


def test_missing_keys_become_none_entries_in_every_split(tmp_path):
    from scripts.data.datalist import load_datalist
    from scripts.data.missing_modalities import missing_modalities

    content = {
        "training": [_case(tmp_path, "a", ["t1", "flair"]), _case(tmp_path, "b")],
        "unlabeled": [dict(_case(tmp_path, "u", label=False), t1=None, t2=None)],
        "validation": [_case(tmp_path, "v", ["flair"])],
        "testing": [{"case": "t", "image": [None, str(_case(tmp_path, "t2x", ["t2"], label=False)["t2"]), None]}],
    }
    datalist = load_datalist(_datalist(tmp_path, content), allow_missing_modalities=True)
    assert datalist["training"][0]["image"] == [str(tmp_path / "a_t1.nii.gz"), None, str(tmp_path / "a_flair.nii.gz")]
    assert missing_modalities(datalist["training"][0]["image"], MODALITIES) == ["t2"]
    assert missing_modalities(datalist["training"][1]["image"], MODALITIES) == []
    assert missing_modalities(datalist["unlabeled"][0]["image"], MODALITIES) == ["t1", "t2"]
    assert missing_modalities(datalist["validation"][0]["image"], MODALITIES) == ["t1", "t2"]
    assert missing_modalities(datalist["testing"][0]["image"], MODALITIES) == ["t1", "flair"]


def test_a_case_with_no_sequence_or_per_modality_labels_is_still_refused(tmp_path):
    from scripts.data.datalist import DatalistError, load_datalist

    empty = {"case": "e", "t1": None, "label": _case(tmp_path, "e", [])["label"]}
    per_modality = _case(tmp_path, "p", ["t1"])
    per_modality["label"] = {"t1": per_modality["label"]}
    nulls = {"case": "n", "image": [None, None, None], "label": _case(tmp_path, "n", [])["label"]}
    path = _datalist(tmp_path, {"training": [empty, per_modality, nulls], "validation": [_case(tmp_path, "v")]})
    with pytest.raises(DatalistError) as info:
        load_datalist(path, allow_missing_modalities=True)
    message = str(info.value)
    assert "training case 'e': key 'image': no images" in message
    assert "training case 'p': key 'label': a case with missing modalities needs one label" in message
    assert "training case 'n': key 'image': every modality is missing" in message


# ---------------------------------------------------------------- reading and intensities


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return str(path)


def test_missing_files_are_read_as_zero_channels_on_the_given_files_grid(tmp_path):
    from scripts.data.missing_modalities import LoadModalityImagesd

    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    affine[:3, 3] = [10.0, -4.0, 2.0]
    rng = np.random.default_rng(0)
    a, c = rng.random((7, 6, 4)) + 1.0, rng.random((7, 6, 4)) + 2.0
    pa, pc = _nifti(tmp_path / "a.nii.gz", a, affine), _nifti(tmp_path / "c.nii.gz", c, affine)
    load = LoadModalityImagesd("image")
    out = load({"image": [pa, None, pc]})["image"]
    assert tuple(out.shape) == (3, 7, 6, 4) and out.meta["original_channel_dim"] == 0
    np.testing.assert_allclose(out[0].numpy(), a, rtol=1e-6)
    np.testing.assert_allclose(out[2].numpy(), c, rtol=1e-6)
    assert float(out[1].abs().max()) == 0.0
    np.testing.assert_allclose(np.asarray(out.affine), affine)
    one = load({"image": [None, None, pc]})["image"]  # a single file given: LoadImage returns no channel axis
    assert tuple(one.shape) == (3, 7, 6, 4) and float(one[:2].abs().max()) == 0.0
    np.testing.assert_allclose(one[2].numpy(), c, rtol=1e-6)
    complete = load({"image": [pa, pc, pc]})["image"]  # no None: LoadImage's own stacking
    assert tuple(complete.shape) == (3, 7, 6, 4) and complete.meta["original_channel_dim"] == 0


def test_a_missing_sequence_stays_zero_through_a_window_normalisation():
    from scripts.data.intensity import ModalityIntensityd

    image = torch.stack([torch.linspace(0, 255, 64).view(8, 8), torch.zeros(8, 8), torch.full((8, 8), 7.0)])
    window = {"scheme": "window", "low": 0.0, "high": 255.0, "mean": 25.0, "std": 32.0}
    out = ModalityIntensityd("image", [window, window, {"scheme": "zscore", "lower": 1, "upper": 99}])({"image": image})
    expected = (image[0] - 25.0) / 32.0
    torch.testing.assert_close(out["image"][0], expected)
    assert float(out["image"][1].abs().max()) == 0.0  # (0 - 25) / 32 without the rule
    assert float(out["image"][2].abs().max()) == 0.0  # a constant channel carries nothing either


# ---------------------------------------------------------------- networks


def test_presence_is_true_for_varying_channels_only():
    from scripts.networks.modality_presence import modality_presence

    image = torch.randn(2, 3, 5, 6)
    image[0, 1] = 0.0
    image[1, 2] = 0.37  # constant but not zero: no information, absent too
    expected = torch.tensor([[True, False, True], [True, True, False]])
    assert torch.equal(modality_presence(image), expected)


class _Recorder(torch.nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.seen = None

    def forward(self, x):
        self.seen = x.detach().clone()
        return x[:, :1]


def test_presence_input_appends_one_indicator_channel_per_sequence():
    from scripts.networks.modality_presence import with_presence_input

    image = torch.randn(2, 3, 4, 5)
    image[0, 2] = 0.0
    image[1, 0] = 0.0
    wrapped = with_presence_input(_Recorder, 3, True)
    wrapped(image)
    seen = wrapped.network.seen
    assert wrapped.network.in_channels == 6 and tuple(seen.shape) == (2, 6, 4, 5)
    torch.testing.assert_close(seen[:, :3], image)
    for b, mask in enumerate([[1, 1, 0], [0, 1, 1]]):
        for m, value in enumerate(mask):
            assert torch.all(seen[b, 3 + m] == value), (b, m)
    plain = with_presence_input(_Recorder, 3, False)  # off: the network itself, with M input channels
    assert isinstance(plain, _Recorder) and plain.in_channels == 3


def test_present_heads_mean_against_a_loop():
    from scripts.networks.modality_presence import present_heads_mean

    g = torch.Generator().manual_seed(0)
    heads = [torch.randn(3, 2, 4, 4, generator=g) for _ in range(3)]
    present = torch.tensor([[True, False, True], [False, False, False], [False, True, False]])
    out = present_heads_mean(heads, present)
    torch.testing.assert_close(out[0], (heads[0][0] + heads[2][0]) / 2)
    torch.testing.assert_close(out[1], (heads[0][1] + heads[1][1] + heads[2][1]) / 3)  # none present: all
    torch.testing.assert_close(out[2], heads[1][2])
    # Semi-CML's available_modalities: only heads 0 and 1 may vote
    out = present_heads_mean(heads, present, heads=[0, 1])
    torch.testing.assert_close(out[0], heads[0][0])
    torch.testing.assert_close(out[1], (heads[0][1] + heads[1][1]) / 2)
    torch.testing.assert_close(out[2], heads[1][2])


def test_cmc_and_semicml_networks_average_the_heads_of_present_sequences():
    from scripts.networks.cmc_net import CMCNet
    from scripts.networks.decoupled_net import DecoupledMultiModalNet

    torch.manual_seed(0)
    image = torch.randn(2, 3, 16, 16)
    image[0, 1] = 0.0  # case 0 lacks sequence 1
    for net in (CMCNet(2, 3, 2, channels=[4, 8, 16]), DecoupledMultiModalNet(2, 3, 2, channels=[4, 8])):
        net.eval()
        with torch.no_grad():
            heads, _ = net.forward_modalities(image)
            out = net(image)
        torch.testing.assert_close(out[0], (heads[0][0] + heads[2][0]) / 2)
        torch.testing.assert_close(out[1], (heads[0][1] + heads[1][1] + heads[2][1]) / 3)


def test_per_sequence_heads_are_supervised_on_the_cases_that_have_their_sequence():
    from monai.losses import DiceCELoss

    from scripts.losses.multi_head import MultiHeadSupervisedLoss

    g = torch.Generator().manual_seed(1)
    heads = [torch.randn(3, 2, 6, 6, generator=g) for _ in range(2)]
    label = (torch.rand(3, 1, 6, 6, generator=g) > 0.5).float()
    present = torch.tensor([[True, False], [True, True], [False, False]])
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    expected = (dice_ce(heads[0][:2], label[:2]) + dice_ce(heads[1][1:2], label[1:2])) / 2
    got = MultiHeadSupervisedLoss(reduction="mean")(heads, label, present=present)
    torch.testing.assert_close(got, expected)
    everyone = (dice_ce(heads[0], label) + dice_ce(heads[1], label)) / 2
    torch.testing.assert_close(MultiHeadSupervisedLoss()(heads, label), everyone)
    no_second = torch.tensor([[True, False], [True, False], [False, False]])
    only_first = MultiHeadSupervisedLoss(reduction="sum")(heads, label, present=no_second)
    torch.testing.assert_close(only_first, dice_ce(heads[0][:2], label[:2]))  # a head with no case adds nothing


# ---------------------------------------------------------------- training and inference


def _with_missing_keys(datalist_path: str, out: Path) -> str:
    """The tiny synthetic datalist with sequences removed from a labeled, an unlabeled, a validation and a
    testing case (paths made absolute)."""
    root = Path(datalist_path).parent
    content = json.loads(Path(datalist_path).read_text())
    for cases in (content[s] for s in ("training", "unlabeled", "validation", "testing")):
        for case in cases:
            for key in [*MODALITIES, "label"]:
                if key in case:
                    case[key] = str(root / case[key])
    del content["training"][0]["t2"]
    content["training"][1]["t1"] = None
    del content["unlabeled"][0]["t1"], content["unlabeled"][0]["flair"]
    del content["validation"][0]["flair"]
    del content["testing"][0]["t1"]
    path = out / "missing.json"
    path.write_text(json.dumps(content))
    return str(path)


@pytest.fixture(scope="module")
def missing_model(tmp_path_factory) -> Path:
    """Weak-to-strong UNet with the presence input, trained 2 iterations with incomplete cases in every split."""
    from scripts.data.synthetic import generate_synthetic_dataset

    tmp = tmp_path_factory.mktemp("missing")
    synthetic = generate_synthetic_dataset(str(tmp / "data"), spatial_dims=2, modalities=MODALITIES, **TINY_SYNTHETIC)
    datalist = _with_missing_keys(synthetic, tmp)
    args = tiny_train_args(tmp, "train.yaml", "unet.yaml", "weak_strong.yaml") + [
        "--datalist_file", datalist, "--unet_channels", "[8,16]",
    ]
    refused = run_bundle_expect_failure(args)
    assert "key 't2': missing" in refused.stderr and "--allow_missing_modalities true" in refused.stderr
    run_bundle(args + ["--allow_missing_modalities", "true", "--modality_presence_input", "true"])
    assert (tmp / "models" / "model.pt").is_file()
    return tmp


def run_bundle_expect_failure(args: list[str]):
    import subprocess
    import sys

    from bundle_runner import REPO_ROOT

    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=str(REPO_ROOT), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0, proc.stdout[-2000:]
    return proc


def test_inference_with_one_two_and_all_sequences_on_the_input_grid(missing_model, tmp_path):
    data = missing_model / "data"
    case = json.loads((data / "datalist.json").read_text())["testing"][1]
    files = {m: str(data / case[m]) for m in MODALITIES}
    reference = nib.load(files["t1"])
    base = [
        "run", "--config_file", config_files("inference.yaml", "unet.yaml"), "--roi_size", "[32,32]",
        "--ckpt_dir", str(missing_model / "models"), "--unet_channels", "[8,16]", "--modality_presence_input", "true",
    ]
    for given in (["flair"], ["t2", "flair"], MODALITIES):
        out = tmp_path / "+".join(given)
        run_bundle(base + ["--output_dir", str(out), "--image", json.dumps({m: files[m] for m in given})])
        seg = nib.load(out / f"{case['case']}_seg.nii.gz")
        assert seg.shape[:2] == reference.shape[:2], given
        np.testing.assert_allclose(seg.affine, reference.affine, atol=1e-5)
        record = out / f"{case['case']}_seg.json"
        if given == MODALITIES:
            assert not record.exists()
        else:
            info = json.loads(record.read_text())
            assert info["sequences_used"] == given
            assert info["sequences_missing"] == [m for m in MODALITIES if m not in given]


def test_evaluation_and_inference_of_a_datalist_with_missing_keys(missing_model, tmp_path):
    datalist = str(missing_model / "missing.json")
    common = ["--roi_size", "[32,32]", "--ckpt_dir", str(missing_model / "models"), "--unet_channels", "[8,16]",
              "--modality_presence_input", "true", "--datalist_file", datalist]
    run_bundle(["run", "--config_file", config_files("train.yaml", "unet.yaml", "evaluate.yaml"), *common,
                "--allow_missing_modalities", "true", "--output_dir", str(tmp_path / "eval")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_cases"] == TINY_SYNTHETIC["num_testing"]
    run_bundle(["run", "--config_file", config_files("inference.yaml", "unet.yaml"), *common,
                "--output_dir", str(tmp_path / "seg")])
    first = json.loads((missing_model / "missing.json").read_text())["testing"][0]["case"]
    assert json.loads((tmp_path / "seg" / f"{first}_seg.json").read_text())["sequences_used"] == ["t2", "flair"]
    assert len(list((tmp_path / "seg").glob("*_seg.nii.gz"))) == TINY_SYNTHETIC["num_testing"]


def test_a_checkpoint_without_the_presence_input_is_named_when_it_does_not_fit(missing_model, tmp_path):
    proc = run_bundle_expect_failure([
        "run", "--config_file", config_files("inference.yaml", "unet.yaml"), "--roi_size", "[32,32]",
        "--ckpt_dir", str(missing_model / "models"), "--unet_channels", "[8,16]", "--output_dir", str(tmp_path),
    ])
    assert "modality_presence_input" in proc.stderr


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
