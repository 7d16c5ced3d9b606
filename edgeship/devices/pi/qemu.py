"""Run one aarch64 program of a root filesystem under QEMU user-mode emulation, on this machine.

Every command is started as ``qemu-aarch64-static -cpu CPU -L ROOTFS PROGRAM ...``: no
binfmt_misc and no chroot are needed. QEMU 10 (Debian bookworm-backports) is required: Debian
12's QEMU 7.2 runs TVM modules but segfaults inside LiteRT's ``Interpreter(...)``. Programs run
with ``-cpu cortex-a72`` (a Pi 4's CPU; ``$EDGESHIP_PI_CPU=cortex-a76`` for a Pi 5), not QEMU's
default "max" CPU whose SVE and fp16 no Pi has.

What emulation does not do: a process started *by* an emulated program runs natively on the
host (without binfmt_misc the kernel cannot hand it to QEMU, and QEMU's ``-L`` leaves execve
alone). Also, with ``-L`` a path missing from the root filesystem falls back to the host's, so
the guest gets a clean environment (no host ``PIP_*`` or ``PYTHONPATH``) and
``PIP_CONFIG_FILE`` pointing nowhere.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgeship.core.errors import InputError, MissingDependencyError
from edgeship.devices.pi import RemoteCommandError, command_failed, short_command

QEMU = "qemu-aarch64-static"
QEMU_MIN = (10, 0)
QEMU_FIX = "apt-get install -t bookworm-backports qemu-user-static"
# The emulated CPU. QEMU's default ("max") has SVE, fp16 and dotprod, which no Pi has: LiteRT's
# XNNPACK then picks kernels QEMU runs 6x slower (digits float32, test split: 46 s vs 8 s), and a
# build for a Pi 5 would run where a Pi 4 raises SIGILL. A Pi 4's Cortex-A72 avoids both.
ENV_CPU = "EDGESHIP_PI_CPU"
DEFAULT_CPU = "cortex-a72"
PI_BOARDS = {"cortex-a72": "Raspberry Pi 4", "cortex-a76": "Raspberry Pi 5"}
DEFAULT_TIMEOUT_S = 1800.0
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@functools.cache
def check_qemu() -> str:
    """Path of a ``qemu-aarch64-static`` new enough for LiteRT, or a one-line error."""
    path = shutil.which(QEMU)
    if path is None:
        raise MissingDependencyError(f"{QEMU} not found: {QEMU_FIX}")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    if m is None:
        raise MissingDependencyError(f"cannot read the version of {path}: {QEMU_FIX}")
    if (int(m[1]), int(m[2])) < QEMU_MIN:
        raise MissingDependencyError(
            f"{QEMU} is {m[1]}.{m[2]}, LiteRT needs >= {QEMU_MIN[0]} under emulation: {QEMU_FIX}"
        )
    return path


def qemu_version() -> str:
    out = subprocess.run([check_qemu(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\S+)", out)
    return m[1] if m else "unknown"


def emulated_cpu() -> str:
    """The QEMU ``-cpu`` model: ``$EDGESHIP_PI_CPU`` (cortex-a76 for a Pi 5) or cortex-a72 (Pi 4)."""
    cpu = os.environ.get(ENV_CPU) or DEFAULT_CPU
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", cpu):
        raise InputError(f"bad {ENV_CPU} {cpu!r}: give a QEMU CPU model such as cortex-a72")
    return cpu


def guest_env(
    env: Mapping[str, str] | None = None, pythonpath: Sequence[Path | str] = ()
) -> dict[str, str]:
    """A clean environment for the guest: nothing from the host's PIP_*, PYTHON*, QEMU_*."""
    out = {
        "PATH": GUEST_PATH,
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "PIP_CONFIG_FILE": os.devnull,  # else -L falls back to the host's /etc/pip.conf
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    }
    if pythonpath:
        out["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    out.update(env or {})
    return out


def _program(name: str, root: Path, cwd: Path | None) -> str:
    """Where QEMU finds ``name``: a bare name on the guest PATH, else a path (guest first)."""
    if "/" not in name:
        for d in GUEST_PATH.split(":"):
            if (root / d.lstrip("/") / name).exists():
                return str(root / d.lstrip("/") / name)
        raise RemoteCommandError(f"`{name}` not found in the emulated Pi", 127)
    if name.startswith("/") and (root / name.lstrip("/")).exists():
        return str(root / name.lstrip("/"))
    if not (Path(cwd or ".") / name).exists():
        raise RemoteCommandError(f"`{name}` not found in the emulated Pi", 127)
    return name


def run_in(
    root: Path,
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    pythonpath: Sequence[Path | str] = (),
    timeout: float | None = DEFAULT_TIMEOUT_S,
    check: bool = True,
    input: str | None = None,
    cpu: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run an aarch64 program of the root filesystem ``root`` (``python3``, a venv's python...).

    Paths in ``argv`` are host paths (the guest sees the host's files wherever the root
    filesystem has none). ``check`` raises RemoteCommandError with the program's last line.
    ``cpu`` is QEMU's CPU model (default ``emulated_cpu()``).
    """
    if not argv:
        raise InputError("empty command for the emulated Pi")
    argv = [str(a) for a in argv]
    cmd = [check_qemu(), "-cpu", cpu or emulated_cpu(), "-L", str(root),
           _program(argv[0], root, cwd), *argv[1:]]
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=guest_env(env, pythonpath), input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise RemoteCommandError(
            f"`{short_command(argv)}` under emulation did not finish within {timeout:g} s: "
            "raise the timeout (emulation is 10-50x slower than native)"
        ) from e
    done = subprocess.CompletedProcess(argv, proc.returncode, proc.stdout, proc.stderr)
    if check and done.returncode != 0:
        raise command_failed(argv, done, "the emulated Pi")
    return done
