"""Each device's own options for ``edgeship bench --on X``: one typed value per device.

What to measure (variants, formats, threads, rounds) is ``BenchSettings``, the same everywhere;
where and how to reach the device is here. A field is the CLI flag of the same name
(``accept_new_host_key`` is ``--accept-new-host-key``), so a flag given to the wrong device is
refused by name (``for_device``), without the CLI knowing which device takes which flag.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgeship.core.errors import InputError


@dataclass(frozen=True)
class HostOptions:
    """This machine: nothing to say."""

    def label(self) -> str:
        return "host"


@dataclass(frozen=True)
class BrowserOptions:
    """Headless Chromium on this machine."""

    chromium: Path | None = None  # default: the one ./dev installs (Debian's chromium)
    timeout_s: float = 120.0  # per page operation

    def label(self) -> str:
        return "browser"


PI_THREADS = (1,)  # a Pi measures one thread unless asked: the default of `deploy --bench` and `run --pi`


@dataclass(frozen=True)
class PiOptions:
    """A Raspberry Pi over SSH, or the emulated one; what it measures is deployed first."""

    host: str | None = None  # USER@HOST
    emulated: bool = False
    port: int | None = None
    identity: str | None = None
    accept_new_host_key: bool = False

    def label(self) -> str:
        return "pi emulated" if self.emulated else f"pi {self.host}" if self.host else "pi"

    def ssh(self) -> dict[str, Any]:
        """The keyword arguments of ``edgeship.devices.deploy.open_device``."""
        return {"host": self.host, "emulated": self.emulated, "port": self.port, "identity": self.identity,
                "accept_new_host_key": self.accept_new_host_key}


@dataclass(frozen=True)
class FleetOptions:
    """Every free device of one key at TVM's RPC tracker (``edgeship fleet``)."""

    key: str = ""
    tracker: str | None = None  # HOST:PORT; default: the one `edgeship fleet tracker start` started
    split: bool = False  # each artifact once, on whichever device is free

    def __post_init__(self) -> None:
        if not self.key:
            raise InputError("--on fleet needs --key KEY (the key given to `edgeship fleet join`)")

    def label(self) -> str:
        return f"fleet {self.key}"


DeviceOptions = HostOptions | BrowserOptions | PiOptions | FleetOptions
OPTIONS: dict[str, type[DeviceOptions]] = {
    "host": HostOptions, "browser": BrowserOptions, "pi": PiOptions, "fleet": FleetOptions,
}


def for_device(on: str, given: dict[str, Any]) -> DeviceOptions:
    """``on``'s options from the flags the user gave (``None``/``False``: not given); a flag that
    belongs to another device is refused in one line naming both."""
    if on not in OPTIONS:
        raise InputError(f"unknown device '{on}'; choose from {', '.join(OPTIONS)}")
    mine = {f.name for f in fields(OPTIONS[on])}
    said = {k: v for k, v in given.items() if v is not None and v is not False}
    for name in said:
        if name not in mine:
            owner = next((d for d, cls in OPTIONS.items() if name in {f.name for f in fields(cls)}), "?")
            raise InputError(f"--{name.replace('_', '-')} goes with --on {owner}, not --on {on}")
    return OPTIONS[on](**said)
