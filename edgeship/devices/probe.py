"""Probe the device: one ``python3`` call reports its CPU, Python, venv support and free space.

It also prepares the remote folder (``DIR``, default ``~/edgeship``): created and marked with
``DIR/.edgeship-deploy`` on first use, while a foreign non-empty folder is refused, so a typo in
``--remote-dir`` never deletes anyone's files. The probe also reads the venv's stamp
(``DIR/venv/edgeship-venv.json``), which says whether the installed runtime can be reused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edgeship.devices.errors import DeployError, DevicePythonError, NoSpaceError
from edgeship.devices.pi import (
    Device,
    RemoteCommandError,
    command_failed,
    json_lines,
    last_line,
    remote_path,
)

DEFAULT_REMOTE_DIR = "edgeship"
MARKER = ".edgeship-deploy"
VENV_STAMP = "edgeship-venv.json"
MIN_PYTHON = (3, 10)  # edge_runtime uses X | Y in isinstance
PROBE_TIMEOUT_S = 180.0

# Runs with the device's python3, standard library only. Creates and marks the remote folder
# when it is new, empty or already ours; never touches a foreign one.
_PROBE_PY = r"""
import json, os, platform, shutil, sys
d = sys.argv[1]
out = {"machine": platform.machine(), "python": platform.python_version(),
       "executable": sys.executable, "board": None, "error": None, "free_bytes": None,
       "venv_stamp": None}
try:
    import ensurepip  # Debian ships it in python3-venv
    out["ensurepip"] = True
except ImportError:
    out["ensurepip"] = False
try:
    with open("/proc/device-tree/model", "rb") as f:
        out["board"] = f.read().decode(errors="replace").strip("\0\n ")
except OSError:
    pass
marker = os.path.join(d, sys.argv[2])
if os.path.isdir(d):
    state = "ours" if os.path.exists(marker) else ("foreign" if os.listdir(d) else "empty")
else:
    state = "file" if os.path.lexists(d) else "new"
out["dir_state"] = state
if state in ("new", "empty", "ours"):
    try:
        os.makedirs(d, exist_ok=True)
        with open(marker, "w") as f:
            f.write("Managed by edgeship deploy: bundle/ is replaced by each deploy, "
                    "venv/ is rebuilt when the requirements change.\n")
    except OSError as e:
        out["error"] = "%s: %s" % (e.strerror or e, e.filename or d)
if os.path.isdir(d):
    out["free_bytes"] = shutil.disk_usage(d).free
    stamp = os.path.join(d, "venv", sys.argv[3])
    if os.path.exists(os.path.join(d, "venv", "bin", "python")):
        try:
            with open(stamp) as f:
                out["venv_stamp"] = json.load(f)
        except (OSError, ValueError):
            pass
print(json.dumps(out))
"""


@dataclass(frozen=True)
class DeviceInfo:
    """What the probe found on the device."""

    machine: str
    python: str
    ensurepip: bool
    board: str | None
    dir_state: str  # new | empty | ours | foreign | file
    free_bytes: int | None
    venv_stamp: dict[str, Any] | None

    @property
    def python_minor(self) -> str:
        return ".".join(self.python.split(".")[:2])

    @property
    def pi_model(self) -> str | None:
        """``rpi4`` / ``rpi5`` from the board name (Pi 400 and CM4 count as rpi4), else None."""
        m = re.search(r"raspberry pi (?:compute module )?(\d)", (self.board or "").lower())
        return {"4": "rpi4", "5": "rpi5"}.get(m[1]) if m else None




def probe(device: Device, remote_dir: str) -> DeviceInfo:
    """Check the device can take a deploy into ``remote_dir`` (created and marked if new)."""
    rdir = remote_path(remote_dir)
    data = _run_probe(device, rdir)
    info = DeviceInfo(
        machine=data["machine"], python=data["python"], ensurepip=bool(data["ensurepip"]),
        # QEMU user mode has no device tree: the emulated Pi says which Pi its CPU stands for.
        board=data.get("board") or device.board, dir_state=data["dir_state"],
        free_bytes=data.get("free_bytes"), venv_stamp=data.get("venv_stamp"),
    )
    version = tuple(int(p) for p in info.python.split(".")[:2])
    if version < MIN_PYTHON:
        raise DevicePythonError(
            f"{device.name} has Python {info.python}; edge_runtime needs "
            f"{'.'.join(map(str, MIN_PYTHON))}+ (Raspberry Pi OS Bookworm has 3.11): upgrade the OS"
        )
    if not info.ensurepip and "--without-pip" not in device.venv_args:
        raise DevicePythonError(
            f"no venv support on {device.name} (Python's ensurepip is missing): install it there "
            "with `sudo apt install python3-venv`"
        )
    _check_folder(device.name, rdir, info.dir_state, data.get("error"))
    return info


def _run_probe(device: Device, rdir: str) -> dict[str, Any]:
    """The probe script's JSON report; no python3 on the device is a DevicePythonError."""
    argv = ["python3", "-c", _PROBE_PY, rdir, MARKER, VENV_STAMP]
    try:
        done = device.run(argv, check=False, timeout=PROBE_TIMEOUT_S)
    except RemoteCommandError as e:
        if e.returncode != 127:
            raise
        done = None
    if done is None or done.returncode == 127:
        raise DevicePythonError(
            f"no python3 on {device.name}: install it there with "
            "`sudo apt install python3 python3-venv`"
        )
    if done.returncode != 0:
        raise command_failed(["python3", "-c", "<probe>"], done, device.name)
    found = json_lines(done.stdout)
    if not found:
        raise DeployError(f"the probe on {device.name} printed no JSON result "
                          f"(last line: {last_line(done.stdout) or 'none'!r})")
    return found[-1]


def _check_folder(where: str, rdir: str, state: str, error: str | None) -> None:
    """Refuse a remote folder that is not ours, is a file, or could not be created."""
    if state == "foreign":
        raise DeployError(
            f"{where}:{rdir} exists, is not empty and was not made by edgeship: pass "
            "another --remote-dir (edgeship deletes files it did not send in its own folder)"
        )
    if state == "file":
        raise DeployError(f"{where}:{rdir} is a file: pass another --remote-dir")
    if error:
        if "No space left" in error:
            raise NoSpaceError(f"no space left on {where} to create {rdir}: free some space there")
        raise DeployError(f"cannot create {rdir} on {where} ({error}): pass another --remote-dir")
