"""Timer-aware sampling: how many back-to-back calls one latency sample must hold.

A clock that steps in units of ``s`` cannot resolve a call shorter than a few ``s``: a browser's
``performance.now()`` steps by 5 us (100 us without cross-origin isolation), so a 40 us call
reads as 35 or 40 or 45. A sample is therefore the mean of ``k`` back-to-back calls, with ``k``
calibrated so one sample lasts at least ``MIN_STEPS`` clock steps (quantisation error <= 1 %).
A k-call mean hides the slow call among fast ones, so tail latency (p99) is measured separately
from single-call samples and labelled as such. The call time that sets k is estimated on a warm
runtime (``estimate_call_ns``) and checked again at the end of the session (``drift_ratio``).

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
CALIBRATION_WARMUP = 20  # untimed calls before the call time that sets k is estimated
CALIBRATION_BATCHES = 11  # batches of back-to-back calls; their lower quartile is the estimate
CALIBRATION_BATCH_NS = 2_000_000  # each batch lasts at least 2 ms (or one call)


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


def estimate_call_ns(
    fn: Callable[[], Any],
    warmup: int = CALIBRATION_WARMUP,
    batches: int = CALIBRATION_BATCHES,
    min_batch_ns: int = CALIBRATION_BATCH_NS,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> tuple[float, int]:
    """(the time of one call in ns, the timed calls it took), after ``warmup`` untimed calls.

    A cold runtime's first calls are slow (caches, thread start, lazy allocation), so k chosen
    from them is too small for the rest of the session: warm-up first. Then ``batches`` batches
    of back-to-back calls, each lasting at least ``min_batch_ns``, and the lower quartile of their
    per-call means: on a shared machine whole batches land in other processes' time slices, and
    the least disturbed quarter is the runtime's own call time. Measured on a loaded 2-core
    machine (load 14), 12 estimates of one 14 us call: the median of 7 batches ranged 5.5x, the
    lower quartile of 11 batches 1.07x. Enough to choose k, not a measurement.
    """
    if warmup < 0 or batches < 1:
        raise ValueError(f"warmup must be >= 0 and batches >= 1, got {warmup}, {batches}")
    for _ in range(warmup):
        fn()
    t0 = clock()
    fn()
    first = max(clock() - t0, 1)
    size = max(1, min(MAX_CALLS_PER_SAMPLE, math.ceil(min_batch_ns / first)))
    means = []
    for _ in range(batches):
        t0 = clock()
        for _ in range(size):
            fn()
        means.append((clock() - t0) / size)
    means.sort()
    return float(means[len(means) // 4]), 1 + batches * size


def drift_ratio(calibrated: float, later: float) -> float | None:
    """How many times the call time moved between calibration and a later check (>= 1, either
    way); None when either is not a positive number."""
    if not (calibrated > 0 and later > 0 and math.isfinite(calibrated) and math.isfinite(later)):
        return None
    return max(later / calibrated, calibrated / later)


def sample_calls(
    fn: Callable[[], Any], samples: int, k: int = 1, warmup: int = 0,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> list[float]:
    """``samples`` timings of ``k`` back-to-back calls each, as ns per call (the k-call time / k).

    ``warmup`` calls run first, untimed. The garbage collector is paused (after a full
    collection) so a collection does not land inside a sample; only the clock is read around
    the calls.
    """
    if samples < 1 or k < 1 or warmup < 0:
        raise ValueError(f"samples and k must be >= 1 and warmup >= 0, got {samples}, {k}, {warmup}")
    for _ in range(warmup):
        fn()
    out = [0.0] * samples
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
