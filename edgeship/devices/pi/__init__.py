"""The Device protocol: what a deploy needs from a Pi, real or emulated, and helpers for both.

A device is something you can sync a folder to, run commands on, fetch files from and build
a venv on. Two devices implement it, so ``edgeship deploy pi`` has one code path and never asks
which device it has: ``ssh.SshTarget`` (a real Pi through the system OpenSSH) and
``emulator.EmulatedPi`` (an aarch64 Debian 12 userland under QEMU on this machine). The deploy
is then: build a bundle folder -> ``device.sync(bundle, remote_dir)`` ->
``device.sha256_manifest(remote_dir)`` to verify -> ``device.run([...], cwd=remote_dir)`` (the
venv: ``venv_args``, ``pip_argv``, ``install_flags``, ``after_install``) ->
``device.fetch(remote_file, local_file)``.

This module stays stdlib-only so importing it costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgeship.core.errors import EdgeshipError, InputError


class RemoteCommandError(EdgeshipError):
    """A command on the device ran but failed, or did not finish in time."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


@dataclass
class SyncResult:
    """What a sync did: ``sent`` lists the files whose content was transferred."""

    method: str  # "rsync", "manifest" (sha256 compare + tar over ssh) or "copy" (emulated)
    sent: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    bytes_sent: int = 0


class Device(Protocol):
    """What the deploy needs from a Pi, real or emulated."""

    @property
    def name(self) -> str:
        """How reports name the device: ``user@host[:port]`` or ``emulated-aarch64``."""
        ...

    @property
    def emulated(self) -> bool:
        """True for QEMU: its timings must never be shown as device latency."""
        ...

    @property
    def board(self) -> str | None:
        """The board, when the device says it other than by /proc/device-tree (QEMU has none)."""
        ...

    @property
    def venv_args(self) -> tuple[str, ...]:
        """Extra words for ``python3 -m venv`` (``--without-pip`` under emulation)."""
        ...

    @property
    def install_flags(self) -> tuple[str, ...]:
        """Extra words for ``pip install`` (``--no-compile`` under emulation)."""
        ...

    def pip_argv(self, venv_python: str) -> list[str]:
        """How to start pip with the venv's interpreter (``VENV_PYTHON -m pip`` on a real Pi)."""
        ...

    def after_install(self, venv_dir: str) -> None:
        """Finish a venv once pip succeeded (the emulated Pi writes its .pyc files here)."""
        ...

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]: ...

    def sync(self, local_dir: Path, remote_dir: str, *, delete: bool = True) -> SyncResult: ...

    def sha256_manifest(self, remote_dir: str) -> dict[str, str]: ...

    def fetch(self, remote_path: str, local_path: Path) -> Path: ...


def local_manifest(root: Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``root`` (symlinks followed)."""
    out: dict[str, str] = {}
    if not root.is_dir():
        return out
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            out[path.relative_to(root).as_posix()] = h.hexdigest()
    return dict(sorted(out.items()))


def diff_manifests(
    local: Mapping[str, str], remote: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """(files to send, remote files that are not in the local folder)."""
    send = sorted(p for p, digest in local.items() if remote.get(p) != digest)
    extra = sorted(p for p in remote if p not in local)
    return send, extra


def last_line(text: str) -> str:
    """The last non-empty line of a tool's output: usually the one that says what failed."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def json_lines(stdout: str) -> list[dict[str, Any]]:
    """Every line of ``stdout`` that is a JSON object (native libraries may print around them)."""
    found = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                found.append(data)
    return found


def remote_path(path: str) -> str:
    """Normalise a remote path: ``~/x`` -> ``x`` (relative to the remote home)."""
    path = str(path)
    if path in ("~", "~/"):
        return "."
    if path.startswith("~/"):
        path = path[2:]
    if not path or "\0" in path or "\n" in path:
        raise InputError(f"bad remote path {path!r}: give a folder name without newlines")
    return path


def command_failed(
    argv: Sequence[str], done: subprocess.CompletedProcess[str], where: str
) -> RemoteCommandError:
    """A one-line error for a remote command that exited non-zero."""
    cmd = short_command(argv)
    if done.returncode == 127:
        return RemoteCommandError(
            f"`{argv[0]}` not found on {where}: install it there", 127, done.stderr
        )
    detail = last_line(done.stderr) or last_line(done.stdout) or "no output"
    return RemoteCommandError(
        f"`{cmd}` failed on {where} (exit {done.returncode}): {detail}",
        done.returncode,
        done.stderr,
    )


def short_command(argv: Sequence[str], words: int = 3, width: int = 40) -> str:
    """``argv`` shortened to one readable line for an error message."""
    shown = []
    for a in list(argv)[:words]:
        a = str(a).splitlines()[0] if str(a).strip() else str(a)
        shown.append(a if len(a) <= width else a[: width - 3] + "...")
    return shlex.join(shown) + (" ..." if len(argv) > words else "")
