"""Running the steps of a benchmark: a command with its output in a log and its wall time accumulated over
attempts, the failures of a step and of a benchmark, and progress lines printed whole."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarking.report import failure_text
from bundle_path import REPO_ROOT, use_bundle_scripts

use_bundle_scripts()
from scripts.run_management.atomic_checkpoint import atomic_write_bytes  # noqa: E402


class RunFailed(RuntimeError):
    """A training or evaluation command of a run exited non-zero; ``log`` holds its output."""

    def __init__(self, message: str, log: Path, returncode: int | None = None) -> None:
        super().__init__(message)
        self.log = log
        self.returncode = returncode


class BenchmarkFailures(RuntimeError):
    """Some runs failed; the report holds those that finished. ``failures``: one dict per failed run."""

    def __init__(self, failures: list[dict], finished: int, report: Path) -> None:
        self.failures = failures
        lines = [f"{len(failures)} of {len(failures) + finished} runs failed; the report {report} holds the "
                 f"{finished} that finished. Run the same command again to retry the failed ones:"]
        lines += [f"  {failure_text(f)}" for f in failures]
        super().__init__("\n".join(lines))


# one lock for every progress line: parallel jobs print whole lines, never parts of two on one line
_PRINT_LOCK = threading.Lock()


def say(line: str) -> None:
    """Print ``line`` and its newline in one write (``print`` writes them separately, so two threads can
    interleave ``a`` ``b`` ``\\n`` ``\\n``)."""
    with _PRINT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def saved_times(run_dir: Path) -> dict:
    """What :class:`Timer` saved in ``<run>/benchmark_time.json`` (empty before the first attempt)."""
    path = run_dir / "benchmark_time.json"
    return json.loads(path.read_text()) if path.is_file() else {}


class Timer:
    """Accumulated wall time of a run's step over attempts, saved every few seconds to
    ``<run>/benchmark_time.json`` so that a cut-off attempt still counts."""

    def __init__(self, run_dir: Path, key: str) -> None:
        self.path = run_dir / "benchmark_time.json"
        self.key = key
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.before = float(saved.get(key, 0.0))
        self.attempts = int(saved.get(f"{key}_attempts", 0)) + 1
        self.start = time.perf_counter()
        self.stopped: float | None = None

    def stop(self) -> None:
        """Freeze the clock: later saves (e.g. adding the trained command) record the same time."""
        self.stopped = time.perf_counter()

    def save(self, **extra) -> float:
        """Save the accumulated seconds (rounded to 0.1 s, as returned) with ``extra`` fields."""
        now = time.perf_counter() if self.stopped is None else self.stopped
        total = round(self.before + now - self.start, 1)
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        saved.update({self.key: total, f"{self.key}_attempts": self.attempts, **extra})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json.dumps(saved).encode("utf-8"), self.path)
        return total


def run_logged(cmd: list[str], what: str, log: Path, timer: Timer) -> float:
    """Run ``cmd`` (in the repository root) with its output appended to ``log``; returns the accumulated
    seconds of ``timer``.

    Raises:
        RunFailed: ``cmd`` exited non-zero; the message ends with the tail of ``log``.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ {shlex.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            time.sleep(1.0)
            timer.save()
    timer.stop()
    seconds = timer.save()
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RunFailed(f"{what} failed (exit {proc.returncode}); log: {log}\n{shlex.join(cmd)}\n{tail}", log,
                        proc.returncode)
    return seconds


def run_all(one: Callable[[int], None], count: int, jobs: int = 1) -> None:
    """``one(0)``, ..., ``one(count - 1)``: in turn, or ``jobs`` at a time in threads (each run is a
    subprocess, so threads suffice); an exception of a run is raised once all have been submitted."""
    if int(jobs) == 1:
        for i in range(count):
            one(i)
        return
    with ThreadPoolExecutor(max_workers=int(jobs)) as pool:
        for future in [pool.submit(one, i) for i in range(count)]:
            future.result()


def fire_main(command, argv: list[str]) -> int:
    """A benchmark tool's command line: fire on ``command`` itself (so that ``--help`` shows its
    arguments; a bare ``--help`` is turned into fire's own, instead of fire complaining of a missing
    argument), nothing printed after the report; 0 when every step finished, 1 when some failed
    (:class:`BenchmarkFailures`, listed last on stderr)."""
    import fire

    argv = ["--", "--help"] if any(a in ("-h", "--help") for a in argv) else list(argv)
    try:
        fire.Fire(command, command=argv, serialize=lambda rows: None)
    except BenchmarkFailures as e:
        sys.stdout.flush()
        print(f"\nERROR: {e}", file=sys.stderr, flush=True)
        return 1
    return 0
