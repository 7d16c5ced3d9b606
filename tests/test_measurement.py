"""The measurement method itself: clock step, k calls per sample, round statistics, round order.

Pure functions on fixed inputs: no runtime, no timing of real models (those are in test_bench).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from edge_runtime.rounds import calibration_record, round_order
from edge_runtime.sampling import MIN_STEPS, calls_per_sample, clock_step_ns, estimate_call_ns, sample_calls
from edge_runtime.stats import (
    interval_level,
    intervals_overlap,
    median_of_p50s,
    p50_interval,
    summarize_rounds,
)


def coarse_clock(step: int, per_read: int = 1) -> itertools.count:
    """A clock that advances 1 ns per read but only shows multiples of ``step``."""
    ticks = itertools.count(0, per_read)
    return lambda: (next(ticks) // step) * step  # type: ignore[return-value]


def test_clock_step_is_the_smallest_visible_increment() -> None:
    assert clock_step_ns(coarse_clock(5000), reads=20_000) == 5000
    assert clock_step_ns(coarse_clock(1), reads=100) == 1
    assert clock_step_ns(lambda: 7, reads=100) is None  # a frozen clock: no step, never a division


@pytest.mark.parametrize(("step", "call", "k"), [
    (5.0, 40.0, 13),      # the browser: 5 us steps, a 40 us call -> 13 calls span >= 100 steps
    (0.06, 10.0, 1),      # perf_counter_ns (60 ns reads) and a 10 us call: one call suffices
    (0.06, 2.0, 3),
    (100.0, 40.0, 250),   # a page without isolation: 100 us steps
    (None, 40.0, 1),      # unknown step: one call, and the result says so
])
def test_k_makes_a_sample_span_at_least_100_steps(step: float | None, call: float, k: int) -> None:
    assert calls_per_sample(step, call) == k
    if step:
        assert k * call >= MIN_STEPS * step


class FakeClock:
    """A clock that moves only when a fake call spends time: exact timings, no machine noise."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def call(self, cost_ns: int) -> Callable[[], None]:
        def fn() -> None:
            self.now += cost_ns
        return fn


def test_a_sample_is_the_mean_of_k_calls() -> None:
    clock = FakeClock()
    spend = clock.call(1000)
    calls = []

    def fn() -> None:
        calls.append(1)
        spend()

    samples = sample_calls(fn, samples=4, k=5, warmup=3, clock=clock)
    assert len(calls) == 3 + 4 * 5
    assert samples == [1000.0] * 4  # 5 calls of 1000 ns each take 5000 ns: a sample is 5000 / 5


def test_k_is_calibrated_on_a_warm_runtime() -> None:
    """A cold runtime's first calls are slow; k must come from the warm call time."""
    clock = FakeClock()
    done = []

    def fn() -> None:
        done.append(1)
        clock.now += 50_000 if len(done) <= 15 else 2_000  # 15 cold calls of 50 us, then 2 us

    call_ns, timed = estimate_call_ns(fn, clock=clock)
    assert call_ns == 2_000 and timed >= 11 * 1000  # 11 batches of >= 2 ms of 2 us calls
    assert calls_per_sample(100.0, call_ns) == 5  # 100 steps of 100 ns over 2 us calls


def test_k_comes_from_the_least_disturbed_batches() -> None:
    """On a shared machine most batches can land in other processes' time slices (here 7 of 11
    run 10x slower): the estimate is the runtime's own call time, not the disturbance's."""
    clock = FakeClock()
    done = []

    def fn() -> None:
        done.append(1)
        batch = (len(done) - 22) // 1000  # 20 warm-up calls and 1 probe, then batches of 1000 calls
        clock.now += 2_000 if batch < 0 or batch % 3 == 0 else 20_000

    call_ns, _ = estimate_call_ns(fn, clock=clock)
    assert call_ns == 2_000


def test_a_call_time_that_drifts_more_than_2x_is_flagged() -> None:
    record, note = calibration_record(0.010, 0.025, warmup=20, calls=1000, k=3)
    assert record["drifted"] is True and record["drift"] == 2.5
    assert note is not None and "drifted 2.5x" in note and "k = 3" in note
    faster, _ = calibration_record(0.010, 0.004, warmup=20, calls=1000, k=3)
    assert faster["drifted"] is True and faster["drift"] == 2.5  # either way
    steady, note = calibration_record(0.010, 0.019, warmup=20, calls=1000, k=3)
    assert steady["drifted"] is False and steady["drift"] == 1.9 and note is None


# Two fixed sample sets (ns), five rounds each: A's rounds sit near 100, B's near 130 (separated);
# C's near 104 with the same spread as A (overlapping).
RNG = np.random.default_rng(42)
A = [list(100 + RNG.normal(0, 2, 200)) for _ in range(5)]
B = [list(130 + RNG.normal(0, 2, 200)) for _ in range(5)]
C = [list(101 + RNG.normal(0, 2, 200)) for _ in range(5)]
C[2] = list(96 + RNG.normal(0, 2, 200))  # one disturbed round moves one of five values


def test_the_interval_is_the_order_statistics_of_the_round_p50s() -> None:
    """No clamp, no resampling: ranks j and n+1-j of the sorted round p50s, j from the level."""
    p50s = sorted(float(np.percentile(r, 50)) for r in A)
    assert median_of_p50s(A) == pytest.approx(p50s[2])
    assert p50_interval(A) == pytest.approx((p50s[0], p50s[-1]))  # 5 rounds: the whole range
    ten = A + C
    p50s = sorted(float(np.percentile(r, 50)) for r in ten)
    assert p50_interval(ten) == pytest.approx((p50s[1], p50s[-2]))  # 10 rounds: 2nd to 9th
    assert p50_interval(A[:1]) is None  # one round: no interval, so no verdict


@pytest.mark.parametrize(("n", "level"), [(2, 0.5), (3, 0.75), (4, 0.875), (5, 0.9375), (6, 0.96875),
                                          (9, 0.9609375), (10, 0.978515625)])
def test_the_level_is_exact_for_the_number_of_rounds(n: int, level: float) -> None:
    assert interval_level(n) == pytest.approx(level)
    assert interval_level(1) is None


COVERAGE_TRIALS = 4000  # binomial s.e. at most 0.8 points: 3 points is over 3.7 s.e.
SAMPLES_PER_ROUND = 51  # odd: a round's p50 is one of its samples


def simulated_sessions(case: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """(``COVERAGE_TRIALS`` sessions of ``n`` rounds of samples, the median of round p50s' law).

    Each round is shifted by a drift common to its samples (between rounds) and each sample
    varies about it (within a round). Drift and spread are symmetric about zero, and a round's
    p50 (the middle one of an odd count) commutes with the monotone ``exp``, so the median of
    the distribution of round p50s is known exactly: 100 in every case.
    """
    shape = (COVERAGE_TRIALS, n, 1)
    within = (COVERAGE_TRIALS, n, SAMPLES_PER_ROUND)
    if case == "drift and spread":
        return 100 + rng.normal(0, 3, shape) + rng.normal(0, 2, within), 100.0
    if case == "heavy-tailed":  # Student t: drift with df 1.5 (infinite variance), spread df 2
        return 100 + 3 * rng.standard_t(1.5, shape) + 2 * rng.standard_t(2, within), 100.0
    assert case == "skewed"  # log-normal times: a long right tail, as real latencies have
    return 100 * np.exp(rng.normal(0, 0.3, shape) + rng.normal(0, 0.5, within)), 100.0


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_interval_coverage_matches_its_stated_level(n: int) -> None:
    """The share of simulated sessions whose interval holds the true median is the stated level
    (``ci_level``) within 3 points, at every round count. "The true median" is the median of
    the distribution of round p50s: what the interval claims to cover (see simulated_sessions).
    The bootstrap this replaced covered it in 58 % of sessions at 2 rounds while saying 95 %."""
    rng = np.random.default_rng(2100 + n)
    for case in ("drift and spread", "heavy-tailed", "skewed"):
        sessions, true_median = simulated_sessions(case, n, rng)
        stated = summarize_rounds(sessions[0], [], calls_per_sample=1, clock_step_ns=None,
                                  keep_samples=False)["ci_level"]
        hits = 0
        for rounds in sessions:
            lo, hi = p50_interval(rounds)
            hits += lo <= true_median <= hi
        coverage = hits / COVERAGE_TRIALS
        assert abs(coverage - stated) <= 0.03, f"{case}, {n} rounds: coverage {coverage:.3f}, stated {stated}"


def test_separated_and_overlapping_intervals() -> None:
    a, b, c = p50_interval(A), p50_interval(B), p50_interval(C)
    assert intervals_overlap(a, b) is False
    assert intervals_overlap(a, c) is True
    assert intervals_overlap(a, None) is None


def test_summary_keys_and_tail_from_single_calls() -> None:
    single = [100.0] * 98 + [5000.0, 9000.0]
    s = summarize_rounds(A, single, calls_per_sample=4, clock_step_ns=5000)
    assert s["rounds"] == 5 and s["runs"] == 200 and s["calls_per_sample"] == 4
    assert s["clock_step_ms"] == 0.005 and len(s["round_p50_ms"]) == 5
    assert s["tail_ms"]["label"] == "single-call samples" and s["tail_ms"]["max"] == 0.009
    assert s["p50_ci_ms"] == [min(s["round_p50_ms"]), max(s["round_p50_ms"])]  # 5 rounds: the range
    assert s["ci_level"] == 0.9375 and "order-statistic" in s["ci_method"]
    one = summarize_rounds(A[:1], single, calls_per_sample=4, clock_step_ns=5000)
    assert one["p50_ci_ms"] is None and one["ci_level"] is None
    assert len(s["samples_ms"]) == 1000


def test_round_order_moves_every_configuration() -> None:
    items = ["a", "b", "c", "d"]
    orders = [round_order(items, r) for r in range(4)]
    assert all(sorted(o) == items for o in orders)
    assert [o[0] for o in orders] == items  # each round starts with the next one
    followers = {(o[i], o[i + 1]) for o in orders for i in range(3)}
    assert ("b", "a") in followers and ("a", "b") in followers  # neighbours change sides
