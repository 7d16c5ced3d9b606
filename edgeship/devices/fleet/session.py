"""``edgeship bench RUN --on fleet --key K``: every free device of a key at once, via the tracker.

One thread per free device: ``tracker.request(key)`` (the tracker hands each a different
device), ``edgeship.device_info`` (what it is, which runtimes it has), upload of one tar with
the artifacts it can run and the run's raw test split, then ``edgeship.bench_session``: the
device runs ``edge_runtime.rounds.bench_session`` on it, the method of every other device
(interleaved rounds, intervals, accuracy measured there). Results are the same schema, one
per device id, tagged ``fleet: {key, tracker}``.

A device is allowed to fail: every session has a deadline (the server is asked to end it, and
this side stops waiting), a failure is reported for that device with its reason, and the
other devices' results are kept. Only when every device fails is the command an error.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.result import require_valid
from edgeship.benchmarks.harness import BenchSettings
from edgeship.core.console import Progress
from edgeship.core.runstore import RunDir
from edgeship.devices.bundle import select_artifacts
from edgeship.devices.fleet.tracker import FleetError, free_devices, queue, resolve_tracker, with_timeout
from edgeship.devices.options import FleetOptions
from edgeship.devices.pi_session import EMULATED_NOTE, finish_results

REQUEST_TIMEOUT_S = 60.0
SESSION_BASE_S = 300.0  # upload, loading every artifact, accuracy on the test split (emulated: slow)
CONFIG_ROUND_S = 60.0  # each (artifact, threads) per round, emulated
BUSY_GRACE_S = 15.0


@dataclass
class DeviceOutcome:
    """What one device of the fleet gave: results, or why it failed."""

    slot: int
    device_id: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return self.device_id or f"device {self.slot + 1}"


def _runs_on(meta: dict[str, Any], info: dict[str, Any]) -> str | None:
    """Why an artifact cannot run on the device, or None when it can."""
    target = meta.get("target") or {}
    fmt = str(meta.get("format"))
    if fmt not in info.get("runtimes", []):
        return f"no {fmt} runtime there"
    arch = target.get("arch")
    if arch not in (None, "any", info.get("machine")):
        return f"built for {arch}, the device is {info.get('machine')}"
    board = str(info.get("board") or "").lower()
    name = target.get("name")
    model = "rpi4" if "raspberry pi 4" in board else "rpi5" if "raspberry pi 5" in board else None
    if name in ("rpi4", "rpi5") and model and name != model:
        return f"built for {name}, the device is a {info.get('board')}"
    if name == "host" and target.get("mcpu") and info.get("machine") == arch and model:
        return "built for the host CPU"
    return None


def _archive(artifacts: Sequence[Any], testset: Path | None) -> tuple[bytearray, dict[str, str]]:
    """One tar: ``artifacts/<variant>/<name>/...`` and the test split; and remote -> run path."""
    buf = io.BytesIO()
    names: dict[str, str] = {}
    with tarfile.open(fileobj=buf, mode="w", dereference=True) as tar:  # files only: the device refuses links
        for art in artifacts:
            remote = f"artifacts/{art.variant}/{art.dir.name}"
            names[remote] = art.rel
            for f in sorted(art.dir.rglob("*")):
                if f.is_file():
                    tar.add(f, arcname=f"{remote}/{f.relative_to(art.dir).as_posix()}")
        if testset is not None:
            tar.add(testset, arcname=testset.name)
    return bytearray(buf.getvalue()), names


def _label(row: dict[str, Any], info: dict[str, Any], names: dict[str, str], run_id: str, key: str,
           tracker: str) -> dict[str, Any]:
    row["artifact"] = names[row["artifact"]]
    row["run_id"] = row.get("run_id") or run_id
    row["device"] = {**(row.get("device") or {}), "name": f"{key}@{tracker}"}
    if info.get("board") and not row["device"].get("board"):
        row["device"]["board_name"] = info["board"]
    row["fleet"] = {"key": key, "tracker": tracker}
    if row["device"].get("emulated"):
        row["notes"] = [*row.get("notes", []), EMULATED_NOTE]
    return row


def _open(addr: tuple[str, int], key: str, timeout: float) -> tuple[Any, dict[str, Any]]:
    """A session on the next free device of ``key`` (ended by the server after ``timeout``), and
    what the device says it is."""
    from tvm import rpc

    tracker = rpc.connect_tracker(*addr)
    sess = with_timeout(lambda: tracker.request(key, session_timeout=timeout), REQUEST_TIMEOUT_S,
                        f"no {key} device became free")
    try:
        info_fn = sess.get_function("edgeship.device_info")
    except Exception as e:  # a plain `tvm.exec.rpc_server` has no edgeship functions
        if "kShutdown" in str(e) or "connection" in str(e).lower():
            raise
        raise FleetError("the device has no edgeship.device_info: start it with `edgeship fleet join` "
                         f"(python -m edge_runtime.rpc_server), not tvm.exec.rpc_server ({e})") from e
    return sess, json.loads(info_fn())


def _bench_on(sess: Any, info: dict[str, Any], chosen: Sequence[Any], testset: Path | None,
              request: dict[str, Any], run_id: str, key: str, tracker: str) -> list[dict[str, Any]]:
    """Upload ``chosen`` and the test split, run one bench session there, label its results."""
    blob, names = _archive(chosen, testset)
    sess.upload(blob, "fleet-bundle.tar")
    req = {**request, "archive": "fleet-bundle.tar", "artifacts": list(names),
           "test": testset.name if testset is not None else None}
    reply = json.loads(sess.get_function("edgeship.bench_session")(json.dumps(req)))
    if reply.get("error"):
        raise FleetError(reply["error"])
    return [require_valid(_label(r, info, names, run_id, key, tracker)) for r in reply["results"]]


@dataclass
class _Job:
    """What every device worker of one bench shares."""

    addr: tuple[str, int]
    key: str
    artifacts: list[Any]
    testset: Path | None
    request: dict[str, Any]
    timeout: float
    run_id: str
    split: bool
    queue: list[tuple[Any, int]] = field(default_factory=list)  # split: (artifact, attempts)
    failed: list[str] = field(default_factory=list)  # split: artifacts no device could measure
    claimed: set[str] = field(default_factory=set)  # device ids taken (every-device mode)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def tracker(self) -> str:
        return f"{self.addr[0]}:{self.addr[1]}"


def _worker(out: DeviceOutcome, job: _Job) -> None:
    """One device: every artifact it can run in one session (``split``: the next artifact of the
    shared queue, one at a time; a device that fails hands its artifact back for another)."""
    t0 = time.monotonic()
    current = None
    try:
        sess, info = _open_unclaimed(job) if not job.split else _open(job.addr, job.key, job.timeout)
        out.device_id = info.get("device_id")
        if not job.split:
            chosen = _matching(job.artifacts, info, out)
            out.results = _bench_on(sess, info, chosen, job.testset, job.request, job.run_id, job.key,
                                    job.tracker)
            return
        while True:
            with job.lock:  # the next artifact this device can run; the others stay for the rest
                mine = [i for i, (a, _) in enumerate(job.queue) if _runs_on(a.meta, info) is None]
                if not mine:
                    return
                current = job.queue.pop(mine[0])
            out.results += _bench_on(sess, info, [current[0]], job.testset, job.request, job.run_id,
                                     job.key, job.tracker)
            current = None
    except Exception as e:
        out.error = _reason(e)
        if current is not None:
            with job.lock:
                if current[1] < 1:
                    job.queue.append((current[0], current[1] + 1))  # retried on another device
                else:
                    job.failed.append(current[0].rel)
    finally:
        out.seconds = round(time.monotonic() - t0, 1)


def _open_unclaimed(job: _Job, attempts: int = 4) -> tuple[Any, dict[str, Any]]:
    """A session on a device no other worker of this bench has: the tracker may hand one server
    out twice (a queue entry it re-registered), and the same device measured twice is one device
    missed."""
    for _ in range(attempts):
        sess, info = _open(job.addr, job.key, job.timeout)
        with job.lock:
            if info.get("device_id") not in job.claimed:
                job.claimed.add(str(info.get("device_id")))
                return sess, info
        del sess  # ends the session: the server is free for the worker that holds it
    raise FleetError(f"the tracker kept handing out devices already measured ({attempts} tries)")


def _reason(e: Exception) -> str:
    """One line for why a device failed; a dropped connection said as such."""
    text = " ".join(str(e).split())[:300] or type(e).__name__
    lost = ("kShutdown", "onnection", "Broken pipe", "socket", "RPCSessionTimeoutError")
    if not isinstance(e, FleetError) and any(w in text for w in lost):
        return f"the device dropped the session (its server stopped, timed out or the link broke): {text}"
    return text


def _matching(artifacts: Sequence[Any], info: dict[str, Any], out: DeviceOutcome) -> list[Any]:
    chosen = []
    for art in artifacts:
        why = _runs_on(art.meta, info)
        (out.skipped.append(f"{art.rel}: {why}") if why else chosen.append(art))
    if not chosen:
        raise FleetError("none of the selected artifacts runs there (" + "; ".join(out.skipped) + ")")
    return chosen


def _settled_free(addr: tuple[str, int], key: str) -> int:
    """Free devices of ``key``, after waiting briefly for busy ones still ending a session (a
    server re-registers a few seconds after its last session, longer under emulation)."""
    deadline = time.monotonic() + BUSY_GRACE_S
    while time.monotonic() < deadline:
        row = next((r for r in queue(*addr) if r["key"] == key), None)
        if row is None or row["busy"] == 0:
            break
        time.sleep(0.5)
    return free_devices(*addr, key)


def measure_fleet(
    run: RunDir, settings: BenchSettings, options: FleetOptions, *, progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> list[DeviceOutcome]:
    """Measure on every free device of ``options.key`` in parallel; one outcome per device.

    By default every device measures every artifact it can run (one session, interleaved
    rounds); ``options.split`` measures each artifact once, on whichever device is free next.
    """
    key, split, threads = options.key, options.split, settings.threads
    rounds, runs, warmup = settings.rounds, settings.runs, settings.warmup
    from edgeship.benchmarks.accuracy import write_run_testset

    say = log or (lambda _m: None)
    addr = resolve_tracker(options.tracker)
    artifacts = select_artifacts(run, settings.variants, settings.formats, log=say)
    count = _settled_free(addr, key)
    per_session = len(artifacts) if not split else max(1, -(-len(artifacts) // count) + 1)
    sessions = 1 if not split else per_session  # split: one bench session per artifact
    timeout = SESSION_BASE_S * sessions + CONFIG_ROUND_S * per_session * len(threads) * rounds
    outcomes = [DeviceOutcome(slot=i) for i in range(count)]
    with tempfile.TemporaryDirectory(prefix="edgeship-fleet-") as tmp:
        job = _Job(addr=addr, key=key, artifacts=artifacts, testset=write_run_testset(run, Path(tmp)),
                   request={"threads": list(threads), "runs": runs, "warmup": warmup, "rounds": rounds},
                   timeout=timeout, run_id=run.id, split=split, queue=[(a, 0) for a in artifacts])
        workers = [threading.Thread(target=_worker, args=(o, job), daemon=True) for o in outcomes]
        deadline = time.monotonic() + REQUEST_TIMEOUT_S + timeout + 30
        for w in workers:
            w.start()
        for w, out in zip(workers, outcomes, strict=True):
            w.join(max(0.0, deadline - time.monotonic()))
            if w.is_alive():
                out.error = f"no answer within {timeout:g} s: the device was given up"
            if progress is not None:
                progress.update(len(out.results), f"{out.label}: "
                                + (f"failed: {out.error}" if out.error else f"{len(out.results)} result(s)"))
    for out in outcomes:
        for note in out.skipped:
            say(f"{out.label}: skipped {note}")
        if out.error:
            say(f"{out.label}: failed: {out.error}")
    for rel in job.failed:
        say(f"{rel}: not measured: every device that took it failed")
    for art, _ in job.queue if split else []:
        say(f"{art.rel}: not measured: no free {key} device that runs it was left")
    return outcomes


def bench_fleet(run: RunDir, settings: BenchSettings, options: FleetOptions, *,
                progress: Progress | None = None,
                log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The ``--on fleet`` driver: results of every device that finished (failures are logged);
    an error when none did."""
    outcomes = measure_fleet(run, settings, options, progress=progress, log=log)
    results = [r for o in outcomes for r in o.results]
    if not results:
        raise FleetError(f"every {options.key} device failed: "
                         + "; ".join(f"{o.label}: {o.error}" for o in outcomes))
    return finish_results(run, results)
