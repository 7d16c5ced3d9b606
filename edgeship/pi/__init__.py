"""The Raspberry Pi side: a device is something you can sync a folder to, run commands on and
fetch files from.

Two devices implement the same small interface, so ``edgeship deploy pi`` has one code path:
``ssh.SshTarget`` (a real Pi through the system OpenSSH) and ``emulator.EmulatedPi`` (an aarch64
Debian 12 userland under QEMU on this machine). The deploy is then: build a bundle folder ->
``device.sync(bundle, remote_dir)`` -> ``device.sha256_manifest(remote_dir)`` to verify ->
``device.run([...], cwd=remote_dir)`` -> ``device.fetch(remote_file, local_file)``.

This module stays stdlib-only so importing it costs nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgeship.errors import EdgeshipError


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

    name: str
    emulated: bool

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
