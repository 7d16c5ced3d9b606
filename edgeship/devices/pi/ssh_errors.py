"""What ssh's failures mean: one ``SshError`` subclass per fix, read from ssh's stderr."""

from __future__ import annotations

import re
import shlex
from typing import Any

from edgeship.core.errors import EdgeshipError
from edgeship.devices.pi import last_line


class SshError(EdgeshipError):
    """ssh itself failed (before or instead of running the remote command)."""


class HostUnreachableError(SshError):
    """No SSH server answered within the connect timeout."""


class AuthenticationError(SshError):
    """The server answered but refused every key we offered."""


class HostKeyError(SshError):
    """The host key could not be verified."""


class UnknownHostKeyError(HostKeyError):
    """First contact: the host is not in known_hosts and accept-new was not asked for."""


class ChangedHostKeyError(HostKeyError):
    """known_hosts holds a different key for this host: refused, whatever the options."""


def classify_ssh_error(stderr: str, target: Any) -> SshError | None:
    """The SshError for ssh's stderr, or None if ssh connected and the failure is remote."""
    where = target.name
    manual = shlex.join(["ssh", *(["-p", str(target.port)] if target.port else []), target.host])
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "has changed and you have" in stderr:
        # ssh prints the exact removal command (known_hosts file and [host]:port form).
        m = re.search(r"^\s*(ssh-keygen .*-R .*)$", stderr, re.MULTILINE)
        fix = m.group(1).strip() if m else f"ssh-keygen -R {target.host.rpartition('@')[2]}"
        return ChangedHostKeyError(
            f"the host key of {where} has CHANGED since the last connection (device reinstalled, "
            f"or someone in between): if you expect it, remove the old key with `{fix}`, "
            f"then check the new one with `{manual}`"
        )
    if "No " in stderr and "host key is known for" in stderr:
        return UnknownHostKeyError(
            f"{where} is not in known_hosts: check its key with one manual `{manual}`, "
            "or pass --accept-new-host-key to trust it on first contact"
        )
    if "Host key verification failed" in stderr:
        return HostKeyError(
            f"the host key of {where} could not be verified ({last_line(stderr)}): "
            "check known_hosts with `ssh-keygen -F HOST`"
        )
    if "Permission denied" in stderr or "Too many authentication failures" in stderr:
        return AuthenticationError(
            f"{where} refused the login ({last_line(stderr)}): pass --identity KEY, or install "
            f"your public key on the device with `ssh-copy-id {target.host}`"
        )
    unreachable = (
        "Connection refused", "timed out", "No route to host", "Network is unreachable",
        "Could not resolve hostname", "Name or service not known", "Connection closed by",
        "Connection reset", "kex_exchange_identification", "banner exchange",
    )  # fmt: skip
    if any(s in stderr for s in unreachable):
        return HostUnreachableError(
            f"cannot reach {where} over SSH ({last_line(stderr)}; connect timeout "
            f"{target.connect_timeout} s): check the address, that the device is on, and that "
            "sshd runs there"
        )
    return None
