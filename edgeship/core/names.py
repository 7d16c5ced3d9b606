"""Small parsers shared by every floor: comma lists of names, this machine's architecture,
whether an address listens on every interface."""

from __future__ import annotations

import ipaddress
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


def is_wildcard(address: str) -> bool:
    """Whether an address listens on every interface (0.0.0.0, ::, and their spellings)."""
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_unspecified
    except ValueError:
        return False


def binds_everywhere(host: str) -> bool:
    """Whether binding ``host`` would listen on every interface: also ``""`` and ``"0"``, which
    ``bind`` takes for 0.0.0.0 before any address exists to check."""
    return host.strip() in ("", "0") or is_wildcard(host.strip())
