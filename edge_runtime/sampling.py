"""Timer-aware sampling: how many back-to-back calls one latency sample must hold.

A clock that steps in units of ``s`` cannot resolve a call shorter than a few ``s``: a browser's
``performance.now()`` steps by 5 us (100 us without cross-origin isolation), so a 40 us call
reads as 35 or 40 or 45. A sample is therefore the mean of ``k`` back-to-back calls, with ``k``
calibrated so one sample lasts at least ``MIN_STEPS`` clock steps (quantisation error <= 1 %).
A k-call mean hides the slow call among fast ones, so tail latency (p99) is measured separately
from single-call samples and labelled as such.

Every device uses these functions: the host and the Pi through ``edge_runtime.rounds``, the
browser by passing the page's measured clock step and call time to ``calls_per_sample``.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from typing import Any

MIN_STEPS = 100  # a sample spans at least this many clock steps
MAX_CALLS_PER_SAMPLE = 10_000
STEP_READS = 20_000  # clock reads when measuring the step


def clock_step_ns(clock: Callable[[], int] = time.perf_counter_ns, reads: int = STEP_READS) -> int | None:
    """The smallest positive difference between consecutive clock readings, in ns.

    That is the step a measurement can resolve: the clock's granularity or, for a fine clock,
    the cost of reading it. None when the clock never moved in ``reads`` readings (a frozen or
    broken clock), which callers must report rather than divide by.
    """
    smallest: int | None = None
    last = clock()
    for _ in range(reads):
        now = clock()
        d = now - last
        if d > 0 and (smallest is None or d < smallest):
            smallest = d
        last = now
    return smallest


def calls_per_sample(step: float | None, call: float, min_steps: int = MIN_STEPS) -> int:
    """k: back-to-back calls per sample so a sample spans >= ``min_steps`` clock steps.

    ``step`` and ``call`` share a unit (ns or ms). An unknown step gives k = 1: the caller
    records that the step could not be measured.
    """
    if step is None or step <= 0 or not math.isfinite(step):
        return 1
    if call <= 0 or not math.isfinite(call):
        return MAX_CALLS_PER_SAMPLE
    return max(1, min(MAX_CALLS_PER_SAMPLE, math.ceil(min_steps * step / call)))


def estimate_call_ns(fn: Callable[[], Any], calls: int = 5) -> float:
    """The median time of ``calls`` single calls: enough to choose k, not a measurement."""
    clock = time.perf_counter_ns
    times = []
    for _ in range(calls):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    times.sort()
    return float(times[len(times) // 2])


def sample_calls(fn: Callable[[], Any], samples: int, k: int = 1, warmup: int = 0) -> list[float]:
    """``samples`` timings of ``k`` back-to-back calls each, as ns per call.

    ``warmup`` calls run first, untimed. The garbage collector is paused (after a full
    collection) so a collection does not land inside a sample; only the clock is read around
    the calls.
    """
    if samples < 1 or k < 1 or warmup < 0:
        raise ValueError(f"samples and k must be >= 1 and warmup >= 0, got {samples}, {k}, {warmup}")
    for _ in range(warmup):
        fn()
    out = [0.0] * samples
    clock = time.perf_counter_ns
    calls = range(k)
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for i in range(samples):
            t0 = clock()
            for _ in calls:
                fn()
            out[i] = (clock() - t0) / k
    finally:
        if was_enabled:
            gc.enable()
    return out
