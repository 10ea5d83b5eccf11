"""Reliability: resume after kill -9, atomic checkpoints, output-folder checks, reproducibility, safe loading."""

from __future__ import annotations

import ast
import errno
import inspect
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from bundle_runner import BUNDLE, CONFIGS, REPO_ROOT, TINY_SYNTHETIC, run_bundle, tiny_train_args
from scripts.engine import loss_terms
from scripts.run_management.atomic_checkpoint import PARTIAL_SUFFIX, AtomicCheckpointSaver, atomic_save
from scripts.run_management.checkpoint_loading import CheckpointError
from scripts.run_management.output_folders import OutputFolderError, check_output_folders
from scripts.run_management.resume import RandomStates, ResumeTraining, find_training_states, parse_resume_flag


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Train with one intra-op thread, in this process and in the bundle runs it starts: on a busy
    2-core machine several threads per process make these small runs many times slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _torch_save_on_full_disk(obj, f, *args, **kwargs):
    """Stands in for torch.save: writes part of a file, then fails as on a full disk."""
    if hasattr(f, "write"):
        f.write(b"PK\x03\x04 truncated")
    else:
        Path(f).write_bytes(b"PK\x03\x04 truncated")
    raise OSError(errno.ENOSPC, "No space left on device")


def _partial_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]


# ------------------------------------------------------------------------------- atomic checkpoints
def test_atomic_save_failure_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    atomic_save({"w": torch.arange(4.0)}, path)
    monkeypatch.setattr(torch, "save", _torch_save_on_full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"w": torch.zeros(4)}, path)
    monkeypatch.undo()
    state = torch.load(path, weights_only=True)
    assert torch.equal(state["w"], torch.arange(4.0))
    assert _partial_files(tmp_path) == []
    assert path.stat().st_mode & 0o044, "checkpoints stay readable by group/others as normally created files"


def _evaluator_with_metric() -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.metrics = {}
    engine.state.key_metric_name = "val_mean_dice"
    return engine


def test_best_model_survives_a_failed_save(tmp_path, monkeypatch):
    """MONAI's CheckpointSaver deletes model.pt, then writes it in place: a failure leaves nothing usable."""
    net = nn.Linear(3, 2)
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True, key_metric_filename="model.pt"
    )
    engine = _evaluator_with_metric()
    saver.attach(engine)
    engine.state.metrics["val_mean_dice"] = 0.5
    saver.metrics_completed(engine)
    first = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(1.0)
    engine.state.metrics["val_mean_dice"] = 0.6  # better: the saver replaces model.pt ...
    monkeypatch.setattr(torch, "save", _torch_save_on_full_disk)
    with pytest.raises(OSError):
        saver.metrics_completed(engine)  # ... and the disk is full
    monkeypatch.undo()
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(state[k], first[k]) for k in first)
    assert _partial_files(tmp_path) == []
    # the next successful save replaces it, and the best-score record survives a state_dict round trip
    engine.state.metrics["val_mean_dice"] = 0.7
    saver.metrics_completed(engine)
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], net.weight.detach())
    record = saver.state_dict()
    assert record == {"key_metric_saved": [[0.7, "model_key_metric=0.7000.pt"]]}
    fresh = AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True, key_metric_filename="model.pt"
    )
    fresh.load_state_dict(record)
    fresh.attach(engine)
    before = (tmp_path / "model.pt").read_bytes()
    with torch.no_grad():
        net.weight.add_(1.0)
    engine.state.metrics["val_mean_dice"] = 0.65  # worse than the restored best: model.pt is kept
    fresh.metrics_completed(engine)
    assert (tmp_path / "model.pt").read_bytes() == before


def test_interval_checkpoint_is_replaced_only_after_the_new_one_is_written(tmp_path, monkeypatch):
    net = nn.Linear(3, 2)
    trainer = Engine(lambda e, b: None)
    (tmp_path / ".training_state_checkpoint_epoch=7.pt.abc123.partial").write_bytes(b"left by a killed save")
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"model": net, "trainer": trainer}, save_interval=1, n_saved=1,
        file_prefix="training_state",
    )
    assert _partial_files(tmp_path) == []  # leftovers of an interrupted save are cleaned up
    saver.attach(trainer)
    trainer.state.epoch, trainer.state.iteration = 1, 2
    saver.interval_completed(trainer)
    assert [p.name for p in find_training_states(tmp_path, "training_state")] == ["training_state_checkpoint_epoch=1.pt"]
    trainer.state.epoch, trainer.state.iteration = 2, 4
    monkeypatch.setattr(torch, "save", _torch_save_on_full_disk)
    with pytest.raises(OSError):
        saver.interval_completed(trainer)
    monkeypatch.undo()
    # with ignite's DiskSaver the epoch-1 file would already be deleted here
    assert (tmp_path / "training_state_checkpoint_epoch=1.pt").is_file()
    torch.load(tmp_path / "training_state_checkpoint_epoch=1.pt", weights_only=True)
    trainer.state.epoch, trainer.state.iteration = 3, 6
    saver.interval_completed(trainer)
    names = [p.name for p in find_training_states(tmp_path, "training_state")]
    assert names == ["training_state_checkpoint_epoch=3.pt"]


# ------------------------------------------------------------------------------- resume components
def test_resume_flag_accepts_command_line_strings():
    assert parse_resume_flag(True) and parse_resume_flag("true") and parse_resume_flag("auto")
    # "auto" (train.yaml's default): a caller's own training cases start a new training
    assert not parse_resume_flag("auto", external_training_data=True) and parse_resume_flag("true", True)
    assert not parse_resume_flag(False) and not parse_resume_flag("false") and not parse_resume_flag("False")
    with pytest.raises(ValueError, match="resume must be true or false"):
        parse_resume_flag("maybe")


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, RandFlipd, RandScaleIntensityd, RandSpatialCropd

    transform = Compose([
        RandSpatialCropd(keys="image", roi_size=[4, 4], random_size=False),
        RandFlipd(keys="image", prob=0.5),
        RandScaleIntensityd(keys="image", factors=0.5, prob=1.0),
    ])
    loader = DataLoader(Dataset([{"image": torch.randn(1, 8, 8)} for _ in range(4)], transform=transform), batch_size=2)
    states = RandomStates([loader, None])
    assert len(states.transform_random_states()) >= 4  # Compose, crop (and its cropper), flip, scale ...

    def draw():
        batches = [b["image"].clone() for b in loader]
        return batches, torch.rand(3), np.random.rand(3), __import__("random").random()

    draw()
    atomic_save({"random_states": states.state_dict()}, tmp_path / "state.pt")
    expected = draw()
    states.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True)["random_states"])
    again = draw()
    assert all(torch.equal(a, b) for a, b in zip(expected[0], again[0]))
    assert torch.equal(expected[1], again[1]) and np.array_equal(expected[2], again[2]) and expected[3] == again[3]


def _engine_and_saver(folder: Path, max_epochs: int) -> tuple[Engine, nn.Module, AtomicCheckpointSaver]:
    net = nn.Linear(2, 1)
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs, engine.state.epoch_length = max_epochs, 2
    saver = AtomicCheckpointSaver(save_dir=str(folder), save_dict={"model": net, "trainer": engine}, save_interval=1,
                                  n_saved=1, file_prefix="training_state")
    return engine, net, saver


def test_resume_refuses_a_checkpoint_beyond_max_epochs_or_unreadable(tmp_path):
    engine, net, saver = _engine_and_saver(tmp_path, max_epochs=3)
    engine.state.epoch, engine.state.iteration = 3, 6
    saver.attach(engine)
    saver.interval_completed(engine)
    engine, net, saver = _engine_and_saver(tmp_path, max_epochs=2)
    with pytest.raises(ValueError, match=r"training_state_checkpoint_epoch=3\.pt is at epoch 3, beyond max_epochs = 2\. "
                                         r"Pass --epochs 3 or more to continue it, or --resume false"):
        ResumeTraining(saver)(engine)
    engine, net, saver = _engine_and_saver(tmp_path, max_epochs=2)
    ResumeTraining(saver, resume="false")(engine)  # starting over is allowed
    assert engine.state.epoch == 0
    (tmp_path / "training_state_checkpoint_epoch=3.pt").write_bytes(b"PK\x03\x04 truncated by an old, non-atomic save")
    with pytest.raises(CheckpointError, match=r"cannot resume: cannot load .*epoch=3\.pt: the file is truncated or "
                                              r"corrupt .* Delete it to start from scratch, or pass --resume false"):
        ResumeTraining(saver)(engine)


def test_resume_falls_back_to_the_previous_intact_checkpoint(tmp_path, caplog):
    """Issue 24: the newest training_state cut short (full disk, interrupted copy): the run resumes from
    the previous intact one and says so; with no intact one it stops naming every file, not in a zip traceback."""
    caplog.set_level(logging.WARNING, logger="scripts.run_management.resume")
    for epoch in (1, 2):  # two checkpoints, as n_saved > 1 or a copied run folder leaves them
        engine, net, saver = _engine_and_saver(tmp_path / f"e{epoch}", max_epochs=5)
        engine.state.epoch, engine.state.iteration = epoch, 2 * epoch
        saver.attach(engine)
        saver.interval_completed(engine)
        (tmp_path / f"e{epoch}" / f"training_state_checkpoint_epoch={epoch}.pt").rename(
            tmp_path / f"training_state_checkpoint_epoch={epoch}.pt")
    newest = tmp_path / "training_state_checkpoint_epoch=2.pt"
    raw = newest.read_bytes()
    newest.write_bytes(raw[: len(raw) // 2])
    engine, net, saver = _engine_and_saver(tmp_path, max_epochs=5)
    resume = ResumeTraining(saver)
    resume(engine)
    assert engine.state.epoch == 1 and resume.resumed_from.name == "training_state_checkpoint_epoch=1.pt"
    assert f"cannot load {newest}: the file is truncated or corrupt" in caplog.text
    assert "Resuming from the previous intact checkpoint" in caplog.text
    # the unreadable file is replaced once this run writes its next checkpoint
    engine.state.epoch, engine.state.iteration = 2, 4
    saver.attach(engine)
    saver.interval_completed(engine)
    assert [p.name for p in find_training_states(tmp_path, "training_state")] == ["training_state_checkpoint_epoch=2.pt"]
    assert torch.load(newest, weights_only=True)["trainer"]["iteration"] == 4  # complete again
    # every checkpoint unreadable: refused, naming each file
    older = tmp_path / "training_state_checkpoint_epoch=1.pt"
    older.write_bytes(b"")
    newest.write_bytes(raw[:100])
    engine, net, saver = _engine_and_saver(tmp_path, max_epochs=5)
    with pytest.raises(CheckpointError) as refused:
        ResumeTraining(saver)(engine)
    message = str(refused.value)
    assert message.startswith("cannot resume: no training_state checkpoint can be read:")
    assert f"cannot load {newest}: the file is truncated" in message and f"cannot load {older}: the file is" in message
    assert "--resume false" in message and engine.state.epoch == 0


# ------------------------------------------------------------------------------- output folders
def test_output_folders_are_created_and_left_clean(tmp_path):
    free = check_output_folders({"output_dir": tmp_path / "out", "ckpt_dir": tmp_path / "a" / "models"}, min_free_mb=1)
    assert set(free) == {"output_dir", "ckpt_dir"} and all(v > 1 for v in free.values())
    assert list((tmp_path / "out").iterdir()) == [] and list((tmp_path / "a" / "models").iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores folder permissions")
def test_unwritable_output_folder_is_refused(tmp_path):
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputFolderError, match=r"output folder output_dir '.*readonly' is not writable"):
            check_output_folders({"output_dir": folder})
        with pytest.raises(OutputFolderError, match=r"ckpt_dir '.*sub' cannot be created"):
            check_output_folders({"ckpt_dir": folder / "sub"})
    finally:
        folder.chmod(0o700)


def test_unwritable_output_folder_is_refused_even_as_root(tmp_path, monkeypatch):
    """Root bypasses permission bits: a folder below a regular file, and a probe write that fails."""
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputFolderError, match=r"output_dir '.*file/runs' cannot be created: Not a directory"):
        check_output_folders({"output_dir": tmp_path / "file" / "runs"})
    with pytest.raises(OutputFolderError, match=r"output_dir '.*file' is a file, not a folder"):
        check_output_folders({"output_dir": tmp_path / "file"})

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.raises(OutputFolderError, match=r"output_dir '.*' is not writable: Permission denied\. Fix its permissions"):
        check_output_folders({"output_dir": tmp_path})


def test_low_disk_space_stops_the_bundle_before_training(tmp_path):
    args = tiny_train_args(tmp_path) + ["--min_free_disk_mb", "1e12"]
    with pytest.raises(AssertionError) as failure:
        run_bundle(args, timeout=300)
    message = str(failure.value)
    assert re.search(r"OutputFolderError: output folder output_dir '.*out' has \d+ MiB free on its disk, less than "
                     r"min_free_disk_mb = 1e\+12 MiB", message), message[-2000:]
    assert "Epoch" not in message and not (tmp_path / "data").exists()  # stopped before any data or epoch
    assert not list((tmp_path / "out").glob("*.pt"))


# ------------------------------------------------------------------------------- safe loading, trusted configs
def _unsafe_torch_loads_in_text(text: str) -> list[int]:
    """Lines of the `torch.load(` calls of a text whose parentheses do not hold `weights_only=True`."""
    bad = []
    for match in re.finditer(r"torch\.load\(", text):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        if not re.search(r"weights_only\s*=\s*True", text[match.start(): end + 1]):
            bad.append(text.count("\n", 0, match.start()) + 1)
    return bad


def _torch_load_calls_without_weights_only(path: Path) -> list[str]:
    text = path.read_text(errors="replace")
    bad = []
    if path.suffix == ".py":
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in node.keywords)
                if not ok:
                    bad.append(f"{path}:{node.lineno}")
    else:
        bad = [f"{path}:{line}" for line in _unsafe_torch_loads_in_text(text)]
    return bad


def test_every_torch_load_uses_weights_only():
    generated = [BUNDLE / name for name in ("data", "runs", "eval")]
    files = [REPO_ROOT / "README.md"] + [
        p for folder in (BUNDLE, REPO_ROOT / "scripts") for p in folder.rglob("*")
        if p.suffix in {".py", ".yaml", ".yml", ".json", ".md", ".sh"} and p.is_file()
        and not any(p.is_relative_to(g) for g in generated)
    ]
    assert any(p.name == "resume.py" for p in files)
    bad = [b for p in files for b in _torch_load_calls_without_weights_only(p)]
    assert bad == [], f"torch.load without weights_only=True: {bad}"
    # the configs load checkpoints with MONAI's CheckpointLoader and ignite's Checkpoint.load_objects
    from ignite.handlers import Checkpoint
    from monai.handlers import CheckpointLoader

    for function in (CheckpointLoader.__call__, Checkpoint.load_objects):
        source = inspect.getsource(function)
        assert "torch.load(" in source and _unsafe_torch_loads_in_text(source) == [], function


def test_docs_say_configs_must_come_from_a_trusted_source():
    for doc in (REPO_ROOT / "README.md", BUNDLE / "docs" / "README.md"):
        text = " ".join(doc.read_text().split())
        assert re.search(r"Configs execute Python expressions.*trusted source", text), doc


# ------------------------------------------------------------------------------- reproducibility
def _train_in_process(
    tmp: Path, data: Path, configs: tuple[str, ...] = ("train.yaml",), **overrides
) -> tuple[Engine, list[dict[str, float]]]:
    """Train in this process as `monai.bundle run` does (`initialize`, then every expression of
    `run`); the trainer and the loss terms of every iteration."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in configs])
    parser.update({
        "seed": 0, "epochs": 1, "iterations_per_epoch": 2, "val_interval": 1, "log_interval": 100, "batch_size": 2,
        "roi_size": [TINY_SYNTHETIC["image_size"]] * 2, "output_dir": str(tmp / "out"), "ckpt_dir": str(tmp / "models"),
        "synthetic_dir": str(data), "synthetic": dict(TINY_SYNTHETIC), **overrides,
    })
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    losses: list[dict[str, float]] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: losses.append(loss_terms(engine.state.output)))
    for i in range(len(parser["run"])):
        parser.get_parsed_content(f"run#{i}")
    return trainer, losses


@pytest.mark.slow  # long in-process training
def test_same_seed_and_config_give_identical_losses(tmp_path):
    data = tmp_path / "data"
    _, first = _train_in_process(tmp_path / "a", data, epochs=2, iterations_per_epoch=10)
    _, second = _train_in_process(tmp_path / "b", data, epochs=2, iterations_per_epoch=10)
    assert len(first) == 20 and {"loss", "loss_sup", "loss_csc", "loss_cac"} <= set(first[0])
    assert first == second  # exactly, every term of every iteration
    _, other_seed = _train_in_process(tmp_path / "c", data, seed=1, epochs=1, iterations_per_epoch=1)
    assert other_seed[0]["loss"] != first[0]["loss"]


@pytest.mark.slow  # long in-process training
def test_finished_run_is_not_retrained_and_resume_false_starts_over(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="scripts.run_management.resume")
    data = tmp_path / "data"
    trainer, losses = _train_in_process(tmp_path, data)
    assert trainer.state.iteration == 2 and len(losses) == 2
    checkpoint = tmp_path / "out" / "training_state_checkpoint_epoch=1.pt"
    content, inode = checkpoint.read_bytes(), checkpoint.stat().st_ino

    caplog.clear()
    trainer, losses = _train_in_process(tmp_path, data)  # the same run again: complete, nothing trained
    assert "training already complete" in caplog.text and "--resume false" in caplog.text
    assert losses == [] and trainer.state.epoch == 1 and trainer.state.iteration == 2
    assert checkpoint.read_bytes() == content and checkpoint.stat().st_ino == inode

    caplog.clear()
    trainer, losses = _train_in_process(tmp_path, data, resume="false")  # as `--resume false` passes it
    assert "resume is off: training starts from scratch" in caplog.text
    assert len(losses) == 2 and trainer.state.iteration == 2
    states = find_training_states(tmp_path / "out", "training_state")
    assert [p.name for p in states] == ["training_state_checkpoint_epoch=1.pt"]
    assert checkpoint.stat().st_ino != inode  # written again (atomically: a new file) ...
    assert checkpoint.read_bytes() == content  # ... with the same content: same seed, same training


@pytest.mark.slow  # long in-process training
def test_semicml_resumes_into_prel_with_the_snapshots_of_the_earlier_run(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    configs = ("train.yaml", "semicml.yaml")
    common = {"mutual_epochs": 1, "prel_epochs": 1, "prel_passes": 1}
    _train_in_process(tmp_path, tmp_path / "data", configs, epochs=1, **common)  # the mutual stage only
    caplog.clear()
    trainer, losses = _train_in_process(tmp_path, tmp_path / "data", configs, epochs=2, **common)
    assert "resuming from" in caplog.text
    # the teacher averages the snapshot recorded by the validation of epoch 1, in the first process
    assert re.search(r"PReL teacher = average of modality \d's 1 best checkpoints \(epochs \[1\]", caplog.text)
    assert len(losses) == 2 and all("loss_prel" in terms for terms in losses) and trainer.state.iteration == 4


# ------------------------------------------------------------------------------- resume after kill -9
def _bundle_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", *args]


def _set_arg(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def _start_and_kill_after_first_checkpoint(args: list[str], out: Path, log: Path, timeout: float = 180) -> int:
    """Start a training run, SIGKILL it as soon as its first training_state checkpoint exists; the
    epoch of the newest checkpoint left behind."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w") as log_file:
        proc = subprocess.Popen(_bundle_command(args), cwd=str(REPO_ROOT), env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while not find_training_states(out, "training_state"):
                if proc.poll() is not None:
                    raise AssertionError(f"the run ended (exit {proc.returncode}) before its first checkpoint:\n"
                                         f"{log.read_text()[-4000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError("no training_state checkpoint appeared in time")
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    newest = find_training_states(out, "training_state")[-1]
    return int(re.search(r"epoch=(\d+)", newest.name).group(1))


def test_killed_training_resumes_to_the_same_result_as_an_uninterrupted_run(tmp_path):
    # 4 labeled and 4 unlabeled cases in batches of 2: an epoch of 2 iterations is one pass over each
    # loader, the condition for a resumed run to be bit-identical to an uninterrupted one
    epochs, iterations = 3, 2
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    args = tiny_train_args(killed, "train.yaml", "mean_teacher.yaml", epochs=epochs, iterations=iterations)
    args = _set_arg(args, "--synthetic_dir", str(tmp_path / "data"))  # the runs share one dataset
    left_at = _start_and_kill_after_first_checkpoint(args, killed / "out", tmp_path / "killed.log")
    assert 1 <= left_at < epochs, "the kill must land before the end of training"
    for leftover in (killed / "out").iterdir():  # only whole checkpoints, possibly a hidden temporary file
        if leftover.suffix == ".pt":
            torch.load(leftover, map_location="cpu", weights_only=True)

    proc = run_bundle(args, timeout=300)
    log = proc.stdout + proc.stderr
    resumed = re.search(r"resuming from .*training_state_checkpoint_epoch=(\d+)\.pt: epoch (\d+) of 3 done "
                        r"\(iteration (\d+)\)", log)
    assert resumed, log[-3000:]
    epoch = int(resumed.group(2))
    assert epoch >= left_at and int(resumed.group(3)) == epoch * iterations
    logged_epochs = {int(e) for e in re.findall(r"Epoch: (\d+)/3, Iter:", log)}
    assert logged_epochs == set(range(epoch + 1, epochs + 1))  # counters continue, nothing re-trained from 0

    states = find_training_states(killed / "out", "training_state")
    assert [p.name for p in states] == ["training_state_checkpoint_epoch=3.pt"]  # n_saved=1 across restarts
    final = torch.load(states[0], map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == epochs * iterations
    assert int(final["method"]["teacher.n_averaged"]) == epochs * iterations  # the EMA teacher's counter continued
    history = json.loads((killed / "out" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]

    # the same command, never interrupted: bit-identical weights, teacher, optimizer and validation
    ref_args = [a.replace(str(killed), str(reference)) for a in args]
    run_bundle(ref_args, timeout=300)
    ref = torch.load(reference / "out" / "training_state_checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)
    for part in ("model", "method"):
        assert final[part].keys() == ref[part].keys()
        assert all(torch.equal(final[part][k], ref[part][k]) for k in ref[part]), part
    assert all(torch.equal(a["exp_avg"], b["exp_avg"])
               for a, b in zip(final["optimizer"]["state"].values(), ref["optimizer"]["state"].values()))
    assert json.loads((reference / "out" / "metrics.json").read_text())["history"] == history
    assert (killed / "models" / "model.pt").read_bytes() == (reference / "models" / "model.pt").read_bytes()


def _random_states_in_process_group(rank: int, world_size: int, folder: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(100 + rank)  # every process draws its own numbers
        states = RandomStates()
        saved = states.state_dict()  # gathered from every process
        expected = torch.rand(3)
        torch.manual_seed(0)
        states.load_state_dict(saved)  # each process gets its own back
        assert torch.equal(torch.rand(3), expected)
        assert len(saved["per_rank"]) == world_size and torch.equal(saved["torch"], saved["per_rank"][0]["torch"])
        if rank == 0:
            atomic_save(saved, Path(folder) / "state.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # long in-process training
def test_random_states_of_every_process_in_distributed_training(tmp_path):
    # spawned, not forked: a child forked after torch's thread pools started can deadlock on their locks
    torch.multiprocessing.start_processes(_random_states_in_process_group, args=(2, str(tmp_path)), nprocs=2,
                                          start_method="spawn")
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    assert not torch.equal(saved["per_rank"][0]["torch"], saved["per_rank"][1]["torch"])
