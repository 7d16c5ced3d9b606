"""The benchmark result schema: one JSON object per (artifact, device, thread count).

Every backend and device (host, headless browser, Raspberry Pi, emulated Pi) produces this
object, so reports, scripts and later issues read one shape. It lives in ``edge_runtime``
(standard library only) because devices produce it: ``python -m edge_runtime bench --json``
prints one. The names below are fixed; adding an optional key is compatible, renaming or
changing a meaning bumps ``SCHEMA_VERSION``.

Required keys (``None`` allowed where marked ``| null``)::

    schema_version  1
    on              "host" | "browser" | "pi"      where it ran (see timing.device_kind)
    model           str | null                    registry name, e.g. "cnn"
    variant         str | null                    "base" or a compression variant
    artifact        str                           the artifact folder (path or name, e.g. tflite-int8)
    format          "tflite" | "onnx" | "tvm" | "web"
    quantize        str | null                    float32, float16, dynamic, int8
    backend         str                           ai-edge-litert, onnxruntime, apache-tvm, onnxruntime-web
    backend_version str | null
    threads         int >= 1 | null               null: the runtime's default
    warmup          int >= 0                      discarded calls
    runs            int >= 1                      timed calls
    latency_ms      {mean, std, min, p50, p90, p95, p99, max}   invoke alone, milliseconds
    init_ms         float | null                  load (sha256 check + runtime init)
    first_ms        float | null                  first inference after load
    peak_rss_mb     float | null                  peak resident memory of the measuring process
    bytes           int | null                    model file size
    accuracy        float in [0, 1] | null        test accuracy the export validation measured
    device          {cpu_model, cores, arch, os, python, governor, emulated: bool, ...}

Optional: ``end_to_end_ms`` (same keys as latency_ms: preprocess + invoke + postprocess),
``samples_ms`` (the raw invoke timings, for distribution plots), ``batch``, ``run_id``,
``target``, ``percentile_method``, ``measured_at`` (ISO-8601 UTC), ``label``, ``notes``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

SCHEMA_VERSION = 1
ON_CHOICES = ("host", "browser", "pi")
FORMATS = ("tflite", "onnx", "tvm", "web")
LATENCY_KEYS = ("mean", "std", "min", "p50", "p90", "p95", "p99", "max")
DEVICE_KEYS = ("cpu_model", "cores", "arch", "os", "python", "governor", "emulated")
REQUIRED = (
    "schema_version", "on", "model", "variant", "artifact", "format", "quantize", "backend",
    "backend_version", "threads", "warmup", "runs", "latency_ms", "init_ms", "first_ms",
    "peak_rss_mb", "bytes", "accuracy", "device",
)
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
    missing = [k for k in REQUIRED if k not in d]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if "schema_version" in d and d["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version must be {SCHEMA_VERSION}, got {d['schema_version']!r}")
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
    samples = d.get("samples_ms")
    if samples is not None and not (
        isinstance(samples, list) and all(_is_num(v) and v >= 0 for v in samples)
    ):
        problems.append("samples_ms must be a list of numbers >= 0")
    return problems


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
    """The stable file stem for a result: ``<on>[-emulated]-<variant>-<artifact dir>-t<threads>``.

    A re-run of the same measurement gets the same name (and replaces the file); an emulated Pi
    never overwrites a real one.
    """
    artifact = str(d.get("artifact") or d.get("format") or "artifact").rstrip("/\\")
    leaf = artifact.replace("\\", "/").rsplit("/", 1)[-1]
    threads = d.get("threads")
    parts = [str(d.get("on") or "host")]
    if is_emulated(d):
        parts.append("emulated")
    parts += [str(d.get("variant") or "model"), leaf, f"t{threads if threads else 'auto'}"]
    return "-".join(_safe(p) for p in parts)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "-" for c in text).strip("-.") or "x"
