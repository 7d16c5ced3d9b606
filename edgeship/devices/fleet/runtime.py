"""The device side of a fleet: ``edge_runtime`` and its runtime venv, with the deploy's steps.

No run is involved (a device joins before anything is measured), so this packs a bundle of
``edge_runtime`` and ``requirements.txt`` (plus the wheels, offline) and then takes the
deploy's own steps: ``probe``, ``device.sync``, ``install.verify``, ``install.install_venv``
(reused while its stamp lists the requirements). Layout: ``DIR/bundle``, ``DIR/venv``; the
server runs from ``DIR/bundle`` as ``../venv/bin/python -m edge_runtime.rpc_server``.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import edge_runtime
from edgeship.core.names import split_names
from edgeship.devices import wheels
from edgeship.devices.bundle import requirements_for
from edgeship.devices.cache import cache_dir
from edgeship.devices.install import install_venv, venv_reusable, verify
from edgeship.devices.pi import Device, local_manifest, remote_path
from edgeship.devices.probe import DeviceInfo, probe

FLEET_REMOTE_DIR = "edgeship-fleet"  # apart from the deploy's ~/edgeship: a deploy never swaps it away
DEFAULT_RUNTIMES = ("tflite", "tvm")


@dataclass
class DeviceRuntime:
    """Where the runtime is on the device, and what the probe saw."""

    remote_dir: str
    info: DeviceInfo
    requirements: list[str]
    venv: str  # installed | reused

    @property
    def bundle_dir(self) -> str:
        return posixpath.join(self.remote_dir, "bundle")


def _pack(dest: Path, requirements: Sequence[str], wheel_dir: Path | None) -> None:
    """``edge_runtime``'s modules and requirements files, ``requirements.txt``, the wheels."""
    (dest / "edge_runtime").mkdir(parents=True)
    for f in sorted(Path(edge_runtime.__file__).parent.iterdir()):
        if f.is_file() and (f.suffix == ".py" or re.fullmatch(r"requirements-\w+\.txt", f.name)):
            shutil.copyfile(f, dest / "edge_runtime" / f.name)
    (dest / "requirements.txt").write_text("# edge_runtime as a fleet device\n" + "\n".join(requirements)
                                           + "\n", encoding="utf-8")
    if wheel_dir is not None:
        wheels.link_wheels(wheel_dir, dest / "wheels", requirements)


def install_runtime(
    device: Device, *, remote_dir: str = FLEET_REMOTE_DIR, runtimes: str | Sequence[str] = DEFAULT_RUNTIMES,
    offline: bool = False, log: Callable[[str], None] | None = None,
) -> DeviceRuntime:
    """Probe, pack, send, verify and install (or reuse) the runtime venv on ``device``."""
    say = log or (lambda _m: None)
    rdir = remote_path(remote_dir)
    offline = offline or device.emulated  # the emulated Pi installs from shipped wheels
    requirements = requirements_for(split_names(runtimes) or list(DEFAULT_RUNTIMES))
    info = probe(device, rdir)
    wheel_dir = (wheels.download_wheels(requirements, arch=info.machine, python=info.python_minor)
                 if offline else None)
    bundles = cache_dir() / "bundles"
    bundles.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleet-", dir=bundles) as tmp:
        bundle = Path(tmp) / "bundle"
        _pack(bundle, requirements, wheel_dir)
        sync = device.sync(bundle, posixpath.join(rdir, "bundle"), delete=True)
        verify(device, posixpath.join(rdir, "bundle"), local_manifest(bundle))
    say(f"{device.name}: sent {len(sync.sent)} file(s), {sync.unchanged} unchanged")
    reuse = venv_reusable(info, requirements)
    if not reuse:
        say(f"{device.name}: installing the runtime ({' '.join(requirements)})")
        install_venv(device, rdir, requirements, python=info.python, offline=offline, machine=info.machine)
    return DeviceRuntime(remote_dir=rdir, info=info, requirements=requirements,
                         venv="reused" if reuse else "installed")
