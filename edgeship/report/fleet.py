"""The per-key summary of a fleet: each artifact's p50 across the devices of one key.

``edgeship bench --on fleet --key K`` tags every result with ``fleet: {key, tracker}``; each
device still gets its own section (by device id). This adds, per key and (variant, artifact,
threads), how the devices of that key compare: the median of their p50s and the spread
(slowest / fastest device). Identical boards should give a spread near 1.0x; a large one says a
device is throttled, busy or differently set up.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

COLUMNS = ("key", "variant", "artifact", "threads", "devices", "median p50 ms", "fastest ms", "slowest ms",
           "spread")


def fleet_summary(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (key, variant, artifact, threads) measured on a fleet; the newest result per
    device counts."""
    groups: dict[tuple[str, str, str, Any], dict[str, dict[str, Any]]] = {}
    for r in results:
        key = (r.get("fleet") or {}).get("key")
        if not key:
            continue
        artifact = str(r.get("artifact") or "").rstrip("/").rsplit("/", 1)[-1]
        g = groups.setdefault((str(key), str(r.get("variant")), artifact, r.get("threads")), {})
        device = str(r.get("device_id"))
        if device not in g or str(r.get("measured_at")) > str(g[device].get("measured_at")):
            g[device] = r
    rows = []
    for (key, variant, artifact, threads), by_device in sorted(groups.items(), key=lambda kv: str(kv[0])):
        p50s = [float(r["latency_ms"]["p50"]) for r in by_device.values()]
        rows.append({"key": key, "variant": variant, "artifact": artifact, "threads": threads,
                     "devices": sorted(by_device), "median_p50_ms": statistics.median(p50s),
                     "min_p50_ms": min(p50s), "max_p50_ms": max(p50s),
                     "spread": max(p50s) / min(p50s) if min(p50s) > 0 else None,
                     "emulated": any((r.get("device") or {}).get("emulated") for r in by_device.values())})
    return rows


def cells(row: dict[str, Any]) -> list[str]:
    spread = "-" if row["spread"] is None else f"{row['spread']:.2f}x"
    return [row["key"] + (" (emulated)" if row["emulated"] else ""), row["variant"], row["artifact"],
            str(row["threads"] or "-"), str(len(row["devices"])), f"{row['median_p50_ms']:.4f}",
            f"{row['min_p50_ms']:.4f}", f"{row['max_p50_ms']:.4f}", spread]


HEADING = "Fleet: per key, across its devices"
NOTE = ("median of the devices' p50s; spread = slowest device / fastest; each device has its own section "
        "above")
