"""The report's "Serving" section: per device, the throughput-latency curve of each stored load
sweep (``serve/*.json``, written by ``edgeship load``), its knee and the worker layout it ran with.

The sweeps are read here as files (this floor may not import the device drivers that wrote them):
a file that is not readable JSON, or not a ``serve-sweep`` of schema ``SCHEMA_VERSION``, is left out
with a labelled line in the section (and a warning), as the bench results' reader leaves bad files
out, so one bad file never hides the others. Emulated devices are labelled on every line and plot.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeship.core.console import warn
from edgeship.core.fsutil import read_json
from edgeship.report.fmt import EMULATED, sig

SERVE_DIR = "serve"
SCHEMA_VERSION = 1
KIND = "serve-sweep"
PLOTS_DIR = "report-plots"  # PNG files beside report.md (report.html embeds them)
HEADING = "Serving"
NOTE = ("Open-loop load (`edgeship load`): requests sent on a Poisson schedule at each offered rate, "
        "latency counted from each request's scheduled send time, so a stalled server cannot hide its "
        "queue. The knee is the highest offered rate whose p99 stayed under the SLO with under 1 % errors.")
COLUMNS = ("offered /s", "achieved /s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors", "503",
           "server CPU", "SLO")


@dataclass
class Sweep:
    """One stored sweep: one artifact under one worker layout on one device."""

    file: str
    device_id: str
    device: dict[str, Any]
    emulated: bool
    model: str
    model_version: str | None
    artifact: dict[str, Any] | None
    layout: dict[str, Any]
    slo_ms: float | None
    duration_s: float | None
    rates: list[dict[str, Any]]
    knee: dict[str, Any] | None
    notes: list[str]

    @property
    def label(self) -> str:
        """``base v1 (onnx float32)``."""
        art = self.artifact or {}
        what = " ".join(str(art[k]) for k in ("format", "quantize") if art.get(k))
        version = f" v{self.model_version}" if self.model_version else ""
        return f"{self.model}{version}" + (f" ({what})" if what else "")


@dataclass
class ServingDevice:
    """Every sweep measured against one device id."""

    device_id: str
    title: str
    emulated: bool
    sweeps: list[Sweep]
    _png: str | None = field(default=None, repr=False)

    @property
    def plot_file(self) -> str:
        """The curve's PNG, relative to the run directory."""
        return f"{PLOTS_DIR}/serving-{safe_name(self.device_id)}.png"

    def png(self) -> str:
        """The throughput-latency plot as base64 PNG (drawn once)."""
        if self._png is None:
            self._png = curve_plot(self)
        return self._png


@dataclass
class Serving:
    devices: list[ServingDevice]
    skipped: list[str]  # "serve/x.json: why it was left out"

    def as_dict(self) -> dict[str, Any]:
        return {"devices": [{"device_id": d.device_id, "title": d.title, "emulated": d.emulated,
                             "plot": d.plot_file,
                             "sweeps": [{k: v for k, v in vars(s).items()} for s in d.sweeps]}
                            for d in self.devices],
                "skipped": self.skipped}


def safe_name(text: str) -> str:
    """A device id as a file-name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "device"


def is_emulated(device_id: str, device: dict[str, Any] | None = None) -> bool:
    """Emulated when the facts say so or the id carries the ``-emulated-`` part ``device_id`` adds."""
    return bool((device or {}).get("emulated")) or "-emulated-" in f"{device_id}-"


# ---------------------------------------------------------------- reading


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def rate(v: float) -> str:
    """An offered rate as the user typed it: ``60``, ``1500``, ``2.5``."""
    return f"{v:.0f}" if float(v).is_integer() or v >= 100 else sig(v)


def sweep_problems(doc: Any) -> list[str]:
    """What keeps ``doc`` from being a sweep this report can draw (empty: none)."""
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    if doc.get("kind") != KIND:
        return [f"kind is {doc.get('kind')!r}, not {KIND!r}"]
    if doc.get("schema_version") != SCHEMA_VERSION:
        return [f"schema_version {doc.get('schema_version')!r}, this edgeship reads {SCHEMA_VERSION}: "
                "upgrade edgeship or run `edgeship load` again"]
    problems = []
    if not isinstance(doc.get("device_id"), str) or not doc["device_id"]:
        problems.append("no device_id")
    rates = doc.get("rates")
    if not isinstance(rates, list) or not rates:
        problems.append("no rates")
    else:
        for i, r in enumerate(rates):
            lat = r.get("latency_ms") if isinstance(r, dict) else None
            if not isinstance(r, dict) or not _finite(r.get("rate")) or not _finite(r.get("achieved_rps")):
                problems.append(f"rates[{i}] lacks rate or achieved_rps")
            elif lat is not None and not (isinstance(lat, dict) and _finite(lat.get("p99"))):
                problems.append(f"rates[{i}].latency_ms has no p99")
    for key in ("layout", "device"):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            problems.append(f"{key} is not an object")
    knee = doc.get("knee")
    if knee is not None and not (isinstance(knee, dict) and _finite(knee.get("rate"))):
        problems.append("knee has no rate")
    return problems



def read_results(run_path: Path, folder: str, problems_of: Callable[[Any], list[str]]
                 ) -> tuple[list[tuple[str, dict[str, Any]]], list[str]] | None:
    """The run's ``folder/*.json`` that ``problems_of`` finds nothing wrong with, as (run-relative
    name, document), and "name: why" for each one left out (a report shows the rest); None when the
    folder holds no JSON file. Serving and monitoring results are read the same way."""
    base = Path(run_path) / folder
    files = sorted(base.glob("*.json")) if base.is_dir() else []
    if not files:
        return None
    docs, skipped = [], []
    for path in files:
        where = f"{folder}/{path.name}"
        try:
            doc = read_json(path)
        except (OSError, ValueError) as e:
            problems = [f"not readable JSON ({e})"]
        else:
            problems = problems_of(doc)
        if problems:
            skipped.append(f"{where}: {'; '.join(problems)}")
        else:
            docs.append((where, doc))
    return docs, skipped

def load_serving(run_path: Path) -> Serving | None:
    """The run's sweeps grouped by device id; None when the run has no ``serve/*.json``."""
    found = read_results(run_path, SERVE_DIR, sweep_problems)
    if found is None:
        return None
    docs, skipped = found
    by_device: dict[str, list[Sweep]] = {}
    for where, doc in docs:
        device = dict(doc.get("device") or {})
        s = Sweep(file=where, device_id=doc["device_id"], device=device,
                  emulated=is_emulated(doc["device_id"], device), model=str(doc.get("model") or "?"),
                  model_version=None if doc.get("model_version") is None else str(doc["model_version"]),
                  artifact=doc.get("artifact") if isinstance(doc.get("artifact"), dict) else None,
                  layout=dict(doc.get("layout") or {}),
                  slo_ms=float(doc["slo_ms"]) if _finite(doc.get("slo_ms")) else None,
                  duration_s=float(doc["duration_s"]) if _finite(doc.get("duration_s")) else None,
                  rates=sorted(doc["rates"], key=lambda r: float(r["rate"])), knee=doc.get("knee"),
                  notes=[str(n) for n in doc.get("notes") or []])
        by_device.setdefault(s.device_id, []).append(s)
    for line in skipped:
        warn(f"left a load sweep out of the report: {line}")
    devices = [ServingDevice(did, device_title(did, sweeps[0].device), any(s.emulated for s in sweeps),
                             sweeps) for did, sweeps in sorted(by_device.items())]
    return Serving(devices=devices, skipped=skipped)


def device_title(did: str, dev: dict[str, Any]) -> str:
    """``host-vm-62f1f1: vm, AMD EPYC (x86_64, 2 cores)``, emulation added."""
    what = ", ".join(str(x) for x in (dev.get("hostname"), dev.get("board"), dev.get("cpu_model")) if x)
    cpu = f" ({dev.get('arch', '?')}, {dev.get('cores', '?')} cores)" if dev else ""
    title = f"{did}: {what or 'unknown device'}{cpu}"
    return title + (f" - {EMULATED}" if is_emulated(did, dev) else "")


# ---------------------------------------------------------------- words


def layout_text(layout: dict[str, Any]) -> str:
    """``1 worker x 1 thread, queue 64, deadline 1000 ms, loop front``."""
    if not layout:
        return "layout not recorded"
    w, t = layout.get("workers"), layout.get("threads")
    parts = [f"{w if w is not None else '?'} worker{'s' if w != 1 else ''} x "
             f"{t if t is not None else '?'} thread{'s' if t != 1 else ''}"]
    if layout.get("max_queue") is not None:
        parts.append(f"queue {layout['max_queue']}")
    if _finite(layout.get("deadline_ms")):
        parts.append(f"deadline {sig(float(layout['deadline_ms']))} ms")
    if layout.get("max_batch"):
        parts.append(f"batches up to {layout['max_batch']}")
    if layout.get("front"):
        parts.append(f"{layout['front']} front")
    return ", ".join(parts)


def knee_text(s: Sweep) -> str:
    """The knee in one sentence, or why there is none."""
    slo = f"{sig(s.slo_ms)} ms" if s.slo_ms is not None else "the SLO"
    if not s.knee:
        top = max(s.rates, key=lambda r: float(r["rate"]))
        return f"no knee: no rate up to {rate(float(top['rate']))}/s kept p99 under {slo} with < 1 % errors"
    k = s.knee
    achieved = f", {sig(float(k['achieved_rps']))}/s achieved" if _finite(k.get("achieved_rps")) else ""
    p99 = f", p99 {sig(float(k['p99_ms']))} ms" if _finite(k.get("p99_ms")) else ""
    return f"knee {rate(float(k['rate']))}/s offered{achieved}{p99} (SLO {slo})"


def summary_line(s: Sweep) -> str:
    emu = f" - {EMULATED}" if s.emulated else ""
    return f"{s.label}: {knee_text(s)}; layout {layout_text(s.layout)}{emu}"


def rate_cells(r: dict[str, Any]) -> list[str]:
    lat = r.get("latency_ms") or {}

    def ms(key: str) -> str:
        return sig(float(lat[key])) if _finite(lat.get(key)) else "-"

    cpu = r.get("server_cpu_cores")
    return [rate(float(r["rate"])), sig(float(r["achieved_rps"])), ms("p50"), ms("p90"), ms("p99"), ms("max"),
            f"{r.get('errors', 0)} ({float(r.get('error_rate') or 0):.1%})", str(r.get("rejected_503", 0)),
            f"{cpu:.2f} cores" if _finite(cpu) else "-", "met" if r.get("meets_slo") else "over"]


def markdown(serving: Serving | None) -> list[str]:
    """The section's Markdown lines (none without sweeps); the plots are ``PLOTS_DIR`` files."""
    if serving is None:
        return []
    lines = [f"## {HEADING}", "", NOTE, ""]
    for d in serving.devices:
        lines += [f"### {d.title}", ""]
        lines += [f"- {summary_line(s)}" for s in d.sweeps] + [""]
        lines += [f"![throughput-latency curve on {d.device_id}]({d.plot_file})", ""]
        for s in d.sweeps:
            lines += [f"{s.label}, {layout_text(s.layout)} ({s.file}):", ""]
            lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
            lines += ["| " + " | ".join(rate_cells(r)) + " |" for r in s.rates] + [""]
            lines += [f"- note: {n}" for n in s.notes] + ([""] if s.notes else [])
    if serving.skipped:
        lines += [f"- skipped {line}" for line in serving.skipped] + [""]
    return lines


def html_parts(serving: Serving | None) -> list[str]:
    """The section as HTML (plots inline as data: URIs)."""
    if serving is None:
        return []
    e = html.escape
    parts = [f"<h2 id='serving'>{HEADING}</h2>", f"<p class='method'>{e(NOTE.replace('`', ''))}</p>"]
    for d in serving.devices:
        title = e(d.title.replace(f" - {EMULATED}", ""))
        emu = f" <span class='emu'>{e(EMULATED)}</span>" if d.emulated else ""
        parts.append(f"<h3 id='serving-{e(safe_name(d.device_id))}'>{title}{emu}</h3><ul class='ship'>")
        for s in d.sweeps:
            parts.append(f"<li><b>{e(s.label)}</b>: {e(knee_text(s))}; "
                         f"layout {e(layout_text(s.layout))}</li>")
        parts.append("</ul>")
        parts.append(f"<figure><img alt='throughput-latency curve {e(d.device_id)}' class='plot serving' "
                     f"src='data:image/png;base64,{d.png()}'><figcaption>p99 (solid) and p50 (dotted) "
                     f"latency against achieved throughput on {e(d.device_id)}"
                     f"{' - ' + e(EMULATED) if d.emulated else ''}; star: the knee</figcaption></figure>")
        for s in d.sweeps:
            head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in rate_cells(r)) + "</tr>"
                           for r in s.rates)
            parts.append(f"<p class='method'>{e(s.label)}, {e(layout_text(s.layout))} ({e(s.file)})</p>"
                         f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            if s.notes:
                parts.append("<ul class='verdict'>" + "".join(f"<li>{e(n)}</li>" for n in s.notes) + "</ul>")
    if serving.skipped:
        parts.append("<ul class='verdict'>" + "".join(f"<li class='flagged'>skipped {e(x)}</li>"
                                                      for x in serving.skipped) + "</ul>")
    return parts


def terminal_lines(serving: Serving | None) -> list[str]:
    """Plain lines for the terminal report: one per sweep, then any skipped file."""
    if serving is None:
        return []
    out = [f"{HEADING}:"]
    for d in serving.devices:
        out += [f"  {d.title}"] + [f"    - {summary_line(s)}" for s in d.sweeps]
    out += [f"  skipped {line}" for line in serving.skipped]
    return out


# ---------------------------------------------------------------- the plot


def curve_plot(dev: ServingDevice) -> str:
    """Latency (p99 solid, p50 dotted) against achieved throughput, one colour per sweep; the SLO
    dashed, the knee starred; log latency axis when it spans more than 20x."""
    fig = figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    lows, highs = [], []
    for i, s in enumerate(dev.sweeps):
        color = f"C{i % 10}"
        pts = [(float(r["achieved_rps"]), r["latency_ms"]) for r in s.rates if r.get("latency_ms")]
        if not pts:
            continue
        xs = [x for x, _ in pts]
        p99 = [float(lat["p99"]) for _, lat in pts]
        p50 = [float(lat["p50"]) for _, lat in pts if _finite(lat.get("p50"))]
        ax.plot(xs, p99, "o-", color=color,
                label=f"{s.label}, {layout_text(s.layout).split(',')[0]}: p99 (dotted: p50)")
        for r, x, y in zip((r for r in s.rates if r.get("latency_ms")), xs, p99, strict=True):
            ax.annotate(f"{rate(float(r['rate']))}/s", (x, y), textcoords="offset points", xytext=(4, -10),
                        fontsize=6, color=color)
        if len(p50) == len(xs):
            ax.plot(xs, p50, ":", color=color, alpha=0.8)
        lows += p50 or p99
        highs += p99
        if s.knee and _finite(s.knee.get("achieved_rps")) and _finite(s.knee.get("p99_ms")):
            ax.plot([float(s.knee["achieved_rps"])], [float(s.knee["p99_ms"])], marker="*", markersize=16,
                    color=color, markeredgecolor="black", linestyle="none", zorder=5)
        if s.slo_ms is not None:
            ax.axhline(s.slo_ms, color=color, linestyle="--", linewidth=1, alpha=0.7)
            ax.annotate(f"SLO {sig(s.slo_ms)} ms", (0, s.slo_ms), xycoords=("axes fraction", "data"),
                        xytext=(4, 3), textcoords="offset points", fontsize=7, color=color)
            highs.append(s.slo_ms)
    positive = [v for v in lows + highs if v > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("achieved throughput (requests/s); points labelled with the offered rate")
    ax.set_ylabel("latency from scheduled send (ms)")
    title = dev.device_id + (f": {EMULATED}" if dev.emulated else "")
    ax.set_title(f"throughput / latency - {title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)
    return png_base64(fig)


def figure(w: float, h: float) -> Any:
    """A matplotlib figure without pyplot (no global state, no GUI backend)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def png_base64(fig: Any) -> str:
    """The figure as base64 PNG, as the report embeds and writes its plots."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")
