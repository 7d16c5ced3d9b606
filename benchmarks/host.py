"""The host driver: every passing export of a run, timed on this machine.

Each (artifact, thread count) is measured in a fresh ``python -m edge_runtime bench`` process,
exactly what a device runs. That keeps measurements independent: ``peak_rss_mb`` is the peak
of one model and its runtime (not of everything benchmarked before it), TVM's thread pool gets
its thread count (it reads ``TVM_NUM_THREADS`` once per process), and one runtime's threads
cannot linger into another's timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import Progress, check_counts, parse_threads, select_artifacts
from edge_runtime.result import require_valid
from edgeship.errors import EdgeshipError
from edgeship.runstore import RunDir

TIMEOUT_S = 900  # one artifact at one thread count; a MobileNet with 200 runs takes seconds


class HostBenchError(EdgeshipError):
    """``python -m edge_runtime bench`` failed for an artifact; the message is its error line."""


def bench_host(
    run: RunDir,
    *,
    variants: str | Sequence[str] = "all",
    formats: str | Sequence[str] = "all",
    threads: str | Sequence[int] | int = (1, 2),
    runs: int = 200,
    warmup: int = 20,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Time every selected export at every thread count; one schema result each (not stored).

    An artifact whose runtime fails is reported through ``log`` and left out; if every one
    fails the first error is raised.
    """
    check_counts(runs, warmup)
    thread_counts = parse_threads(threads)
    say = log or (lambda _m: None)
    artifacts = select_artifacts(run, variants, formats, log=say)
    results: list[dict[str, Any]] = []
    errors: list[HostBenchError] = []
    for art in artifacts:
        for t in thread_counts:
            status = f"{art.variant}/{art.name} t{t}"
            try:
                r = bench_artifact(art.dir, runs=runs, warmup=warmup, threads=t)
            except HostBenchError as e:
                errors.append(e)
                say(f"{art.rel} threads {t}: {e}")
                status += " failed"
            else:
                r["artifact"] = art.rel
                r["run_id"] = r.get("run_id") or run.id
                results.append(require_valid(r))
                status += f" p50 {r['latency_ms']['p50']:.4f} ms"
            if progress is not None:
                progress.update(1, status)
    if not results and errors:
        raise errors[0]
    return results


def plan_size(run: RunDir, variants: str | Sequence[str] = "all", formats: str | Sequence[str] = "all",
              threads: str | Sequence[int] | int = (1, 2)) -> int:
    """How many measurements ``bench_host`` will make (for a progress bar's total)."""
    return len(select_artifacts(run, variants, formats)) * len(parse_threads(threads))


def bench_artifact(
    folder: str | Path,
    *,
    runs: int = 200,
    warmup: int = 20,
    threads: int | None = None,
    end_to_end: bool = True,
    timeout_s: float = TIMEOUT_S,
) -> dict[str, Any]:
    """One artifact folder timed in a fresh ``python -m edge_runtime bench --json`` process."""
    cmd = [sys.executable, "-m", "edge_runtime", "bench", str(folder), "--runs", str(runs),
           "--warmup", str(warmup), "--json", "--on", "host"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if not end_to_end:
        cmd.append("--no-e2e")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=_device_env(),
                              check=False)
    except subprocess.TimeoutExpired as e:
        raise HostBenchError(f"timing {folder} took over {timeout_s:.0f} s; lower --runs") from e
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        errs = [ln.removeprefix("error: ") for ln in lines if ln.startswith("error: ")]
        msg = errs[-1] if errs else (lines[-1] if lines else f"exit code {done.returncode}")
        raise HostBenchError(f"{folder}: {msg}")
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise HostBenchError(f"{folder}: edge_runtime bench printed no JSON result") from e


def _device_env() -> dict[str, str]:
    """This environment as a device would see it: edge_runtime importable, no Pi/emulation flags."""
    import edge_runtime

    env = {k: v for k, v in os.environ.items() if k not in ("EDGESHIP_DEVICE", "EDGESHIP_EMULATED",
                                                            "TVM_NUM_THREADS")}
    root = str(Path(edge_runtime.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env
