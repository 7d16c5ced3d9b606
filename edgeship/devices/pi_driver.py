"""The ``--on pi`` driver of ``edgeship bench``: deploy the run's artifacts (incrementally), then
measure them there in one device session (``pi_session.py``)."""

from __future__ import annotations

from typing import Any

from edgeship.benchmarks.harness import BenchSettings
from edgeship.core.console import Progress
from edgeship.core.runstore import RunDir
from edgeship.devices.bundle import Log
from edgeship.devices.deploy import deploy, open_device
from edgeship.devices.options import PiOptions
from edgeship.devices.pi_session import bench_deployed, finish_results


def bench_pi(
    run: RunDir,
    settings: BenchSettings,
    options: PiOptions | None = None,
    *,
    progress: Progress | None = None,
    log: Log | None = None,
) -> list[dict[str, Any]]:
    """Deploy (incremental), then measure there.

    Returns schema results (``on: "pi"``; emulated ones say so); ``bench_run`` stores them.
    """
    options = options or PiOptions()
    device = open_device(**options.ssh())
    dep = deploy(run, device, variants=settings.variants, formats=settings.formats, progress=progress,
                 log=log)
    return finish_results(run, bench_deployed(device, dep, threads=settings.threads, runs=settings.runs,
                                              warmup=settings.warmup, rounds=settings.rounds,
                                              progress=progress, log=log))
