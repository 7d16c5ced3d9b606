"""What a serving device says about itself: health, readiness, models and versions, uptime, and
the last minute's request rate and p99 (``edgeship serve status``)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from edgeship.core.errors import InputError, RunError
from edgeship.devices.serving.load import Target, http_get


def server_target(url: str) -> Target:
    """``http://HOST:PORT`` (any path is ignored) as a target for GETs."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise InputError(f"--url {url!r}: give the server's address, http://HOST:PORT")
    try:
        port = parts.port or 80
    except ValueError as e:
        raise InputError(f"--url {url!r} has a bad port ({e})") from e
    return Target(parts.hostname, port, "/", "")


def server_status(url: str) -> dict[str, Any]:
    """/healthz, /readyz and /v1/models of the server at ``url``; ``RunError`` if it does not answer."""
    t = server_target(url)
    health, _ = http_get(t, "/healthz")
    if health == 0:
        raise RunError(f"nothing answers at {t.base}: is the server running (python -m edge_runtime serve)?")
    ready, body = http_get(t, "/readyz")
    info = json.loads(body) if ready == 200 else {}
    code, body = http_get(t, "/v1/models")
    models = json.loads(body).get("models", []) if code == 200 else []
    return {"url": t.base, "healthy": health == 200, "ready": ready == 200,
            "device_id": info.get("device_id"), "uptime_s": info.get("uptime_s"),
            "layout": info.get("layout"), "recent": info.get("recent"), "models": models}
