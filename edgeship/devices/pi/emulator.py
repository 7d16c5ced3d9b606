"""The emulated Raspberry Pi as a ``Device``: aarch64 Debian 12 under QEMU, files in a local home.

Timings measured under emulation are not Pi timings; callers must label them emulated
(``EmulatedPi.emulated`` is True). The parts live beside this module: ``rootfs`` builds the
root filesystem (on first use), ``qemu`` runs its programs, ``edgeship.devices.wheels`` holds
the offline wheels and ``edgeship.devices.cache`` says where all of it is cached.

What makes a venv different here: a process started *by* an emulated program runs natively on
the host (see ``qemu``), so ``python3 -m venv`` gets ``--without-pip`` (ensurepip runs pip in a
child) and pip runs in-process from Debian's wheel (``venv/bin/python PIP_WHEEL/pip install``)
with ``--no-compile``; this machine's Python writes the .pyc files afterwards.
"""

from __future__ import annotations

import compileall
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from edgeship.core.errors import InputError
from edgeship.core.fsutil import atomic_path
from edgeship.devices.cache import ENV_CACHE, cache_dir
from edgeship.devices.pi import (
    RemoteCommandError,
    SyncResult,
    diff_manifests,
    local_manifest,
    remote_path,
)
from edgeship.devices.pi.qemu import (
    DEFAULT_TIMEOUT_S,
    PI_BOARDS,
    check_qemu,
    emulated_cpu,
    qemu_version,
    run_in,
)
from edgeship.devices.pi.rootfs import (
    ROOTFS_STEPS,
    EmulatorError,
    ProgressFactory,
    ensure_rootfs,
    require_rootfs,
    rootfs_info,
)
from edgeship.devices.wheels import download_wheels

# What `edgeship pi emulator setup` (edgeship/cli/pi.py) reads from here.
__all__ = [
    "ENV_CACHE", "ROOTFS_STEPS", "EmulatedPi", "cache_dir", "check_qemu", "download_wheels",
    "ensure_rootfs", "qemu_version", "rootfs_info", "run",
]


def run(
    argv: Sequence[str], *, rootfs: Path | None = None, **options: Any
) -> subprocess.CompletedProcess[str]:
    """Run an aarch64 program of the emulated Pi (``python3``, a venv's ``bin/python``, ...).

    ``qemu.run_in`` (which takes the ``options``: cwd, env, pythonpath, timeout, check, input,
    cpu) on ``rootfs``, by default the cached root filesystem, built on first use.
    """
    if not argv:
        raise InputError("empty command for the emulated Pi")
    return run_in(rootfs or require_rootfs(), argv, **options)


class EmulatedPi:
    """The emulated Pi as a deploy target: the same interface as ``ssh.SshTarget``.

    Its "remote" file system is a home folder on this machine (default: ``home/`` in the
    Pi cache); relative remote paths resolve there, and commands run under QEMU with that
    folder as the working directory, so a deploy issues the same commands to both.
    """

    emulated: ClassVar[bool] = True
    name = "emulated-aarch64"
    # How a venv is made here (see the module docstring): no ensurepip, no compiling under QEMU.
    venv_args: ClassVar[tuple[str, ...]] = ("--without-pip",)
    install_flags: ClassVar[tuple[str, ...]] = ("--no-compile",)

    def __init__(self, home: Path | None = None, *, rootfs: Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, cpu: str | None = None,
                 progress: ProgressFactory | None = None):
        """Open the emulated Pi, setting it up on first use (``require_rootfs(progress)``)."""
        self.rootfs = rootfs or require_rootfs(progress)
        self.home = Path(home) if home is not None else cache_dir() / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.cpu = cpu or emulated_cpu()

    @property
    def board(self) -> str:
        """What the emulated CPU stands for, e.g. ``Raspberry Pi 4 (emulated, QEMU cortex-a72)``.

        A Pi's /proc/device-tree/model names the board; QEMU user mode has none, so the deploy
        reads this instead (it keeps a TVM build for the other Pi model off this one).
        """
        return f"{PI_BOARDS.get(self.cpu, 'aarch64 board')} (emulated, QEMU {self.cpu})"

    @property
    def pip_wheel(self) -> str:
        """Guest path of Debian's pip wheel: run pip in-process as ``python PIP_WHEEL/pip``."""
        info = rootfs_info(self.rootfs) or {}
        if not info.get("pip_wheel"):
            raise EmulatorError("no pip wheel in the emulated Pi: rebuild it with --force")
        return str(info["pip_wheel"])

    def pip_argv(self, venv_python: str) -> list[str]:
        """Debian's pip wheel run in-process by the venv's python (the venv has no pip)."""
        return [venv_python, f"{self.pip_wheel}/pip"]

    def after_install(self, venv_dir: str) -> None:
        """Write the venv's .pyc files with this machine's Python (``precompile``)."""
        self.precompile(venv_dir)

    def path(self, remote: str) -> Path:
        """The host path behind a remote path."""
        return self.home / remote_path(remote)  # an absolute path stays absolute

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run(argv, rootfs=self.rootfs, cwd=self.path(cwd) if cwd else self.home,
                   env={"HOME": str(self.home), **(env or {})},
                   timeout=timeout or self.timeout, check=check, input=input, cpu=self.cpu)

    def sync(self, local_dir: Path, remote_dir: str, *, delete: bool = True) -> SyncResult:
        """Copy changed files (by sha256) into the device folder, each file atomically."""
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise InputError(f"nothing to deploy: {local_dir} is not a folder")
        dest = self.path(remote_dir)
        local = local_manifest(local_dir)
        send, extra = diff_manifests(local, local_manifest(dest))
        result = SyncResult(method="copy", sent=send, unchanged=len(local) - len(send))
        for rel in send:
            with atomic_path(dest / rel) as tmp:
                shutil.copy2(local_dir / rel, tmp)
            result.bytes_sent += (local_dir / rel).stat().st_size
        if delete:
            for rel in extra:
                (dest / rel).unlink()
            result.deleted = extra
        return result

    def sha256_manifest(self, remote_dir: str) -> dict[str, str]:
        return local_manifest(self.path(remote_dir))

    def fetch(self, remote_path: str, local_path: Path) -> Path:
        src = self.path(remote_path)
        if not src.is_file():
            raise RemoteCommandError(f"cannot fetch {remote_path} from the emulated Pi: no file")
        with atomic_path(local_path) as tmp:
            shutil.copy2(src, tmp)
        return Path(local_path)

    def precompile(self, remote_dir: str) -> bool:
        """Byte-compile a device folder (a venv) with this machine's Python, if it is 3.11 too.

        pip under QEMU runs with ``--no-compile`` (compiling there is slow), and without .pyc
        files every emulated start compiles what it imports: ``import tvm`` took 30 s, 18 s
        after this (about 3 s of native work for LiteRT + TVM). The .pyc format depends on
        the Python version only. Returns False when the versions differ (nothing done); a
        file that does not compile (a stray Python 2 test) is skipped, as pip would.
        """
        if sys.version_info[:2] != (3, 11):
            return False

        compileall.compile_dir(self.path(remote_dir), quiet=2, workers=0)
        return True
