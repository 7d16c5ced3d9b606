"""Reports people read: what was measured, where, and what to ship there.

``build_report(run)`` gathers the stored results (``bench/*.json``, any device) and the
compression table (``variants/*/metrics.json`` via the manifest) into a ``Report``: one section
per device, rows sorted by p50, plain-language verdicts, and flags where a compression step
(a variant against its parent, or a quantization against float32 of the same variant and
format) made an artifact slower on that device. ``write_report`` renders ``report.md`` and one
self-contained ``report.html`` (plots embedded as base64 PNG) atomically into the run.

Emulated results are labelled "emulated (not device latency)" in every table, heading, plot
and verdict: QEMU timings say whether a build runs, not how fast a Pi is.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.store import load_results
from edgeship.errors import RunError
from edgeship.fsutil import read_json, write_text_atomic
from edgeship.runstore import RunDir

EMULATED = "emulated (not device latency)"
SLOWER_BY = 0.05  # a p50 more than 5 % above the reference counts as slower (timings are noisy)
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
OUTPUT_FORMATS = ("table", "md", "html", "json", "csv")
_QUANT_TOKENS = {"float32", "float16", "dynamic", "int8", "fio"}
CSV_FIELDS = ("device", "emulated", "variant", "artifact", "format", "quantize", "backend",
              "backend_version", "threads", "runs", "warmup", "p50", "p90", "p95", "p99", "mean", "std",
              "min", "max", "e2e_p50", "init_ms", "first_ms", "peak_rss_mb", "bytes", "accuracy",
              "flags", "file")


@dataclass
class Row:
    """One stored result as the report shows it."""

    device: str
    emulated: bool
    variant: str
    artifact: str  # the export folder name: tflite-int8, tvm-host, ...
    format: str
    quantize: str
    backend: str
    backend_version: str
    threads: int | None
    runs: int
    warmup: int
    latency: dict[str, float]
    e2e_p50: float | None
    init_ms: float | None
    first_ms: float | None
    peak_rss_mb: float | None
    bytes: int | None
    accuracy: float | None
    file: str
    samples: list[float] | None = field(default=None, repr=False)
    flags: list[str] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return float(self.latency["p50"])

    @property
    def name(self) -> str:
        """variant/artifact, the key across devices."""
        return f"{self.variant}/{self.artifact}"

    @property
    def label(self) -> str:
        t = f"{self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else "default threads"
        return f"{self.name}, {t}"

    @property
    def family(self) -> str:
        """The artifact without its quantization: tflite-int8-fio -> tflite, web-int8 -> web."""
        parts = [p for p in self.artifact.split("-") if p not in _QUANT_TOKENS]
        return "-".join(parts) or self.format

    def csv_row(self) -> dict[str, Any]:
        lat = self.latency
        return {
            "device": self.device, "emulated": self.emulated, "variant": self.variant,
            "artifact": self.artifact, "format": self.format, "quantize": self.quantize,
            "backend": self.backend, "backend_version": self.backend_version, "threads": self.threads,
            "runs": self.runs, "warmup": self.warmup, **{k: lat[k] for k in
                                                        ("p50", "p90", "p95", "p99", "mean", "std",
                                                         "min", "max")},
            "e2e_p50": self.e2e_p50, "init_ms": self.init_ms, "first_ms": self.first_ms,
            "peak_rss_mb": self.peak_rss_mb, "bytes": self.bytes, "accuracy": self.accuracy,
            "flags": "; ".join(self.flags), "file": self.file,
        }


@dataclass
class Device:
    """Everything measured in one place (host, a browser, a Pi, an emulated Pi)."""

    key: str
    title: str
    emulated: bool
    facts: dict[str, Any]
    rows: list[Row]
    verdicts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.key, "title": self.title, "emulated": self.emulated, "facts": self.facts,
                "verdicts": self.verdicts,
                "rows": [{k: v for k, v in asdict(r).items() if k != "samples"} for r in self.rows]}


@dataclass
class Report:
    """A run's benchmark report, before rendering."""

    run_id: str
    run_path: Path
    devices: list[Device]
    compression: list[dict[str, Any]]
    environment: dict[str, Any]

    @property
    def rows(self) -> list[Row]:
        return [r for d in self.devices for r in d.rows]

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "run_dir": str(self.run_path),
                "devices": [d.as_dict() for d in self.devices], "compression": self.compression,
                "environment": self.environment,
                "files": {"md": str(self.run_path / REPORT_MD), "html": str(self.run_path / REPORT_HTML)}}


# ---------------------------------------------------------------- building


def build_report(run: RunDir) -> Report:
    """Read ``bench/*.json`` and the variants' metrics; a ``RunError`` if nothing was measured."""
    manifest = run.manifest
    results = load_results(run)
    if not results:
        raise RunError(f"run {run.id} has no benchmark results in {run.path / 'bench'}; "
                       f"measure first with `edgeship bench {run.id}`")
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(device_key(r), []).append(r)
    parents = {name: (v or {}).get("parent") for name, v in (manifest.get("variants") or {}).items()}
    devices = []
    for key in sorted(groups, key=_device_order):
        rs = groups[key]
        rows = sorted((_row(key, r) for r in rs), key=lambda row: (row.p50, row.name, row.threads or 0))
        dev = Device(key=key, title=device_title(rs[0]), emulated=rows[0].emulated,
                     facts=_facts(rs), rows=rows)
        _flag_slower(dev, parents)
        dev.verdicts = _verdicts(dev)
        devices.append(dev)
    return Report(run_id=run.id, run_path=run.path, devices=devices,
                  compression=compression_table(run, manifest),
                  environment=manifest.get("environment") or {})


def device_key(r: dict[str, Any]) -> str:
    """host / browser / pi / pi-emulated: emulated results never mix with device results."""
    emulated = bool((r.get("device") or {}).get("emulated"))
    return f"{r['on']}{'-emulated' if emulated else ''}"


def _device_order(key: str) -> tuple[int, str]:
    order = {"host": 0, "browser": 1, "pi": 2, "pi-emulated": 3}
    return order.get(key, 9), key


def device_title(r: dict[str, Any]) -> str:
    dev = r.get("device") or {}
    browser = f"{r['browser']} {r.get('browser_version') or ''}".strip() if r.get("browser") else None
    what = dev.get("board") or browser or dev.get("cpu_model") or "unknown CPU"
    title = f"{r['on']}: {what} ({dev.get('arch', '?')}, {dev.get('cores', '?')} cores)"
    if dev.get("emulated"):
        title += f" - {EMULATED}"
    return title


def _row(device: str, r: dict[str, Any]) -> Row:
    artifact = str(r["artifact"]).rstrip("/").rsplit("/", 1)[-1]
    e2e = r.get("end_to_end_ms") or {}
    return Row(
        device=device, emulated=bool(r["device"].get("emulated")), variant=str(r.get("variant") or "?"),
        artifact=artifact, format=r["format"], quantize=str(r.get("quantize") or "?"),
        backend=r["backend"], backend_version=str(r.get("backend_version") or "?"),
        threads=r.get("threads"), runs=r["runs"], warmup=r["warmup"], latency=dict(r["latency_ms"]),
        e2e_p50=e2e.get("p50"), init_ms=r.get("init_ms"), first_ms=r.get("first_ms"),
        peak_rss_mb=r.get("peak_rss_mb"), bytes=r.get("bytes"), accuracy=r.get("accuracy"),
        file=str(r.get("file", "")), samples=r.get("samples_ms"),
    )


def _facts(rs: list[dict[str, Any]]) -> dict[str, Any]:
    dev = dict(rs[0].get("device") or {})
    if rs[0].get("browser"):
        dev["browser"] = f"{rs[0]['browser']} {rs[0].get('browser_version') or ''}".strip()
    dev["backends"] = sorted({f"{r['backend']} {r.get('backend_version') or ''}".strip() for r in rs})
    dev["measured"] = sorted({r.get("measured_at", "")[:16] for r in rs if r.get("measured_at")})
    dev["runs"] = sorted({r["runs"] for r in rs})
    dev["warmup"] = sorted({r["warmup"] for r in rs})
    return dev


def _slower(a: Row, b: Row) -> bool:
    return a.p50 > b.p50 * (1 + SLOWER_BY)


def _flag_slower(dev: Device, parents: dict[str, str | None]) -> None:
    """Flag rows a compression step made slower here: against the parent variant's same artifact,
    and a quantized artifact against the same variant's float32 one (same threads both times)."""
    index = {(r.variant, r.artifact, r.threads): r for r in dev.rows}
    floats = {(r.variant, r.family, r.threads): r for r in dev.rows if r.quantize == "float32"}
    for r in dev.rows:
        parent = parents.get(r.variant)
        ref = index.get((parent, r.artifact, r.threads)) if parent else None
        if ref is not None and _slower(r, ref):
            r.flags.append(f"{_pct_more(r, ref)} vs parent {ref.variant}")
        if r.quantize != "float32":
            f32 = floats.get((r.variant, r.family, r.threads))
            if f32 is not None and _slower(r, f32):
                r.flags.append(f"{r.quantize} {_pct_more(r, f32)} vs float32")


def _pct_more(a: Row, b: Row) -> str:
    return f"+{(a.p50 / b.p50 - 1) * 100:.0f}% p50"


def _fmt_ms(ms: float) -> str:
    return f"{ms * 1000:.1f} us" if ms < 1 else f"{ms:.2f} ms"


def _fmt_bytes(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def _best_per_artifact(rows: Iterable[Row]) -> dict[str, Row]:
    best: dict[str, Row] = {}
    for r in rows:
        if r.name not in best or r.p50 < best[r.name].p50:
            best[r.name] = r
    return best


def _verdicts(dev: Device) -> list[str]:
    """A few plain sentences: what is fastest, whether int8 and threads pay off, what got slower."""
    out: list[str] = []
    prefix = f"{EMULATED}: " if dev.emulated else ""
    fastest = dev.rows[0]
    acc = "" if fastest.accuracy is None else f", accuracy {fastest.accuracy:.2%}"
    out.append(f"{prefix}fastest here: {fastest.label} at p50 {_fmt_ms(fastest.p50)}"
               f" ({_fmt_bytes(fastest.bytes)}{acc}).")
    best = _best_per_artifact(dev.rows)
    accurate = [r for r in best.values() if r.accuracy is not None]
    if accurate:
        top = max(r.accuracy for r in accurate)  # type: ignore[type-var]
        near = [r for r in accurate if r.accuracy is not None and r.accuracy >= top - 0.005]
        pick = min(near, key=lambda r: (r.p50, r.bytes or 0))
        if pick.name != fastest.name:
            out.append(f"{prefix}fastest within 0.5 pt of the best accuracy: {pick.label} at p50 "
                       f"{_fmt_ms(pick.p50)} (accuracy {pick.accuracy:.2%}).")
    # int8 against float32, per format family, for the base variant (else the first variant).
    best_f32 = {(r.variant, r.family): r for r in best.values() if r.quantize == "float32"}
    for family in sorted({r.family for r in dev.rows}):
        pairs = []
        for r in best.values():
            if r.family != family or r.quantize != "int8":
                continue
            f32 = best_f32.get((r.variant, family))
            if f32 is not None:
                pairs.append((r, f32))
        if not pairs:
            continue
        r, f32 = next(((a, b) for a, b in pairs if a.variant == "base"), pairs[0])
        where = "in this browser" if dev.key == "browser" else "on this CPU"
        if _slower(r, f32):
            out.append(f"{prefix}{family}: int8 is slower than float32 {where} "
                       f"({r.name} {_fmt_ms(r.p50)} vs {_fmt_ms(f32.p50)}): keep float32 here "
                       "unless size matters more.")
        elif _slower(f32, r):
            out.append(f"{prefix}{family}: int8 is {f32.p50 / r.p50:.1f}x faster than float32 "
                       f"({r.name} {_fmt_ms(r.p50)} vs {_fmt_ms(f32.p50)}).")
        else:
            out.append(f"{prefix}{family}: int8 and float32 run at the same speed here "
                       f"({_fmt_ms(r.p50)} vs {_fmt_ms(f32.p50)}); int8 is smaller.")
    # thread counts
    by_threads: dict[str, dict[int, Row]] = {}
    for r in dev.rows:
        if r.threads:
            by_threads.setdefault(r.name, {})[r.threads] = r
    multi = {n: ts for n, ts in by_threads.items() if len(ts) > 1}
    if multi:
        worse = [n for n, ts in multi.items() if _slower(ts[max(ts)], ts[min(ts)])]
        most = max(max(t) for t in multi.values())
        least = min(min(t) for t in multi.values())
        if len(worse) * 2 > len(multi):
            out.append(f"{prefix}more threads do not pay off here: {most} threads were slower than "
                       f"{least} for {len(worse)} of {len(multi)} artifacts; use {least} thread(s).")
        else:
            better = [n for n, ts in multi.items() if _slower(ts[min(ts)], ts[max(ts)])]
            out.append(f"{prefix}more threads helped {len(better)} of {len(multi)} artifacts.")
    flagged: dict[str, list[str]] = {}
    for r in dev.rows:
        if r.flags:
            flagged.setdefault(r.name, []).append(f"t{r.threads or '-'}")
    if flagged:
        shown = ", ".join(f"{name} ({' '.join(sorted(ts))})" for name, ts in sorted(flagged.items()))
        out.append(f"{prefix}FLAGGED: a compression step made these slower here than what it started "
                   f"from: {shown}; see the flag column.")
    return out


def compression_table(run: RunDir, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The trained model and each variant: accuracy, change, sparsity, sizes (from metrics.json)."""
    rows: list[dict[str, Any]] = []
    base_metrics = _read_metrics(run.path / "model" / "metrics.json")
    base_acc = ((base_metrics.get("test") or {}).get("accuracy")
                if isinstance(base_metrics.get("test"), dict) else base_metrics.get("test_accuracy"))
    rows.append({"variant": "base", "parent": None, "passes": "trained",
                 "test_accuracy": base_acc, "accuracy_delta": 0.0 if base_acc is not None else None,
                 "sparsity": None, "params": (manifest.get("model") or {}).get("params"),
                 "nonzero_params": None, "tflite_bytes": None, "tflite_gzip_bytes": None,
                 "deploy_form": "float32"})
    for name, entry in (manifest.get("variants") or {}).items():
        entry = entry or {}
        m = _read_metrics(run.path / str(entry.get("dir") or f"variants/{name}") / "metrics.json")
        merged = {**entry, **m}
        rows.append({
            "variant": name, "parent": entry.get("parent"),
            "passes": ", ".join(merged.get("applied") or merged.get("passes") or []) or "-",
            "test_accuracy": merged.get("test_accuracy"), "accuracy_delta": merged.get("accuracy_delta"),
            "sparsity": merged.get("sparsity"), "params": merged.get("params"),
            "nonzero_params": merged.get("nonzero_params"), "tflite_bytes": merged.get("tflite_bytes"),
            "tflite_gzip_bytes": merged.get("tflite_gzip_bytes"), "deploy_form": merged.get("deploy_form"),
        })
    return rows


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------- plots


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
    (box p50..p90, whiskers min..p99), which the caption says.
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
    lo = min(s["whislo"] for s in stats)
    hi = max(max(s["fliers"], default=s["whishi"]) for s in stats)
    if lo > 0 and hi / lo > 4:
        ax.set_xscale("log")
    ax.set_xlabel("ms per call (invoke); box: quartiles, whiskers: min..p99")
    emulated = any(r.emulated for r in rows)
    ax.set_title(rows[0].name + (f"\n(pi-emulated rows: {EMULATED})" if emulated else ""), fontsize=10)
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
    """Size against p50 (best thread count per artifact), coloured by accuracy; the Pareto
    front (no artifact smaller, faster and more accurate at once) is ringed."""
    rows = list(_best_per_artifact(dev.rows).values())
    front = pareto_front(rows)
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    xs = [(r.bytes or 0) / 1024 for r in rows]
    ys = [r.p50 for r in rows]
    accs = [r.accuracy if r.accuracy is not None else float("nan") for r in rows]
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
    ax.set_ylabel("p50 invoke (ms)")
    title = dev.key + (f": {EMULATED}" if dev.emulated else "")
    ax.set_title(f"size / latency / accuracy - {title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    if not all(math.isnan(a) for a in accs):
        fig.colorbar(sc, ax=ax, label="test accuracy")
    return _png(fig)


# ---------------------------------------------------------------- rendering


def _n(v: Any, fmt: str = "{:.4f}") -> str:
    return "-" if v is None else fmt.format(v)


def _pct_or_dash(v: Any) -> str:
    return "-" if v is None else f"{v:.2%}"


def _delta_pt(v: Any) -> str:
    return "-" if v is None else f"{v * 100:+.2f} pt"


TABLE_COLUMNS = ("variant", "artifact", "backend", "threads", "p50 ms", "p90 ms", "p99 ms",
                 "mean ± std", "e2e p50", "init ms", "first ms", "RSS MB", "size", "accuracy", "flag")


def _cells(r: Row) -> list[str]:
    lat = r.latency
    return [r.variant, r.artifact, f"{r.backend} {r.backend_version}", str(r.threads or "-"),
            f"{lat['p50']:.4f}", f"{lat['p90']:.4f}", f"{lat['p99']:.4f}",
            f"{lat['mean']:.4f} ± {lat['std']:.4f}", _n(r.e2e_p50), _n(r.init_ms, "{:.1f}"),
            _n(r.first_ms, "{:.3f}"), _n(r.peak_rss_mb, "{:.0f}"), _fmt_bytes(r.bytes),
            _pct_or_dash(r.accuracy), "; ".join(r.flags)]


COMPRESSION_COLUMNS = ("variant", "parent", "passes", "test accuracy", "change", "sparsity", "params",
                       "nonzero", "TFLite bytes", "gzip bytes", "deploy form")


def _compression_cells(c: dict[str, Any]) -> list[str]:
    return [c["variant"], c.get("parent") or "-", c.get("passes") or "-",
            _pct_or_dash(c.get("test_accuracy")),
            _delta_pt(c.get("accuracy_delta")), _pct_or_dash(c.get("sparsity")),
            _n(c.get("params"), "{:,}"), _n(c.get("nonzero_params"), "{:,}"),
            _n(c.get("tflite_bytes"), "{:,}"), _n(c.get("tflite_gzip_bytes"), "{:,}"),
            str(c.get("deploy_form") or "-")]


FACT_KEYS = ("cpu_model", "board", "browser", "cores", "usable_cores", "arch", "os", "kernel", "python",
             "governor", "emulated", "backends", "runs", "warmup", "measured")


def _fact(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    return "-" if v is None else str(v)


METHOD = ("Each number is one process timing one artifact: inputs built and bound before timing, "
          "warm-up calls discarded, the garbage collector paused, a monotonic nanosecond clock around "
          "each call. 'invoke' is the runtime's call alone; 'e2e' adds preprocessing, quantization and "
          "postprocessing. Percentiles interpolate linearly (numpy's default). A step is flagged slower "
          f"when its p50 is more than {SLOWER_BY:.0%} above the reference at the same thread count.")


def render_markdown(rep: Report) -> str:
    """report.md: the same facts as the HTML without plots."""
    def table(cols: Iterable[str], rows: Iterable[list[str]]) -> list[str]:
        cols = list(cols)
        out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        return out

    lines = [f"# Benchmark report: {rep.run_id}", "", METHOD, "",
             "Plots (latency distributions, size/accuracy/latency): see report.html.", ""]
    for d in rep.devices:
        lines += [f"## {d.title}", ""]
        lines += [f"- {v}" for v in d.verdicts] + [""]
        lines += [*table(TABLE_COLUMNS, (_cells(r) for r in d.rows)), ""]
    lines += ["## Compression", ""]
    lines += [*table(COMPRESSION_COLUMNS, (_compression_cells(c) for c in rep.compression)), ""]
    lines += ["## Environment", ""]
    for d in rep.devices:
        lines += [f"### {d.title}", ""]
        lines += table(("fact", "value"), ([k, _fact(d.facts.get(k))] for k in FACT_KEYS if k in d.facts))
        lines += [""]
    env = rep.environment
    if env:
        lines += ["### The run (training and export)", ""]
        pk = env.get("packages") or {}
        facts = [["edgeship", str(env.get("edgeship_version"))], ["python", str(env.get("python"))],
                 ["platform", str(env.get("platform"))], *[[k, str(v)] for k, v in pk.items()]]
        lines += [*table(("fact", "value"), facts), ""]
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}tr.flag td{background:#fff2f0}.emu{color:#b35900;font-weight:600}
.verdict li{margin:.3em 0}.flagged{color:#b00020;font-weight:600}figure{display:inline-block;margin:.5em}
figcaption{font-size:.8em;color:#555}p.method{font-size:.85em;color:#444}
"""


def render_html(rep: Report) -> str:
    """report.html: one file, no external resources, plots as data: URIs."""
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>edgeship report {e(rep.run_id)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Benchmark report: {e(rep.run_id)}</h1>",
             f"<p class='method'>{e(METHOD)}</p>"]

    def table(cols: Iterable[str], rows: Iterable[tuple[list[str], str]], left: int = 3) -> str:
        cols = list(cols)
        head = "".join(f"<th class='{'l' if i < left else ''}'>{e(c)}</th>" for i, c in enumerate(cols))
        body = []
        for cells, cls in rows:
            tds = "".join(f"<td class='{'l' if i < left or i == len(cols) - 1 else ''}'>{c}</td>"
                          for i, c in enumerate(cells))
            body.append(f"<tr class='{cls}'>{tds}</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    for d in rep.devices:
        emu = f" <span class='emu'>{e(EMULATED)}</span>" if d.emulated else ""
        title = d.title.replace(f" - {EMULATED}", "")
        parts.append(f"<h2 id='device-{e(d.key)}'>{e(title)}{emu}</h2><ul class='verdict'>")
        for v in d.verdicts:
            cls = " class='flagged'" if "FLAGGED" in v else ""
            parts.append(f"<li{cls}>{e(v)}</li>")
        parts.append("</ul>")
        rows = []
        for r in d.rows:
            cells = [e(c) for c in _cells(r)]
            cells[1] = f"<a href='#dist-{_anchor(r.name)}'>{cells[1]}</a>"
            if r.emulated:
                cells[2] += f" <span class='emu'>{e(EMULATED)}</span>"
            rows.append((cells, "flag artifact-row" if r.flags else "artifact-row"))
        parts.append(table(TABLE_COLUMNS, rows))
        parts.append(f"<figure><img alt='Pareto plot {e(d.key)}' class='plot pareto' "
                     f"src='data:image/png;base64,{pareto_plot(d)}'><figcaption>size, p50 latency and "
                     f"accuracy on {e(d.key)}{' - ' + e(EMULATED) if d.emulated else ''}; "
                     "ringed: the Pareto front</figcaption></figure>")
    parts.append("<h2 id='distributions'>Latency distributions, per artifact</h2>")
    by_name: dict[str, list[Row]] = {}
    for r in rep.rows:
        by_name.setdefault(r.name, []).append(r)
    for name in sorted(by_name):
        rows = sorted(by_name[name], key=lambda r: (_device_order(r.device), r.threads or 0))
        emu = any(r.emulated for r in rows)
        parts.append(f"<figure id='dist-{_anchor(name)}'><img alt='latency distribution {e(name)}' "
                     f"class='plot distribution' src='data:image/png;base64,{distribution_plot(rows)}'>"
                     f"<figcaption>{e(name)}{' - includes ' + e(EMULATED) + ' rows' if emu else ''}"
                     "</figcaption></figure>")
    parts.append("<h2 id='compression'>Compression</h2>")
    parts.append(table(COMPRESSION_COLUMNS,
                       (([e(c) for c in _compression_cells(c)], "") for c in rep.compression)))
    parts.append("<h2 id='environment'>Environment</h2>")
    for d in rep.devices:
        parts.append(f"<h3>{e(d.title)}</h3>")
        parts.append(table(("fact", "value"), (([e(k), e(_fact(d.facts.get(k)))], "")
                                               for k in FACT_KEYS if k in d.facts), left=2))
    env = rep.environment
    if env:
        pk = env.get("packages") or {}
        facts = [("edgeship", env.get("edgeship_version")), ("python", env.get("python")),
                 ("platform", env.get("platform")), *pk.items()]
        parts.append("<h3>The run (training and export)</h3>")
        parts.append(table(("fact", "value"), (([e(str(k)), e(str(v))], "") for k, v in facts), left=2))
    parts.append("</body></html>")
    return "\n".join(parts)


def _anchor(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def render_csv(rep: Report) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_FIELDS), lineterminator="\n")
    w.writeheader()
    for r in rep.rows:
        w.writerow(r.csv_row())
    return buf.getvalue()


def render_json(rep: Report) -> str:
    return json.dumps(rep.as_dict(), indent=2)


def write_report(run: RunDir, report: Report | None = None) -> dict[str, Path]:
    """Build (unless given) and write ``report.md`` and ``report.html`` atomically; their paths."""
    rep = report or build_report(run)
    md, page = run.path / REPORT_MD, run.path / REPORT_HTML
    write_text_atomic(md, render_markdown(rep) + "\n")
    write_text_atomic(page, render_html(rep))
    return {"md": md, "html": page}
