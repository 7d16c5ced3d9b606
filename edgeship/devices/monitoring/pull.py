"""Pull a serving device's request logs (``DIR/logs``) to this machine for ``edgeship monitor``.

The same transport as the deploy (``Device.sha256_manifest`` + ``Device.fetch``: SSH to a Pi,
a local copy for the emulated one): only files whose sha256 changed travel, and the local copy
mirrors the device's folder, rotation included (a file the device deleted goes here too), so a
window is never computed from requests the device no longer holds next to ones it does.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgeship.core.errors import RunError
from edgeship.devices.pi import Device, RemoteCommandError, diff_manifests, local_manifest, remote_path

LOG_FOLDER = "logs"  # beside the bundle: python -m edge_runtime serve's default --log-dir
PULLED = "device-logs"  # RUN/device-logs/<device>/


@dataclass
class Pulled:
    """What a pull did: the local folder, files fetched, files removed, files unchanged."""

    folder: Path
    device: str
    fetched: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0


def device_slug(name: str) -> str:
    """A folder name for a device (``pi@raspberrypi.local:22`` -> ``pi_raspberrypi.local_22``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "device"


def pull_logs(device: Device, remote_dir: str, into: Path) -> Pulled:
    """Mirror ``remote_dir/logs`` of ``device`` into ``into``; ``RunError`` if it has no logs yet."""
    logs = posixpath.join(remote_path(remote_dir), LOG_FOLDER)
    try:
        remote = device.sha256_manifest(logs)
    except (RemoteCommandError, OSError) as e:
        raise RunError(f"no request logs on {device.name} in {logs} ({e}): serve there first "
                       "(edgeship deploy pi RUN --serve) and send it requests") from e
    remote = {k: v for k, v in remote.items() if "/" not in k and not k.startswith(".")}
    if not any(k.endswith(".jsonl") for k in remote):
        raise RunError(f"no request logs on {device.name} yet ({logs} holds no requests-*.jsonl): "
                       "send the server some requests first")
    into.mkdir(parents=True, exist_ok=True)
    send, extra = diff_manifests(remote, local_manifest(into))
    out = Pulled(into, device.name, unchanged=len(remote) - len(send))
    for rel in send:
        device.fetch(posixpath.join(logs, rel), into / rel)
        out.fetched.append(rel)
    for rel in extra:
        (into / rel).unlink(missing_ok=True)
        out.removed.append(rel)
    return out
