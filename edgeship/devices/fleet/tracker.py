"""The tracker: TVM's ``python -m tvm.exec.rpc_tracker`` on this machine, and asking it things.

Started detached (its own session, so it outlives the command) on exactly one port, bound to
127.0.0.1 unless asked otherwise: anyone who reaches a tracker can take its devices, and a TVM
RPC server runs whatever code a client uploads. Every conversation with a tracker has a
timeout: a tracker that does not answer is a one-line error, never a hang.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from edgeship.core.errors import EdgeshipError, InputError
from edgeship.core.names import binds_everywhere
from edgeship.devices.fleet.state import (
    DEFAULT_PORT,
    TRACKER_PROGRAM,
    alive,
    fleet_dir,
    parse_addr,
    read_state,
    stop_group,
    write_state,
)

CONNECT_TIMEOUT_S = 5.0
START_TIMEOUT_S = 60.0
T = TypeVar("T")


class FleetError(EdgeshipError):
    """The tracker or a device of the fleet failed, or is missing."""


@dataclass
class TrackerInfo:
    host: str
    port: int
    pid: int | None
    running: bool
    log: str | None = None

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"


def with_timeout(fn: Callable[[], T], timeout: float, what: str) -> T:
    """``fn()`` in a daemon thread; a FleetError naming ``what`` if it takes over ``timeout`` s.

    TVM's tracker and RPC calls block without a deadline of their own; the abandoned thread
    ends with its socket.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise FleetError(f"{what}: no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _state_path() -> Any:
    return fleet_dir() / "tracker.json"


def tracker_status() -> TrackerInfo | None:
    """The tracker this machine started (running or not), or None."""
    st = read_state(_state_path())
    if not st:
        return None
    return TrackerInfo(host=st["host"], port=int(st["port"]), pid=st.get("pid"),
                       running=alive(st.get("pid"), TRACKER_PROGRAM), log=st.get("log"))


def start_tracker(host: str = "127.0.0.1", port: int = DEFAULT_PORT, warn: Callable[[str], None] | None = None
                  ) -> TrackerInfo:
    """Start ``python -m tvm.exec.rpc_tracker`` detached on ``host:port``; returns once it answers."""
    if not 0 < port < 65536:
        raise InputError(f"port must be 1-65535, got {port}")
    current = tracker_status()
    if current and current.running:
        raise InputError(f"a tracker started here already runs on {current.addr} (pid {current.pid}): "
                         "`edgeship fleet tracker stop` first")
    if binds_everywhere(host) and warn is not None:
        warn(f"the tracker listens on every interface ({host!r}): anyone on the network can take its "
             "devices, and a device's RPC server runs the code it is sent; use a trusted network")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise InputError(f"cannot listen on {host}:{port} ({e.strerror}): choose --port") from None
    log = fleet_dir() / "tracker.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", TRACKER_PROGRAM, "--host", host, "--port", str(port),
             "--port-end", str(port + 1)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, cwd=fleet_dir())
    info = TrackerInfo(host=host, port=port, pid=proc.pid, running=True, log=str(log))
    write_state(_state_path(), {"host": host, "port": port, "pid": proc.pid, "log": str(log),
                                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FleetError(f"the tracker exited at start (status {proc.returncode}); see {log}")
        try:
            summary(_connect_host(host), port, timeout=2)
            return info
        except FleetError:
            time.sleep(0.3)
    stop_group(proc.pid, TRACKER_PROGRAM)
    raise FleetError(f"the tracker did not answer on {host}:{port} within {START_TIMEOUT_S:g} s; see {log}")


def _connect_host(host: str) -> str:
    return "127.0.0.1" if binds_everywhere(host) else host


def stop_tracker() -> TrackerInfo | None:
    """Stop the tracker this machine started; None when none runs."""
    info = tracker_status()
    if info is None:
        return None
    stopped = stop_group(int(info.pid or 0), TRACKER_PROGRAM)
    deadline = time.monotonic() + 10
    while _listening(info.host, info.port) and time.monotonic() < deadline:
        time.sleep(0.1)  # the kernel closes a killed process's sockets a moment after it is gone
    _state_path().unlink(missing_ok=True)
    info.running = False
    return info if stopped else None


def _listening(host: str, port: int) -> bool:
    """Whether the port is still taken (a bind test: connecting to a free port can self-connect)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def resolve_tracker(addr: str | None) -> tuple[str, int]:
    """``--tracker HOST:PORT``, else the tracker started here, else a one-line error."""
    if addr:
        return parse_addr(addr)
    info = tracker_status()
    if info is None or not info.running:
        raise InputError("no tracker: start one with `edgeship fleet tracker start`, or pass "
                         "--tracker HOST:PORT")
    return _connect_host(info.host), info.port


def summary(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> dict[str, Any]:
    """The tracker's ``summary()``: ``queue_info`` {key: {free, pending}} and ``server_info``."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise FleetError(f"no tracker answers at {host}:{port} ({e.strerror or e}): "
                         "`edgeship fleet tracker start`, or check --tracker") from None

    from tvm import rpc  # before the clock starts: importing TVM takes seconds on a busy machine

    def ask() -> dict[str, Any]:
        tracker = rpc.connect_tracker(host, port)
        try:
            return tracker.summary()
        finally:
            tracker.close()

    return with_timeout(ask, timeout + 5, f"the tracker at {host}:{port}")


def queue(host: str, port: int) -> list[dict[str, Any]]:
    """One row per key: ``{"key", "free", "pending", "servers": [addr, ...]}``."""
    info = summary(host, port)
    rows: dict[str, dict[str, Any]] = {}
    for key, q in (info.get("queue_info") or {}).items():
        rows[key] = {"key": key, "free": int(q.get("free", 0)), "pending": int(q.get("pending", 0)),
                     "servers": []}
    for server in info.get("server_info") or []:
        key = str(server.get("key", "")).removeprefix("server:")
        addr = server.get("addr") or ["?", "?"]
        rows.setdefault(key, {"key": key, "free": 0, "pending": 0, "servers": []})
        rows[key]["servers"].append(f"{addr[0]}:{addr[1]}")
    for row in rows.values():
        row["busy"] = max(0, len(row["servers"]) - row["free"])
    return sorted(rows.values(), key=lambda r: r["key"])


def free_devices(host: str, port: int, key: str) -> int:
    """Free devices of ``key``; zero is a one-line error naming ``fleet join``."""
    row = next((r for r in queue(host, port) if r["key"] == key), None)
    if row is None or row["free"] < 1:
        busy = f" ({row['busy']} busy)" if row else ""
        raise FleetError(f"no free device with key {key!r} at the tracker {host}:{port}{busy}: "
                         f"join one with `edgeship fleet join USER@HOST --key {key}` "
                         f"(or --emulated / --local)")
    return int(row["free"])
