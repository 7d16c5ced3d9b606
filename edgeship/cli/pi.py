"""``edgeship pi emulator setup``: build (once) the emulated Raspberry Pi and fetch its wheels."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Any

import click

from edgeship.cli.options import json_option
from edgeship.core import console
from edgeship.core.errors import InputError
from edgeship.devices.deploy import PI_FORMATS, requirements_for
from edgeship.devices.pi import emulator as emu
from edgeship.devices.pi.emulator import ENV_CACHE


@click.group()
def pi() -> None:
    """The emulated Raspberry Pi: aarch64 Debian 12 (Raspberry Pi OS Bookworm's base) under QEMU."""


@pi.group()
def emulator() -> None:
    """Set up the emulated Pi used by `edgeship deploy pi --emulated`."""


@emulator.command("setup")
@click.option("--runtime", default="tflite", show_default=True,
              help="Download the aarch64 wheels for these formats now: tflite, tvm, onnx "
                   "(comma list), or none.")
@click.option("--force", is_flag=True, help="Rebuild the root filesystem even if one is cached.")
@json_option
def setup(runtime: str, force: bool, as_json: bool) -> None:
    """Build the aarch64 root filesystem (once) and cache the runtime's wheels.

    Optional: `deploy pi --emulated`, `bench --on pi --emulated` and `run --pi emulated` set the
    emulated Pi up on first use. Idempotent: a complete build and downloaded wheels are reused.
    Everything is cached under $EDGESHIP_PI_CACHE (default ~/.cache/edgeship/pi-rootfs). Needs
    qemu-user-static 10 or newer (Debian 12: `apt-get install -t bookworm-backports
    qemu-user-static`), debootstrap, and fakeroot when not run as root.

    \b
    Examples:
      edgeship pi emulator setup
      edgeship pi emulator setup --runtime tflite,tvm --force
    """
    formats = [f.strip() for f in runtime.split(",") if f.strip() and f.strip() != "none"]
    bad = [f for f in formats if f not in PI_FORMATS]
    if bad:
        raise InputError(f"unknown runtime {bad[0]!r}: use {', '.join(PI_FORMATS)} or none")
    owner = _sudo_owner()
    summary: dict[str, Any] = {"cache": str(emu.cache_dir()), "wheels": {}}
    had = emu.rootfs_info() is not None and not force
    steps = 3 + len(formats) + (0 if had else emu.ROOTFS_STEPS)
    with console.progress("emulator setup", total=steps) as bar:
        summary["qemu"] = emu.check_qemu()
        summary["qemu_version"] = emu.qemu_version()
        bar.update(1, f"QEMU {summary['qemu_version']}")
        root = emu.ensure_rootfs(force=force, progress=bar)
        info = emu.rootfs_info(root) or {}
        summary.update(rootfs=str(root), reused=had, python=info.get("python"),
                       built=info.get("built"))
        bar.update(1, f"root filesystem {'reused' if had else 'built'}: {root}")
        for fmt in formats:
            wheels = emu.download_wheels(requirements_for([fmt]))
            summary["wheels"][fmt] = str(wheels)
            bar.update(1, f"{fmt} wheels: {wheels}")
        done = emu.run(["python3", "-c", "import platform; print(platform.machine(), "
                        "platform.python_version())"], rootfs=root, timeout=300)
        summary["machine"], summary["python"] = done.stdout.split()
        bar.update(1, f"emulated python3: {done.stdout.strip()}")
    if owner is not None:
        _chown_tree(emu.cache_dir(), *owner)
    if as_json:
        console.emit_json(summary)
        return
    console.out.print(
        f"emulated Pi ready: {summary['machine']} Python {summary['python']} under QEMU "
        f"{summary['qemu_version']} ({'cached' if had else 'built'} in {root})\n"
        "next: edgeship deploy pi latest --emulated --bench   (timings are labelled emulated)",
        markup=False,
    )


def _sudo_owner() -> tuple[int, int] | None:
    """Under ``sudo``, build into the invoking user's cache and give it to them afterwards.

    debootstrap needs root, but deploys run as the user, and sudo points HOME at /root: without
    this the user's ``deploy pi --emulated`` would not find what root built.
    """
    uid = os.environ.get("SUDO_UID", "")
    if os.geteuid() != 0 or not uid.isdigit() or int(uid) == 0 or os.environ.get(ENV_CACHE):
        return None
    home = Path(pwd.getpwuid(int(uid)).pw_dir)
    os.environ[ENV_CACHE] = str(home / ".cache" / "edgeship" / "pi-rootfs")
    gid = os.environ.get("SUDO_GID", "")
    return int(uid), int(gid) if gid.isdigit() else pwd.getpwuid(int(uid)).pw_gid


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """Hand ``root`` (and the .cache folders above it that sudo created) to the user."""
    for d in (root.parent.parent, root.parent):  # ~/.cache/edgeship and ~/.cache
        if d.is_dir() and d.stat().st_uid == 0:
            os.lchown(d, uid, gid)
    for dirpath, dirs, files in os.walk(root):
        os.lchown(dirpath, uid, gid)
        for name in (*dirs, *files):
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or name in files:
                os.lchown(path, uid, gid)
