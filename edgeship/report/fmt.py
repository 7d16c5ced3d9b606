"""How the report writes numbers: milliseconds, intervals, sizes, percentages."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

EMULATED = "emulated (not device latency)"


def sig(x: float, digits: int = 3) -> str:
    """``x`` with about ``digits`` significant digits, never in exponent form: 0.00912, 9.12, 912."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def ms(x: float | None, digits: int = 3) -> str:
    """A latency in ms for prose: ``0.00912 ms``."""
    return "-" if x is None else f"{sig(x, digits)} ms"


def level(x: float | None) -> str:
    """An interval's coverage as a percentage: 0.9375 -> ``93.75%``, 0.5 -> ``50%``."""
    return "level not stated" if x is None else f"{x * 100:.4g}%"


def interval(ci: Sequence[float] | None, digits: int = 3, ci_level: float | None = None) -> str:
    """``[0.00890, 0.00940] at 93.75%`` (the level beside every interval), or the reason there is
    none. An interval from an older result, which did not record its level, says so."""
    if ci is None:
        return "no interval (1 round)"
    return f"[{sig(ci[0], digits)}, {sig(ci[1], digits)}] {_at(ci_level)}"


def _at(ci_level: float | None) -> str:
    return "(level not stated)" if ci_level is None else f"at {level(ci_level)}"


def p50_with_ci(
    p50: float, ci: Sequence[float] | None, rounds: int = 1, ci_level: float | None = None
) -> str:
    """``0.00912 ms [0.00890, 0.00940] at 93.75%`` or ``0.00912 ms (no interval, 1 round)``."""
    if ci is None:
        return f"{ms(p50)} (no interval, {rounds} round{'s' if rounds != 1 else ''})"
    return f"{ms(p50)} {interval(ci, ci_level=ci_level)}"


def size(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def pct(v: Any) -> str:
    """A fraction as a percentage: 0.985 -> ``98.50%``."""
    return "-" if v is None else f"{v:.2%}"


def delta_pt(v: Any) -> str:
    return "-" if v is None else f"{v * 100:+.2f} pt"


def num(v: Any, fmt: str = "{:.4f}") -> str:
    return "-" if v is None else fmt.format(v)


def fact(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    return "-" if v is None else str(v)
