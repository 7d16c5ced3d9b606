"""``edgeship load``: the open-loop generator's figures, the knee, the bounds, and a real sweep
against a server it starts on 127.0.0.1, stored as ``serve/*.json``."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_serve import write_artifact

from edgeship.cli import cli
from edgeship.core.errors import InputError
from edgeship.core.runstore import RunDir, RunStore
from edgeship.devices.serving.load import (
    LOOPBACK_ONLY_ENV,
    RateResult,
    check_sweep,
    knee,
    parse_duration,
    parse_target,
    run_sweep,
)


def test_rate_figures_and_the_knee() -> None:
    r = RateResult(rate=100.0, duration_s=2.0, sent=200, statuses={"200": 198, "503": 2},
                   ok_latency_s=[i / 1000.0 for i in range(1, 199)], wall_s=2.0, generator_cpu_s=0.5,
                   server_cpu_s=1.0)
    d = r.as_dict(slo_ms=250.0, device_cores=2)
    assert (d["ok"], d["errors"], d["rejected_503"]) == (198, 2, 2)
    assert d["achieved_rps"] == pytest.approx(99.0) and d["error_rate"] == pytest.approx(0.01)
    assert d["latency_ms"]["max"] == pytest.approx(198.0) and d["latency_ms"]["p50"] == pytest.approx(99.5)
    assert d["server_cpu_cores"] == pytest.approx(0.5) and d["server_cpu_percent"] == pytest.approx(25.0)
    assert d["meets_slo"] is False  # 1 % errors is not under 1 %
    rows = [{"rate": 50, "meets_slo": True, "achieved_rps": 50, "latency_ms": {"p99": 5}, "error_rate": 0},
            {"rate": 100, "meets_slo": True, "achieved_rps": 99, "latency_ms": {"p99": 9}, "error_rate": 0},
            {"rate": 200, "meets_slo": False, "achieved_rps": 150, "latency_ms": {"p99": 900},
             "error_rate": 0}]
    assert knee(rows)["rate"] == 100 and knee(rows[2:]) is None


def test_latency_counts_from_the_scheduled_send(unused_port: int) -> None:
    """A server that stalls 300 ms once: requests due during the stall carry the wait
    (coordinated omission would count only the stalled request)."""
    stall = threading.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(n)
            if not stall.is_set():
                stall.set()
                await asyncio.sleep(0.3)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(handler, "127.0.0.1", unused_port))
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        target = parse_target(f"http://127.0.0.1:{unused_port}/v1/models/m:predict", loopback_only=True)
        (r,) = run_sweep(target, [b"{}"], [200.0], 1.0, connections=1)
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
    lat = np.asarray(r.ok_latency_s)
    assert r.statuses == {"200": r.sent} and r.sent > 120
    # about 0.3 s x 200/s = 60 requests were due during the stall: all of them show it
    assert (lat > 0.1).sum() >= 30, sorted(lat)[-5:]


@pytest.fixture()
def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("rates", "duration", "slo", "words"), [
    ([0.0], 1.0, 50.0, "not a positive rate"),
    ([float("nan")], 1.0, 50.0, "not a positive rate"),
    ([], 1.0, 50.0, "empty"),
    ([10.0], 500.0, 50.0, "--duration"),
    ([10.0], 0.0, 50.0, "--duration"),
    ([50_000.0], 1.0, 50.0, "over the bound"),
    ([10.0], 1.0, float("inf"), "--slo-ms"),
])
def test_sweep_bounds(rates: list[float], duration: float, slo: float, words: str) -> None:
    with pytest.raises(InputError, match=words):
        check_sweep(rates, duration, slo)


def test_targets_and_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    t = parse_target("http://127.0.0.1:8501/v1/models/base:predict")
    assert (t.host, t.port, t.model, t.base) == ("127.0.0.1", 8501, "base", "http://127.0.0.1:8501")
    for bad in ("https://127.0.0.1/v1/models/base:predict", "http://127.0.0.1:8501",
                "http://127.0.0.1:8501/v1/models/:predict", "ftp://x/y"):
        with pytest.raises(InputError):
            parse_target(bad)
    monkeypatch.setenv(LOOPBACK_ONLY_ENV, "1")
    with pytest.raises(InputError, match="loopback targets only"):
        parse_target("http://192.0.2.7:8501/v1/models/base:predict")
    assert (parse_duration("5s"), parse_duration("500ms"), parse_duration("1m"), parse_duration(2)) == (
        5.0, 0.5, 60.0, 2.0)


@pytest.fixture(scope="module")
def hand_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A run with a raw test split and one (hand-made ONNX) export, as ``edgeship load`` reads it."""
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = d.images.astype(np.float32)[:64, ..., None]
    rng = np.random.default_rng(0)
    store = RunStore(tmp_path_factory.mktemp("load-runs"))
    with store.new_run("hand", seed=0) as run, run.stage("train", {"by": "hand"}) as st:
        np.savez(st.output_dir("data") / "test_raw.npz", x=raw, y=d.target[:64])
        w = rng.normal(size=(64, 10)).astype(np.float32)
        write_artifact(st.output_dir("exports/base/onnx-float32"), w, np.zeros(10, np.float32))
    return run


def test_edgeship_load_starts_a_server_and_writes_the_sweep(hand_run: RunDir, monkeypatch: pytest.MonkeyPatch,
                                                            ) -> None:
    monkeypatch.setenv(LOOPBACK_ONLY_ENV, "1")
    root = str(hand_run.path.parent)
    t0 = time.monotonic()
    res = CliRunner().invoke(cli, ["--runs-dir", root, "load", hand_run.id, "--artifact",
                                   "base/onnx-float32", "--rates", "20,60", "--duration", "1s",
                                   "--slo-ms", "500", "--workers", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert time.monotonic() - t0 < 60
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    path = Path(doc["file"])
    assert path.parent.name == "serve" and path.is_file()
    stored = json.loads(path.read_text())
    assert stored["schema_version"] == 1 and stored["kind"] == "serve-sweep"
    assert stored["run_id"] == hand_run.id
    assert stored["device_id"].startswith("host") and stored["layout"]["workers"] == 1
    assert [r["rate"] for r in stored["rates"]] == [20.0, 60.0]
    for r in stored["rates"]:
        assert r["ok"] == r["sent"] > 0 and r["latency_ms"]["p99"] >= r["latency_ms"]["p50"] > 0
        assert r["server_cpu_cores"] is not None
    assert stored["knee"]["rate"] == 60.0  # both rates met a 500 ms SLO with no errors
    assert stored["artifact"]["format"] == "onnx" and stored["model_sha256"]
    assert any(s["name"] == "load" for s in hand_run.stages())


@pytest.mark.parametrize(("args", "words"), [
    (["--rates", "0"], "not a positive rate"),
    (["--rates", "nan"], "not a positive rate"),
    (["--rates", "fast"], "numbers like"),
    (["--duration", "10m"], "--duration"),
    (["--url", "http://192.0.2.7:8501/v1/models/base:predict"], "loopback targets only"),
    (["--url", "http://127.0.0.1:1/v1/models/base:predict"], "readyz answered nothing"),
    (["--artifact", "base/tflite-int8"], "no export base/tflite-int8"),
])
def test_edgeship_load_bad_input_is_one_line_exit_2(hand_run: RunDir, monkeypatch: pytest.MonkeyPatch,
                                                    args: list[str], words: str) -> None:
    monkeypatch.setenv(LOOPBACK_ONLY_ENV, "1")
    res = CliRunner().invoke(cli, ["--runs-dir", str(hand_run.path.parent), "load", hand_run.id,
                                   "--duration", "1s", *args])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in res.output



def test_serve_status_reports_versions_and_the_last_minute(hand_run: RunDir) -> None:
    from edgeship.devices.serving.host import HostServer

    body = json.dumps({"instances": [np.zeros((8, 8, 1)).tolist()]}).encode()
    with HostServer(hand_run.path / "exports", workers=1) as srv:
        target = parse_target(f"{srv.url}/v1/models/base:predict", loopback_only=True)
        (r,) = run_sweep(target, [body], [50.0], 1.0)
        res = CliRunner().invoke(cli, ["serve", "status", "--url", srv.url, "--json"])
        text = CliRunner().invoke(cli, ["serve", "status", "--url", srv.url])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["healthy"] and s["ready"] and s["layout"]["workers"] == 1
    assert s["recent"]["requests"] == r.sent and s["recent"]["errors"] == 0 and s["recent"]["p99_ms"] > 0
    assert [(m["name"], m["model_version_status"][0]["version"]) for m in s["models"]] == [("base", "1")]
    assert text.exit_code == 0 and "base v1 AVAILABLE" in text.stdout
    gone = CliRunner().invoke(cli, ["serve", "status", "--url", srv.url])
    assert gone.exit_code == 2 and "nothing answers" in gone.output


@pytest.mark.slow
def test_serving_suite_smoke(tmp_path: Path) -> None:
    """The serving benchmark end to end on its smallest setting: all three figures printed."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "edgeship.benchmarks.suites.serving", "--smoke"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for needle in ("(a) overhead:", "(b) capacity:", "(c) update to base/tflite-int8 and rollback"):
        assert needle in out, out
    assert " 0 failed of " in out, out
