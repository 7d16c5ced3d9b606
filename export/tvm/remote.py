"""Tuning on the device: MetaSchedule's ``RPCRunner`` through TVM's RPC tracker.

Candidates are built here, linked by the cross compiler into ``.so`` files (a device has no
compiler, and under emulation could not start one), and measured by whichever free device of
the key the tracker hands each runner worker. Each session asks the device for its id
(``edgeship.device_info``, registered by ``python -m edge_runtime.rpc_server``) and appends it
to a log, so the artifact can say how many candidates were measured on which device.
"""

from __future__ import annotations

import json
import socket
import statistics
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeship.core.errors import EdgeshipError

SESSION_TIMEOUT_S = 120  # per candidate: upload, load and time it (emulated devices are slow)
DEVICE_LOG = "devices.log"


class NoDeviceError(EdgeshipError):
    """The tracker has no free device of the key (or does not answer)."""


def split_tracker(tracker: str) -> tuple[str, int]:
    host, _, port = str(tracker).rpartition(":")
    if not host or not port.isdigit():
        raise NoDeviceError(f"give the tracker as HOST:PORT, not {tracker!r}")
    return host.strip("[]"), int(port)


def free_devices(tracker: str, key: str, timeout: float = 10.0) -> int:
    """Free devices of ``key`` at ``tracker``; none is a one-line error naming ``fleet join``."""
    from tvm import rpc

    host, port = split_tracker(tracker)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        session = rpc.connect_tracker(host, port)
        info = session.summary()
        session.close()
    except (OSError, RuntimeError) as e:
        raise NoDeviceError(f"no tracker answers at {tracker} ({e}): `edgeship fleet tracker start`"
                            ) from None
    free = int(((info.get("queue_info") or {}).get(key) or {}).get("free", 0))
    if free < 1:
        raise NoDeviceError(f"no free device with key {key!r} at the tracker {tracker}: join one with "
                            f"`edgeship fleet join USER@HOST --key {key}` (or --emulated / --local)")
    return free


def _session_recorder(log_path: str) -> Callable[[Any], Any]:
    """``f_create_session`` for the runner workers: the default session, plus one line naming the
    device in ``log_path``. Nested so the worker receives it by value."""

    def create(rpc_config: Any) -> Any:
        session = rpc_config.connect_server()
        try:
            device = json.loads(session.get_function("edgeship.device_info")())["device_id"]
        except Exception:  # a plain tvm.exec.rpc_server: measured, but unnamed
            device = "unnamed (plain TVM rpc_server)"
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(device + "\n")
        return session

    return create


def rpc_runner(tune_on: dict[str, Any], work: Path, workers: int) -> Any:
    """An ``RPCRunner`` on the tracker and key of ``tune_on``, logging devices into ``work``."""
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, RPCConfig, RPCRunner

    host, port = split_tracker(tune_on["tracker"])
    config = RPCConfig(tracker_host=host, tracker_port=port, tracker_key=tune_on["key"],
                       session_timeout_sec=int(tune_on.get("session_timeout_s", SESSION_TIMEOUT_S)))
    evaluator = EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50)
    return RPCRunner(rpc_config=config, evaluator_config=evaluator,
                     f_create_session=_session_recorder(str(work / DEVICE_LOG)), max_workers=max(1, workers))


def measured_on(work: Path) -> dict[str, int]:
    """Candidates measured per device id, from the sessions' log."""
    try:
        lines = (work / DEVICE_LOG).read_text(encoding="utf-8").split()
    except OSError:
        return {}
    return dict(Counter(lines).most_common())


def describe(tune_on: dict[str, Any], devices: dict[str, int]) -> dict[str, Any]:
    """What artifact.json records about where a build was tuned."""
    return {"where": "device", "tracker": tune_on["tracker"], "key": tune_on["key"],
            "runner": "meta_schedule RPCRunner", "candidates_measured": sum(devices.values()),
            "devices": devices}


def dumps(tune_on: dict[str, Any] | None) -> str:
    return json.dumps(tune_on, sort_keys=True)


def _request(tune_on: dict[str, Any], session_timeout: float, wait_s: float = 120.0) -> Any:
    """A session on a free device of the key; a NoDeviceError if none frees up within ``wait_s``
    (TVM's request waits for ever)."""
    from tvm import rpc

    host, port = split_tracker(tune_on["tracker"])
    box: dict[str, Any] = {}

    def ask() -> None:
        try:
            tracker = rpc.connect_tracker(host, port)
            box["s"] = tracker.request(tune_on["key"], session_timeout=session_timeout)
        except Exception as e:
            box["e"] = e

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(wait_s)
    if "s" not in box:
        raise NoDeviceError(f"no {tune_on['key']} device of {tune_on['tracker']} was free within "
                            f"{wait_s:g} s to time the builds ({box.get('e', 'still busy')})")
    return box["s"]


def time_on_device(tune_on: dict[str, Any], builds: dict[str, Any], inputs: list[Any], cross: str | None,
                   rounds: int = 3) -> dict[str, Any]:
    """Median ms per call of each Relax build on one device of the key, and its outputs there.

    Each build is linked by ``cross``, uploaded and loaded in one RPC session, and timed with
    TVM's ``time_evaluator``; rounds alternate the builds so neither always runs first.
    Returns ``{"device": id, "ms": {name: ms}, "outputs": {name: [arrays]}}``.
    """
    import tvm
    from tvm import relax
    from tvm.support import cc

    session = _request(tune_on, session_timeout=900)
    try:
        device = json.loads(session.get_function("edgeship.device_info")())["device_id"]
    except Exception:
        device = "unnamed (plain TVM rpc_server)"
    dev = session.cpu()
    vms, outputs, times = {}, {}, {name: [] for name in builds}
    with tempfile.TemporaryDirectory(prefix="edgeship-timing-") as tmp:
        for name, ex in builds.items():
            path = Path(tmp) / f"{name}.so"
            ex.export_library(str(path), fcompile=cc.cross_compiler(cross) if cross else None)
            session.upload(str(path))
            vms[name] = relax.VirtualMachine(session.load_module(path.name), dev)
    args = [tvm.runtime.tensor(x, dev) for x in inputs]
    for r in range(rounds):
        for name in (list(builds) if r % 2 == 0 else list(builds)[::-1]):
            timer = vms[name].time_evaluator("main", dev, number=10, repeat=3, min_repeat_ms=50)
            times[name] += [s * 1e3 for s in timer(*args).results]
    for name, vm in vms.items():
        out = vm["main"](*args)
        outputs[name] = [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]
    return {"device": device, "ms": {n: statistics.median(t) for n, t in times.items()}, "outputs": outputs}
