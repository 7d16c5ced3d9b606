"""From rounds of latency samples to the numbers a result reports: p50, its interval, the tail.

The point estimate is the median of the rounds' p50s: a round disturbed by another process
moves one of five values, not the answer. Its 95 % interval comes from a two-level percentile
bootstrap: resample rounds with replacement, then samples within each drawn round, take each
round's p50 and their median; the interval is the 2.5th and 97.5th percentile of 2,000 such
medians (seeded, so the same samples always give the same interval). The first level carries
the drift between rounds, the second the spread within one. With a single round there is no
between-round variation to resample, so the interval is null and reports draw no verdict.

Every device (host, Pi, emulated Pi, browser) is summarised by ``summarize_rounds``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_runtime.timing import summarize_ms

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
CI_METHOD = (f"two-level percentile bootstrap (rounds, then samples within each round), "
             f"{BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}, {CONFIDENCE:.0%} interval "
             "of the median of round p50s")
TAIL_LABEL = "single-call samples"


def median_of_p50s(rounds: Sequence[Sequence[float]]) -> float:
    """The median across rounds of each round's p50 (linear interpolation, numpy's default)."""
    return float(np.median([np.percentile(np.asarray(r, dtype=np.float64), 50) for r in rounds]))


def p50_interval(
    rounds: Sequence[Sequence[float]],
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """The two-level bootstrap interval of ``median_of_p50s``; None with fewer than 2 rounds."""
    groups = [np.asarray(r, dtype=np.float64) for r in rounds if len(r)]
    if len(groups) < 2:
        return None
    rng = np.random.default_rng(seed)
    # Level two first: for every round, `resamples` bootstrap p50s of its own samples.
    inner = np.stack([
        np.percentile(g[rng.integers(0, len(g), size=(resamples, len(g)))], 50, axis=1) for g in groups
    ])
    # Level one: draw rounds with replacement, each draw taking an independent inner resample.
    n = len(groups)
    which = rng.integers(0, n, size=(resamples, n))
    column = rng.integers(0, resamples, size=(resamples, n))
    medians = np.median(inner[which, column], axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.percentile(medians, [100 * alpha, 100 * (1 - alpha)])
    point = median_of_p50s(groups)
    return float(min(lo, point)), float(max(hi, point))


def intervals_overlap(a: Sequence[float] | None, b: Sequence[float] | None) -> bool | None:
    """True when two intervals share a point; None when either is missing (no verdict possible)."""
    if a is None or b is None:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def tail_summary(single_ns: Sequence[float]) -> dict[str, Any]:
    """p50/p90/p99/max of single-call samples (ns in, ms out): the tail a k-call mean hides."""
    ms = np.asarray(single_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": round(float(p50), 6), "p90": round(float(p90), 6), "p99": round(float(p99), 6),
            "max": round(float(ms.max()), 6), "samples": len(ms), "label": TAIL_LABEL}


def summarize_rounds(
    rounds_ns: Sequence[Sequence[float]],
    single_ns: Sequence[float],
    *,
    calls_per_sample: int,
    clock_step_ns: float | None,
    keep_samples: bool = True,
) -> dict[str, Any]:
    """The timing keys of a result: latency_ms, p50_ci_ms, rounds, tail_ms, sampling facts.

    ``rounds_ns`` holds each round's samples (ns per call, each the mean of ``calls_per_sample``
    calls); ``single_ns`` the single-call samples for the tail (the same samples when k = 1).
    """
    rounds = [list(r) for r in rounds_ns if len(r)]
    if not rounds:
        raise ValueError("no timing samples")
    pooled = [v for r in rounds for v in r]
    latency = summarize_ms(pooled)
    latency["p50"] = round(median_of_p50s(rounds) / 1e6, 6)
    ci = p50_interval(rounds)
    out: dict[str, Any] = {
        "rounds": len(rounds),
        "runs": len(rounds[0]),
        "latency_ms": latency,
        "p50_ci_ms": None if ci is None else [round(ci[0] / 1e6, 6), round(ci[1] / 1e6, 6)],
        "ci_method": CI_METHOD if ci is not None else "none: one round",
        "round_p50_ms": [round(float(np.percentile(r, 50)) / 1e6, 6) for r in rounds],
        "calls_per_sample": int(calls_per_sample),
        "clock_step_ms": None if not clock_step_ns else round(clock_step_ns / 1e6, 9),
        "tail_ms": tail_summary(single_ns) if len(single_ns) else None,
    }
    if keep_samples:
        out["samples_ms"] = [round(v / 1e6, 6) for v in pooled]
    return out
