"""The measurement method itself: clock step, k calls per sample, round statistics, round order.

Pure functions on fixed inputs: no runtime, no timing of real models (those are in test_bench).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_runtime.rounds import round_order
from edge_runtime.sampling import MIN_STEPS, calls_per_sample, clock_step_ns, sample_calls
from edge_runtime.stats import intervals_overlap, median_of_p50s, p50_interval, summarize_rounds


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


def test_a_sample_is_the_mean_of_k_calls() -> None:
    calls = []
    samples = sample_calls(lambda: calls.append(1), samples=4, k=5, warmup=3)
    assert len(samples) == 4 and len(calls) == 3 + 4 * 5


# Two fixed sample sets (ns), five rounds each: A's rounds sit near 100, B's near 130 (separated);
# C's near 104 with the same spread as A (overlapping).
RNG = np.random.default_rng(42)
A = [list(100 + RNG.normal(0, 2, 200)) for _ in range(5)]
B = [list(130 + RNG.normal(0, 2, 200)) for _ in range(5)]
C = [list(101 + RNG.normal(0, 2, 200)) for _ in range(5)]
C[2] = list(96 + RNG.normal(0, 2, 200))  # one disturbed round moves one of five values


def test_p50_is_the_median_of_round_p50s_and_its_interval_holds_it() -> None:
    point = median_of_p50s(A)
    lo, hi = p50_interval(A)
    assert lo <= point <= hi and hi - lo < 3
    assert p50_interval(A) == (lo, hi)  # seeded: the same samples give the same interval
    assert p50_interval(A[:1]) is None  # one round: no interval, so no verdict


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
    assert s["p50_ci_ms"][0] <= s["latency_ms"]["p50"] <= s["p50_ci_ms"][1]
    assert len(s["samples_ms"]) == 1000


def test_round_order_moves_every_configuration() -> None:
    items = ["a", "b", "c", "d"]
    orders = [round_order(items, r) for r in range(4)]
    assert all(sorted(o) == items for o in orders)
    assert [o[0] for o in orders] == items  # each round starts with the next one
    followers = {(o[i], o[i + 1]) for o in orders for i in range(3)}
    assert ("b", "a") in followers and ("a", "b") in followers  # neighbours change sides
