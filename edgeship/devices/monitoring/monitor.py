"""``edgeship monitor``: a device's request log, windowed, against the run's reference; a verdict.

The source is a local folder of request logs (``requests-*.jsonl``, ``feedback-*.jsonl``,
``bins.json`` as ``edge_runtime.serve.requestlog`` writes them); pulling a device's folder over
the deploy transport fills such a folder first, then calls ``monitor_run`` the same way.

Per window (split by model version, never mixed) it computes: per-feature drift against the
train split (PSI and KS for numeric values logged raw; PSI and chi-square for categorical and
binned values; the image statistics for image models), the prediction mix against the test
split's, the mean confidence against the test split's, the int8 clipping rate against the
calibration rows', live accuracy where feedback exists, and p99 latency against ``--slo-ms``.

A window alerts when any of (defaults in ``Thresholds``):

- a feature: PSI >= 0.2 and p < 0.01 / (features tested) (Bonferroni), or PSI >= 0.2 alone
  for the intensity histogram (pixels are not independent draws, so no p-value);
- the prediction mix: PSI >= 0.2 and chi-square p < 0.01;
- mean confidence more than 0.10 below the test split's;
- clipped input fraction more than 0.02 above the calibration rows';
- live accuracy more than 0.10 below the test accuracy, over at least 20 labelled requests;
- p99 latency above ``--slo-ms`` (only if given).

False-alarm rate of these defaults (docs/monitoring.md): 0 of 50 windows of 200 held-out rows
on each of breast_cancer (summary and raw logs) and digits (``benchmarks/suites/drift.py``), and
2 of 1000 independent synthetic windows (10 features); by design at most about 2 % a window (0.01
over the features, Bonferroni, plus 0.01 for the prediction mix) before the PSI gate lowers it.

Results go to ``monitor/<device>-<sha12>.json`` (one per model version, schema ``SCHEMA``) in
a ``monitor`` stage, whose parameters name the log files and their sha256.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.serve.requestlog import (
    BINS_FILE,
    FEEDBACK_PREFIX,
    MISSING,
    OTHER,
    REQUEST_PREFIX,
    bin_index,
    default_bins,
)
from edgeship.core.errors import InputError, RunError
from edgeship.core.fsutil import sha256_file, write_json_atomic
from edgeship.core.runstore import RunDir, now_iso
from edgeship.devices.monitoring import drift
from edgeship.devices.monitoring.reference import Reference, build_reference
from edgeship.devices.monitoring.windows import (
    VersionLines,
    Window,
    WindowSpec,
    by_version,
    parse_window,
    split_windows,
)

SCHEMA = 1
MONITOR_DIR = "monitor"
ALERT_EXIT = 3


@dataclass(frozen=True)
class Thresholds:
    """When a window alerts; the defaults' false-alarm rate is measured by benchmarks/suites/drift.py."""

    psi: float = 0.2
    alpha: float = 0.01  # family-wise, split over the features tested (Bonferroni)
    confidence_drop: float = 0.10
    clip_increase: float = 0.02
    accuracy_drop: float = 0.10
    min_labels: int = 20
    slo_ms: float | None = None

    def check(self) -> None:
        for name in ("psi", "confidence_drop", "clip_increase", "accuracy_drop"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise InputError(f"--{name.replace('_', '-')} {v}: use a positive number")
        if not 0 < self.alpha < 1:
            raise InputError(f"--alpha {self.alpha}: use a significance level in (0, 1), e.g. 0.01")
        if self.min_labels < 1:
            raise InputError(f"--min-labels {self.min_labels}: use at least 1")
        if self.slo_ms is not None and not (math.isfinite(self.slo_ms) and self.slo_ms > 0):
            raise InputError(f"--slo-ms {self.slo_ms}: use a positive latency in milliseconds")


@dataclass(frozen=True)
class MonitorConfig:
    window: str = "200"
    thresholds: Thresholds = field(default_factory=Thresholds)
    device_id: str = "local"
    min_requests: int = 30  # a time window with fewer lines is labelled, not tested
    save: bool = True


@dataclass
class LogFolder:
    """What a log folder holds, read leniently: bad lines are skipped and counted."""

    lines: list[dict[str, Any]]
    feedback: dict[tuple[str, int | None], str]
    corrupt: int
    files: list[dict[str, Any]]
    bins: dict[str, Any]


@dataclass
class MonitorResult:
    results: list[dict[str, Any]]
    paths: list[Path]
    alert: bool
    verdict: list[str]  # one line per alert, or per version why there is none
    alerts: list[str] = field(default_factory=list)  # the verdict's alert lines


def read_log_folder(folder: Path) -> LogFolder:
    """Every request and feedback line under ``folder``; a truncated or corrupt line is counted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--from {folder}: no such folder; point it at a folder of request logs "
                         f"({REQUEST_PREFIX}*.jsonl, written by `python -m edge_runtime serve --log-dir`)")
    request_files = sorted(folder.glob(f"{REQUEST_PREFIX}*.jsonl"))
    if not request_files:
        raise InputError(f"no request logs in {folder} yet ({REQUEST_PREFIX}*.jsonl): serve with request "
                         "logging on and send some requests first")
    lines: list[dict[str, Any]] = []
    corrupt = 0
    files = []
    for path in request_files:
        n = 0
        for obj in _json_lines(path):
            if _valid_request(obj):
                lines.append(obj)
                n += 1
            else:
                corrupt += 1
        files.append({"path": path.name, "sha256": sha256_file(path), "lines": n})
    feedback: dict[tuple[str, int | None], str] = {}
    for path in sorted(folder.glob(f"{FEEDBACK_PREFIX}*.jsonl")):
        n = 0
        for obj in _json_lines(path):
            if (isinstance(obj, dict) and isinstance(obj.get("request_id"), str)
                    and obj.get("label") is not None):
                inst = obj.get("instance")
                key = (obj["request_id"], int(inst) if isinstance(inst, int) else None)
                feedback[key] = str(obj["label"])
                n += 1
            else:
                corrupt += 1
        files.append({"path": path.name, "sha256": sha256_file(path), "lines": n})
    bins: dict[str, Any] = {}
    if (folder / BINS_FILE).is_file():
        try:
            bins = json.loads((folder / BINS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            bins = {}
    return LogFolder(lines, feedback, corrupt, files, bins if isinstance(bins, dict) else {})


def _json_lines(path: Path) -> Iterable[Any]:
    """Parsed lines; a line that is not JSON (truncated by a crash, corrupted) yields ``None``."""
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                yield json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                yield None


def _valid_request(obj: Any) -> bool:
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        return False
    pred = obj.get("prediction")
    t = obj.get("time")
    return (isinstance(pred, dict) and isinstance(pred.get("index"), int) and isinstance(t, int | float)
            and math.isfinite(t) and isinstance(obj.get("request_id"), str))


# ---------------------------------------------------------------- one window


def _feature_tests(ref: Reference, lines: list[dict[str, Any]], device_bins: dict[str, Any]
                   ) -> dict[str, drift.TestResult]:
    inputs = [ln.get("input") or {} for ln in lines]
    inputs = [i for i in inputs if i.get("mode") in ("summary", "raw")]
    if not inputs:
        return {}
    out: dict[str, drift.TestResult] = {}
    if ref.kind == "image":
        for stat in ("mean", "std"):
            cur = np.array([i[stat] for i in inputs if isinstance(i.get(stat), int | float)])
            name = f"image.{stat}"
            if len(cur):
                out[name] = drift.numeric_drift(ref.numeric[name], cur, ref.edges(name))
        hists = [i["hist"] for i in inputs if isinstance(i.get("hist"), list)]
        if hists and ref.image_hist is not None and len(hists[0]) == len(ref.image_hist):
            out["image.histogram"] = drift.histogram_drift(ref.image_hist, np.mean(hists, axis=0))
        return out
    numeric_edges = {**default_bins(ref.spec), **(device_bins.get("numeric") or {})}
    for name, values in ref.numeric.items():
        raw = [_num((i.get("values") or {}).get(name)) for i in inputs if i["mode"] == "raw"]
        raw = [v for v in raw if v is not None]
        summary = [i["bins"].get(name) for i in inputs
                   if i["mode"] == "summary" and isinstance(i.get("bins"), dict)]
        if raw and not summary:
            out[name] = drift.numeric_drift(values, np.array(raw), ref.edges(name))
            continue
        edges = numeric_edges.get(name)
        if edges is None:
            continue
        idx = [b for b in summary if isinstance(b, int)] + [bin_index(edges, v) for v in raw]
        if idx:
            cur = np.bincount(np.clip(idx, 0, len(edges)), minlength=len(edges) + 1).astype(float)
            out[name] = drift.binned_drift(drift.histogram(values, edges), cur)
    for name, counts in ref.categorical.items():
        seen: dict[str, int] = dict.fromkeys(counts, 0)
        for i in inputs:
            held = i.get("categories") if i["mode"] == "summary" else i.get("values")
            v = (held or {}).get(name)
            if v is None or v == MISSING:
                continue
            v = str(v) if str(v) in counts else OTHER
            seen[v] += 1
        if sum(seen.values()):
            keys = list(counts)
            out[name] = drift.binned_drift(np.array([counts[k] for k in keys], float),
                                           np.array([seen[k] for k in keys], float))
    return out


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def evaluate_window(ref: Reference, window: Window, th: Thresholds, device_bins: dict[str, Any],
                    feedback: dict[tuple[str, int | None], str]) -> dict[str, Any]:
    """Every statistic of one window and the alerts it trips."""
    lines = window.lines
    out: dict[str, Any] = {"index": window.index, "start": window.start, "end": window.end,
                           "requests": len(lines), "tested": not window.too_few, "alerts": []}
    if window.too_few:
        out["note"] = "too few requests to test"
        return out
    alerts: list[str] = out["alerts"]
    tests = _feature_tests(ref, lines, device_bins)
    n_p = sum(1 for t in tests.values() if t.p_value is not None) or 1
    features = {}
    for name, t in tests.items():
        drifted = t.psi >= th.psi and (t.p_value is None or t.p_value < th.alpha / n_p)
        features[name] = {**t.as_dict(), "drifted": drifted}
        if drifted:
            alerts.append(f"feature {name!r} drifted (PSI {t.psi:.2f}"
                          + (f", {t.test} p={t.p_value:.1e})" if t.p_value is not None else ")"))
    out["features"] = features
    classes = len(ref.labels)
    pred = np.array([int(ln["prediction"]["index"]) for ln in lines])
    pred = pred[(pred >= 0) & (pred < classes)]
    if ref.prediction_counts is not None and len(pred):
        cur = np.bincount(pred, minlength=classes).astype(float)
        t = drift.binned_drift(ref.prediction_counts, cur)
        drifted = t.psi >= th.psi and t.p_value is not None and t.p_value < th.alpha
        mix = {lab: round(float(c) / len(pred), 4) for lab, c in zip(ref.labels, cur, strict=True)}
        out["predictions"] = {**t.as_dict(), "drifted": drifted, "mix": mix}
        if drifted:
            top = ref.labels[int(cur.argmax())]
            alerts.append(f"prediction mix shifted (PSI {t.psi:.2f}, chi2 p={t.p_value:.1e}; "
                          f"{cur.max() / len(pred):.0%} '{top}')")
    conf = [float(ln["confidence"]) for ln in lines if _num(ln.get("confidence")) is not None]
    if conf and ref.mean_confidence is not None:
        mean = float(np.mean(conf))
        dropped = ref.mean_confidence - mean > th.confidence_drop
        out["confidence"] = {"mean": round(mean, 4), "reference": ref.mean_confidence, "alert": dropped}
        if dropped:
            alerts.append(f"mean confidence {mean:.2f} vs {ref.mean_confidence:.2f} on the test split")
    clipped = [float(ln["input"]["clipped"]) for ln in lines
               if isinstance(ln.get("input"), dict) and _num(ln["input"].get("clipped")) is not None]
    if clipped and ref.clipped is not None:
        rate = float(np.mean(clipped))
        high = rate - ref.clipped > th.clip_increase
        out["clipping"] = {"rate": round(rate, 5), "reference": ref.clipped, "alert": high}
        if high:
            alerts.append(f"int8 clipping {rate:.1%} of input values vs {ref.clipped:.1%} in calibration")
    labelled = [(ln["prediction"].get("label"), feedback.get((ln["request_id"], ln.get("instance")))
                 or feedback.get((ln["request_id"], None))) for ln in lines]
    labelled = [(p, y) for p, y in labelled if y is not None]
    if labelled:
        acc = sum(str(p) == y for p, y in labelled) / len(labelled)
        low = (len(labelled) >= th.min_labels and ref.test_accuracy is not None
               and ref.test_accuracy - acc > th.accuracy_drop)
        out["accuracy"] = {"live": round(acc, 4), "labels": len(labelled), "reference": ref.test_accuracy,
                           "alert": low}
        if low:
            alerts.append(f"live accuracy {acc:.2f} on {len(labelled)} labels vs "
                          f"{ref.test_accuracy:.2f} on the test split")
    totals = [float(ln["latency_ms"]["total"]) for ln in lines
              if isinstance(ln.get("latency_ms"), dict) and _num(ln["latency_ms"].get("total")) is not None]
    if totals:
        p99 = float(np.percentile(totals, 99))
        slow = th.slo_ms is not None and p99 > th.slo_ms
        out["latency"] = {"p50_ms": round(float(np.percentile(totals, 50)), 3), "p99_ms": round(p99, 3),
                          "slo_ms": th.slo_ms, "alert": slow}
        if slow:
            alerts.append(f"p99 latency {p99:.1f} ms over the {th.slo_ms:g} ms SLO")
    return out


# ---------------------------------------------------------------- the run


def monitor_run(run: RunDir, source: Path, config: MonitorConfig) -> MonitorResult:
    """Window the log folder ``source``, compare each window with the run, save and judge."""
    config.thresholds.check()
    spec = parse_window(config.window)
    log = read_log_folder(Path(source))
    if not log.lines:
        raise InputError(f"the request logs in {source} hold no readable lines ({log.corrupt} corrupt); "
                         "send some requests to the server first")
    groups = [split_windows(g, spec, config.min_requests) for g in by_version(log.lines)]
    if not any(g.windows for g in groups):
        sizes = ", ".join(f"{len(g.lines)} for model version {g.version[:12]}" for g in groups)
        most = max(len(g.lines) for g in groups)
        raise InputError(f"--window {config.window} is larger than the log ({sizes} requests); "
                         f"use --window {most} or fewer, or wait for more requests")
    results: list[dict[str, Any]] = []
    verdict: list[str] = []
    alerts: list[str] = []
    foreign: list[RunError] = []
    for g in groups:
        try:
            results.append(_version_result(run, g, spec, config, log))
        except RunError as e:  # a model version from another run: labelled, the others still judged
            foreign.append(e)
            continue
        lines = [f"{config.device_id} {g.version[:12]}: {line}" for line in results[-1]["verdict"]]
        verdict += lines
        if results[-1]["alert"]:
            alerts += lines
    if not results:
        raise foreign[0]
    verdict += [f"{config.device_id}: skipped: {e}" for e in foreign]
    alert = any(r["alert"] for r in results)
    paths = _save(run, results, config, source, log) if config.save else []
    return MonitorResult(results, paths, alert, verdict, alerts)


def _version_result(run: RunDir, g: VersionLines, spec: WindowSpec, config: MonitorConfig,
                    log: LogFolder) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": SCHEMA, "kind": "monitor", "created": now_iso(), "run_id": run.id,
        "device_id": config.device_id, "model": {**g.model, "key": g.version},
        "window": spec.describe(), "thresholds": asdict(config.thresholds),
        "log": {"files": log.files, "lines": len(g.lines), "corrupt_lines": log.corrupt,
                "feedback": len(log.feedback), "partial_tail": g.partial_tail},
    }
    if not g.windows:
        return {**base, "windows": [], "alert": False, "reference": None,
                "verdict": [f"not enough requests for one window ({len(g.lines)} < {spec.count})"]}
    ref = build_reference(run, str(g.model.get("sha256") or ""))
    device_bins = log.bins.get(str(g.model.get("name", ""))) or {}
    windows = [evaluate_window(ref, w, config.thresholds, device_bins, log.feedback) for w in g.windows]
    verdict = [f"window {w['index']} ({w['requests']} requests): {a}" for w in windows for a in w["alerts"]]
    tested = sum(1 for w in windows if w["tested"])
    if not verdict:
        verdict = [f"no drift in {tested} window(s) of {spec.describe()}"
                   + ("" if tested == len(windows) else f" ({len(windows) - tested} with too few requests)")]
    return {**base, "reference": ref.summary(), "windows": windows,
            "alert": any(w["alerts"] for w in windows), "verdict": verdict}


def safe_name(text: str) -> str:
    """A device id or version as a file-name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "device"


def _save(run: RunDir, results: list[dict[str, Any]], config: MonitorConfig, source: Path,
          log: LogFolder) -> list[Path]:
    names = {f"{safe_name(config.device_id)}-{safe_name(r['model']['key'][:12])}.json": r for r in results}
    params = {"source": str(source), "device_id": config.device_id, "window": config.window,
              "logs": log.files, "results": sorted(names)}
    with run.stage("monitor", params) as st:
        out = st.output_dir(MONITOR_DIR)
        existing = run.path / MONITOR_DIR
        if existing.is_dir():
            for old in sorted(existing.glob("*.json")):
                if old.name not in names:
                    (out / old.name).write_bytes(old.read_bytes())
        for name, r in names.items():
            write_json_atomic(out / name, r)
        st.metrics = {"alert": any(r["alert"] for r in results),
                      "windows": sum(len(r["windows"]) for r in results)}
    return [run.path / MONITOR_DIR / name for name in names]
