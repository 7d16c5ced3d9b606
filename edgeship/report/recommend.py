""""Ship this", per device: among the artifacts within an accuracy budget and above the zero-rule,
the ones tied with the fastest, and of those the smallest file.

On each device:

1. **Above the zero-rule.** Where the run's zero-rule baseline is known (the accuracy of always
   predicting the most frequent class, ``model/metrics.json`` ``baselines``), an artifact whose
   device accuracy is not above it qualifies for nothing: a model that learned nothing is never
   shipped. When no artifact measured on the device is above it, the recommendation says "no
   artifact qualifies" and names the best accuracy and the baseline.
2. **Within the budget.** Of those, the results whose accuracy is within ``accuracy_budget``
   percentage points of the best accuracy measured there (1.0 point = 0.01 of accuracy).
3. **Tied with the fastest.** The fastest is the configuration (artifact and thread count) with
   the lowest p50. Every configuration whose p50 interval overlaps the fastest's is tied with it:
   which of them has the lower point p50 is noise, and changes from one session to the next.
4. **A rule that does not depend on noise** picks among the tied artifacts (``TIE_RULE``): the
   smallest file, then the most accurate, then the name. Of that artifact, the fewest threads
   among its tied configurations ship (a thread that does not pay still takes a core from the
   rest of the device). The line names the tied set ("tied with ...").

The runner-up is the fastest configuration of a *different*, untied artifact within the budget,
and the recommendation says whether it is measurably slower (their p50 intervals separate) or not. A
device with no accuracy measured at all is recommended on latency alone, and says so; where only
some results carry an accuracy, the others cannot be shown to be within the budget and are left
out (the count is reported). Without intervals (one round) there are no ties: the lowest p50
ships, and the line says no verdict could be drawn.

``edgeship.devices.browser.session.bundle_measurements`` calls ``recommend`` on one bundle's
results, so the demo page opens with the runtime this rule picks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from edgeship.core.errors import InputError
from edgeship.report.fmt import EMULATED, p50_with_ci, pct, size
from edgeship.report.model import Device, Report, Row, group_devices
from edgeship.report.verdicts import compare_rows

DEFAULT_ACCURACY_BUDGET = 1.0  # percentage points
TIE_RULE = "the smallest file, then the most accurate, then by name"
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
                    accuracy_budget: float = DEFAULT_ACCURACY_BUDGET,
                    zero_rule: float | None = None) -> list[dict[str, Any]]:
    """One recommendation per device, in report order, for a ``Report`` or a list of result dicts
    (schema 1 or 2, e.g. ``PipelineResult.bench``). Each is a JSON-ready dict: the chosen
    configuration's fields at the top level, ``tied_with``, ``runner_up`` (or None) and ``line``,
    the sentence the terminal prints. ``zero_rule`` is the run's zero-rule test accuracy (a
    ``Report`` carries its own); an artifact not above it is never chosen."""
    budget = check_budget(accuracy_budget)
    if isinstance(report_or_results, Report):
        devices = report_or_results.devices
        if zero_rule is None:
            zero_rule = report_or_results.zero_rule
    else:
        devices = group_devices(report_or_results)
    return [recommend(d, budget, zero_rule) for d in devices if d.rows]


def recommend(dev: Device, accuracy_budget: float = DEFAULT_ACCURACY_BUDGET,
              zero_rule: float | None = None) -> dict[str, Any]:
    """The recommendation for one device (see the module docstring)."""
    measured = [r for r in dev.rows if r.accuracy is not None]
    qualified = measured
    if zero_rule is not None:
        qualified = [r for r in measured if r.accuracy is not None and r.accuracy > zero_rule + _EPS]
    best = max((r.accuracy for r in qualified), default=None)  # type: ignore[type-var]
    rec: dict[str, Any] = {
        "device": dev.key, "device_id": dev.device_id, "kind": dev.kind, "title": dev.title,
        "emulated": dev.emulated, "accuracy_budget_points": accuracy_budget,
        "accuracy_measured": bool(measured), "best_accuracy": best, "zero_rule_accuracy": zero_rule,
        "below_zero_rule_left_out": len(measured) - len(qualified),
        "without_accuracy_left_out": len(dev.rows) - len(measured) if measured else 0,
        "qualifies": True, "tie_rule": TIE_RULE,
    }
    if measured and not qualified:
        top = max(measured, key=lambda r: (r.accuracy or 0.0, -r.p50))
        rec.update({**{k: None for k in entry(top)}, "qualifies": False, "within_budget": 0,
                    "tied_with": [], "runner_up": None})
        rec["line"] = no_artifact_line(rec, top, zero_rule)
        return rec
    if best is not None:
        floor = best - accuracy_budget / 100
        eligible = [r for r in qualified if r.accuracy is not None and r.accuracy >= floor - _EPS]
    else:
        eligible = list(dev.rows)
    eligible.sort(key=lambda r: (r.p50, r.bytes or math.inf, r.name, r.threads or 0))
    tied = tied_with_fastest(eligible)
    pick = choose_among_tied(tied)
    others: dict[str, Row] = {}
    for r in tied:  # each other tied artifact once, at its fastest tied configuration
        if r.name != pick.name and r.name not in others:
            others[r.name] = r
    # The runner-up: the fastest other artifact that is not tied (a tied one is named as tied).
    runner = next((r for r in eligible if r.name != pick.name and r.name not in others), None)
    rec.update({"within_budget": len(eligible), **entry(pick),
                "tied_with": [entry(r) for r in others.values()], "runner_up": None})
    if runner is not None:
        outcome = compare_rows(runner, pick)
        rec["runner_up"] = {**entry(runner), "comparison": outcome,
                            "not_measurably_slower": None if outcome is None else outcome != "slower"}
    rec["line"] = ship_line(rec)
    return rec


def tied_with_fastest(eligible: list[Row]) -> list[Row]:
    """The configurations whose p50 interval overlaps the fastest's (``eligible`` sorted by p50),
    the fastest first; just the fastest when it has no interval."""
    if not eligible:
        return []
    fastest = eligible[0]
    return [fastest, *(r for r in eligible[1:] if compare_rows(r, fastest) == "same")]


def choose_among_tied(tied: list[Row]) -> Row:
    """By ``TIE_RULE``, never by the point p50: the artifact with the smallest file, then the most
    accurate, then the first by name; of it, the tied configuration with the fewest threads."""
    def artifact_key(r: Row) -> tuple[float, float, str]:
        return (r.bytes or math.inf, -(r.accuracy if r.accuracy is not None else -math.inf), r.name)

    name = min(tied, key=artifact_key).name
    return min((r for r in tied if r.name == name), key=lambda r: (r.threads or 0, r.p50))


def entry(r: Row) -> dict[str, Any]:
    """The fields of one configuration a recommendation names."""
    return {"name": r.name, "variant": r.variant, "artifact": r.artifact, "format": r.format,
            "quantize": r.quantize, "backend": r.backend, "threads": r.threads, "p50_ms": r.p50,
            "p50_ci_ms": r.ci, "ci_level": r.ci_level, "rounds": r.rounds, "bytes": r.bytes,
            "accuracy": r.accuracy, "accuracy_source": r.accuracy_source,
            "top1_agreement": r.top1_agreement, "file": r.file}


def _config(e: dict[str, Any]) -> str:
    return f"{e['name']} t{e['threads'] or '-'}"


def _p50(e: dict[str, Any]) -> str:
    return f"p50 {p50_with_ci(e['p50_ms'], e['p50_ci_ms'], e['rounds'], e.get('ci_level'))}"


def _where(rec: dict[str, Any]) -> str:
    return rec["device"] + (f" [{EMULATED}]" if rec["emulated"] else "")


def no_artifact_line(rec: dict[str, Any], top: Row, zero_rule: float | None) -> str:
    """``ship this on <device>: no artifact qualifies: the best accuracy measured here, 9.30%
    (base/tflite-int8), is not above the zero-rule baseline 10.70% ...``."""
    return (f"ship this on {_where(rec)}: no artifact qualifies: the best accuracy measured here, "
            f"{pct(top.accuracy)} ({top.name}), is not above the zero-rule baseline {pct(zero_rule)} "
            "(always the most frequent class); the model learned nothing worth shipping")


def ship_line(rec: dict[str, Any]) -> str:
    """``ship this on <device>: base/tflite-int8 t1, p50 0.00910 ms [0.00890, 0.00940] at 93.75%,
    accuracy 98.50% (device), 45.0 KiB (tied with ...: ...; runner-up ...: not measurably slower)``."""
    if rec["accuracy"] is not None:
        acc = f"accuracy {pct(rec['accuracy'])}"
        if rec.get("accuracy_source"):
            acc += f" ({rec['accuracy_source']})"
    else:
        acc = "accuracy not measured (chosen on latency alone)"
    text = f"ship this on {_where(rec)}: {_config(rec)}, {_p50(rec)}, {acc}, {size(rec['bytes'])}"
    tied = rec.get("tied_with") or []
    ties = ""
    if tied:
        ties = (f"tied with {', '.join(_config(t) for t in tied)} (p50 intervals overlap the fastest's; "
                f"of the tied, {TIE_RULE})")
    ru = rec.get("runner_up")
    if ru is None:
        scope = "within the accuracy budget" if rec["accuracy_measured"] else "measured"
        return text + f" ({ties or f'no other artifact {scope}'})"
    if ru["comparison"] is None:
        verdict = "no verdict without intervals"
    elif ru["not_measurably_slower"]:
        verdict = "not measurably slower"
    else:
        verdict = "measurably slower"
    runner = f"runner-up {_config(ru)}, {_p50(ru)}: {verdict}"
    return text + (f" ({ties}; {runner})" if ties else f" ({runner})")
