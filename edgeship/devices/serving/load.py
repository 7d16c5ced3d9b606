"""An open-loop load generator: Poisson arrivals at a set rate, latency from the scheduled send.

As in wrk2 and MLPerf LoadGen's server scenario: request ``i`` is due at ``t_i`` (exponential
gaps at ``rate``), and its latency is ``answered - t_i``, never ``answered - sent``. A server
that stalls therefore shows its queueing in the figures instead of slowing the generator down
(no coordinated omission). Every sweep is bounded: at most ``MAX_RATES`` rates, ``MAX_DURATION_S``
per rate, ``MAX_REQUESTS`` per rate and ``MAX_OUTSTANDING`` requests open at once (past that a
due request counts as a client-side drop, an error, so the bound never hides load).

The HTTP client is a few lines of asyncio over keep-alive connections (no dependency): it only
has to send one POST and read a Content-Length answer, as fast as the generator can.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from edgeship.core.errors import InputError

MAX_RATES = 20
MAX_DURATION_S = 120.0
MAX_RATE = 20_000.0
MAX_REQUESTS = 200_000
MAX_OUTSTANDING = 4096
LOOPBACK_ONLY_ENV = "EDGESHIP_LOAD_LOOPBACK_ONLY"  # tests set it: refuse any target off this machine


@dataclass(frozen=True)
class Target:
    """Where the load goes: ``http://host:port/v1/models/<name>:predict``."""

    host: str
    port: int
    path: str
    model: str

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        return self.base + self.path


def parse_target(url: str, *, loopback_only: bool | None = None) -> Target:
    """A predict URL, checked: http, a host, a port, a ``/v1/models/<name>:predict`` path.

    A base URL (``http://127.0.0.1:8501``) is not enough: the model name must be in the path.
    ``loopback_only`` (default: ``$EDGESHIP_LOAD_LOOPBACK_ONLY=1``) refuses any other host.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise InputError(f"--url {url!r}: give http://HOST:PORT/v1/models/<name>:predict")
    path = parts.path or "/"
    prefix = "/v1/models/"
    name = path[len(prefix):].removesuffix(":predict") if path.startswith(prefix) else ""
    if not path.endswith(":predict") or not name or "/" in name:
        raise InputError(f"--url {url!r} is not a predict URL: end it with /v1/models/<name>:predict")
    try:
        port = parts.port or 80
    except ValueError as e:
        raise InputError(f"--url {url!r} has a bad port ({e})") from e
    if loopback_only is None:
        loopback_only = os.environ.get(LOOPBACK_ONLY_ENV) == "1"
    if loopback_only:
        try:
            infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
            ok = all(ipaddress.ip_address(i[4][0].split("%", 1)[0]).is_loopback for i in infos)
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"--url {url!r} is not on this machine, and ${LOOPBACK_ONLY_ENV}=1 allows "
                             "loopback targets only (127.0.0.1, ::1)")
    return Target(parts.hostname, port, path + (f"?{parts.query}" if parts.query else ""), name)


def check_sweep(rates: Sequence[float], duration_s: float, slo_ms: float) -> None:
    """One-line errors for a sweep that is empty, unbounded or meaningless."""
    if not rates:
        raise InputError("--rates is empty: give request rates per second, e.g. 50,100,200")
    if len(rates) > MAX_RATES:
        raise InputError(f"--rates has {len(rates)} rates; a sweep takes at most {MAX_RATES}")
    for r in rates:
        if not math.isfinite(r) or r <= 0:
            raise InputError(f"--rates: {r!r} is not a positive rate (requests per second)")
        if r > MAX_RATE:
            raise InputError(f"--rates: {r:g}/s is over the bound of {MAX_RATE:g}/s")
        if r * duration_s > MAX_REQUESTS:
            raise InputError(f"--rates {r:g} x --duration {duration_s:g}s is {r * duration_s:.0f} requests; "
                             f"at most {MAX_REQUESTS} per rate: shorten --duration")
    if not math.isfinite(duration_s) or duration_s <= 0 or duration_s > MAX_DURATION_S:
        raise InputError(f"--duration {duration_s:g}s: give 0 < duration <= {MAX_DURATION_S:g}s per rate")
    if not math.isfinite(slo_ms) or slo_ms <= 0:
        raise InputError(f"--slo-ms {slo_ms!r}: give a positive latency in milliseconds")


def parse_rates(text: str) -> list[float]:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(float(part))
        except ValueError:
            raise InputError(f"--rates takes numbers like 50,100,200; got {part!r}") from None
    return out


def parse_duration(text: str | float) -> float:
    """``5s``, ``500ms``, ``1m`` or a number of seconds."""
    s = str(text).strip().lower()
    scale = 1.0
    for suffix, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if s.endswith(suffix):
            s, scale = s[: -len(suffix)], mult
            break
    try:
        value = float(s) * scale
    except ValueError:
        raise InputError(f"--duration {text!r}: give seconds like 5s, 500ms or 1m") from None
    return value


# -- one rate ------------------------------------------------------------------------------


@dataclass
class RateResult:
    """What one rate produced; ``as_dict`` is its entry in a ``serve/*.json`` sweep."""

    rate: float
    duration_s: float
    sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # "200", "503", "timeout", "connect", "overflow"
    ok_latency_s: list[float] = field(default_factory=list)
    send_lag_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    generator_cpu_s: float = 0.0
    server_cpu_s: float | None = None

    def as_dict(self, slo_ms: float, device_cores: int | None = None) -> dict[str, Any]:
        ok = self.statuses.get("200", 0)
        errors = self.sent - ok
        lat = np.asarray(self.ok_latency_s, dtype=np.float64) * 1000.0
        pct = ({k: float(np.percentile(lat, q)) for k, q in (("p50", 50), ("p90", 90), ("p99", 99))}
               | {"max": float(lat.max()), "mean": float(lat.mean())}) if len(lat) else None
        error_rate = errors / self.sent if self.sent else 1.0
        wall = max(self.wall_s, 1e-9)
        out: dict[str, Any] = {
            "rate": self.rate,
            "duration_s": self.duration_s,
            "sent": self.sent,
            "ok": ok,
            "errors": errors,
            "error_rate": error_rate,
            "rejected_503": self.statuses.get("503", 0),
            "timeouts": self.statuses.get("timeout", 0),
            "statuses": dict(sorted(self.statuses.items())),
            "achieved_rps": ok / max(self.duration_s, wall),
            "offered_rps": self.sent / self.duration_s,
            "latency_ms": pct,
            "send_lag_ms_p99": (float(np.percentile(self.send_lag_s, 99) * 1000.0)
                                if self.send_lag_s else None),
            "generator_cpu_percent": 100.0 * self.generator_cpu_s / wall,
            "server_cpu_cores": None if self.server_cpu_s is None else self.server_cpu_s / wall,
            "server_cpu_percent": (None if self.server_cpu_s is None or not device_cores
                                   else 100.0 * self.server_cpu_s / wall / device_cores),
        }
        out["meets_slo"] = bool(pct is not None and pct["p99"] < slo_ms and error_rate < 0.01)
        return out


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer


async def _request(target: Target, conns: asyncio.Queue, opened: list[int], max_conns: int,
                   body: bytes) -> int:
    """One POST; returns the status code. Reuses an idle keep-alive connection when it can."""
    conn: _Conn | None = None
    while conn is None:
        try:
            conn = conns.get_nowait()
        except asyncio.QueueEmpty:
            if opened[0] < max_conns:
                opened[0] += 1
                try:
                    r, w = await asyncio.open_connection(target.host, target.port)
                except OSError:
                    opened[0] -= 1
                    raise
                conn = _Conn(r, w)
            else:
                conn = await conns.get()
    keep = False
    try:
        head = (f"POST {target.path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        conn.writer.write(head + body)
        status_line = await conn.reader.readline()
        if not status_line:
            raise ConnectionResetError("closed")
        status = int(status_line.split(b" ", 2)[1])
        length, keep = 0, True
        while True:
            line = await conn.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "connection" and value.strip().lower() == "close":
                keep = False
        if length:
            await conn.reader.readexactly(length)
        return status
    finally:
        if keep:
            conns.put_nowait(conn)
        else:
            opened[0] -= 1
            conn.writer.close()


async def _run_rate(target: Target, bodies: Sequence[bytes], rate: float, duration_s: float, *,
                    connections: int, timeout_s: float, seed: int) -> RateResult:
    rng = random.Random(seed)
    res = RateResult(rate, duration_s)
    conns: asyncio.Queue = asyncio.Queue()
    opened = [0]
    outstanding: set[asyncio.Task] = set()
    loop = asyncio.get_running_loop()

    async def one(due: float, body: bytes) -> None:
        res.send_lag_s.append(max(0.0, loop.time() - due))
        try:
            status = await asyncio.wait_for(_request(target, conns, opened, connections, body), timeout_s)
            key = str(status)
        except TimeoutError:
            key = "timeout"
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            key = "connect"
        done = loop.time()
        res.statuses[key] = res.statuses.get(key, 0) + 1
        if key == "200":
            res.ok_latency_s.append(done - due)

    cpu0 = time.process_time()
    t0 = loop.time() + 0.01
    due = t0
    i = 0
    end = t0 + duration_s
    while True:
        due += rng.expovariate(rate)
        if due >= end or res.sent >= MAX_REQUESTS:
            break
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        res.sent += 1
        if len(outstanding) >= MAX_OUTSTANDING:
            res.statuses["overflow"] = res.statuses.get("overflow", 0) + 1
            continue
        task = asyncio.ensure_future(one(due, bodies[i % len(bodies)]))
        i += 1
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
    if outstanding:
        await asyncio.wait(list(outstanding), timeout=timeout_s + 1.0)
    res.wall_s = loop.time() - t0
    res.generator_cpu_s = time.process_time() - cpu0
    while not conns.empty():
        conns.get_nowait().writer.close()
    return res


async def _get(target: Target, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    r, w = await asyncio.wait_for(asyncio.open_connection(target.host, target.port), timeout_s)
    try:
        w.write(f"GET {path} HTTP/1.1\r\nHost: {target.host}\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(r.read(), timeout_s)
    finally:
        w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body


def http_get(target: Target, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """A GET on the target's server (``/readyz``, ``/metrics``), or (0, b"") if it cannot connect."""
    try:
        return asyncio.run(_get(target, path, timeout_s))
    except (OSError, TimeoutError, ValueError, IndexError):
        return 0, b""


def server_cpu_seconds(target: Target) -> float | None:
    """``process_cpu_seconds_total`` from the server's /metrics (None if it does not say)."""
    status, body = http_get(target, "/metrics")
    if status != 200:
        return None
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("process_cpu_seconds_total "):
            try:
                return float(line.split()[1])
            except ValueError:
                return None
    return None


def run_sweep(target: Target, bodies: Sequence[bytes], rates: Sequence[float], duration_s: float, *,
              connections: int = 64, timeout_s: float = 10.0, seed: int = 0,
              progress: Callable[[RateResult], None] | None = None) -> list[RateResult]:
    """Each rate in order, for ``duration_s`` each, with the server's CPU read around it."""
    if not bodies:
        raise InputError("no request body to send")
    if connections < 1:
        raise InputError(f"--connections must be at least 1, got {connections}")
    out = []
    for k, rate in enumerate(rates):
        cpu_before = server_cpu_seconds(target)
        res = asyncio.run(_run_rate(target, bodies, rate, duration_s, connections=connections,
                                    timeout_s=timeout_s, seed=seed + k))
        cpu_after = server_cpu_seconds(target)
        if cpu_before is not None and cpu_after is not None:
            res.server_cpu_s = cpu_after - cpu_before
        out.append(res)
        if progress is not None:
            progress(res)
    return out


def knee(rates: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest rate whose p99 is under the SLO with under 1 % errors (``meets_slo``).

    Rates above a failing one still count if they pass: the knee is the highest passing rate,
    as the issue defines it; a sweep whose passing rates are not contiguous is noted by the caller.
    """
    passing = [r for r in rates if r.get("meets_slo")]
    if not passing:
        return None
    best = max(passing, key=lambda r: r["rate"])
    return {"rate": best["rate"], "achieved_rps": best["achieved_rps"],
            "p99_ms": best["latency_ms"]["p99"], "error_rate": best["error_rate"]}
