"""``edgeship load --replay FILE``: send a stream of recorded inputs to a server, in order.

For monitoring demos and tests (issue 20): the run's test split, or a shifted copy of it, sent
one instance per request in the file's order (a sweep cycles and shuffles arrival times; a
replay must keep the order so windows line up with the stream), optionally at a fixed rate, and
optionally with each answer's true label posted back as feedback (``:feedback``), so the device
can report live accuracy. Bounded: at most ``MAX_REPLAY`` requests, each with a timeout.

A stream file is a ``.npz`` with ``x`` (raw inputs: rows of feature values in the order of the
run's columns, or raw images) and optionally ``y`` (true labels, class indices or names), as
``RUN/data/test_raw.npz``; or JSON lines ``{"instance": ..., "label": ...}``.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.errors import InputError, RunError
from edgeship.devices.serving.load import parse_target

MAX_REPLAY = 100_000
TIMEOUT_S = 30.0


@dataclass
class ReplayResult:
    sent: int = 0
    ok: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    feedback: int = 0
    seconds: float = 0.0
    versions: dict[str, int] = field(default_factory=dict)


def read_stream(path: Path, labels: Sequence[str] | None = None) -> tuple[list[Any], list[str | None]]:
    """(instances, true labels or None) from a stream file (see the module docstring)."""
    if not path.is_file():
        raise InputError(f"--replay {path}: no such file; give a .npz with x[, y] or a .jsonl stream")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                if "x" not in npz:
                    raise InputError(f"--replay {path}: the .npz has no 'x' array (the raw inputs)")
                x = npz["x"]
                y = npz.get("y", None)
            instances = [_jsonable(row) for row in x]
            truth = [None] * len(instances) if y is None else [_label(v, labels) for v in y]
        else:
            instances, truth = [], []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                obj = json.loads(line)
                if not isinstance(obj, dict) or "instance" not in obj:
                    raise InputError(f'--replay {path}:{n}: each line must be {{"instance": ..., '
                                     '"label": ...}')
                instances.append(obj["instance"])
                truth.append(None if obj.get("label") is None else _label(obj["label"], labels))
    except (OSError, ValueError) as e:
        raise InputError(f"--replay {path}: not a readable stream ({e})") from e
    if not instances:
        raise InputError(f"--replay {path}: the stream is empty")
    if len(instances) > MAX_REPLAY:
        raise InputError(f"--replay {path}: {len(instances)} inputs, at most {MAX_REPLAY} per replay")
    return instances, truth


def _jsonable(row: np.ndarray) -> Any:
    return row.item() if row.ndim == 0 else row.tolist()


def _label(value: Any, labels: Sequence[str] | None) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if labels and isinstance(value, int) and 0 <= value < len(labels):
        return str(labels[value])
    return str(value)


def replay(url: str, instances: Sequence[Any], truth: Sequence[str | None] = (), *, rate: float | None = None,
           feedback: bool = False, log: Callable[[str], None] | None = None) -> ReplayResult:
    """Send ``instances`` one per request, in order, to ``url`` (a ``:predict`` URL); with
    ``feedback``, post each known true label for the request id the server answered with."""
    target = parse_target(url)
    if rate is not None and not (0 < rate <= 10_000):
        raise InputError(f"--replay-rate {rate}: use a rate in (0, 10000] requests/s")
    conn = http.client.HTTPConnection(target.host, target.port, timeout=TIMEOUT_S)
    out = ReplayResult()
    feedback_path = target.path.rsplit(":", 1)[0] + ":feedback"
    t0 = time.monotonic()
    try:
        for i, instance in enumerate(instances):
            if rate:
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            status, head, body = _post(conn, target.path, {"instances": [instance]})
            out.sent += 1
            out.statuses[str(status)] = out.statuses.get(str(status), 0) + 1
            if status != 200:
                continue
            out.ok += 1
            version = str(json.loads(body).get("model_version"))
            out.versions[version] = out.versions.get(version, 0) + 1
            label = truth[i] if i < len(truth) else None
            if feedback and label is not None and head.get("x-request-id"):
                fstatus, _, _ = _post(conn, feedback_path,
                                      {"request_id": head["x-request-id"], "label": label})
                out.feedback += fstatus == 200
            if log and (i + 1) % 500 == 0:
                log(f"replayed {i + 1} of {len(instances)}")
    except (OSError, http.client.HTTPException) as e:
        raise RunError(f"the server at {target.base} stopped answering after {out.sent} "
                       f"requests ({e})") from e
    finally:
        conn.close()
    out.seconds = time.monotonic() - t0
    return out


def _post(conn: http.client.HTTPConnection, path: str, obj: Any) -> tuple[int, dict[str, str], bytes]:
    conn.request("POST", path, body=json.dumps(obj).encode(), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data
