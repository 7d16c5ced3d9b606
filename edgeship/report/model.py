"""The report's data: one row per stored result, one device per device id, the whole report.

Results group by ``device_id`` (schema 2; derived from the device facts for schema 1). Two
results that share an id but whose identifying facts differ (host name, machine id, board, CPU,
architecture, cores, browser, emulation) come from two devices: they are never merged. Each gets
its own section, keyed ``<id>#1``, ``<id>#2``, and both sections say so in their ``note``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.result import device_id as derive_device_id
from edge_runtime.result import upgrade_result
from edgeship.report.fmt import EMULATED

REPORT_MD = "report.md"
REPORT_HTML = "report.html"

_QUANT_TOKENS = {"float32", "float16", "dynamic", "int8", "fio"}
# The facts that tell two devices apart (those the device id is derived from, plus cores).
IDENTITY_KEYS = ("hostname", "machine_id", "board", "cpu_model", "arch", "cores", "emulated")
_KIND_ORDER = {"host": 0, "browser": 1, "pi": 2}


@dataclass
class Row:
    """One stored result as the report shows it."""

    device: str  # the section key: the device id (``<id>#n`` when two devices share one)
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
    on: str = "host"
    device_id: str = ""
    rounds: int = 1
    ci: list[float] | None = None  # p50_ci_ms
    ci_level: float | None = None  # its exact coverage (None: no interval, or an older result)
    ci_method: str | None = None
    round_p50: list[float] | None = None
    calls_per_sample: int = 1
    clock_step_ms: float | None = None
    tail: dict[str, Any] | None = None  # tail_ms: single-call samples
    call_drift: float | None = None  # calibration.drift: end-of-session call time vs calibration
    drifted: bool = False  # calibration.drifted: more than 2x, so k may be off
    accuracy_source: str | None = None
    top1_agreement: float | None = None
    samples: list[float] | None = field(default=None, repr=False)
    flags: list[str] = field(default_factory=list)  # sentences, for md / html / csv / json
    codes: list[str] = field(default_factory=list)  # one-letter codes for the terminal table

    @property
    def p50(self) -> float:
        return float(self.latency["p50"])

    @property
    def name(self) -> str:
        """variant/artifact, the key across devices."""
        return f"{self.variant}/{self.artifact}"

    @property
    def short(self) -> str:
        """variant/artifact t<threads>: one configuration."""
        return f"{self.name} t{self.threads or '-'}"

    @property
    def label(self) -> str:
        t = f"{self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else "default threads"
        return f"{self.name}, {t}"

    @property
    def family(self) -> str:
        """The artifact without its quantization: tflite-int8-fio -> tflite, web-int8 -> web."""
        parts = [p for p in self.artifact.split("-") if p not in _QUANT_TOKENS]
        return "-".join(parts) or self.format

    @property
    def p99(self) -> tuple[float, bool]:
        """The p99 to show and whether it is a single-call tail (``tail_ms``, or k = 1 samples)."""
        if self.tail and self.tail.get("p99") is not None:
            return float(self.tail["p99"]), True
        return float(self.latency["p99"]), self.calls_per_sample == 1

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "samples"}
        d["p50_ci_ms"] = d.pop("ci")
        d["tail_ms"] = d.pop("tail")
        d["name"] = self.name
        return d


@dataclass
class Device:
    """Everything measured on one device (a host, a browser on a host, a Pi, an emulated Pi)."""

    key: str
    title: str
    emulated: bool
    facts: dict[str, Any]
    rows: list[Row]
    kind: str = "host"  # the results' ``on``
    device_id: str = ""
    note: str | None = None  # set when another device reports the same id
    verdicts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.key, "device_id": self.device_id, "kind": self.kind, "title": self.title,
                "emulated": self.emulated, "note": self.note, "facts": self.facts,
                "verdicts": self.verdicts, "rows": [r.as_dict() for r in self.rows]}


@dataclass
class Report:
    """A run's benchmark report, before rendering."""

    run_id: str
    run_path: Path
    devices: list[Device]
    compression: list[dict[str, Any]]
    environment: dict[str, Any]
    accuracy_budget: float = 1.0
    zero_rule: float | None = None  # the run's zero-rule test accuracy: nothing at or below it ships
    recommendations: list[dict[str, Any]] = field(default_factory=list)
    fleet: list[dict[str, Any]] = field(default_factory=list)  # per-key summary (report/fleet.py)
    serving: Any = None  # report/serving.py: Serving, or None without serve/*.json
    monitoring: Any = None  # report/monitoring.py: Monitoring, or None without monitor/*.json

    @property
    def rows(self) -> list[Row]:
        return [r for d in self.devices for r in d.rows]

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "run_dir": str(self.run_path),
                "accuracy_budget_points": self.accuracy_budget,
                "recommendations": self.recommendations,
                "zero_rule_accuracy": self.zero_rule,
                "ci_methods": ci_methods(self),
                "devices": [d.as_dict() for d in self.devices], "fleet": self.fleet,
                "serving": self.serving.as_dict() if self.serving else None,
                "monitoring": self.monitoring.as_dict() if self.monitoring else None,
                "compression": self.compression,
                "environment": self.environment,
                "files": {"md": str(self.run_path / REPORT_MD), "html": str(self.run_path / REPORT_HTML)}}


def ci_methods(rep: Report) -> dict[str, int]:
    """Each interval method the results state (``ci_method``), with how many results used it."""
    return dict(Counter(r.ci_method or "not stated" for r in rep.rows).most_common())


# ---------------------------------------------------------------- results -> devices


def result_device_id(r: dict[str, Any]) -> str:
    """The result's ``device_id``; derived from its facts for a result without one."""
    if r.get("device_id"):
        return str(r["device_id"])
    return derive_device_id(str(r.get("on") or "host"), _identity_facts(r))


def _identity_facts(r: dict[str, Any]) -> dict[str, Any]:
    dev = dict(r.get("device") or {})
    for k in ("browser", "browser_version"):
        if r.get(k) and not dev.get(k):
            dev[k] = r[k]
    return dev


def identity(r: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The facts that tell devices apart, as (name, value) pairs."""
    dev = _identity_facts(r)
    pairs = [("on", str(r.get("on") or "host"))]
    pairs += [(k, str(dev.get(k) if dev.get(k) is not None else "")) for k in
              (*IDENTITY_KEYS, "browser", "browser_version")]
    return tuple(pairs)


def group_devices(results: Iterable[dict[str, Any]]) -> list[Device]:
    """One ``Device`` per device id (split when two devices share an id), rows sorted by p50.

    Results are upgraded to schema 2 first (``edge_runtime.result.upgrade_result``), so schema 1
    results show with ``rounds`` 1 and no interval. Flags and verdicts are left empty.
    """
    by_id: dict[str, dict[tuple[tuple[str, str], ...], list[dict[str, Any]]]] = {}
    for raw in results:
        r = upgrade_result(raw)
        by_id.setdefault(result_device_id(r), {}).setdefault(identity(r), []).append(r)
    devices = []
    for did, variants in by_id.items():
        note = _shared_id_note(did, list(variants)) if len(variants) > 1 else None
        for n, rs in enumerate(variants.values(), start=1):
            key = did if len(variants) == 1 else f"{did}#{n}"
            rows = sorted((row_from_result(key, r) for r in rs), key=lambda row: (row.p50, row.name,
                                                                                  row.threads or 0))
            devices.append(Device(key=key, title=device_title(rs[0], did), emulated=rows[0].emulated,
                                  facts=device_facts(rs), rows=rows, kind=str(rs[0].get("on") or "host"),
                                  device_id=did, note=note))
    return sorted(devices, key=lambda d: (_KIND_ORDER.get(d.kind, 9), d.emulated, d.key))


def _shared_id_note(did: str, identities: list[tuple[tuple[str, str], ...]]) -> str:
    """One line: which devices share the id and the facts that differ."""
    differ = [k for k, _ in identities[0] if len({dict(i)[k] for i in identities}) > 1]
    shown = "; ".join(f"{did}#{n}: " + ", ".join(f"{k} {dict(i)[k] or '-'}" for k in differ)
                      for n, i in enumerate(identities, start=1))
    return (f"{len(identities)} devices report id {did} ({shown}); "
            "shown as separate sections, never merged")


def device_title(r: dict[str, Any], did: str | None = None) -> str:
    """``host-devbox-3f2a1c: host devbox, Intel Xeon (x86_64, 2 cores)``, browser and emulation added."""
    dev = _identity_facts(r)
    on = str(r.get("on") or "host")
    where = f"{on} {dev['hostname']}" if dev.get("hostname") else on
    what = ", ".join(str(x) for x in (dev.get("board"), dev.get("cpu_model")) if x) or "unknown CPU"
    cpu = f"({dev.get('arch', '?')}, {dev.get('cores', '?')} cores)"
    title = f"{did or result_device_id(r)}: {where}, {what} {cpu}"
    if dev.get("browser"):
        title += f", {dev['browser']} {dev.get('browser_version') or ''}".rstrip()
    if dev.get("emulated"):
        title += f" - {EMULATED}"
    return title


def row_from_result(device: str, r: dict[str, Any]) -> Row:
    artifact = str(r["artifact"]).rstrip("/").rsplit("/", 1)[-1]
    e2e = r.get("end_to_end_ms") or {}
    ci = r.get("p50_ci_ms")
    return Row(
        device=device, emulated=bool((r.get("device") or {}).get("emulated")),
        variant=str(r.get("variant") or "?"), artifact=artifact, format=r["format"],
        quantize=str(r.get("quantize") or "?"), backend=r["backend"],
        backend_version=str(r.get("backend_version") or "?"), threads=r.get("threads"), runs=r["runs"],
        warmup=r["warmup"], latency=dict(r["latency_ms"]), e2e_p50=e2e.get("p50"),
        init_ms=r.get("init_ms"), first_ms=r.get("first_ms"), peak_rss_mb=r.get("peak_rss_mb"),
        bytes=r.get("bytes"), accuracy=r.get("accuracy"), file=str(r.get("file", "")),
        on=str(r.get("on") or "host"), device_id=result_device_id(r), rounds=int(r.get("rounds") or 1),
        ci=None if ci is None else [float(ci[0]), float(ci[1])],
        ci_level=None if ci is None or r.get("ci_level") is None else float(r["ci_level"]),
        ci_method=r.get("ci_method") or (None if ci is not None else _no_ci_method(r)),
        round_p50=r.get("round_p50_ms"), calls_per_sample=int(r.get("calls_per_sample") or 1),
        clock_step_ms=r.get("clock_step_ms"), tail=r.get("tail_ms"),
        call_drift=(r.get("calibration") or {}).get("drift"),
        drifted=bool((r.get("calibration") or {}).get("drifted")),
        accuracy_source=r.get("accuracy_source"), top1_agreement=r.get("top1_agreement"),
        samples=r.get("samples_ms"),
    )


def _no_ci_method(r: dict[str, Any]) -> str:
    if r.get("schema_version") == 1:
        return "none: schema 1 result (one timing session)"
    return "none: one round"


def device_facts(rs: list[dict[str, Any]]) -> dict[str, Any]:
    dev = _identity_facts(rs[0])
    if dev.get("browser"):
        dev["browser"] = f"{dev['browser']} {dev.pop('browser_version', '') or ''}".strip()
    dev["device_id"] = result_device_id(rs[0])
    dev["backends"] = sorted({f"{r['backend']} {r.get('backend_version') or ''}".strip() for r in rs})
    dev["measured"] = sorted({r.get("measured_at", "")[:16] for r in rs if r.get("measured_at")})
    dev["rounds"] = sorted({int(r.get("rounds") or 1) for r in rs})
    dev["runs"] = sorted({r["runs"] for r in rs})
    dev["warmup"] = sorted({r["warmup"] for r in rs})
    dev["calls_per_sample"] = sorted({int(r.get("calls_per_sample") or 1) for r in rs})
    steps = sorted({r["clock_step_ms"] for r in rs if r.get("clock_step_ms")})
    dev["clock_step_ms"] = steps or None
    dev["accuracy_source"] = sorted({str(r.get("accuracy_source")) for r in rs if r.get("accuracy_source")})
    return dev
