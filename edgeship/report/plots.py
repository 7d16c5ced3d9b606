"""The report's figures (matplotlib, base64 PNG): latency distributions with each result's p50
interval, and the size / latency / accuracy Pareto plot per device."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

from edgeship.report.fmt import EMULATED
from edgeship.report.model import Device, Row
from edgeship.report.verdicts import best_per_artifact


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(figsize=(w, h))


def distribution_plot(rows: list[Row]) -> str:
    """One artifact's latency distribution on every device and thread count, as a base64 PNG.

    Raw samples give a real box plot; a result without them is drawn from its summary
    (box p50..p90, whiskers min..p99), which the label says. Each result's interval of p50 (its level
    in the tables) is drawn as a thick bar over its box (none for a result of one round).
    """
    fig = _figure(6.4, 0.5 + 0.42 * len(rows))
    ax = fig.add_subplot(1, 1, 1)
    stats = []
    for r in rows:
        tag = f"{r.device} t{r.threads or '-'}"
        if r.samples:
            s = sorted(r.samples)
            q = _quantiles(s)
            stats.append({"label": tag, "med": q[1], "q1": q[0], "q3": q[2], "whislo": s[0],
                          "whishi": _pct(s, 99), "fliers": [v for v in s if v > _pct(s, 99)]})
        else:
            lat = r.latency
            stats.append({"label": tag + " (summary)", "med": lat["p50"], "q1": lat["p50"],
                          "q3": lat["p90"], "whislo": lat["min"], "whishi": lat["p99"],
                          "fliers": [lat["max"]]})
    ax.bxp(stats, orientation="horizontal", showfliers=True,
           flierprops={"markersize": 2, "alpha": 0.5})
    with_ci = [(i, r) for i, r in enumerate(rows, start=1) if r.ci is not None]
    if with_ci:
        ax.hlines([i for i, _ in with_ci], [r.ci[0] for _, r in with_ci],  # type: ignore[index]
                  [r.ci[1] for _, r in with_ci], colors="crimson", linewidths=5, alpha=0.6,  # type: ignore[index]
                  zorder=4, label="interval of p50 (level in the table)")
        ax.legend(loc="best", fontsize=7)
    lo = min(s["whislo"] for s in stats)
    hi = max(max(s["fliers"], default=s["whishi"]) for s in stats)
    if lo > 0 and hi / lo > 4:
        ax.set_xscale("log")
    ax.set_xlabel("ms per call (invoke); box: quartiles, whiskers: min..p99, bar: p50 interval")
    emulated = any(r.emulated for r in rows)
    ax.set_title(rows[0].name + (f"\n(emulated rows: {EMULATED})" if emulated else ""), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _pct(s: list[float], p: float) -> float:
    rank = p / 100 * (len(s) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (rank - lo)


def _quantiles(s: list[float]) -> tuple[float, float, float]:
    return _pct(s, 25), _pct(s, 50), _pct(s, 75)


def pareto_front(rows: list[Row]) -> set[str]:
    """Names of rows no other row beats on size, p50 and accuracy at once."""
    def key(r: Row) -> tuple[float, float, float]:
        return (r.bytes or math.inf, r.p50, -(r.accuracy if r.accuracy is not None else -1))

    front = set()
    for r in rows:
        kr = key(r)
        dominated = any(all(a <= b for a, b in zip(key(o), kr, strict=True)) and key(o) != kr
                        for o in rows if o is not r)
        if not dominated:
            front.add(r.name)
    return front


def pareto_plot(dev: Device) -> str:
    """Size against p50 (best thread count per artifact, with its interval), coloured by accuracy;
    the Pareto front (no artifact smaller, faster and more accurate at once) is ringed."""
    rows = list(best_per_artifact(dev.rows).values())
    front = pareto_front(rows)
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    xs = [(r.bytes or 0) / 1024 for r in rows]
    ys = [r.p50 for r in rows]
    accs = [r.accuracy if r.accuracy is not None else float("nan") for r in rows]
    for x, r in zip(xs, rows, strict=True):
        if r.ci is not None:
            ax.vlines(x, r.ci[0], r.ci[1], colors="grey", linewidths=2, alpha=0.7, zorder=2)
    sc = ax.scatter(xs, ys, c=accs, cmap="viridis", s=50, zorder=3)
    ax.scatter([x for x, r in zip(xs, rows, strict=True) if r.name in front],
               [y for y, r in zip(ys, rows, strict=True) if r.name in front],
               s=160, facecolors="none", edgecolors="crimson", linewidths=1.5, zorder=4,
               label="Pareto front")
    placed: list[tuple[float, float]] = []
    for x, y, r in zip(xs, ys, rows, strict=True):
        # Stack the labels of points that sit on top of each other (a pruned model is as big).
        near = sum(1 for px, py in placed if abs(px - x) <= 0.05 * max(x, 1e-9)
                   and abs(py - y) <= 0.05 * max(y, 1e-9))
        placed.append((x, y))
        ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(6, 3 - 9 * near), fontsize=7)
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    if min(ys) > 0 and max(ys) / min(ys) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("model file (KiB)")
    ax.set_ylabel("p50 invoke (ms); bar: its interval")
    title = dev.key + (f": {EMULATED}" if dev.emulated else "")
    ax.set_title(f"size / latency / accuracy - {title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    if not all(math.isnan(a) for a in accs):
        fig.colorbar(sc, ax=ax, label="test accuracy")
    return _png(fig)
