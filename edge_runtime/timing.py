"""The one timing loop, usable on any device: the same numbers for every backend.

Method (comparable with TFLite's ``benchmark_model`` and ``onnxruntime_perf_test``):

* inputs are built, preprocessed, quantised and bound to the runtime before timing starts;
* warm-up calls run first and are discarded;
* the garbage collector is paused during the timed loop (after a full collection) so a
  collection does not land inside one sample;
* ``time.perf_counter_ns`` (monotonic) is read around each call, nothing else inside the loop;
* "invoke" times only the runtime's own call; "end to end" times ``EdgeModel.predict`` on raw
  input (preprocess + quantise + invoke + dequantise + argmax/labels).

Where (``on`` in the result, see ``device_kind``): an explicit ``on=`` argument, else
``$EDGESHIP_DEVICE`` (host, pi or browser), else "pi" when ``/proc/device-tree/model`` names a
Raspberry Pi, else "host". ``$EDGESHIP_EMULATED=1`` marks the device facts ``emulated``.

Statistics: ``std`` is the population standard deviation (ddof=0); percentiles use linear
interpolation between closest ranks, ``rank = p/100 * (n-1)``, the default method of
``numpy.percentile``.
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge_runtime.errors import InputError
from edge_runtime.result import ON_CHOICES

PERCENTILES = (50, 90, 95, 99)
PERCENTILE_METHOD = "linear interpolation, rank = p/100*(n-1) (numpy.percentile default)"
EMULATED_ENV = "EDGESHIP_EMULATED"
DEVICE_ENV = "EDGESHIP_DEVICE"


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation, as ``numpy.percentile``."""
    if not values:
        raise ValueError("percentile of an empty list")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {p}")
    data = sorted(values)
    rank = p / 100 * (len(data) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (rank - lo))


def summarize_ms(samples_ns: Sequence[int]) -> dict[str, float]:
    """Nanosecond samples -> ``{mean, std, min, p50, p90, p95, p99, max}`` in milliseconds."""
    if not samples_ns:
        raise ValueError("no timing samples")
    ms = [s / 1e6 for s in samples_ns]
    n = len(ms)
    mean = sum(ms) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in ms) / n)
    out = {"mean": mean, "std": std, "min": min(ms)}
    for p in PERCENTILES:
        out[f"p{p}"] = percentile(ms, p)
    out["max"] = max(ms)
    return {k: round(v, 6) for k, v in out.items()}


def time_calls(fn: Callable[[], Any], runs: int, warmup: int) -> list[int]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times timed; nanoseconds per call."""
    if runs < 1:
        raise InputError(f"runs must be at least 1, got {runs}")
    if warmup < 0:
        raise InputError(f"warmup must be 0 or more, got {warmup}")
    for _ in range(warmup):
        fn()
    samples = [0] * runs
    clock = time.perf_counter_ns
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for i in range(runs):
            t0 = clock()
            fn()
            samples[i] = clock() - t0
    finally:
        if was_enabled:
            gc.enable()
    return samples


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux: ``VmHWM`` of /proc/self/status, the peak of this program's own address space.
    ``getrusage``'s ``ru_maxrss`` is not used there because Linux carries it across ``exec``: a
    benchmark started from a large process (a training run holding TensorFlow) would report
    that process's peak. Elsewhere ``ru_maxrss`` (KiB, bytes on macOS).
    """
    status = _read("/proc/self/status") or ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 3)


# Arm "CPU part" ids seen on Raspberry Pis, for /proc/cpuinfo files without a model name.
_ARM_PARTS = {"0xd03": "Cortex-A53", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76", "0xb76": "ARM1176"}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip("\x00\n ")
    except OSError:
        return None


def cpu_model() -> str:
    info = _read("/proc/cpuinfo") or ""
    fields: dict[str, str] = {}
    for line in info.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    for key in ("model name", "Model", "Hardware", "cpu model"):
        if fields.get(key):
            return fields[key]
    part = fields.get("CPU part")
    if part:
        return _ARM_PARTS.get(part.lower(), f"Arm CPU part {part}")
    return platform.processor() or platform.machine() or "unknown"


def os_name() -> str:
    release = _read("/etc/os-release") or ""
    for line in release.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return f"{platform.system()} {platform.release()}".strip()


def machine_id() -> str | None:
    """A short digest of the OS's machine id: tells apart two devices of the same host name.

    Only a digest is recorded, since the id itself is meant to stay on the machine.
    """
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        text = _read(path)
        if text:
            return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return None


def device_facts() -> dict[str, Any]:
    """What the numbers were measured on; ``emulated`` comes from $EDGESHIP_EMULATED=1."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "hostname": platform.node() or None,
        "machine_id": machine_id(),
        "cpu_model": cpu_model(),
        "board": _read("/proc/device-tree/model"),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "arch": platform.machine(),
        "os": os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "emulated": os.environ.get(EMULATED_ENV) == "1",
    }


def device_kind(on: str | None = None) -> str:
    """``host``, ``pi`` or ``browser`` for the result's ``on``; see the module docstring."""
    kind = on or os.environ.get(DEVICE_ENV) or None
    if kind is None:
        board = _read("/proc/device-tree/model") or ""
        kind = "pi" if "raspberry pi" in board.lower() else "host"
    kind = kind.strip().lower()
    if kind not in ON_CHOICES:
        raise InputError(f"device kind must be one of {', '.join(ON_CHOICES)}, got {kind!r} "
                         f"(from --on or ${DEVICE_ENV})")
    return kind
