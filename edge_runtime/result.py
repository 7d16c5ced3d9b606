"""The benchmark result schema: one JSON object per (artifact, device, thread count).

Every backend and device (host, headless browser, Raspberry Pi, emulated Pi) produces this
object, so reports, scripts and later issues read one shape. It lives in ``edge_runtime``
(standard library only) because devices produce it: ``python -m edge_runtime bench --json``
prints them. Adding an optional key is compatible; renaming a key or changing a meaning bumps
``SCHEMA_VERSION``. Version 1 results (one timing session, host-validated accuracy) are still
read: ``upgrade_result`` fills the version 2 keys with what a single round can say.

Required keys (``None`` allowed where marked ``| null``)::

    schema_version  2   (1 is read and upgraded)
    on              "host" | "browser" | "pi"      where it ran (see timing.device_kind)
    device_id       str                           one physical device (or browser on one host);
                                                  file names and report sections key on it
    model           str | null                    registry name, e.g. "cnn"
    variant         str | null                    "base" or a compression variant
    artifact        str                           the artifact folder (path or name, e.g. tflite-int8)
    format          "tflite" | "onnx" | "tvm" | "web"
    quantize        str | null                    float32, float16, dynamic, int8
    backend         str                           ai-edge-litert, onnxruntime, apache-tvm, onnxruntime-web
    backend_version str | null
    threads         int >= 1 | null               null: the runtime's default
    warmup          int >= 0                      discarded calls per round
    runs            int >= 1                      timed samples per round
    rounds          int >= 1                      interleaved rounds (see edge_runtime.rounds)
    latency_ms      {mean, std, min, p50, p90, p95, p99, max}   invoke alone, milliseconds, per
                                                  call; p50 is the median of the rounds' p50s, the
                                                  rest are over every sample of every round
    p50_ci_ms       [lo, hi] | null               interval of p50 (``ci_method``) at ``ci_level``; null
                                                  for 1 round
    calls_per_sample int >= 1                     k: a sample is the mean of k back-to-back calls
    clock_step_ms   float | null                  the timer's measured step
    init_ms         float | null                  load (sha256 check + runtime init)
    first_ms        float | null                  first inference after load
    peak_rss_mb     float | null                  peak resident memory of the measuring process
    bytes           int | null                    model file size
    accuracy        float in [0, 1] | null        test accuracy, measured where ``accuracy_source`` says
    accuracy_source "device" | "export validation" | null
    device          {cpu_model, cores, arch, os, python, governor, emulated: bool, ...}

Optional: ``round_p50_ms`` (each round's p50), ``ci_method``, ``ci_level`` (the interval's exact
coverage for this many rounds, e.g. 0.9375 for 5; null without an interval or in results written
before it was recorded, whose bootstrap interval claimed 95 % it did not reach: reports say "level
not stated"), ``calibration`` ({warmup, calls, call_ms, end_call_ms, drift, drifted}: how k was
chosen, after warm-up, and the call time re-checked at the end of the session; ``drifted`` when
the two differ by more than ``DRIFT_LIMIT`` x, so k may be off), ``tail_ms`` ({p50, p90, p99, max,
samples}: single-call samples, for tail latency, since a k-call mean hides a slow call),
``top1_agreement`` and ``evaluation`` (how accuracy was measured), ``end_to_end_ms`` (same keys
as latency_ms: preprocess + invoke + postprocess), ``samples_ms`` (every round's samples, for
distribution plots), ``batch``, ``run_id``, ``target``, ``percentile_method``, ``measured_at``
(ISO-8601 UTC), ``label``, ``notes``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Any

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
ON_CHOICES = ("host", "browser", "pi")
FORMATS = ("tflite", "onnx", "tvm", "web")
LATENCY_KEYS = ("mean", "std", "min", "p50", "p90", "p95", "p99", "max")
DEVICE_KEYS = ("cpu_model", "cores", "arch", "os", "python", "governor", "emulated")
REQUIRED = (
    "schema_version", "on", "model", "variant", "artifact", "format", "quantize", "backend",
    "backend_version", "threads", "warmup", "runs", "latency_ms", "init_ms", "first_ms",
    "peak_rss_mb", "bytes", "accuracy", "device",
)
REQUIRED_V2 = ("device_id", "rounds", "p50_ci_ms", "calls_per_sample", "clock_step_ms", "accuracy_source")
ACCURACY_SOURCES = ("device", "export validation")
TAIL_KEYS = ("p50", "p90", "p99", "max")
DRIFT_LIMIT = 2.0  # call time at the end of a session vs at calibration: beyond this, k may be off
_NULLABLE_STR = ("model", "variant", "quantize", "backend_version")
_NULLABLE_MS = ("init_ms", "first_ms", "peak_rss_mb")
_ORDER = ("min", "p50", "p90", "p95", "p99", "max")
# Summaries are rounded to 6 decimals (1 ns): allow that much disorder.
_SLACK = 1e-5


class ResultSchemaError(ValueError):
    """A result object that does not follow the schema; the message lists every problem."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _check_summary(name: str, s: Any, problems: list[str]) -> None:
    if not isinstance(s, dict):
        problems.append(f"{name} must be an object with {', '.join(LATENCY_KEYS)}")
        return
    missing = [k for k in LATENCY_KEYS if k not in s]
    if missing:
        problems.append(f"{name} lacks {', '.join(missing)}")
        return
    bad = [k for k in LATENCY_KEYS if not _is_num(s[k]) or s[k] < 0]
    if bad:
        problems.append(f"{name}.{bad[0]} must be a finite number >= 0, got {s[bad[0]]!r}")
        return
    for lo, hi in itertools.pairwise(_ORDER):
        if s[lo] > s[hi] + _SLACK:
            problems.append(f"{name}: {lo} ({s[lo]}) > {hi} ({s[hi]})")
    if not s["min"] - _SLACK <= s["mean"] <= s["max"] + _SLACK:
        problems.append(f"{name}: mean ({s['mean']}) outside [min, max]")


def validate_result(d: Any) -> list[str]:
    """Every way ``d`` departs from the schema, one short sentence each; [] when it is valid."""
    if not isinstance(d, dict):
        return [f"a result must be a JSON object, got {type(d).__name__}"]
    problems: list[str] = []
    required = REQUIRED + (REQUIRED_V2 if d.get("schema_version") == SCHEMA_VERSION else ())
    missing = [k for k in required if k not in d]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if "schema_version" in d and d["schema_version"] not in READABLE_VERSIONS:
        problems.append(f"schema_version must be one of {READABLE_VERSIONS}, got {d['schema_version']!r} "
                        "(a newer edgeship wrote it: update edgeship)")
    if "on" in d and d["on"] not in ON_CHOICES:
        problems.append(f"on must be one of {', '.join(ON_CHOICES)}, got {d['on']!r}")
    if "format" in d and d["format"] not in FORMATS:
        problems.append(f"format must be one of {', '.join(FORMATS)}, got {d['format']!r}")
    for k in ("artifact", "backend"):
        if k in d and not (isinstance(d[k], str) and d[k]):
            problems.append(f"{k} must be a non-empty string, got {d[k]!r}")
    for k in _NULLABLE_STR:
        if d.get(k) is not None and not isinstance(d[k], str):
            problems.append(f"{k} must be a string or null, got {d[k]!r}")
    if d.get("threads") is not None and not (_is_int(d["threads"]) and d["threads"] >= 1):
        problems.append(f"threads must be an integer >= 1 or null, got {d['threads']!r}")
    if "warmup" in d and not (_is_int(d["warmup"]) and d["warmup"] >= 0):
        problems.append(f"warmup must be an integer >= 0, got {d['warmup']!r}")
    if "runs" in d and not (_is_int(d["runs"]) and d["runs"] >= 1):
        problems.append(f"runs must be an integer >= 1, got {d['runs']!r}")
    if "latency_ms" in d:
        _check_summary("latency_ms", d["latency_ms"], problems)
    if d.get("end_to_end_ms") is not None:
        _check_summary("end_to_end_ms", d["end_to_end_ms"], problems)
    for k in _NULLABLE_MS:
        if d.get(k) is not None and not (_is_num(d[k]) and d[k] >= 0):
            problems.append(f"{k} must be a number >= 0 or null, got {d[k]!r}")
    if d.get("bytes") is not None and not (_is_int(d["bytes"]) and d["bytes"] > 0):
        problems.append(f"bytes must be a positive integer or null, got {d['bytes']!r}")
    acc = d.get("accuracy")
    if acc is not None and not (_is_num(acc) and 0 <= acc <= 1):
        problems.append(f"accuracy must be a fraction in [0, 1] or null, got {acc!r}")
    if "device" in d:
        dev = d["device"]
        if not isinstance(dev, dict):
            problems.append("device must be an object")
        else:
            lacking = [k for k in DEVICE_KEYS if k not in dev]
            if lacking:
                problems.append(f"device lacks {', '.join(lacking)}")
            if "emulated" in dev and not isinstance(dev["emulated"], bool):
                problems.append(f"device.emulated must be true or false, got {dev['emulated']!r}")
    _check_rounds(d, problems)
    samples = d.get("samples_ms")
    if samples is not None and not (
        isinstance(samples, list) and all(_is_num(v) and v >= 0 for v in samples)
    ):
        problems.append("samples_ms must be a list of numbers >= 0")
    return problems


def _check_rounds(d: dict[str, Any], problems: list[str]) -> None:
    """The version 2 keys: rounds, the p50 interval, the sampling, where accuracy came from."""
    if "device_id" in d and not (isinstance(d["device_id"], str) and d["device_id"]):
        problems.append(f"device_id must be a non-empty string, got {d['device_id']!r}")
    for k in ("rounds", "calls_per_sample"):
        if k in d and not (_is_int(d[k]) and d[k] >= 1):
            problems.append(f"{k} must be an integer >= 1, got {d[k]!r}")
    ci = d.get("p50_ci_ms")
    if ci is not None:
        if not (isinstance(ci, list) and len(ci) == 2 and all(_is_num(v) and v >= 0 for v in ci)
                and ci[0] <= ci[1] + _SLACK):
            problems.append(f"p50_ci_ms must be [lo, hi] with 0 <= lo <= hi, got {ci!r}")
        elif isinstance(d.get("latency_ms"), dict) and _is_num(d["latency_ms"].get("p50")):
            p50 = d["latency_ms"]["p50"]
            if not ci[0] - _SLACK <= p50 <= ci[1] + _SLACK:
                problems.append(f"p50 ({p50}) lies outside its interval p50_ci_ms {ci}")
    level = d.get("ci_level")
    if level is not None and not (_is_num(level) and 0 < level <= 1):
        problems.append(f"ci_level must be a fraction in (0, 1] or null, got {level!r}")
    elif level is not None and ci is None:
        problems.append("ci_level is set but p50_ci_ms is null: a level needs an interval")
    cal = d.get("calibration")
    if cal is not None and not (isinstance(cal, dict) and _is_num(cal.get("call_ms")) and cal["call_ms"] >= 0
                                and isinstance(cal.get("drifted"), bool)):
        problems.append("calibration must be an object with call_ms (a number >= 0) and drifted "
                        "(true or false)")
    step = d.get("clock_step_ms")
    if step is not None and not (_is_num(step) and step > 0):
        problems.append(f"clock_step_ms must be a number > 0 or null, got {step!r}")
    src = d.get("accuracy_source")
    if src is not None and src not in ACCURACY_SOURCES:
        problems.append(f"accuracy_source must be one of {', '.join(ACCURACY_SOURCES)} or null, got {src!r}")
    tail = d.get("tail_ms")
    if tail is not None and not (isinstance(tail, dict) and all(_is_num(tail.get(k)) for k in TAIL_KEYS)):
        problems.append(f"tail_ms must be an object with {', '.join(TAIL_KEYS)}")
    agree = d.get("top1_agreement")
    if agree is not None and not (_is_num(agree) and 0 <= agree <= 1):
        problems.append(f"top1_agreement must be a fraction in [0, 1] or null, got {agree!r}")


def upgrade_result(d: dict[str, Any]) -> dict[str, Any]:
    """A version 1 result with the version 2 keys a single timing session can fill; others as-is.

    Version 1 timed each configuration once, with one call per sample, and copied accuracy from
    the export's host validation: that is what the filled keys say. The device id is derived
    from the stored device facts, so old and new results of one machine share a section only when
    those facts match.
    """
    if d.get("schema_version") != 1:
        return d
    out = dict(d)
    out.setdefault("device_id", device_id(str(d.get("on") or "host"), d.get("device") or {}))
    out.setdefault("rounds", 1)
    out.setdefault("p50_ci_ms", None)
    out.setdefault("ci_level", None)
    out.setdefault("calls_per_sample", (d.get("options") or {}).get("callsPerSample") or 1)
    out.setdefault("clock_step_ms", d.get("timer_resolution_ms"))
    out.setdefault("accuracy_source", None if d.get("accuracy") is None else
                   ("device" if d.get("on") == "browser" and d.get("evaluation") else "export validation"))
    notes = list(d.get("notes") or [])
    notes.append("schema 1: one timing session, no interval")
    out["notes"] = notes
    return out


def device_id(on: str, device: dict[str, Any]) -> str:
    """A readable, stable id for one device: ``<on>[-emulated]-<hostname>-<6 hex>``.

    The hex digest covers the machine id (``/etc/machine-id``, read by ``timing.device_facts``),
    board, CPU, architecture and browser, so two Pis that share the default host name
    ``raspberrypi`` still get two ids, and a browser is a device of its own on its host.
    """
    host = str(device.get("hostname") or "unknown")
    emulated = bool(device.get("emulated"))
    keys = ("machine_id", "board", "cpu_model", "arch", "browser", "browser_version")
    basis = "|".join([on, str(emulated), host, *(str(device.get(k) or "") for k in keys)])
    digest = hashlib.sha256(basis.encode("utf-8")).hexdigest()[:6]
    parts = [on, *(["emulated"] if emulated else []), host, digest]
    return "-".join(_safe(p) for p in parts)


def require_valid(d: Any, what: str = "benchmark result") -> dict[str, Any]:
    """``d`` itself if valid, else ``ResultSchemaError`` naming the result and its problems."""
    problems = validate_result(d)
    if problems:
        name = ""
        if isinstance(d, dict):
            name = " " + "/".join(str(d.get(k)) for k in ("on", "variant", "artifact") if d.get(k))
        raise ResultSchemaError(f"{what}{name} does not follow schema {SCHEMA_VERSION}: "
                                + "; ".join(problems))
    return d


def is_emulated(d: dict[str, Any]) -> bool:
    """Emulated timings are not device latency: reports label them as such."""
    return bool((d.get("device") or {}).get("emulated"))


def result_name(d: dict[str, Any]) -> str:
    """The stable file stem for a result: ``<device id>-<variant>-<artifact dir>-t<threads>``.

    A re-run of the same measurement on the same device gets the same name (and replaces the
    file); two devices, or an emulated Pi and a real one, never overwrite each other. A version 1
    result without a device id falls back to ``<on>[-emulated]``.
    """
    artifact = str(d.get("artifact") or d.get("format") or "artifact").rstrip("/\\")
    leaf = artifact.replace("\\", "/").rsplit("/", 1)[-1]
    threads = d.get("threads")
    if d.get("device_id"):
        parts = [str(d["device_id"])]
    else:
        parts = [str(d.get("on") or "host"), *(["emulated"] if is_emulated(d) else [])]
    parts += [str(d.get("variant") or "model"), leaf, f"t{threads if threads else 'auto'}"]
    return "-".join(_safe(p) for p in parts)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "-" for c in text).strip("-.") or "x"
