"""A fleet through Apache TVM's RPC tracker, with real processes only.

A real tracker on 127.0.0.1 (a free port), a real device server on this machine and one inside
the emulated aarch64 Pi under QEMU, both under one key; real bench sessions, a real kill, and a
real MetaSchedule tuning run whose candidates are measured on the emulated device. Every process
a test starts is stopped by it, and checked gone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clihelp import assert_one_line_error, invoke, invoke_json

from edgeship.core.errors import MissingDependencyError
from edgeship.core.runstore import RunDir
from edgeship.devices.fleet import join as fleet_join
from edgeship.devices.fleet import tracker as fleet_tracker
from edgeship.devices.fleet.state import ENV_DIR, SERVER_PROGRAM, TRACKER_PROGRAM, alive
from edgeship.devices.pi import emulator

KEY = "fleet-test"


def _emulation_missing() -> str | None:
    try:
        emulator.check_qemu()
    except MissingDependencyError as e:
        return str(e)
    if shutil.which("aarch64-linux-gnu-g++") is None:
        return "apt-get install g++-aarch64-linux-gnu"
    return None


needs_emulation = pytest.mark.skipif(_emulation_missing() is not None, reason=str(_emulation_missing()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_bound(port: int) -> bool:
    """Whether something still listens there (bind, not connect: a connect to a free ephemeral port
    can connect to itself)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture()
def fleet_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "fleet"))
    return tmp_path / "fleet"


# -- quick: the tracker's life cycle and the one-line errors ---------------------------------


def test_tracker_start_status_list_stop_leaves_nothing_behind(fleet_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    started = invoke_json(tmp_path, "fleet", "tracker", "start", "--port", str(port))
    assert started["tracker"] == f"127.0.0.1:{port}" and alive(started["pid"], TRACKER_PROGRAM)
    try:
        assert invoke_json(tmp_path, "fleet", "tracker", "status")["running"]
        again = invoke(tmp_path, "fleet", "tracker", "start", "--port", str(_free_port()))
        assert_one_line_error(again, "already runs", "tracker stop")
        listed = invoke_json(tmp_path, "fleet", "list")
        assert listed == {"tracker": f"127.0.0.1:{port}", "keys": [], "joined_here": []}
        # No device of the key: one line naming `fleet join`, for bench and for tuning.
        run = tmp_path / "no-run"
        nobody = invoke(tmp_path, "export", str(run), "--format", "tvm", "--target", "rpi4", "--trials", "4",
                        "--tracker", f"127.0.0.1:{port}", "--key", "rpi4")
        assert_one_line_error(nobody, "no free device", "fleet join")
    finally:
        stopped = invoke(tmp_path, "fleet", "tracker", "stop")
    assert stopped.exit_code == 0 and "stopped" in stopped.stdout
    assert not alive(started["pid"], TRACKER_PROGRAM) and not _port_bound(port)
    assert invoke(tmp_path, "fleet", "tracker", "status").exit_code == 1


def test_fleet_flags_are_one_line_errors(fleet_dir: Path, tmp_path: Path) -> None:
    assert_one_line_error(invoke(tmp_path, "bench", "latest", "--on", "fleet"), "--key")
    assert_one_line_error(invoke(tmp_path, "bench", "latest", "--key", "rpi4"), "--key goes with --on fleet")
    assert_one_line_error(invoke(tmp_path, "fleet", "join", "--key", "rpi4"),
                          "USER@HOST, --emulated or --local")
    assert_one_line_error(invoke(tmp_path, "fleet", "join", "--local", "--emulated", "--key", "k"),
                          "one device")
    assert_one_line_error(invoke(tmp_path, "fleet", "list"), "fleet tracker start")
    assert_one_line_error(invoke(tmp_path, "fleet", "list", "--tracker", f"127.0.0.1:{_free_port()}"),
                          "no tracker answers")
    assert_one_line_error(invoke(tmp_path, "export", "latest", "--format", "tvm", "--tracker", "h:1"),
                          "--tracker and --key go together")
    assert_one_line_error(invoke(tmp_path, "fleet", "leave"), "say which")


def test_a_join_waits_until_the_server_is_offered_not_only_announced(fleet_dir: Path) -> None:
    """TVM's server says who it is (UPDATE_INFO), then offers itself (PUT). A join that returned
    in between let a bench find one device too few (CI, the emulated Pi on a busy machine)."""
    from tvm.rpc import base
    from tvm.rpc.base import TrackerCode

    port = _free_port()
    info = fleet_tracker.start_tracker("127.0.0.1", port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            assert struct.unpack("<i", base.recvall(conn, 4))[0] == base.RPC_TRACKER_MAGIC
            base.sendjson(conn, [TrackerCode.UPDATE_INFO, {"key": f"server:{KEY}", "addr": [None, 9]}])
            assert base.recvjson(conn) == TrackerCode.SUCCESS
            assert fleet_join._servers("127.0.0.1", port, KEY) == (1, 0)  # listed, none free
            with pytest.raises(fleet_tracker.FleetError, match="did not register"):
                fleet_join._wait_registered("127.0.0.1", port, KEY, (0, 0), None, None, timeout=2)
            base.sendjson(conn, [TrackerCode.PUT, KEY, (9, f"{KEY}:m"), None])
            assert base.recvjson(conn) == TrackerCode.SUCCESS
            fleet_join._wait_registered("127.0.0.1", port, KEY, (0, 0), None, None, timeout=30)
            assert fleet_join._servers("127.0.0.1", port, KEY) == (1, 1)
    finally:
        fleet_tracker.stop_tracker()
    assert not alive(info.pid, TRACKER_PROGRAM)


# -- slow: a tracker, this machine and the emulated Pi under one key -------------------------


@pytest.fixture(scope="module")
def exported(digits_run: RunDir, tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A copy of the digits run with TFLite float32/int8 and TVM for this machine and for rpi4."""
    from edgeship.export.stage import ExportConfig, export_run

    dst = tmp_path_factory.mktemp("fleet-runs") / digits_run.path.name
    shutil.copytree(digits_run.path, dst)
    run = RunDir(dst)
    export_run(run, ExportConfig(formats=["tflite", "tvm"], targets=["host", "rpi4"]))
    return run


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The tracker and two device servers of KEY; all stopped (and checked gone) afterwards."""
    base = tmp_path_factory.mktemp("fleet")
    saved = os.environ.get(ENV_DIR)
    os.environ[ENV_DIR] = str(base / "state")
    port = _free_port()
    info = fleet_tracker.start_tracker("127.0.0.1", port)
    pids = [info.pid]
    try:
        addr = f"127.0.0.1:{port}"
        local = fleet_join.join_local(KEY, addr, port=_free_port())
        pids.append(local["pid"])
        emulated = fleet_join.join_emulated(KEY, addr, port=_free_port())
        pids.append(emulated["pid"])
        yield {"addr": addr, "port": port, "local": local, "emulated": emulated, "base": base}
    finally:
        fleet_join.leave()
        fleet_tracker.stop_tracker()
        if saved is None:
            os.environ.pop(ENV_DIR, None)
        else:
            os.environ[ENV_DIR] = saved
    assert not any(alive(p, SERVER_PROGRAM) or alive(p, TRACKER_PROGRAM) for p in pids)
    assert not _port_bound(port)


@pytest.mark.slow
@needs_emulation
def test_bench_on_the_fleet_gives_one_result_per_device(exported: RunDir, fleet: dict[str, Any]) -> None:
    listed = invoke_json(exported.path.parent, "fleet", "list", "--tracker", fleet["addr"])
    row = next(r for r in listed["keys"] if r["key"] == KEY)
    assert row["free"] == 2 and len(row["servers"]) == 2
    out = invoke_json(exported.path.parent, "bench", exported.id, "--on", "fleet", "--key", KEY, "--tracker",
                      fleet["addr"], "--format", "tflite-int8,tvm", "--threads", "1", "--rounds", "2",
                      "--runs", "20", "--warmup", "2")
    by_device: dict[str, set[str]] = {}
    for r in out["results"]:
        by_device.setdefault(r["device_id"], set()).add(r["artifact"])
        assert r["fleet"] == {"key": KEY, "tracker": fleet["addr"]}
        assert r["accuracy_source"] == "device" and r["accuracy"] > 0.8 and r["rounds"] == 2
    assert len(by_device) == 2  # two devices, two ids
    emulated = next(d for d in by_device if d.startswith("pi-emulated-"))
    host = next(d for d in by_device if d.startswith("host-"))
    # Each device measured what it can run: the aarch64 build on the Pi, the x86 one here.
    assert by_device[emulated] == {"exports/base/tflite-int8", "exports/base/tvm-rpi4"}
    assert by_device[host] == {"exports/base/tflite-int8", "exports/base/tvm-host"}
    stored = {p.name for p in (exported.path / "bench").glob("*.json")}
    assert any(n.startswith(emulated) for n in stored) and any(n.startswith(host) for n in stored)
    # --split: each artifact once, on a device that runs it (the aarch64 build waits for the Pi).
    split = invoke_json(exported.path.parent, "bench", exported.id, "--on", "fleet", "--key", KEY, "--split",
                        "--tracker", fleet["addr"], "--format", "tvm", "--threads", "1", "--rounds", "1",
                        "--runs", "10", "--warmup", "1")
    assert {r["artifact"]: r["device_id"] for r in split["results"]} == {
        "exports/base/tvm-rpi4": emulated, "exports/base/tvm-host": host}
    from edgeship.report.build import build_report  # the per-key summary across devices

    [row] = [r for r in build_report(exported).fleet if r["key"] == KEY and r["artifact"] == "tflite-int8"]
    assert row["devices"] == sorted([emulated, host]) and row["emulated"]
    assert row["min_p50_ms"] <= row["median_p50_ms"] <= row["max_p50_ms"] and row["spread"] >= 1.0


@pytest.mark.slow
@needs_emulation
def test_a_device_killed_mid_bench_fails_alone(exported: RunDir, fleet: dict[str, Any]) -> None:
    from edgeship.benchmarks.harness import BenchSettings
    from edgeship.devices.fleet.session import measure_fleet
    from edgeship.devices.fleet.state import stop_group
    from edgeship.devices.options import FleetOptions

    deadline = time.monotonic() + 60  # both devices free again after the last test's sessions
    while next(r for r in fleet_tracker.queue("127.0.0.1", fleet["port"]) if r["key"] == KEY)["free"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    log = Path(fleet["local"]["log"])
    seen = log.read_text().count("start serving")
    messages: list[str] = []
    box: dict[str, Any] = {}
    settings = BenchSettings(formats="tflite,tvm", threads=(1,), rounds=3, runs=200, warmup=5)
    worker = threading.Thread(target=lambda: box.update(out=measure_fleet(
        exported, settings, FleetOptions(key=KEY, tracker=fleet["addr"]), log=messages.append)))
    worker.start()
    deadline = time.monotonic() + 60
    while log.read_text().count("start serving") == seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stop_group(fleet["local"]["pid"], SERVER_PROGRAM)  # this machine's server, mid-session
    worker.join(600)
    assert not worker.is_alive()
    outcomes = box["out"]
    failed = [o for o in outcomes if o.error]
    ok = [o for o in outcomes if o.results]
    seen_by = [(o.label, o.error, len(o.results)) for o in outcomes]
    assert len(failed) == 1 and len(ok) == 1, (seen_by, messages)
    assert ok[0].device_id.startswith("pi-emulated-")
    assert {r["artifact"] for r in ok[0].results} == {
        "exports/base/tflite-float32", "exports/base/tflite-int8", "exports/base/tvm-rpi4"}
    assert any(m.startswith(f"{failed[0].label}: failed: ") for m in messages), messages
    gone = next(r for r in fleet_tracker.queue("127.0.0.1", fleet["port"]) if r["key"] == KEY)
    assert len(gone["servers"]) == 1  # the tracker dropped the dead server


@pytest.mark.slow
@needs_emulation
def test_tuning_an_aarch64_build_on_the_emulated_device(
    exported: RunDir, fleet: dict[str, Any], tmp_path: Path
) -> None:
    """Runs after the kill above: the key's one device left is the emulated Pi."""
    from edgeship.export.stage import ExportConfig, export_run

    fleet_join.leave("local")  # no x86 server may take aarch64 candidates
    tmp = Path(tempfile.gettempdir())
    before = {p.name for p in tmp.glob("edgeship-ms-*")}
    cfg = ExportConfig(formats=["tvm"], targets=["rpi4"], trials=4, cache_dir=tmp_path / "tvm",
                       tune_on={"tracker": fleet["addr"], "key": KEY})
    [result] = export_run(exported, cfg)
    assert result.passed
    artifact = json.loads((exported.path / "exports/base/tvm-rpi4/artifact.json").read_text())
    tuning = artifact["tuning"]
    assert tuning["trials_run"] == 4 and tuning["shipped"] in ("tuned", "untuned")
    # Both builds timed on the device (this machine cannot run them); the faster one ships.
    assert tuning["timed_on"].startswith("pi-emulated-")
    assert tuning["untuned_ms"] > 0 and tuning["tuned_ms"] > 0
    assert (tuning["shipped"] == "tuned") == (tuning["tuned_ms"] <= tuning["untuned_ms"])
    measured = tuning["measured"]
    assert measured["where"] == "device" and measured["key"] == KEY and measured["tracker"] == fleet["addr"]
    [(device, count)] = measured["devices"].items()
    assert device.startswith("pi-emulated-") and count == measured["candidates_measured"] >= 4
    assert f"-rpi4-{KEY}-" in tuning["cache_key"]  # a database per model, target and key
    assert {p.name for p in tmp.glob("edgeship-ms-*")} <= before  # no candidate folders left
