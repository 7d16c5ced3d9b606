""""Ship this", per device: the fastest artifact within an accuracy budget, and its runner-up.

On each device, among the results whose accuracy is within ``accuracy_budget`` percentage points
of the best accuracy measured there (1.0 point = 0.01 of accuracy), the recommendation is the
configuration (artifact and thread count) with the lowest p50; ties go to the smaller file. Of that
artifact, the fewest threads that are not measurably slower ship: a thread that does not pay
still takes a core from the rest of the device (and which of two indistinguishable thread
counts is a hair faster changes from one session to the next). The runner-up is the fastest
configuration of a *different* artifact within the same budget, and the recommendation says
whether it is measurably slower (their p50 intervals separate) or not. A device with no accuracy
measured at all is recommended on latency alone, and says so; where only some results carry an
accuracy, the others cannot be shown to be within the budget and are left out (the count is
reported).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from edgeship.benchmarks.report.fmt import EMULATED, p50_with_ci, pct, size
from edgeship.benchmarks.report.model import Device, Report, Row, group_devices
from edgeship.benchmarks.report.verdicts import compare_rows
from edgeship.core.errors import InputError

DEFAULT_ACCURACY_BUDGET = 1.0  # percentage points
_EPS = 1e-9


def check_budget(points: Any) -> float:
    """``points`` as a float if it is a finite number >= 0, else a one-line ``InputError``."""
    try:
        value = float(points)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(points, bool) or not math.isfinite(value) or value < 0:
        raise InputError(f"--accuracy-budget must be a finite number of percentage points >= 0 "
                         f"(e.g. 1.0), got {points!r}")
    return value


def recommendations(report_or_results: Report | Iterable[dict[str, Any]],
                    accuracy_budget: float = DEFAULT_ACCURACY_BUDGET) -> list[dict[str, Any]]:
    """One recommendation per device, in report order, for a ``Report`` or a list of result dicts
    (schema 1 or 2, e.g. ``PipelineResult.bench``). Each is a JSON-ready dict: the chosen
    configuration's fields at the top level, ``runner_up`` (or None) and ``line``, the sentence
    the terminal prints."""
    budget = check_budget(accuracy_budget)
    if isinstance(report_or_results, Report):
        devices = report_or_results.devices
    else:
        devices = group_devices(report_or_results)
    return [recommend(d, budget) for d in devices if d.rows]


def recommend(dev: Device, accuracy_budget: float = DEFAULT_ACCURACY_BUDGET) -> dict[str, Any]:
    """The recommendation for one device (see the module docstring)."""
    measured = [r for r in dev.rows if r.accuracy is not None]
    best = max((r.accuracy for r in measured), default=None)  # type: ignore[type-var]
    if best is not None:
        floor = best - accuracy_budget / 100
        eligible = [r for r in measured if r.accuracy is not None and r.accuracy >= floor - _EPS]
    else:
        eligible = list(dev.rows)
    eligible.sort(key=lambda r: (r.p50, r.bytes or math.inf, r.name, r.threads or 0))
    pick = fewest_threads(eligible[0], eligible)
    runner = next((r for r in eligible[1:] if r.name != pick.name), None)
    rec: dict[str, Any] = {
        "device": dev.key, "device_id": dev.device_id, "kind": dev.kind, "title": dev.title,
        "emulated": dev.emulated, "accuracy_budget_points": accuracy_budget,
        "accuracy_measured": best is not None, "best_accuracy": best,
        "without_accuracy_left_out": len(dev.rows) - len(measured) if best is not None else 0,
        "within_budget": len(eligible),
        **entry(pick),
        "runner_up": None,
    }
    if runner is not None:
        outcome = compare_rows(runner, pick)
        rec["runner_up"] = {**entry(runner), "comparison": outcome,
                            "not_measurably_slower": None if outcome is None else outcome != "slower"}
    rec["line"] = ship_line(rec)
    return rec


def fewest_threads(pick: Row, rows: Iterable[Row]) -> Row:
    """``pick``'s artifact at the fewest threads whose p50 interval overlaps ``pick``'s, else ``pick``."""
    fewer = sorted((r for r in rows if r.name == pick.name and (r.threads or 0) < (pick.threads or 0)),
                   key=lambda r: r.threads or 0)
    return next((r for r in fewer if compare_rows(r, pick) == "same"), pick)


def entry(r: Row) -> dict[str, Any]:
    """The fields of one configuration a recommendation names."""
    return {"name": r.name, "variant": r.variant, "artifact": r.artifact, "format": r.format,
            "quantize": r.quantize, "backend": r.backend, "threads": r.threads, "p50_ms": r.p50,
            "p50_ci_ms": r.ci, "rounds": r.rounds, "bytes": r.bytes, "accuracy": r.accuracy,
            "accuracy_source": r.accuracy_source, "top1_agreement": r.top1_agreement, "file": r.file}


def _config(e: dict[str, Any]) -> str:
    return f"{e['name']} t{e['threads'] or '-'}"


def _p50(e: dict[str, Any]) -> str:
    return f"p50 {p50_with_ci(e['p50_ms'], e['p50_ci_ms'], e['rounds'])}"


def ship_line(rec: dict[str, Any]) -> str:
    """``ship this on <device>: base/tflite-int8 t1, p50 0.00910 ms [0.00890, 0.00940], accuracy
    98.50% (device), 45.0 KiB (runner-up ...: not measurably slower)``."""
    where = rec["device"] + (f" [{EMULATED}]" if rec["emulated"] else "")
    if rec["accuracy"] is not None:
        acc = f"accuracy {pct(rec['accuracy'])}"
        if rec.get("accuracy_source"):
            acc += f" ({rec['accuracy_source']})"
    else:
        acc = "accuracy not measured (chosen on latency alone)"
    text = f"ship this on {where}: {_config(rec)}, {_p50(rec)}, {acc}, {size(rec['bytes'])}"
    ru = rec.get("runner_up")
    if ru is None:
        scope = "within the accuracy budget" if rec["accuracy_measured"] else "measured"
        return text + f" (no other artifact {scope})"
    if ru["comparison"] is None:
        verdict = "no verdict without intervals"
    elif ru["not_measurably_slower"]:
        verdict = "not measurably slower"
    else:
        verdict = "measurably slower"
    return text + f" (runner-up {_config(ru)}, {_p50(ru)}: {verdict})"
