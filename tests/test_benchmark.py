"""scripts/benchmark.py: run planning, the table, and one real (tiny) train + held-out evaluation run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from benchmarking.commands import bundle_run_command
from benchmarking.report import previous_runs, write_report
from benchmarking.runs import Timer
from benchmarking.statistics import paired_difference
from bundle_runner import REPO_ROOT, TINY_SYNTHETIC
from scripts.data.datalist import resolve_datalist

_spec = importlib.util.spec_from_file_location("benchmark_tool", REPO_ROOT / "scripts" / "benchmark.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_plan_runs_crosses_methods_and_fractions_then_adds_explicit_runs():
    pairs = bench.plan_runs(["cmc", "semicml"], [0.2, 1.0], ["supervised@1.0", "cmc@0.2"])
    assert pairs == [("cmc", 0.2), ("semicml", 0.2), ("cmc", 1.0), ("semicml", 1.0), ("supervised", 1.0)]
    with pytest.raises(ValueError, match="method@fraction"):
        bench.plan_runs([], [], ["cmc"])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        bench.plan_runs(["cmc"], [1.5], [])


def test_commands_layer_base_and_method_configs(tmp_path):
    train, evaluate = bench.commands("semicml+supervised", 0.2, "/d/datalist.json", ["cardiac"], tmp_path, 3,
                                     {"epochs": 5})
    stack = json.loads(train[train.index("--config_file") + 1])
    assert [p.rsplit("/", 1)[-1] for p in stack] == ["train.yaml", "cardiac.yaml", "semicml.yaml", "supervised.yaml"]
    assert json.loads(evaluate[evaluate.index("--config_file") + 1])[-1].endswith("evaluate.yaml")
    assert train[train.index("--seed") + 1] == "3" and train[train.index("--split_seed") + 1] == "3"
    assert "--epochs" in train and "--epochs" not in evaluate  # training-only overrides stay out of evaluation
    assert evaluate[evaluate.index("--eval_split") + 1] == "testing"
    with pytest.raises(FileNotFoundError, match="no config 'nope'"):
        bench.commands("nope", 0.2, "/d/datalist.json", [], tmp_path, 0, {})
    # a written plan is given by its path and layered after the method's override, before evaluate.yaml
    plan = tmp_path / "plan.yaml"
    plan.write_text("spatial_dims: 2\n")
    train, evaluate = bench.commands("unet+weak_strong", 0.1, "/d/datalist.json", ["planned", str(plan)], tmp_path, 0, {})
    stack = json.loads(train[train.index("--config_file") + 1])
    assert [p.rsplit("/", 1)[-1] for p in stack] == ["train.yaml", "planned.yaml", "unet.yaml", "weak_strong.yaml", "plan.yaml"]
    assert stack[-1] == str(plan.resolve())
    assert [p.rsplit("/", 1)[-1] for p in json.loads(evaluate[evaluate.index("--config_file") + 1])][-2:] == ["plan.yaml", "evaluate.yaml"]
    with pytest.raises(FileNotFoundError, match="nor at that path"):
        bench.commands("cmc", 0.2, "/d/datalist.json", [str(tmp_path / "missing.yaml")], tmp_path, 0, {})
    # a fixed split seed: the labeled subset stays, the initialisation changes with the seed
    train, evaluate = bench.commands("cmc", 0.2, "/d/datalist.json", [], tmp_path, 3, {}, split_seed=7,
                                     test_datalist="/e/external.json")
    assert train[train.index("--seed") + 1] == "3" and train[train.index("--split_seed") + 1] == "7"
    assert evaluate[evaluate.index("--split_seed") + 1] == "7"
    # an external test set: evaluation reads it, training does not
    assert train[train.index("--datalist_file") + 1] == "/d/datalist.json"
    assert evaluate[evaluate.index("--datalist_file") + 1] == "/e/external.json"
    assert evaluate[evaluate.index("--output_dir") + 1].endswith("test_external")


def _summary(dice: float) -> dict:
    per_class = {"a": dice - 0.1, "b": dice + 0.1, "mean": dice, "undefined_values": 0}
    hd = {"a": 3.0, "b": 5.0, "mean": 4.0, "undefined_values": 0}
    return {"fused": {"dice": per_class, "hd95": hd}, "m1": {"dice": dict(per_class, mean=dice / 2), "hd95": hd}}


def _row(method, fraction, seed, case_dice):
    mean = sum(case_dice.values()) / len(case_dice)
    return {"method": method, "labeled_fraction": fraction, "num_labeled": 2, "seed": seed, "split_seed": seed,
            "test": _summary(mean), "case_dice": case_dice, "num_test_cases": len(case_dice),
            "best_val_mean_dice": 0.5, "best_epoch": 1, "train_s": 10.0, "eval_s": 1.0,
            "train_command": f"t {method} {fraction} {seed}", "eval_command": f"e {method} {fraction} {seed}"}


def test_paired_difference_against_a_hand_computation():
    base = [_row("sup", 0.2, 0, {"a": 0.5, "b": 0.6, "c": 0.7}), _row("sup", 0.2, 1, {"a": 0.4, "b": 0.6, "c": 0.8})]
    meth = [_row("ws", 0.2, 0, {"a": 0.6, "b": 0.6, "c": 0.9}), _row("ws", 0.2, 1, {"a": 0.5, "b": 0.7, "c": 0.8}),
            _row("ws", 0.2, 2, {"a": 0.9, "b": 0.9, "c": 0.9})]  # seed 2 has no baseline: not paired
    d = paired_difference(meth, base, num_bootstrap=4000)
    diffs = [0.1, 0.0, 0.2, 0.1, 0.1, 0.0]
    assert d["num_pairs"] == 6 and d["num_cases"] == 3 and d["seeds"] == [0, 1]
    assert d["mean"] == pytest.approx(sum(diffs) / 6)
    assert d["per_seed"] == {"0": pytest.approx(0.1), "1": pytest.approx(0.2 / 3)}
    assert d["win_rate"] == pytest.approx(4 / 6)
    # case means 0.1, 0.05, 0.1: every bootstrap mean lies between 0.05 and 0.1
    low, high = d["ci95"]
    assert 0.05 - 1e-9 <= low <= d["mean"] <= high <= 0.1 + 1e-9 and low < high
    # identical runs: a zero difference with a zero-width interval
    same = paired_difference(base, base, num_bootstrap=100)
    assert same["mean"] == 0 and same["ci95"] == [0.0, 0.0]
    assert paired_difference(meth[2:], base) is None


def test_report_gives_mean_std_over_seeds_share_of_full_and_paired_ci(tmp_path):
    rows = [_row("sup", 1.0, 0, {"a": 0.8, "b": 0.8}), _row("sup", 1.0, 1, {"a": 0.8, "b": 0.8}),
            _row("sup", 0.2, 0, {"a": 0.5, "b": 0.6}), _row("sup", 0.2, 1, {"a": 0.6, "b": 0.7}),
            _row("ws", 0.2, 0, {"a": 0.7, "b": 0.7}), _row("ws", 0.2, 1, {"a": 0.7, "b": 0.9})]
    text = write_report(rows, tmp_path / "t.md", title="two seeds", baseline="sup", num_bootstrap=1000)
    ws = next(line for line in text.splitlines() if line.startswith("| ws | 20%"))
    # seed means 0.7 and 0.8: mean 0.75, sample std 0.0707; 0.75 / 0.8 = 93.75% of full supervision
    assert "| 0,1 | 0.750 ± 0.071 |" in ws and "93.8%" in ws
    assert "+15.0 [" in ws  # paired differences 0.2, 0.1, 0.1, 0.2
    assert "+15.0 +15.0" in ws and "100% of 4" in ws
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["runs"] == rows and saved["baseline"] == "sup"
    entry = next(s for s in saved["summary"] if s["method"] == "ws")
    assert entry["vs_baseline"]["mean"] == pytest.approx(0.15)
    assert "t ws 0.2 1" in text and "e ws 0.2 1" in text  # every command is in the report


def test_timer_counts_the_time_before_a_resume(tmp_path):
    first = Timer(tmp_path, "train_s")
    first.before = 100.0  # as if 100 s had been spent already
    first.save()
    again = Timer(tmp_path, "train_s")
    assert again.before >= 100.0 and again.attempts == 2
    assert again.save() >= 100.0


def test_timer_stopped_saves_the_same_time_it_returned(tmp_path, monkeypatch):
    """CI caught the row's train_s (13.1) and the saved one (13.2) differ: the final save of the
    trained command measured the clock again. After stop(), every save records the returned time."""
    clock = iter([10.0, 23.14, 23.19, 99.0])  # start, stop, later reads that must not count
    monkeypatch.setattr("benchmarking.runs.time.perf_counter", lambda: next(clock))
    timer = Timer(tmp_path, "train_s")
    timer.stop()
    returned = timer.save()
    timer.save(trained_command="cmd")
    saved = json.loads((tmp_path / "benchmark_time.json").read_text())
    assert returned == saved["train_s"] == 13.1 and saved["trained_command"] == "cmd"


def test_help_prints_help():
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--help"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PAGER="cat"))
    text = proc.stdout + proc.stderr  # fire writes its help to stderr when not on a terminal
    assert proc.returncode == 0, text
    assert "--seeds" in text and "--split_seed" in text and "--test_datalist" in text


@pytest.mark.slow  # starts bundle runs through the tool
def test_benchmark_trains_evaluates_and_skips_done_runs(tmp_path, capsys):
    data = resolve_datalist(None, None, ["t1", "t2", "flair"], str(tmp_path / "data"), spatial_dims=2,
                            synthetic=TINY_SYNTHETIC)
    assert data["testing"]
    datalist = tmp_path / "data" / "datalist.json"
    kwargs = dict(datalist=str(datalist), runs=["supervised@1.0"], seeds=[0, 1], output=str(tmp_path / "bench" / "b.md"),
                  epochs=1, iterations_per_epoch=2, val_interval=1, roi_size=[32, 32], batch_size=2, jobs=2)
    rows = bench.run_benchmark(**kwargs)
    assert [r["seed"] for r in rows] == [0, 1]
    assert all(r["num_test_cases"] == len(data["testing"]) == len(r["case_dice"]) for r in rows)
    assert 0.0 <= rows[0]["test"]["fused"]["dice"]["mean"] <= 1.0
    out = capsys.readouterr().out
    assert "live log" in out and "train.log" in out and out.count(": done, test mean Dice") == 2
    text = (tmp_path / "bench" / "b.md").read_text()
    assert "| supervised | 100% (4) | 0,1 |" in text and "100.0%" in text and "--eval_split testing" in text
    timing = json.loads((tmp_path / "bench" / "supervised_1_seed0" / "benchmark_time.json").read_text())
    assert timing["train_s"] == rows[0]["train_s"]
    again = bench.run_benchmark(**kwargs)  # same commands: kept, not retrained
    assert capsys.readouterr().out.count("already done") == 2
    assert again == rows
    # another report's runs merged into a new one, without running anything
    merged = bench.run_benchmark(datalist=str(datalist), include=[str(tmp_path / "bench" / "b.json")],
                                 output=str(tmp_path / "merged" / "m.md"))
    assert merged == rows and "| supervised | 100% (4) | 0,1 |" in (tmp_path / "merged" / "m.md").read_text()


# a stand-in for the bundle's commands: writes what a training / an evaluation writes, or fails when
# its flag file exists; every call is logged in calls.txt
_FAKE_BUNDLE = """
import json, sys
from pathlib import Path

stage, run_dir, flag = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
with open(run_dir.parent / "calls.txt", "a") as f:
    f.write(f"{stage} {run_dir.name}\\n")
if flag.exists():
    print(f"{stage} of {run_dir.name} failed on purpose")
    sys.exit(3)
if stage == "train":
    (run_dir / "metrics.json").write_text(json.dumps({"best_metric": 0.5, "best_metric_epoch": 1}))
    (run_dir / "model.pt").write_bytes(b"weights")
else:
    (run_dir / "test").mkdir(exist_ok=True)
    summary = {h: {"dice": {"a": 0.6, "mean": 0.6, "undefined_values": 0}, "hd95": {"a": 3.0, "mean": 3.0}}
               for h in ("fused",)}
    (run_dir / "test" / "metrics.json").write_text(json.dumps(
        {"summary": summary, "num_cases": 1, "cases": [{"case": "c1", "fused": {"dice": {"mean": 0.6}}}]}))
"""


@pytest.fixture
def fake_bundle(tmp_path, monkeypatch):
    """bench.commands replaced by the stand-in; returns (datalist, flags folder, calls file)."""
    script = tmp_path / "fake_bundle.py"
    script.write_text(_FAKE_BUNDLE)
    flags = tmp_path / "flags"
    flags.mkdir()

    def commands(method, fraction, datalist, base_configs, run_dir, seed, overrides, split_seed=None,
                 test_datalist=None):
        return tuple([sys.executable, str(script), stage, str(run_dir), str(flags / f"{stage}_{method}_{seed}")]
                     for stage in ("train", "eval"))

    monkeypatch.setattr(bench, "commands", commands)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"case": "t1"}, {"case": "t2"}]}))
    return datalist, flags, tmp_path / "bench" / "calls.txt"


@pytest.mark.slow  # starts bundle runs through the tool
def test_failed_runs_leave_the_others_reported_and_a_rerun_retries_only_them(fake_bundle, tmp_path, capsys):
    """Issue 24: one run failing in training and one in evaluation; the third is reported, each
    failure is listed with its log, the exit status is 1, and a rerun retries only the failed steps."""
    datalist, flags, calls = fake_bundle
    (flags / "train_a_0").touch()
    (flags / "eval_b_0").touch()
    output = tmp_path / "bench" / "b.md"
    args = ["--datalist", str(datalist), "--methods", "[a,b,c]", "--fractions", "[0.5]", "--seeds", "[0]",
            "--baseline", "c", "--jobs", "2", "--output", str(output), "--num_bootstrap", "10"]
    assert bench.main(args) == 1
    captured = capsys.readouterr()
    text = output.read_text()
    assert "| c | 50% (1) | 0 |" in text and "| a |" not in text and "| b |" not in text
    train_log, eval_log = tmp_path / "bench" / "a_0.5_seed0" / "train.log", tmp_path / "bench" / "b_0.5_seed0" / "eval.log"
    assert f"- a @ 50%, seed 0: training failed (exit 3); log: {train_log}" in text
    assert f"- b @ 50%, seed 0: evaluation failed (exit 3); log: {eval_log}" in text
    assert "train of a_0.5_seed0 failed on purpose" in train_log.read_text()
    assert captured.err.rstrip().splitlines()[-3:] == [
        f"ERROR: 2 of 3 runs failed; the report {output} holds the 1 that finished. Run the same command again to "
        "retry the failed ones:",
        f"  a @ 50%, seed 0: training failed (exit 3); log: {train_log}",
        f"  b @ 50%, seed 0: evaluation failed (exit 3); log: {eval_log}",
    ]
    saved = json.loads(output.with_suffix(".json").read_text())
    assert [r["method"] for r in saved["runs"]] == ["c"] and [f["method"] for f in saved["failures"]] == ["a", "b"]
    assert sorted(calls.read_text().splitlines()) == sorted(
        ["train a_0.5_seed0", "train b_0.5_seed0", "eval b_0.5_seed0", "train c_0.5_seed0", "eval c_0.5_seed0"])
    # fixed: the rerun trains a, evaluates b (its training finished) and keeps c
    for flag in flags.iterdir():
        flag.unlink()
    calls.unlink()
    rows = bench.run_benchmark(str(datalist), methods=["a", "b", "c"], fractions=[0.5], seeds=[0], baseline="c",
                               jobs=2, output=str(output), num_bootstrap=10)
    assert [r["method"] for r in rows] == ["a", "b", "c"]
    assert sorted(calls.read_text().splitlines()) == ["eval a_0.5_seed0", "eval b_0.5_seed0", "train a_0.5_seed0"]
    out = capsys.readouterr().out
    assert "b @ 50%, seed 0: training done before, kept" in out and "c @ 50%, seed 0: already done, kept" in out
    assert "Failed runs" not in output.read_text() and json.loads(output.with_suffix(".json").read_text())["failures"] == []


@pytest.mark.slow  # starts bundle runs through the tool
def test_progress_lines_of_parallel_runs_are_whole_lines(fake_bundle, tmp_path, monkeypatch):
    """Issue 24: two jobs starting together printed `... live log X[2/2] ... live log Y` on one line:
    every progress line is written whole, with its newline."""
    datalist, _, _ = fake_bundle
    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)
            return len(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Recorder())
    bench.run_benchmark(str(datalist), methods=["a", "b"], fractions=[0.5], seeds=[0, 1], baseline="a", jobs=2,
                        output=str(tmp_path / "bench" / "b.md"), num_bootstrap=10)
    progress = [w for w in writes if "training; live log" in w or "done, test mean Dice" in w]
    assert len(progress) == 2 * 4  # training, done: for each of 4 runs
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in progress), progress


@pytest.mark.slow  # starts bundle runs through the tool
def test_thread_benchmark_reports_every_setting(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_threads", REPO_ROOT / "scripts" / "bench_threads.py")
    threads = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(threads)
    assert threads._parse_setting("1x2") == (1, 2) and threads._parse_setting(2) == (2, 1)
    resolve_datalist(None, None, ["t1", "t2", "flair"], str(tmp_path / "data"), spatial_dims=2, synthetic=TINY_SYNTHETIC)
    result = threads.main(str(tmp_path / "data" / "datalist.json"), configs=[], settings=["1", "1x2"], iterations=3,
                          repeats=1, roi_size=[32, 32], batch_size=2)
    assert set(result) == {"1", "1x2"}
    assert all(r["seconds_per_iteration"] > 0 for r in result.values())
    assert result["1"]["speed_vs_first"] == 1.0
    assert "| 1x2 |" in capsys.readouterr().out


def test_merged_report_keeps_the_machine_of_every_run(tmp_path):
    cpu = {"platform": "linux", "cuda": None}
    gpu = {"platform": "linux", "cuda": "NVIDIA H200"}
    (tmp_path / "cpu.json").write_text(json.dumps({"runs": [_row("sup", 0.2, 0, {"a": 0.5})], "machine": cpu}))
    (tmp_path / "gpu.json").write_text(json.dumps({"runs": [_row("ws", 0.2, 0, {"a": 0.7})], "machine": gpu}))
    runs = previous_runs(tmp_path / "cpu.json") + previous_runs(tmp_path / "gpu.json")
    assert [r["machine"] for r in runs] == [cpu, gpu]  # a report's one machine spreads to each of its runs
    text = write_report(runs, tmp_path / "m.md", baseline="sup", num_bootstrap=10, info={"platform": "here"})
    assert "- platform linux; cuda None: sup@0.2/seed0" in text
    assert "- platform linux; cuda NVIDIA H200: ws@0.2/seed0" in text
    assert "platform here" not in text  # not the machine that merged them
    one = write_report(runs[:1], tmp_path / "one.md", baseline="sup", num_bootstrap=10)
    assert "Machine: platform linux; cuda None" in one


def test_one_command_builder_for_the_benchmark_tools(tmp_path):
    spec = importlib.util.spec_from_file_location("label_efficiency", REPO_ROOT / "scripts" / "label_efficiency.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    cmd = sweep._command("semicml+supervised", 0.2, tmp_path, {"epochs": 3, "roi_size": [32, 32]})
    assert cmd[:5] == [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    assert [p.rsplit("/", 1)[-1] for p in json.loads(cmd[5])] == ["train.yaml", "semicml.yaml", "supervised.yaml"]
    assert cmd[cmd.index("--labeled_fraction") + 1] == "0.2" and cmd[cmd.index("--roi_size") + 1] == "[32, 32]"
    assert bundle_run_command(["a.yaml"], resume=False, x=None) == [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", '["a.yaml"]', "--resume", "false", "--x", "null"]
    with pytest.raises(FileNotFoundError, match="no config 'nope'"):
        sweep._command("nope", 0.2, tmp_path, {})


def test_a_baseline_that_is_none_of_the_methods_is_warned_before_anything_runs(tmp_path, capsys):
    rows = [_row("unet+supervised", 0.2, 0, {"a": 0.5}), _row("unet+weak_strong", 0.2, 0, {"a": 0.7})]
    (tmp_path / "r.json").write_text(json.dumps({"runs": rows, "machine": {"platform": "linux"}}))
    (tmp_path / "datalist.json").write_text("{}")
    kwargs = dict(datalist=str(tmp_path / "datalist.json"), include=[str(tmp_path / "r.json")], num_bootstrap=10)
    bench.run_benchmark(output=str(tmp_path / "merged.md"), **kwargs)  # baseline "supervised" by default
    out = capsys.readouterr().out
    assert "warning: --baseline 'supervised' is none of the methods" in out
    assert "did you mean --baseline unet+supervised?" in out
    bench.run_benchmark(output=str(tmp_path / "right.md"), baseline="unet+supervised", **kwargs)
    assert "warning" not in capsys.readouterr().out
    assert "+20.0 [" in (tmp_path / "right.md").read_text()
