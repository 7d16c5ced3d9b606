"""Counters, gauges and histograms in the Prometheus text format, with the standard library only.

A dependency (prometheus-client) would be one more wheel to ship offline for ~150 lines; what the
server needs is a few thread-safe series and their exposition (text format 0.0.4).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence

# Seconds; from 0.5 ms (a digits CNN's invoke) to 10 s (a deadline), about x2.5 apart.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: Labels = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v)) if abs(v) < 1e15 else repr(v)


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_: str, labelnames: Sequence[str] = ()):
        self.name, self.help, self.labelnames = name, help_, tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return tuple((k, str(labels[k])) for k in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_: str, labelnames: Sequence[str] = ()):
        super().__init__(name, help_, labelnames)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_fmt_labels(k)} {_num(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)

    def remove_all(self) -> None:
        with self._lock:
            self._values.clear()


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_: str, labelnames: Sequence[str] = (),
                 buckets: Iterable[float] = LATENCY_BUCKETS):
        super().__init__(name, help_, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[Labels, list[float]] = {}  # bucket counts..., sum, count

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            s = self._series.get(key)
            if s is None:
                s = self._series[key] = [0.0] * (len(self.buckets) + 2)
            for i, b in enumerate(self.buckets):
                if value <= b:
                    s[i] += 1
                    break
            s[-2] += value
            s[-1] += 1

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        out = self.header()
        for key, s in items:
            cumulative = 0.0
            for b, c in zip(self.buckets, s, strict=False):
                cumulative += c
                out.append(f"{self.name}_bucket{_fmt_labels(key, (('le', _num(b)),))} {_num(cumulative)}")
            out.append(f"{self.name}_bucket{_fmt_labels(key, (('le', '+Inf'),))} {_num(s[-1])}")
            out.append(f"{self.name}_sum{_fmt_labels(key)} {_num(s[-2])}")
            out.append(f"{self.name}_count{_fmt_labels(key)} {_num(s[-1])}")
        return out


class Registry:
    """The server's series, exposed together; process CPU time and start time are read on scrape."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []
        self.started = time.time()

    def add(self, metric: _Metric) -> _Metric:
        self._metrics.append(metric)
        return metric

    def counter(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> Counter:
        return self.add(Counter(name, help_, labelnames))  # type: ignore[return-value]

    def gauge(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self.add(Gauge(name, help_, labelnames))  # type: ignore[return-value]

    def histogram(self, name: str, help_: str, labelnames: Sequence[str] = (),
                  buckets: Iterable[float] = LATENCY_BUCKETS) -> Histogram:
        return self.add(Histogram(name, help_, labelnames, buckets))  # type: ignore[return-value]

    def exposition(self) -> str:
        """The text format; ``process_cpu_seconds_total`` lets a load generator read the
        device's CPU use between two scrapes without another channel."""
        t = os.times()
        lines = [
            "# HELP process_cpu_seconds_total User and system CPU time of the server process.",
            "# TYPE process_cpu_seconds_total counter",
            f"process_cpu_seconds_total {_num(t.user + t.system)}",
            "# HELP process_start_time_seconds Start time of the process since the Unix epoch.",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {_num(self.started)}",
        ]
        for m in self._metrics:
            lines.extend(m.lines())  # type: ignore[attr-defined]
        return "\n".join(lines) + "\n"


def parse_exposition(text: str) -> dict[str, float]:
    """``{"name{labels}": value}`` from the text format: enough for a client to read its figures."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out
