"""What this machine started for the fleet: one JSON file per process, in the fleet folder.

The folder is ``$EDGESHIP_FLEET_DIR`` or ``~/.cache/edgeship/fleet``: ``tracker.json`` for the
tracker, ``devices/<name>.json`` for each device server, and their logs. A pid is trusted only
while ``/proc/<pid>/cmdline`` still names the program we started (a reused pid is never killed).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from edgeship.core.errors import InputError
from edgeship.core.fsutil import write_json_atomic

ENV_DIR = "EDGESHIP_FLEET_DIR"
DEFAULT_PORT = 9190
TRACKER_PROGRAM = "tvm.exec.rpc_tracker"
SERVER_PROGRAM = "edge_runtime.rpc_server"


def fleet_dir() -> Path:
    """``$EDGESHIP_FLEET_DIR`` or ``~/.cache/edgeship/fleet`` (created)."""
    env = os.environ.get(ENV_DIR)
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "edgeship" / "fleet"
    (root / "devices").mkdir(parents=True, exist_ok=True)
    return root


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(path: Path, data: dict[str, Any]) -> None:
    write_json_atomic(path, data)


def device_files() -> list[Path]:
    return sorted((fleet_dir() / "devices").glob("*.json"))


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "-", text).strip("-") or "device"


def parse_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port), or a one-line InputError."""
    host, _, port = str(text).strip().rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"give the tracker as HOST:PORT (e.g. 127.0.0.1:{DEFAULT_PORT}), not {text!r}")
    return host, int(port)


def alive(pid: int | None, program: str) -> bool:
    """Whether ``pid`` runs and is still ``program`` (its command line names it)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return False
    return program in cmdline and ") Z " not in stat  # a zombie has finished


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members


def stop_group(pid: int, program: str, timeout: float = 10.0) -> bool:
    """SIGTERM the process group ``pid`` leads (TVM's workers too), then SIGKILL; returns once
    every member is gone, so its ports are free. False when there was nothing of ours to stop."""
    if not alive(pid, program):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pid), sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(int(pid), os.WNOHANG)  # reap it when we are its parent (tests)
            if not _group_members(int(pid)):
                return True
            time.sleep(0.1)
    return not _group_members(int(pid))
