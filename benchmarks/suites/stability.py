"""Do the numbers repeat? ``edgeship bench`` twice on one run, side by side, per device.

    python -m edgeship.benchmarks.suites.stability [RUN] [--on host,browser] [--rounds 5] [--runs 200]
        [--threads 1,2] [--accuracy-budget 1.0] [--runs-dir DIR]
    python -m edgeship.benchmarks.suites.stability RUN --smoke   # host only, 2 rounds of 20 calls

For every result of the first session it finds the same configuration (device, artifact,
threads) in the second and prints whether their p50 intervals overlap (each at its stated level,
``ci_level``), and the spread of p50 across rounds (slowest round p50 / fastest) in each. Per
device it prints the "ship this" recommendation of both sessions with the artifacts it was tied
with, whether they agree, and the recommended artifact's p50 against the fastest measured on that
device within the accuracy budget. Nothing is stored in the run.

Targets (issues 10 and 21): the same recommendation in both sessions on the host and in the
browser; >= 90 % of intervals overlap. The recommended p50 may exceed the fastest's point p50:
among artifacts whose intervals overlap the fastest's, "ship this" takes the smallest file, so the
ratio says how much point p50 the deterministic rule gives up (within the fastest's interval).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from edgeship.benchmarks.harness import BenchSettings
from edgeship.benchmarks.suites.smoke import parse_args
from edgeship.core.errors import EdgeshipError, InputError
from edgeship.core.runstore import RunStore
from edgeship.devices.registry import get_driver
from edgeship.report import recommendations

Key = tuple[str, str, Any]
SMOKE = {"on": "host", "rounds": 2, "runs": 20}


def _key(r: dict[str, Any]) -> Key:
    return (str(r["device_id"]), str(r["artifact"]), r.get("threads"))


def _spread(r: dict[str, Any]) -> float:
    p50s = [v for v in r.get("round_p50_ms") or [] if v > 0]
    return max(p50s) / min(p50s) if p50s else 1.0


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    from edge_runtime.stats import intervals_overlap

    return intervals_overlap(a.get("p50_ci_ms"), b.get("p50_ci_ms"))


def _fastest_within_budget(results: list[dict[str, Any]], device: str, budget: float) -> float:
    rows = [r for r in results if r["device_id"] == device]
    accs = [r["accuracy"] for r in rows if r.get("accuracy") is not None]
    if accs:
        floor = max(accs) - budget / 100
        rows = [r for r in rows if r.get("accuracy") is not None and r["accuracy"] >= floor]
    return min(r["latency_ms"]["p50"] for r in rows)


def compare_sessions(
    first: list[dict[str, Any]], second: list[dict[str, Any]], budget: float = 1.0
) -> dict[str, Any]:
    """The stability figures of two sessions' results (see the module docstring)."""
    by_key = {_key(r): r for r in second}
    pairs = []
    for a in first:
        b = by_key.get(_key(a))
        if b is not None:
            pairs.append({"key": _key(a), "p50": (a["latency_ms"]["p50"], b["latency_ms"]["p50"]),
                          "overlap": _overlap(a, b), "spread": (_spread(a), _spread(b))})
    recs_a = {r["device_id"]: r for r in recommendations(first, budget)}
    recs_b = {r["device_id"]: r for r in recommendations(second, budget)}
    devices = []
    for device, ra in recs_a.items():
        rb = recs_b.get(device)
        pick_a = (ra["name"], ra["threads"])
        pick_b = None if rb is None else (rb["name"], rb["threads"])
        devices.append({
            "device": device, "first": pick_a, "second": pick_b, "same": pick_a == pick_b,
            "tied_first": [t["name"] for t in ra["tied_with"]],
            "tied_second": None if rb is None else [t["name"] for t in rb["tied_with"]],
            "ratio_first": ra["p50_ms"] / _fastest_within_budget(first, device, budget),
            "ratio_second": None if rb is None
            else rb["p50_ms"] / _fastest_within_budget(second, device, budget),
        })
    judged = [p for p in pairs if p["overlap"] is not None]
    spreads = [s for p in pairs for s in p["spread"]]
    levels = sorted({r.get("ci_level") for r in [*first, *second] if r.get("ci_level") is not None})
    return {
        "ci_levels": levels,
        "pairs": pairs, "devices": devices,
        "overlap_fraction": sum(p["overlap"] for p in judged) / len(judged) if judged else None,
        "spread_median": statistics.median(spreads) if spreads else None,
        "spread_max": max(spreads) if spreads else None,
    }


def _print(on: str, stats: dict[str, Any], seconds: tuple[float, float]) -> None:
    print(f"\n== {on}: two sessions, {seconds[0]:.0f} s and {seconds[1]:.0f} s")
    print(f"{'device / artifact / threads':64} {'p50 first':>10} {'p50 second':>10} {'overlap':>8} "
          f"{'spread 1':>8} {'spread 2':>8}")
    for p in stats["pairs"]:
        device, artifact, threads = p["key"]
        name = f"{device} {artifact.rsplit('/', 2)[-2]}/{artifact.rsplit('/', 1)[-1]} t{threads}"
        overlap = {True: "yes", False: "NO", None: "-"}[p["overlap"]]
        print(f"{name[:64]:64} {p['p50'][0]:10.4f} {p['p50'][1]:10.4f} {overlap:>8} "
              f"{p['spread'][0]:7.2f}x {p['spread'][1]:7.2f}x")
    for d in stats["devices"]:
        same = "same" if d["same"] else "DIFFERENT"
        for which in ("first", "second"):
            tied = d.get(f"tied_{which}")
            if tied:
                print(f"  {which} session: tied with {', '.join(tied)} (intervals overlap the fastest's)")
        print(f"ship this on {d['device']}: first {d['first'][0]} t{d['first'][1]}, second "
              f"{d['second'][0] if d['second'] else '-'} t{d['second'][1] if d['second'] else '-'} ({same}); "
              f"recommended p50 / fastest within budget: {_x(d['ratio_first'])}, {_x(d['ratio_second'])}")
    frac = stats["overlap_fraction"]
    levels = ", ".join(f"{v:.2%}" for v in stats.get("ci_levels") or []) or "-"
    print(f"intervals overlapping: {'-' if frac is None else f'{frac:.0%}'} of {len(stats['pairs'])} "
          f"(target >= 90 %); p50 spread across rounds: median {_x(stats['spread_median'])}, "
          f"max {_x(stats['spread_max'])}; interval level: {levels}")


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeship.benchmarks.suites.stability",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("run", nargs="?", default="latest", help="run id, path or 'latest' (default)")
    parser.add_argument("--runs-dir", default=None, help="where runs live (default ./runs)")
    parser.add_argument("--on", default="host,browser", help="devices, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--accuracy-budget", type=float, default=1.0)
    args = parse_args(parser, argv, SMOKE)
    try:
        settings = BenchSettings.parse(args.threads, runs=args.runs, rounds=args.rounds)
        run = RunStore(args.runs_dir).resolve(args.run)
        print(f"run {run.id}: rounds {args.rounds}, {args.runs} samples per round, threads {args.threads}")
        for on in [s.strip() for s in args.on.split(",") if s.strip()]:
            sessions, seconds = [], []
            for _ in range(2):
                t0 = time.monotonic()
                if on not in ("host", "browser"):
                    raise InputError(f"--on {on}: this benchmark measures host and browser")
                sessions.append(get_driver(on)(run, settings, None))
                seconds.append(time.monotonic() - t0)
            _print(on, compare_sessions(sessions[0], sessions[1], args.accuracy_budget),
                   (seconds[0], seconds[1]))
    except EdgeshipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
