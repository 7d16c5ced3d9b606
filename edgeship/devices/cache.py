"""Where the Pi cache lives (``$EDGESHIP_PI_CACHE``), and how builds of its entries take turns.

The cache sits outside git (default ``~/.cache/edgeship/pi-rootfs``) and holds the emulated
Pi's root filesystem and home folder, downloaded wheels, unpacked wheel sets and the bundles a
deploy packs. Each entry is built in a temp folder, stamped with what was built, and renamed
into place only when complete.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path

from edgeship.core.fsutil import locked

ENV_CACHE = "EDGESHIP_PI_CACHE"


def cache_dir() -> Path:
    """The Pi cache: ``$EDGESHIP_PI_CACHE`` or ``~/.cache/edgeship/pi-rootfs``."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeship" / "pi-rootfs"


def cache_lock(name: str) -> AbstractContextManager[None]:
    """Serialise builds of one cache entry across processes (parallel tests, two terminals)."""
    return locked(cache_dir() / f".{name}.lock")
