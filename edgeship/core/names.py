"""Small parsers shared by every floor: comma lists of names, this machine's architecture."""

from __future__ import annotations

import platform
from collections.abc import Sequence


def split_names(value: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` / ``["a", "b,c"]`` / None -> ``["a", "b", "c"]``: how every --variant/--format
    option takes one name, several, or a comma list."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [p for v in value for p in str(v).split(",")]
    return [s.strip() for s in items if s.strip()]


def host_arch() -> str:
    """This machine's CPU architecture as artifacts name it (x86_64, aarch64)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
