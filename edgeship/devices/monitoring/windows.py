"""Windows over a request log: by count (``--window 200``) or by time (``--window 10m``).

Lines are first grouped by model version (the artifact's sha256): a window never mixes two
versions, because a drift statistic over a mix would blame the data for a model change. Within
a version, lines are ordered by time. Count windows are consecutive runs of N lines; the lines
after the last full window are counted as ``partial_tail``, not tested. Time windows are
consecutive spans from the version's first line; a span with fewer than ``min_requests`` lines
is kept in the result but labelled ``too_few`` and not tested.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edgeship.core.errors import InputError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_COUNT = 1_000_000


@dataclass(frozen=True)
class WindowSpec:
    """``count`` lines, or ``seconds`` of time (exactly one is set)."""

    count: int | None = None
    seconds: float | None = None

    def describe(self) -> dict[str, Any]:
        return {"by": "count", "size": self.count} if self.count else {"by": "time", "seconds": self.seconds}


def parse_window(text: str | int) -> WindowSpec:
    """``200`` -> 200 requests; ``10m``, ``30s``, ``2h``, ``1d`` -> a time span."""
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+", s):
        n = int(s)
        if n < 1 or n > MAX_COUNT:
            raise InputError(f"--window {text}: use a count from 1 to {MAX_COUNT:,} (e.g. 200) or a time "
                             "such as 10m")
        return WindowSpec(count=n)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", s)
    if not m or float(m.group(1)) <= 0:
        raise InputError(f"--window {text}: use a positive count (200) or a time span (30s, 10m, 2h, 1d)")
    return WindowSpec(seconds=float(m.group(1)) * _UNITS[m.group(2)])


@dataclass
class Window:
    """Consecutive lines of one model version."""

    version: str  # the model's sha256 (or name@version when the log lacks it)
    index: int
    lines: list[dict[str, Any]] = field(default_factory=list)
    too_few: bool = False

    @property
    def start(self) -> float:
        return float(self.lines[0]["time"]) if self.lines else 0.0

    @property
    def end(self) -> float:
        return float(self.lines[-1]["time"]) if self.lines else 0.0


@dataclass
class VersionLines:
    """One model version's lines and its windows."""

    version: str
    model: dict[str, Any]
    lines: list[dict[str, Any]]
    windows: list[Window] = field(default_factory=list)
    partial_tail: int = 0


def version_key(line: dict[str, Any]) -> str:
    model = line.get("model") or {}
    sha = str(model.get("sha256") or "")
    return sha or f"{model.get('name', '?')}@{model.get('version', '?')}"


def by_version(lines: Iterable[dict[str, Any]]) -> list[VersionLines]:
    """Group lines by model version (first seen first), each sorted by time."""
    groups: dict[str, VersionLines] = {}
    for line in lines:
        key = version_key(line)
        if key not in groups:
            groups[key] = VersionLines(key, dict(line.get("model") or {}), [])
        groups[key].lines.append(line)
    for g in groups.values():
        g.lines.sort(key=lambda ln: float(ln["time"]))
    return list(groups.values())


def split_windows(group: VersionLines, spec: WindowSpec, min_requests: int = 30) -> VersionLines:
    """Fill ``group.windows`` (and ``partial_tail``) as ``spec`` says."""
    lines = group.lines
    if spec.count:
        n = spec.count
        full = len(lines) // n
        group.windows = [Window(group.version, i, lines[i * n:(i + 1) * n]) for i in range(full)]
        group.partial_tail = len(lines) - full * n
        return group
    assert spec.seconds is not None
    t0 = float(lines[0]["time"]) if lines else 0.0
    buckets: dict[int, list[dict[str, Any]]] = {}
    for line in lines:
        buckets.setdefault(int((float(line["time"]) - t0) // spec.seconds), []).append(line)
    group.windows = [Window(group.version, i, buckets[k], too_few=len(buckets[k]) < min_requests)
                     for i, k in enumerate(sorted(buckets))]
    return group
