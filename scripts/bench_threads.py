#!/usr/bin/env python
"""Training speed on the CPU by torch thread setting, measured side by side in one run.

For each setting, a short `python -m monai.bundle run` training (one epoch of `iterations` iterations,
no validation) is started; the settings are run in alternation, `repeats` times each, and the median
seconds per iteration (from the time stamps of the iteration log lines, so start-up, caching and
validation are left out) are reported,
with their ratio to the first setting. A setting is `threads` (torch intra-op threads of one training)
or `threads x jobs` (that many trainings at once, e.g. `1x2`: two one-thread trainings, the way
`scripts/benchmark.py --jobs 2 --num_threads 1` uses a 2-core machine; its figure is the seconds per
iteration of the pair, i.e. per iteration of either divided by the number of jobs).

Example (the figures in bundle/docs/README.md, Throughput):
    python scripts/bench_threads.py --datalist /tmp/myops/datalist.json --configs "['planned','cardiac','unet','weak_strong']" \
        --settings "['2','1','1x2']" --iterations 30 --repeats 2
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import fire

from benchmarking.commands import bundle_run_command, config_stack  # the one command builder
from bundle_path import REPO_ROOT

# the loss line of every iteration (`--log_interval 1`), with its time stamp
_ITERATION = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) - INFO - Epoch: \d+/\d+, Iter: (\d+)/\d+", re.M)


def _parse_setting(setting) -> tuple[int, int]:
    text = str(setting)
    threads, _, jobs = text.partition("x")
    return int(threads), int(jobs or 1)


def _train_once(datalist: str, configs: Sequence[str], threads: int, iterations: int, workdir: Path, tag: str,
                overrides: dict) -> subprocess.Popen:
    ids = dict(datalist_file=datalist, epochs=1, iterations_per_epoch=iterations, val_interval=1, log_interval=1,
               num_threads=threads, resume=False, output_dir=str(workdir / tag), ckpt_dir=str(workdir / tag),
               validate_voxels=False)
    cmd = bundle_run_command(config_stack(list(configs)), **{**ids, **overrides})
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _seconds(proc: subprocess.Popen) -> float:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"training failed (exit {proc.returncode}):\n{out[-3000:]}")
    from datetime import datetime

    stamps = {int(i): datetime.strptime(t, "%Y-%m-%d %H:%M:%S").timestamp() + int(ms) / 1000
              for t, ms, i in _ITERATION.findall(out)}
    if len(stamps) < 2:
        raise RuntimeError(f"fewer than two iteration lines in the output:\n{out[-3000:]}")
    first, last = min(stamps), max(stamps)
    # from the end of the first iteration to the end of the last: start-up, caching and validation left out
    return (stamps[last] - stamps[first]) * (last / (last - first))


def main(datalist: str, configs: Sequence[str] = ("planned", "cardiac"), settings: Sequence[str] = ("2", "1", "1x2"),
         iterations: int = 30, repeats: int = 2, **overrides) -> dict:
    """Seconds per iteration of each thread setting; prints a table and returns the figures."""
    parsed = [_parse_setting(s) for s in settings]
    times: dict[str, list[float]] = {str(s): [] for s in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(int(repeats)):
            for setting, (threads, jobs) in zip(settings, parsed):
                procs = [_train_once(str(Path(datalist).resolve()), configs, threads, int(iterations), Path(tmp),
                                     f"{setting}_{r}_{j}", overrides) for j in range(jobs)]
                per_iteration = max(_seconds(p) for p in procs) / int(iterations) / jobs
                times[str(setting)].append(per_iteration)
                print(f"repeat {r + 1}: {setting}: {per_iteration:.3f} s per iteration", flush=True)
    first = statistics.median(times[str(settings[0])])
    print(f"\nconfigs {list(configs)}; {iterations} iterations; {repeats} repeats; cpu_count {os.cpu_count()}")
    print("| setting (threads x jobs) | s per iteration (median) | speed vs first |\n|---|---|---|")
    result = {}
    for setting in settings:
        median = statistics.median(times[str(setting)])
        result[str(setting)] = {"seconds_per_iteration": median, "all": times[str(setting)], "speed_vs_first": first / median}
        print(f"| {setting} | {median:.3f} | {first / median:.2f}x |")
    return result


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda result: None)
