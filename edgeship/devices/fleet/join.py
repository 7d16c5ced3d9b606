"""Join a device to the tracker, and leave again: a device server that outlives the command.

Three kinds of device, one server (``python -m edge_runtime.rpc_server``):

- ``local``: this machine, from this Python;
- ``emulated``: the emulated Pi, its runtime venv run under QEMU on this machine (QEMU user
  mode shares the host's network, so the server reaches a tracker on 127.0.0.1);
- ``ssh``: a Pi over SSH, started there with ``setsid nohup`` (the pid is kept to stop it).

Each started server is recorded in ``devices/<name>.json`` of the fleet folder; a join waits
until the tracker lists one more server under the key, so a returned join is a usable device.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import edgeship.core
from edgeship.core.errors import InputError
from edgeship.devices.deploy import open_device
from edgeship.devices.fleet.runtime import install_runtime
from edgeship.devices.fleet.state import (
    SERVER_PROGRAM,
    alive,
    device_files,
    fleet_dir,
    read_state,
    safe_name,
    stop_group,
    write_state,
)
from edgeship.devices.fleet.tracker import FleetError, queue, resolve_tracker
from edgeship.devices.pi.qemu import check_qemu, guest_env

JOIN_TIMEOUT_S = 240.0  # `import tvm` alone takes 20-60 s under QEMU
PUT_GRACE_S = 10.0  # from a server's announcement to its offer: well under a second, even under QEMU
_START_SH = ('cd "$1" && (setsid nohup ../venv/bin/python -m edge_runtime.rpc_server --tracker "$2" '
             '--key "$3" --host 0.0.0.0 > ../rpc-server.log 2>&1 < /dev/null & echo $!)')
_STOP_SH = 'kill -TERM -- -"$1" 2>/dev/null || kill -TERM "$1" 2>/dev/null; exit 0'


def _servers(host: str, port: int, key: str) -> tuple[int, int]:
    """The servers ``key`` lists at the tracker, and how many of them are free."""
    row = next((r for r in queue(host, port) if r["key"] == key), None)
    return (len(row["servers"]), int(row["free"])) if row else (0, 0)


def _joined(now: tuple[int, int], before: tuple[int, int]) -> bool:
    """Whether one more server is listed *and* offered. TVM's server announces itself
    (``UPDATE_INFO``) before it puts itself in the free queue (``PUT``): in between, a bench
    that asks for a device finds one server too few (seen under QEMU on a busy machine)."""
    (servers, free), (servers_before, free_before) = now, before
    return servers > servers_before and (free > free_before or free >= servers)


def _record(name: str, data: dict[str, Any]) -> dict[str, Any]:
    data = {"name": name, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **data}
    write_state(fleet_dir() / "devices" / f"{name}.json", data)
    return data


def _wait_registered(host: str, port: int, key: str, before: tuple[int, int],
                     proc: subprocess.Popen[bytes] | None, log: Path | None,
                     timeout: float = JOIN_TIMEOUT_S) -> None:
    """Until the tracker lists and offers one more server under ``key`` (or the server died).
    A listed server whose offer never shows (another client took a device meanwhile, so the
    free count cannot tell) is taken as joined after ``PUT_GRACE_S``."""
    deadline = time.monotonic() + timeout
    listed_at: float | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log and log.exists() else []
            raise FleetError(f"the device server exited (status {proc.returncode}): "
                             f"{tail[0] if tail else 'no output'}; see {log}")
        now = _servers(host, port, key)
        if _joined(now, before):
            return
        if now[0] > before[0]:
            listed_at = listed_at if listed_at is not None else time.monotonic()
            if time.monotonic() - listed_at > PUT_GRACE_S:
                return
        time.sleep(0.5)
    raise FleetError(f"the device did not register with the tracker {host}:{port} within {timeout:g} s")


def _spawn(argv: list[str], name: str, env: dict[str, str], cwd: Path | str
           ) -> tuple[subprocess.Popen[bytes], Path]:
    log = fleet_dir() / "devices" / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, cwd=cwd,
                                start_new_session=True)
    return proc, log


def _check_free(name: str) -> None:
    st = read_state(fleet_dir() / "devices" / f"{name}.json")
    if st and st.get("kind") != "ssh" and alive(st.get("pid"), SERVER_PROGRAM):
        raise InputError(f"{name} has joined already (pid {st['pid']}): `edgeship fleet leave` it first")


def join_local(key: str, tracker: str | None = None, *, port: int = 9090, name: str | None = None,
               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """This machine as a device of ``key``, served from this Python (``name``: a second one)."""
    host, tport = resolve_tracker(tracker)
    name = safe_name(name or f"local-{key}")
    _check_free(name)
    before = _servers(host, tport, key)

    root = str(Path(edgeship.core.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    env.pop("EDGESHIP_EMULATED", None)
    bind = "127.0.0.1" if host in ("127.0.0.1", "localhost") else "0.0.0.0"
    if bind == "0.0.0.0" and log is not None:
        log("this machine's RPC server listens on every interface (the tracker is not on 127.0.0.1): "
            "it runs the code clients send, so keep to a trusted network")
    argv = [sys.executable, "-m", SERVER_PROGRAM, "--tracker", f"{host}:{tport}", "--key", key,
            "--host", bind, "--port", str(port)]
    proc, log = _spawn(argv, name, env, fleet_dir())
    record = _record(name, {"kind": "local", "key": key, "tracker": f"{host}:{tport}", "pid": proc.pid,
                            "log": str(log)})
    _wait_or_stop(host, tport, key, before, proc, log)
    return record


def _wait_or_stop(host: str, port: int, key: str, before: tuple[int, int], proc: subprocess.Popen[bytes],
                  log: Path) -> None:
    try:
        _wait_registered(host, port, key, before, proc, log)
    except BaseException:
        stop_group(proc.pid, SERVER_PROGRAM)
        raise


def join_emulated(key: str, tracker: str | None = None, *, port: int = 9090,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The emulated Pi as a device of ``key``: its runtime venv, the server under QEMU."""
    host, tport = resolve_tracker(tracker)
    name = safe_name(f"emulated-{key}")
    _check_free(name)
    device = open_device(emulated=True)
    rt = install_runtime(device, log=log)
    before = _servers(host, tport, key)
    host_note = f"{host}:{tport}"
    env = guest_env({"HOME": str(device.home), "EDGESHIP_EMULATED": "1", "EDGESHIP_DEVICE": "pi",
                     "EDGESHIP_BOARD": device.board, "PYTHONDONTWRITEBYTECODE": "1"})
    argv = [check_qemu(), "-cpu", device.cpu, "-L", str(device.rootfs), "../venv/bin/python", "-m",
            SERVER_PROGRAM, "--tracker", host_note, "--key", key, "--host", "127.0.0.1", "--port", str(port)]
    proc, logfile = _spawn(argv, name, env, device.path(rt.bundle_dir))
    record = _record(name, {"kind": "emulated", "key": key, "tracker": host_note, "pid": proc.pid,
                            "log": str(logfile), "board": device.board})
    _wait_or_stop(host, tport, key, before, proc, logfile)
    return record


def join_ssh(target: str, key: str, tracker: str | None = None, *, offline: bool = False,
             log: Callable[[str], None] | None = None, **ssh_options: Any) -> dict[str, Any]:
    """A Pi over SSH as a device of ``key``: runtime venv there, server started with nohup."""
    host, tport = resolve_tracker(tracker)
    if host in ("127.0.0.1", "localhost"):
        raise InputError(f"{target} cannot reach a tracker on {host}: start it with "
                         "`edgeship fleet tracker start --host <this machine's LAN address>` and pass "
                         "--tracker ADDRESS:PORT")
    name = safe_name(f"{target}-{key}")
    device = open_device(target, **ssh_options)
    rt = install_runtime(device, offline=offline, log=log)
    before = _servers(host, tport, key)
    done = device.run(["sh", "-c", _START_SH, "sh", rt.bundle_dir, f"{host}:{tport}", key], timeout=60)
    pid = int(done.stdout.strip().splitlines()[-1])
    record = _record(name, {"kind": "ssh", "key": key, "tracker": f"{host}:{tport}", "pid": pid,
                            "target": target, "ssh": {k: v for k, v in ssh_options.items() if v is not None},
                            "log": f"{rt.remote_dir}/rpc-server.log"})
    try:
        _wait_registered(host, tport, key, before, None, None)
    except BaseException:
        device.run(["sh", "-c", _STOP_SH, "sh", str(pid)], check=False, timeout=60)
        raise
    return record


def joined() -> list[dict[str, Any]]:
    """Every device server this machine started, with ``running`` (local ones checked by pid)."""
    out = []
    for path in device_files():
        st = read_state(path)
        if st:
            st["running"] = alive(st.get("pid"), SERVER_PROGRAM) if st.get("kind") != "ssh" else None
            out.append(st)
    return out


def leave(name: str | None = None, key: str | None = None) -> list[str]:
    """Stop the device servers started here that match ``name`` and ``key`` (all when neither)."""
    left = []
    for st in joined():
        if name and name not in (st["name"], st.get("target"), st.get("kind")):
            continue
        if key and st["key"] != key:
            continue
        if st.get("kind") == "ssh":
            device = open_device(st["target"], **st.get("ssh", {}))
            device.run(["sh", "-c", _STOP_SH, "sh", str(st["pid"])], check=False, timeout=60)
        else:
            stop_group(int(st["pid"]), SERVER_PROGRAM)
        (fleet_dir() / "devices" / f"{st['name']}.json").unlink(missing_ok=True)
        left.append(st["name"])
    return left
