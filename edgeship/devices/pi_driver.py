"""The ``--on pi`` driver of ``edgeship bench``: deploy the run's artifacts (incrementally), then
measure them there in one device session (``bench.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgeship.benchmarks.harness import check_counts, parse_threads
from edgeship.core.console import Progress
from edgeship.core.runstore import RunDir
from edgeship.devices.bundle import Log
from edgeship.devices.deploy import deploy, open_device
from edgeship.devices.pi_session import bench_deployed, finish_results
from edgeship.devices.probe import DEFAULT_REMOTE_DIR


def bench_pi(
    run: RunDir,
    *,
    host: str | None = None,
    emulated: bool = False,
    variant: str | Sequence[str] = "all",
    format: str | Sequence[str] = "all",
    threads: str | Sequence[int] | int = (1,),
    runs: int = 200,
    warmup: int = 20,
    rounds: int = 5,
    progress: Progress | None = None,
    quantize: str | Sequence[str] | None = None,
    remote_dir: str = DEFAULT_REMOTE_DIR,
    offline: bool = False,
    log: Log | None = None,
    **ssh_options: Any,
) -> list[dict[str, Any]]:
    """The ``--on pi`` driver of ``edgeship bench``: deploy (incremental), then measure there.

    Returns schema results (``on: "pi"``; emulated ones say so); ``bench_run`` stores them.
    """
    check_counts(runs, warmup, rounds)
    thread_counts = parse_threads(threads)
    device = open_device(host, emulated=emulated, **ssh_options)
    dep = deploy(run, device, variants=variant, formats=format, quantize=quantize,
                 remote_dir=remote_dir, offline=offline, progress=progress, log=log)
    return finish_results(run, bench_deployed(device, dep, threads=thread_counts, runs=runs,
                                              warmup=warmup, rounds=rounds, progress=progress, log=log))
