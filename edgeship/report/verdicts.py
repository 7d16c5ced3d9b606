"""What the intervals allow the report to say: compare two p50 intervals, flag, write verdicts.

Every claim that one configuration is faster or slower than another ("A is faster than B",
"int8 is slower than float32 here", "more threads do not pay off", a compression step flagged
slower than what it started from) rests on ``compare``: the two results' intervals of p50
(``p50_ci_ms``) must not overlap. Each interval carries its exact level (``ci_level``: 93.75 % for
5 rounds, 50 % for 2), and every sentence that quotes an interval quotes its level, so a verdict
drawn from 2-round intervals reads as what it is. Overlapping intervals read "no measurable
difference"; a result without an interval (one round, or a schema 1 result) never yields a
verdict: "no interval (1 round)". There is no fixed percentage threshold.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from edgeship.report.fmt import EMULATED, interval, ms, pct, size
from edgeship.report.model import Device, Row

Outcome = Literal["faster", "slower", "same"]
NO_DIFFERENCE = "no measurable difference"
NO_INTERVAL = "no interval (1 round)"
# Short codes for the terminal table; the legend under the table spells them out.
CODES = {
    "R": "ship this (the recommendation for this device)",
    "S": "slower than its parent variant (intervals separate)",
    "Q": "quantized slower than float32 of the same variant (intervals separate)",
    "N": "no interval (1 round): no verdicts",
    "V": "accuracy from export validation, not measured on this device",
    "F": "int8 with some layers kept in float: full int8 failed validation",
    "K": "call time drifted more than 2x between calibrating k and the end of the session: k may be off",
    "E": EMULATED,
}


def compare(a: Sequence[float] | None, b: Sequence[float] | None) -> Outcome | None:
    """``a`` against ``b``, two p50 intervals ``[lo, hi]``: "faster" when a lies wholly below b,
    "slower" when wholly above, "same" when they overlap; None when either is missing."""
    if a is None or b is None:
        return None
    if a[1] < b[0]:
        return "faster"
    if a[0] > b[1]:
        return "slower"
    return "same"


def compare_rows(a: Row, b: Row) -> Outcome | None:
    return compare(a.ci, b.ci)


def best_per_artifact(rows: Iterable[Row]) -> dict[str, Row]:
    """Each variant/artifact's fastest thread count."""
    best: dict[str, Row] = {}
    for r in rows:
        if r.name not in best or r.p50 < best[r.name].p50:
            best[r.name] = r
    return best


def _pct_more(a: Row, b: Row) -> str:
    return f"+{(a.p50 / b.p50 - 1) * 100:.0f}% p50"


def _versus(a: Row, b: Row) -> str:
    return (f"{ms(a.p50)} {interval(a.ci, ci_level=a.ci_level)} vs "
            f"{ms(b.p50)} {interval(b.ci, ci_level=b.ci_level)}")


def judge(dev: Device, parents: dict[str, str | None]) -> None:
    """Set every row's flags and codes and the device's verdicts."""
    pairs = _flag(dev, parents)
    dev.verdicts = _verdicts(dev, pairs)


def _flag(dev: Device, parents: dict[str, str | None]) -> list[tuple[Row, Row, str, Outcome | None]]:
    """Compare each compression step with what it started from, on this device at the same thread
    count: a variant against its parent's same artifact, a quantized artifact against the same
    variant's float32 one. A step is flagged only when it is measurably slower."""
    index = {(r.variant, r.artifact, r.threads): r for r in dev.rows}
    floats = {(r.variant, r.family, r.threads): r for r in dev.rows if r.quantize == "float32"}
    pairs: list[tuple[Row, Row, str, Outcome | None]] = []
    for r in dev.rows:
        parent = parents.get(r.variant)
        ref = index.get((parent, r.artifact, r.threads)) if parent else None
        if ref is not None:
            outcome = compare_rows(r, ref)
            pairs.append((r, ref, "parent", outcome))
            if outcome == "slower":
                r.flags.append(f"{_pct_more(r, ref)} vs parent {ref.variant} (intervals separate)")
                r.codes.append("S")
        f32 = floats.get((r.variant, r.family, r.threads)) if r.quantize != "float32" else None
        if f32 is not None:
            outcome = compare_rows(r, f32)
            pairs.append((r, f32, "float32", outcome))
            if outcome == "slower":
                r.flags.append(f"{r.quantize} {_pct_more(r, f32)} vs float32 (intervals separate)")
                r.codes.append("Q")
    for r in dev.rows:
        if r.ci is None:
            r.flags.append(NO_INTERVAL)
            r.codes.append("N")
        if r.accuracy_source == "export validation":
            r.codes.append("V")
        if r.drifted:
            r.flags.append(f"call time drifted {r.call_drift}x during the session: k may be off")
            r.codes.append("K")
        if r.emulated:
            r.codes.append("E")
    return pairs


def _verdicts(dev: Device, pairs: list[tuple[Row, Row, str, Outcome | None]]) -> list[str]:
    """A few plain sentences: what is fastest, whether int8 and threads pay off, what got slower."""
    prefix = f"{EMULATED}: " if dev.emulated else ""
    out = [_fastest(dev.rows)]
    out += _int8_vs_float32(dev)
    out += _threads(dev.rows)
    flagged: dict[str, list[str]] = {}
    same: list[str] = []
    unknown = 0
    for r, ref, _, outcome in pairs:
        if outcome == "slower":
            flagged.setdefault(r.name, []).append(f"t{r.threads or '-'}")
        elif outcome == "same":
            same.append(f"{r.short} vs {ref.name}")
        elif outcome is None:
            unknown += 1
    if flagged:
        shown = ", ".join(f"{name} ({' '.join(sorted(set(ts)))})" for name, ts in sorted(flagged.items()))
        out.append(f"FLAGGED: a compression step made these measurably slower here (intervals separate) "
                   f"than what it started from: {shown}; see the flag column.")
    if same:
        out.append(f"compression steps with {NO_DIFFERENCE} from what they started from: "
                   f"{', '.join(sorted(same))}.")
    if unknown:
        out.append(f"{unknown} compression step comparison{'s' if unknown != 1 else ''}: {NO_INTERVAL}, "
                   "no verdict.")
    return [prefix + v for v in out]


def _fastest(rows: list[Row]) -> str:
    top = rows[0]
    acc = "" if top.accuracy is None else f", accuracy {pct(top.accuracy)}"
    text = (f"fastest here: {top.label} at p50 {ms(top.p50)} {interval(top.ci, ci_level=top.ci_level)} "
            f"({size(top.bytes)}{acc})")
    nxt = next((r for r in rows[1:] if r.name != top.name), None)
    if nxt is None:
        return text + "."
    outcome = compare_rows(top, nxt)
    if outcome == "faster":
        return text + f"; faster than the next artifact, {nxt.short} ({_versus(top, nxt)})."
    if outcome is None:
        return text + f"; against the next artifact, {nxt.short}: {NO_INTERVAL}, no verdict."
    return text + f"; {NO_DIFFERENCE} from the next artifact, {nxt.short} ({_versus(top, nxt)})."


def _int8_vs_float32(dev: Device) -> list[str]:
    """int8 against float32 per format family, for the base variant (else the first variant)."""
    out = []
    best = best_per_artifact(dev.rows)
    best_f32 = {(r.variant, r.family): r for r in best.values() if r.quantize == "float32"}
    where = "in this browser" if dev.kind == "browser" else "on this CPU"
    for family in sorted({r.family for r in dev.rows}):
        pairs = [(r, best_f32[(r.variant, family)]) for r in best.values()
                 if r.family == family and r.quantize == "int8" and (r.variant, family) in best_f32]
        if not pairs:
            continue
        r, f32 = next(((a, b) for a, b in pairs if a.variant == "base"), pairs[0])
        outcome = compare_rows(r, f32)
        shown = f"{r.name} {_versus(r, f32)}"
        if outcome == "slower":
            out.append(f"{family}: int8 is slower than float32 {where} ({shown}): keep float32 here "
                       "unless size matters more.")
        elif outcome == "faster":
            out.append(f"{family}: int8 is {f32.p50 / r.p50:.1f}x faster than float32 {where} ({shown}).")
        elif outcome == "same":
            smaller = "; int8 is smaller" if r.bytes and f32.bytes and r.bytes < f32.bytes else ""
            out.append(f"{family}: int8 vs float32: {NO_DIFFERENCE} {where} ({shown}){smaller}.")
        else:
            out.append(f"{family}: int8 vs float32: {NO_INTERVAL}, no verdict ({shown}).")
    return out


def _threads(rows: list[Row]) -> list[str]:
    """The most against the fewest threads, per artifact measured at more than one count."""
    by_threads: dict[str, dict[int, Row]] = {}
    for r in rows:
        if r.threads:
            by_threads.setdefault(r.name, {})[r.threads] = r
    multi = {n: ts for n, ts in by_threads.items() if len(ts) > 1}
    if not multi:
        return []
    outcomes = {n: compare_rows(ts[max(ts)], ts[min(ts)]) for n, ts in multi.items()}
    most = max(max(t) for t in multi.values())
    least = min(min(t) for t in multi.values())
    worse = sum(o == "slower" for o in outcomes.values())
    better = sum(o == "faster" for o in outcomes.values())
    same = sum(o == "same" for o in outcomes.values())
    decided = worse + better + same
    n = len(multi)
    if not decided:
        return [f"threads: {NO_INTERVAL}, no verdict."]
    rest = f"; {n - decided} without an interval" if decided < n else ""
    if worse * 2 > decided:
        return [f"more threads do not pay off here: {most} threads were measurably slower than {least} "
                f"for {worse} of {n} artifacts{rest}; use {least} thread(s)."]
    if better * 2 > decided:
        return [f"more threads help: {most} threads were measurably faster than {least} for {better} of "
                f"{n} artifacts{rest}."]
    return [f"threads: {NO_DIFFERENCE} between {least} and {most} threads for {same} of {n} artifacts "
            f"(slower for {worse}, faster for {better}){rest}."]
