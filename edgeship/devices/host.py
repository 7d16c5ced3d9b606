"""The host driver: every passing export of a run, measured on this machine in one session.

The session is ``python -m edge_runtime bench A B ... --threads 1,2 --rounds R --test FILE``, a
fresh process running exactly what a device runs (``edge_runtime.rounds``): every artifact and
thread count once per round, accuracy on the test split through the timed runtime. The child
reports progress on stderr, one line per measurement, which drives the progress bar here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import edge_runtime
from edge_runtime.result import require_valid
from edgeship.benchmarks.accuracy import finish_evaluation, write_run_testset
from edgeship.benchmarks.harness import BenchSettings, select_artifacts
from edgeship.core.console import Progress
from edgeship.core.errors import EdgeshipError
from edgeship.core.runstore import RunDir
from edgeship.devices.options import HostOptions

TIMEOUT_S = 900  # per configuration: a MobileNet with 5 rounds of 200 samples takes seconds


class HostBenchError(EdgeshipError):
    """``python -m edge_runtime bench`` failed; the message is its error line."""


def bench_host(
    run: RunDir,
    settings: BenchSettings,
    options: HostOptions | None = None,
    *,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure every selected export at every thread count; one schema result each (not stored).

    An artifact whose runtime fails to load is reported through ``log`` and left out; if every one
    fails, the error is raised.
    """
    say = log or (lambda _m: None)
    artifacts = select_artifacts(run, settings.variants, settings.formats, log=say)
    by_dir = {str(a.dir.resolve()): a for a in artifacts}
    with tempfile.TemporaryDirectory(prefix="edgeship-bench-") as tmp:
        test = write_run_testset(run, Path(tmp))
        if test is None:
            say(f"run {run.id} has no raw test split: accuracy comes from export validation")
        raw = run_session([a.dir for a in artifacts], settings.threads, rounds=settings.rounds,
                          runs=settings.runs, warmup=settings.warmup, test=test, progress=progress, log=say)
    results = []
    for r in raw:
        art = by_dir[str(Path(r["artifact"]).resolve())]
        r["artifact"] = art.rel
        r["run_id"] = r.get("run_id") or run.id
        if r.get("accuracy") is None:
            r["accuracy"] = (art.meta.get("validation") or {}).get("accuracy")
            r["accuracy_source"] = None if r["accuracy"] is None else "export validation"
        results.append(require_valid(finish_evaluation(run, r)))
    return results


def plan_size(run: RunDir, settings: BenchSettings, options: HostOptions | None = None) -> int:
    """How many measurements ``bench_host`` will make (for a progress bar's total)."""
    return settings.plan_size(len(select_artifacts(run, settings.variants, settings.formats)))


def run_session(
    folders: Sequence[Path],
    threads: Sequence[int | None],
    *,
    rounds: int = BenchSettings.rounds,
    runs: int = 200,
    warmup: int = 20,
    test: Path | None = None,
    end_to_end: bool = True,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    timeout_s: float | None = None,
) -> list[dict[str, Any]]:
    """One ``python -m edge_runtime bench`` session over ``folders``; its results, unvalidated."""
    counts = [t for t in threads if t]
    cmd = [sys.executable, "-m", "edge_runtime", "bench", *map(str, folders), "--rounds", str(rounds),
           "--runs", str(runs), "--warmup", str(warmup), "--json", "--on", "host", "--progress"]
    if counts:
        cmd += ["--threads", ",".join(map(str, counts))]
    if test is not None:
        cmd += ["--test", str(test)]
    if not end_to_end:
        cmd.append("--no-e2e")
    limit = timeout_s or TIMEOUT_S * max(1, len(folders) * max(1, len(counts)))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_device_env())
    errors: list[str] = []
    # One reader per pipe: stderr (progress) in a thread, stdout (the results) here, so neither
    # pipe fills up while the other is waited on; a timer ends a session that hangs.
    reader = threading.Thread(target=_follow, args=(proc.stderr, progress, log, errors), daemon=True)
    reader.start()
    expired = threading.Event()
    timer = threading.Timer(limit, lambda: (expired.set(), proc.kill()))
    timer.start()
    try:
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait()
    finally:
        timer.cancel()
    reader.join(timeout=5)
    if expired.is_set():
        raise HostBenchError(f"the benchmark session took over {limit:.0f} s; lower --runs or --rounds")
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not results:
        msg = errors[-1] if errors else f"exit code {proc.returncode}"
        raise HostBenchError(f"benchmarking on this machine failed: {msg}")
    return results


def _follow(stream: Any, progress: Progress | None, log: Callable[[str], None] | None,
            errors: list[str]) -> None:
    """Progress lines advance the bar; ``error:``/``warning:`` lines are kept and logged."""
    for line in stream:
        line = line.rstrip("\n")
        if line.startswith("progress ") and progress is not None:
            status = line.split(" ", 2)[2] if line.count(" ") >= 2 else ""
            progress.update(1, status)
        elif line.startswith(("error: ", "warning: ")):
            text = line.split(": ", 1)[1]
            if line.startswith("error: "):
                errors.append(text)
            if log is not None:
                log(text)


def bench_artifact(
    folder: str | Path,
    *,
    runs: int = 200,
    warmup: int = 20,
    threads: int | None = None,
    rounds: int = 1,
    end_to_end: bool = True,
    timeout_s: float = TIMEOUT_S,
) -> dict[str, Any]:
    """One artifact folder measured in a fresh session process (scripts and suites use this)."""
    return run_session([Path(folder)], [threads], rounds=rounds, runs=runs, warmup=warmup,
                       end_to_end=end_to_end, timeout_s=timeout_s)[0]


def _device_env() -> dict[str, str]:
    """This environment as a device would see it: edge_runtime importable, no Pi/emulation flags."""
    env = {k: v for k, v in os.environ.items() if k not in ("EDGESHIP_DEVICE", "EDGESHIP_EMULATED",
                                                            "TVM_NUM_THREADS")}
    root = str(Path(edge_runtime.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env
