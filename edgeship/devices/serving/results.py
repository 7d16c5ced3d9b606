"""``edgeship load``: a sweep of rates against a serving device, stored as ``serve/*.json``.

One file per sweep, ``serve/<device_id>-<model>-<artifact>-w<workers>t<threads>.json`` (measuring
the same thing again replaces it), schema ``SCHEMA_VERSION``:

    {"schema_version": 1, "kind": "serve-sweep", "run_id", "created",
     "device_id", "device": {...facts, "emulated"}, "url", "model", "model_version", "model_sha256",
     "artifact": {"format", "quantize", "path"} | null,
     "layout": {"workers", "threads", "max_queue", "deadline_ms", "front", "max_batch", "batch_timeout_ms"},
     "generator": {"kind": "open-loop poisson", "connections", "timeout_s", "seed", "host"},
     "slo_ms", "duration_s",
     "rates": [{"rate", "sent", "ok", "errors", "error_rate", "rejected_503", "timeouts", "statuses",
                "offered_rps", "achieved_rps", "latency_ms": {"p50","p90","p99","max","mean"} | null,
                "send_lag_ms_p99", "generator_cpu_percent", "server_cpu_cores", "server_cpu_percent",
                "meets_slo"}],
     "knee": {"rate", "achieved_rps", "p99_ms", "error_rate"} | null,
     "notes": [...]}

A report reads ``rates`` for the throughput-latency curve (``achieved_rps`` against
``latency_ms.p99``), ``knee`` and ``layout`` (see ``load_sweeps``).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import platform
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeship.core.errors import InputError, RunError
from edgeship.core.fsutil import read_json, write_json_atomic
from edgeship.core.runstore import RunDir, now_iso
from edgeship.devices.serving.host import HostServer
from edgeship.devices.serving.load import (
    RateResult,
    Target,
    check_sweep,
    http_get,
    knee,
    parse_target,
    run_sweep,
)

SCHEMA_VERSION = 1
SERVE_DIR = "serve"
BODY_SAMPLES = 64  # distinct test inputs cycled through, so no answer is a cache hit
PNG_ABOVE = 32 * 32 * 3  # values per image above which requests carry a PNG, not a nested array


@dataclass
class LoadConfig:
    """A sweep: where to (``url``, or a server started on the host from ``artifact``), how hard."""

    rates: list[float]
    duration_s: float = 5.0
    slo_ms: float = 50.0
    url: str | None = None
    artifact: str = "base/tflite-float32"  # <variant>/<folder> in runs/<id>/exports/, host server only
    workers: int | None = None
    threads: int | None = None
    max_queue: int | None = None
    connections: int = 64
    timeout_s: float = 10.0
    seed: int = 0
    body: Path | None = None  # a JSON request body to send instead of test inputs
    extra: dict[str, Any] = field(default_factory=dict)


def request_bodies(run: RunDir, samples: int = BODY_SAMPLES) -> list[bytes]:
    """``{"instances": [one raw test input]}`` bodies from the run's raw test split."""
    import numpy as np

    npz, rows = run.path / "data" / "test_raw.npz", run.path / "data" / "test_raw.csv"
    if npz.is_file():
        with np.load(npz, allow_pickle=False) as f:
            x = f["x"][:samples]
        if x[0].size > PNG_ABOVE:  # a camera-sized frame travels as a PNG, as clients send it
            spec = (run.manifest.get("data") or {}).get("preprocessing") or {}
            return [json.dumps({"instances": [{"b64": png_base64(xi, spec.get("raw_range"))}]}).encode()
                    for xi in x]
        return [json.dumps({"instances": [xi.tolist()]}).encode() for xi in x]
    if rows.is_file():
        with open(rows, newline="", encoding="utf-8") as f:
            out = []
            for i, row in enumerate(csv.DictReader(f)):
                if i >= samples:
                    break
                row.pop("__label__", None)
                out.append(json.dumps({"instances": [row]}).encode())
        if out:
            return out
    raise RunError(f"run {run.id} has no raw test split (data/test_raw.npz or .csv) to send: "
                   "pass --body FILE")


def png_base64(img: Any, raw_range: Any = None) -> str:
    """One raw image (H x W x C intensities in ``raw_range``) as a base64 PNG, as the server reads it."""
    import numpy as np
    from PIL import Image

    lo, hi = (float(v) for v in (raw_range or (0.0, 255.0)))
    arr = np.asarray(img, dtype=np.float32)
    u8 = np.clip(np.rint((arr - lo) / max(hi - lo, 1e-9) * 255.0), 0, 255).astype(np.uint8)
    if u8.ndim == 3 and u8.shape[-1] == 1:
        u8 = u8[..., 0]
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def read_body(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
        obj = json.loads(data)
    except (OSError, ValueError) as e:
        raise InputError(f"--body {path}: not a readable JSON file ({e})") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("instances"), list):
        raise InputError(f'--body {path}: must be a JSON object {{"instances": [...]}}')
    return [data]


def server_info(target: Target) -> dict[str, Any]:
    """The server's /readyz (device id, facts, layout) and its model's status."""
    status, body = http_get(target, "/readyz")
    if status != 200:
        raise RunError(f"{target.base}/readyz answered {status or 'nothing'}: is the server up and ready?")
    info = json.loads(body)
    status, body = http_get(target, f"/v1/models/{target.model}")
    if status != 200:
        raise InputError(f"{target.base} does not serve a model named {target.model!r} "
                         f"(it serves {', '.join(info.get('models') or []) or 'none'})")
    versions = json.loads(body).get("model_version_status") or [{}]
    info["model"] = versions[0]
    return info


def sweep_document(run: RunDir, target: Target, info: dict[str, Any], results: Sequence[RateResult],
                   config: LoadConfig) -> dict[str, Any]:
    device = dict(info.get("device") or {})
    rates = [r.as_dict(config.slo_ms, device.get("usable_cores") or device.get("cores")) for r in results]
    model = info.get("model") or {}
    notes = []
    ordered = [r["meets_slo"] for r in sorted(rates, key=lambda r: r["rate"])]
    if any(not ordered[i] and any(ordered[i + 1:]) for i in range(len(ordered))):
        notes.append("a rate failed the SLO below a rate that met it: noisy load, measure again")
    for r in rates:
        if r["generator_cpu_percent"] > 90:
            notes.append(f"at {r['rate']:g}/s the load generator used {r['generator_cpu_percent']:.0f} % "
                         "of a core: its figures are a bound, not the server's")
        lag = r.get("send_lag_ms_p99")
        if lag is not None and lag > 0.2 * config.slo_ms:
            notes.append(f"at {r['rate']:g}/s the generator sent late (p99 {lag:.1f} ms after schedule): "
                         "this machine is busy, and its latencies include that")
    if device.get("emulated"):
        notes.append("EMULATED device: these are not device latencies")
    layout = info.get("layout") or {}
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "serve-sweep",
        "run_id": run.id,
        "created": now_iso(),
        "device_id": info.get("device_id") or "unknown",
        "device": device,
        "url": target.url,
        "model": target.model,
        "model_version": model.get("version"),
        "model_sha256": model.get("sha256"),
        "artifact": ({"format": model.get("format"), "quantize": model.get("quantize"),
                      "path": model.get("path")} if model else None),
        "layout": layout,
        "generator": {"kind": "open-loop poisson", "connections": config.connections,
                      "timeout_s": config.timeout_s, "seed": config.seed, "host": platform.node()},
        "slo_ms": config.slo_ms,
        "duration_s": config.duration_s,
        "rates": rates,
        "knee": knee(rates),
        "notes": notes,
    }


def sweep_name(doc: dict[str, Any]) -> str:
    art = doc.get("artifact") or {}
    path = str(art.get("path") or "")
    folder = Path(path).name if path else "remote"
    lay = doc.get("layout") or {}
    raw = f"{doc['device_id']}-{doc['model']}-{folder}-w{lay.get('workers', 'x')}t{lay.get('threads', 'x')}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw)


def save_sweep(run: RunDir, doc: dict[str, Any]) -> Path:
    """Write ``serve/<name>.json`` in a ``serve`` stage (atomic, under the run's lock)."""
    name = sweep_name(doc) + ".json"
    with run.stage("load", {"url": doc["url"], "rates": [r["rate"] for r in doc["rates"]],
                            "device_id": doc["device_id"], "file": f"{SERVE_DIR}/{name}"}) as st:
        write_json_atomic(st.output(f"{SERVE_DIR}/{name}"), doc)
        st.metrics = {"knee_rps": (doc["knee"] or {}).get("rate")}
    return run.path / SERVE_DIR / name


def load_sweeps(run: RunDir) -> list[dict[str, Any]]:
    """Every readable ``serve/*.json`` of this schema, with ``file`` added (for a report)."""
    folder = run.path / SERVE_DIR
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            doc = read_json(path)
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("schema_version") == SCHEMA_VERSION and "rates" in doc:
            out.append({**doc, "file": str(path.relative_to(run.path))})
    return out


def load_run(run: RunDir, config: LoadConfig, *, log: Callable[[str], None] | None = None
             ) -> tuple[dict[str, Any], Path]:
    """Sweep ``config.rates`` against ``config.url`` (or a server started here), save, return."""
    say = log or (lambda _m: None)
    check_sweep(config.rates, config.duration_s, config.slo_ms)
    bodies = read_body(config.body) if config.body else request_bodies(run)
    if config.url:
        target = parse_target(config.url)
        doc = _sweep(run, target, bodies, config, say)
    else:
        exports = run.path / "exports"
        if not (exports / config.artifact / "artifact.json").is_file():
            raise InputError(f"run {run.id} has no export {config.artifact} (exports/{config.artifact}/): "
                             "export it first or pass --artifact VARIANT/FOLDER")
        with HostServer(exports, artifacts=[config.artifact], workers=config.workers,
                        threads=config.threads, max_queue=config.max_queue) as srv:
            say(f"started a server on this machine: {srv.url} (pid {srv.pid})")
            target = parse_target(f"{srv.url}/v1/models/{srv.models[0]}:predict", loopback_only=True)
            doc = _sweep(run, target, bodies, config, say)
    return doc, save_sweep(run, doc)


def _sweep(run: RunDir, target: Target, bodies: list[bytes], config: LoadConfig,
           say: Callable[[str], None]) -> dict[str, Any]:
    info = server_info(target)

    def progress(r: RateResult) -> None:
        d = r.as_dict(config.slo_ms)
        lat = d["latency_ms"] or {}
        say(f"{r.rate:8.1f}/s  ok {d['ok']:6d}/{d['sent']:<6d} 503 {d['rejected_503']:5d}  "
            f"p50 {lat.get('p50', float('nan')):7.2f}  p99 {lat.get('p99', float('nan')):8.2f}  "
            f"max {lat.get('max', float('nan')):8.2f} ms  {'ok' if d['meets_slo'] else 'over SLO'}")

    results = run_sweep(target, bodies, config.rates, config.duration_s, connections=config.connections,
                        timeout_s=config.timeout_s, seed=config.seed, progress=progress)
    return sweep_document(run, target, info, results, config)
