"""The report's "Monitoring" section: per device and model version, what ``edgeship monitor`` found
in the request logs (``monitor/*.json``): drift per feature over the windows, the prediction mix
over the windows against the test split's, live accuracy from feedback, and the verdict.

Read as files (this floor may not import the monitor that wrote them): a file that is not readable
JSON, or not a ``monitor`` result of schema ``SCHEMA_VERSION``, is left out with a labelled line,
as bad bench and serve files are. Latency from an emulated device is labelled as emulated.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeship.core.console import warn
from edgeship.report.fmt import EMULATED, sig
from edgeship.report.serving import PLOTS_DIR, figure, is_emulated, png_base64, read_results, safe_name

MONITOR_DIR = "monitor"
SCHEMA_VERSION = 1
KIND = "monitor"
HEADING = "Monitoring"
NOTE = ("Request logs from the device (`edgeship monitor`), cut into windows and compared with the run: "
        "each feature against the train split (PSI, with a KS or chi-square test), the prediction mix "
        "against the test split's, live accuracy where feedback labels arrived. A feature drifts when its "
        "PSI reaches the threshold and its test is significant after splitting alpha over the features.")
COLUMNS = ("window", "requests", "from (UTC)", "to (UTC)", "drifted features", "largest PSI",
           "prediction mix", "confidence", "live accuracy", "p99 ms", "alerts")
TOP_FEATURES = 6  # features drawn in colour and named in the plot (the drifted ones first)


@dataclass
class Watch:
    """One monitor result: one model version on one device, its windows and verdict."""

    file: str
    device_id: str
    emulated: bool
    model: dict[str, Any]
    window: dict[str, Any]
    thresholds: dict[str, Any]
    log: dict[str, Any]
    reference: dict[str, Any] | None
    windows: list[dict[str, Any]]
    alert: bool
    verdict: list[str]
    _png: str | None = field(default=None, repr=False)

    @property
    def version(self) -> str:
        return str(self.model.get("sha256") or self.model.get("key") or "?")[:12]

    @property
    def label(self) -> str:
        """``base v1 (tflite float32, sha256 15d38dafd42d)``."""
        m = self.model
        what = " ".join(str(m[k]) for k in ("format", "quantize") if m.get(k))
        version = f" v{m['version']}" if m.get("version") is not None else ""
        return f"{m.get('name', '?')}{version} ({what + ', ' if what else ''}sha256 {self.version})"

    @property
    def window_text(self) -> str:
        w = self.window
        if w.get("by") == "time" and _finite(w.get("seconds")):
            return f"windows of {sig(float(w['seconds']))} s"
        return f"windows of {w.get('size', '?')} requests"

    @property
    def plot_file(self) -> str:
        return f"{PLOTS_DIR}/monitor-{safe_name(self.device_id)}-{safe_name(self.version)}.png"

    def png(self) -> str:
        if self._png is None:
            self._png = watch_plot(self)
        return self._png

    def drifted(self) -> dict[str, list[int]]:
        """Each drifted feature with the windows it drifted in, in first-drift order."""
        out: dict[str, list[int]] = {}
        for w in self.windows:
            for name, f in (w.get("features") or {}).items():
                if isinstance(f, dict) and f.get("drifted"):
                    out.setdefault(name, []).append(int(w.get("index", 0)))
        return out

    def live_accuracy(self) -> tuple[float, int] | None:
        """Accuracy over every labelled request of every window, and how many labels."""
        acc = [w["accuracy"] for w in self.windows if isinstance(w.get("accuracy"), dict)
               and _finite(w["accuracy"].get("live")) and w["accuracy"].get("labels")]
        labels = sum(int(a["labels"]) for a in acc)
        if not labels:
            return None
        return sum(float(a["live"]) * int(a["labels"]) for a in acc) / labels, labels


@dataclass
class MonitoringDevice:
    device_id: str
    emulated: bool
    watches: list[Watch]


@dataclass
class Monitoring:
    devices: list[MonitoringDevice]
    skipped: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"devices": [{"device_id": d.device_id, "emulated": d.emulated,
                             "results": [{k: v for k, v in vars(w).items() if k != "_png"}
                                         | {"plot": w.plot_file} for w in d.watches]}
                            for d in self.devices],
                "skipped": self.skipped}


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------- reading


def result_problems(doc: Any) -> list[str]:
    """What keeps ``doc`` from being a monitor result this report can show (empty: none)."""
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    if doc.get("kind") != KIND:
        return [f"kind is {doc.get('kind')!r}, not {KIND!r}"]
    if doc.get("schema_version") != SCHEMA_VERSION:
        return [f"schema_version {doc.get('schema_version')!r}, this edgeship reads {SCHEMA_VERSION}: "
                "upgrade edgeship or run `edgeship monitor` again"]
    problems = []
    if not isinstance(doc.get("device_id"), str) or not doc["device_id"]:
        problems.append("no device_id")
    if not isinstance(doc.get("model"), dict):
        problems.append("no model")
    windows = doc.get("windows")
    if not isinstance(windows, list) or not all(isinstance(w, dict) for w in windows):
        problems.append("windows is not a list of objects")
    return problems


def load_monitoring(run_path: Path) -> Monitoring | None:
    """The run's monitor results grouped by device id; None when it has no ``monitor/*.json``."""
    found = read_results(run_path, MONITOR_DIR, result_problems)
    if found is None:
        return None
    docs, skipped = found
    by_device: dict[str, list[Watch]] = {}
    for where, doc in docs:
        did = doc["device_id"]
        by_device.setdefault(did, []).append(Watch(
            file=where, device_id=did, emulated=is_emulated(did, doc.get("device")), model=doc["model"],
            window=dict(doc.get("window") or {}), thresholds=dict(doc.get("thresholds") or {}),
            log=dict(doc.get("log") or {}),
            reference=doc.get("reference") if isinstance(doc.get("reference"), dict) else None,
            windows=doc["windows"], alert=bool(doc.get("alert")),
            verdict=[str(v) for v in doc.get("verdict") or []]))
    for line in skipped:
        warn(f"left a monitor result out of the report: {line}")
    devices = [MonitoringDevice(did, any(w.emulated for w in ws), ws)
               for did, ws in sorted(by_device.items())]
    return Monitoring(devices=devices, skipped=skipped)


# ---------------------------------------------------------------- words


def _time(t: Any) -> str:
    if not _finite(t):
        return "-"
    return datetime.fromtimestamp(float(t), tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pct(v: Any) -> str:
    return f"{float(v):.1%}" if _finite(v) else "-"


def headline(w: Watch) -> str:
    """ALERT or no alert, the drifted features with their windows, live accuracy: one line."""
    parts = ["ALERT" if w.alert else "no alert", w.window_text]
    drifted = w.drifted()
    if drifted:
        parts.append("drifted: " + ", ".join(f"{name} (window{'s' if len(ix) > 1 else ''} "
                                             f"{', '.join(map(str, ix))})" for name, ix in drifted.items()))
    elif any(w.get("tested") for w in w.windows):
        parts.append("no feature drifted")
    live = w.live_accuracy()
    ref_acc = (w.reference or {}).get("test_accuracy")
    if live:
        parts.append(f"live accuracy {live[0]:.1%} on {live[1]} labels"
                     + (f" (test split {ref_acc:.1%})" if _finite(ref_acc) else ""))
    else:
        parts.append("live accuracy: no feedback labels yet")
    return "; ".join(parts)


def window_cells(w: Watch, win: dict[str, Any]) -> list[str]:
    features = {k: f for k, f in (win.get("features") or {}).items() if isinstance(f, dict)}
    drifted = [k for k, f in features.items() if f.get("drifted")]
    top = max(features.items(), key=lambda kv: float(kv[1].get("psi") or 0), default=None)
    pred = win.get("predictions") or {}
    mix = sorted((pred.get("mix") or {}).items(), key=lambda kv: -float(kv[1]))[:3]
    mix_text = ", ".join(f"{k} {float(v):.0%}" for k, v in mix)
    if mix_text and _finite(pred.get("psi")):
        mix_text += f" (PSI {float(pred['psi']):.2f}{', shifted' if pred.get('drifted') else ''})"
    conf = win.get("confidence") or {}
    acc = win.get("accuracy") or {}
    lat = win.get("latency") or {}
    p99 = sig(float(lat["p99_ms"])) if _finite(lat.get("p99_ms")) else "-"
    if p99 != "-" and w.emulated:
        p99 += " (emulated)"
    return [str(win.get("index", "?")), str(win.get("requests", "?")), _time(win.get("start")),
            _time(win.get("end")), ", ".join(drifted) or ("-" if win.get("tested") else win.get("note", "-")),
            f"{top[0]} {float(top[1].get('psi') or 0):.2f}" if top else "-", mix_text or "-",
            f"{float(conf['mean']):.2f}" if _finite(conf.get("mean")) else "-",
            f"{_pct(acc.get('live'))} ({acc.get('labels')})" if acc else "-", p99,
            str(len(win.get("alerts") or []))]


def _title(w: Watch) -> str:
    return f"{w.device_id}: model {w.label}" + (f" - {EMULATED}" if w.emulated else "")


def markdown(mon: Monitoring | None) -> list[str]:
    """The section's Markdown lines (none without monitor results)."""
    if mon is None:
        return []
    lines = [f"## {HEADING}", "", NOTE, ""]
    for d in mon.devices:
        for w in d.watches:
            lines += [f"### {_title(w)}", "", f"**{headline(w)}**", ""]
            lines += [f"- {v}" for v in w.verdict] + [""]
            lines += [f"![drift per feature, prediction mix and live accuracy on {w.device_id}]"
                      f"({w.plot_file})", ""]
            lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in window_cells(w, win)) + " |"
                      for win in w.windows] + [""]
            lines += [log_line(w), ""]
    if mon.skipped:
        lines += [f"- skipped {line}" for line in mon.skipped] + [""]
    return lines


def log_line(w: Watch) -> str:
    lg = w.log
    return (f"From {w.file}: {lg.get('lines', '?')} logged requests, {lg.get('corrupt_lines', 0)} corrupt "
            f"line(s) skipped, {lg.get('feedback', 0)} feedback label(s); thresholds: PSI "
            f"{w.thresholds.get('psi', '?')}, alpha {w.thresholds.get('alpha', '?')}.")


def html_parts(mon: Monitoring | None) -> list[str]:
    """The section as HTML (plots inline as data: URIs)."""
    if mon is None:
        return []
    e = html.escape
    parts = [f"<h2 id='monitoring'>{HEADING}</h2>", f"<p class='method'>{e(NOTE.replace('`', ''))}</p>"]
    for d in mon.devices:
        for w in d.watches:
            title = e(_title(w).replace(f" - {EMULATED}", ""))
            emu = f" <span class='emu'>{e(EMULATED)}</span>" if w.emulated else ""
            parts.append(f"<h3 id='monitor-{e(safe_name(w.device_id))}-{e(w.version)}'>{title}{emu}</h3>")
            parts.append(f"<p class='{'note' if w.alert else 'ok'}'>{e(headline(w))}</p>")
            parts.append("<ul class='verdict'>" + "".join(
                f"<li{' class=flagged' if w.alert and 'drift in' not in v else ''}>{e(v)}</li>"
                for v in w.verdict) + "</ul>")
            parts.append(f"<figure><img alt='monitoring {e(w.device_id)} {e(w.version)}' "
                         "class='plot monitoring' "
                         f"src='data:image/png;base64,{w.png()}'><figcaption>per window: PSI of each feature "
                         "against the train split, the prediction mix against the test split, live accuracy "
                         "from feedback</figcaption></figure>")
            head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
            body = "".join(
                f"<tr class='{'flag' if win.get('alerts') else ''}'>"
                + "".join(f"<td class='l'>{e(c)}</td>" for c in window_cells(w, win)) + "</tr>"
                for win in w.windows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            parts.append(f"<p class='method'>{e(log_line(w))}</p>")
    if mon.skipped:
        parts.append("<ul class='verdict'>" + "".join(f"<li class='flagged'>skipped {e(x)}</li>"
                                                      for x in mon.skipped) + "</ul>")
    return parts


def terminal_lines(mon: Monitoring | None) -> list[str]:
    """Plain lines for the terminal report: one per device and model version."""
    if mon is None:
        return []
    out = [f"{HEADING}:"]
    for d in mon.devices:
        out += [f"  {_title(w)}\n    {headline(w)}" for w in d.watches]
    out += [f"  skipped {line}" for line in mon.skipped]
    return out


# ---------------------------------------------------------------- the plot


def watch_plot(w: Watch) -> str:
    """Three panels over the windows: PSI per feature (drifted features named and marked, the rest
    grey), the prediction mix (stacked, the test split's mix as bar 'test'), live accuracy with the
    test accuracy."""
    fig = figure(7.0, 7.2)
    axes = fig.subplots(3, 1)
    idx = [int(win.get("index", i)) for i, win in enumerate(w.windows)]
    _psi_panel(axes[0], w, idx)
    _mix_panel(axes[1], w, idx)
    _accuracy_panel(axes[2], w, idx)
    axes[2].set_xlabel("window (" + w.window_text + ")")
    title = f"{w.device_id} - {w.label}" + (f"\n{EMULATED}" if w.emulated else "")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return png_base64(fig)


def _psi_panel(ax: Any, w: Watch, idx: list[int]) -> None:
    names: dict[str, list[float]] = {}
    for win in w.windows:
        for name in win.get("features") or {}:
            names.setdefault(name, [])
    for name, series in names.items():
        for win in w.windows:
            f = (win.get("features") or {}).get(name) or {}
            series.append(float(f["psi"]) if _finite(f.get("psi")) else math.nan)
    drifted = w.drifted()
    ranked = sorted(names, key=lambda n: (n not in drifted, -max((v for v in names[n] if v == v), default=0)))
    shown = ranked[:TOP_FEATURES]
    for name in ranked[::-1]:
        if name in shown:
            ax.plot(idx, names[name], "o-" if name in drifted else ".-", label=name,
                    linewidth=2 if name in drifted else 1, zorder=3)
        else:
            ax.plot(idx, names[name], "-", color="grey", alpha=0.35, linewidth=0.8, zorder=2)
    for name, windows in drifted.items():
        pos = [idx.index(i) for i in windows if i in idx]
        ax.scatter([idx[p] for p in pos], [names[name][p] for p in pos], s=90, facecolors="none",
                   edgecolors="crimson", linewidths=1.5, zorder=4)
    psi = w.thresholds.get("psi")
    if _finite(psi):
        ax.axhline(float(psi), color="crimson", linestyle="--", linewidth=1, label=f"PSI {psi}")
    if not names:
        ax.text(0.5, 0.5, "no per-feature statistics logged", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_ylabel("PSI vs train split")
    ax.set_title("drift per feature (ringed: drifted)", fontsize=8)
    ax.grid(alpha=0.3)
    if names:
        ax.legend(loc="upper left", fontsize=6, ncol=2)


def _mix_panel(ax: Any, w: Watch, idx: list[int]) -> None:
    ref = (w.reference or {}).get("prediction_mix") or {}
    mixes = [((win.get("predictions") or {}).get("mix") or {}) for win in w.windows]
    labels = list(ref) or sorted({k for mix in mixes for k in mix})
    xs = ["test"] + [str(i) for i in idx]
    bottom = [0.0] * len(xs)
    for j, lab in enumerate(labels):
        vals = [float(ref.get(lab) or 0)] + [float(mix.get(lab) or 0) for mix in mixes]
        ax.bar(xs, vals, bottom=bottom, label=str(lab), color=f"C{j % 10}", width=0.7)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    for i, win in enumerate(w.windows, start=1):
        if (win.get("predictions") or {}).get("drifted"):
            ax.annotate("shifted", (i, 1.0), ha="center", va="bottom", fontsize=7, color="crimson")
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("share of predictions")
    ax.set_title("prediction mix (bar 'test': the test split)", fontsize=8)
    if labels:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=6)


def _accuracy_panel(ax: Any, w: Watch, idx: list[int]) -> None:
    pts = [(i, win["accuracy"]) for i, win in zip(idx, w.windows, strict=True)
           if isinstance(win.get("accuracy"), dict) and _finite(win["accuracy"].get("live"))]
    ref = (w.reference or {}).get("test_accuracy")
    if pts:
        ax.plot([i for i, _ in pts], [float(a["live"]) for _, a in pts], "o-", color="C0",
                label="live accuracy")
        for i, a in pts:
            ax.annotate(f"n={a.get('labels')}", (i, float(a["live"])), xytext=(0, -11),
                        textcoords="offset points", ha="center", fontsize=6)
    else:
        ax.text(0.5, 0.5, "no feedback labels yet", ha="center", va="center", transform=ax.transAxes)
    if _finite(ref):
        ax.axhline(float(ref), color="grey", linestyle="--", linewidth=1,
                   label=f"test split {float(ref):.1%}")
    ax.set_xlim(min(idx, default=0) - 0.5, max(idx, default=0) + 0.5)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("live accuracy from feedback", fontsize=8)
    ax.grid(alpha=0.3)
    if pts or _finite(ref):
        ax.legend(loc="lower left", fontsize=6)
