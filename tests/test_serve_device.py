"""The server on the device: its request log and feedback (real server processes on 127.0.0.1),
and ``edgeship deploy pi --serve`` / ``serve status|rollback|stop`` / ``monitor --emulated`` on the
emulated Pi (slow: an aarch64 server under QEMU).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clihelp import assert_one_line_error, invoke, invoke_json
from test_serve import Client, bundle, digits  # noqa: F401 - module fixtures shared with test_serve

from edgeship.core.runstore import RunDir
from edgeship.devices.serving.host import HostServer
from edgeship.devices.serving.service import alive


def _lines(folder: Path, prefix: str) -> list[dict[str, Any]]:
    return [json.loads(ln) for p in sorted(folder.glob(f"{prefix}*.jsonl"))
            for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


def test_request_log_feedback_and_versions(bundle: dict[str, Path], digits: dict[str, Any],  # noqa: F811
                                           tmp_path: Path) -> None:
    """Every prediction is logged with its model's sha256 (a new one after an update), feedback is
    stored for a known id and 404 for an unknown one, and /metrics shows the log's counters."""
    logs = tmp_path / "logs"
    raw = digits["raw"][:3].tolist()
    with HostServer(bundle["bundle"], workers=1,
                    extra=["--log-dir", str(logs), "--log-inputs", "raw"]) as srv:
        c = Client(srv.url)
        status, head, body = c.call("POST", "/v1/models/base:predict", json.dumps({"instances": raw}))
        assert status == 200, body
        rid = head["x-request-id"]
        status, out = c.json("POST", "/v1/models/base:feedback", {"request_id": rid, "label": "0"})
        assert status == 200 and out["stored"]["request_id"] == rid, out
        status, err = c.json("POST", "/v1/models/base:feedback", {"request_id": "nope", "label": "1"})
        assert status == 404 and "not in the request log" in err["error"], err
        status, err = c.json("POST", "/v1/models/base:feedback", {"label": "1"})
        assert status == 400, err
        status, out = c.json("POST", "/v1/models/base:load", {"path": str(bundle["v2"])})
        assert status == 200, out
        status, out = c.json("POST", "/v1/models/base:predict", {"instances": raw[:1]})
        assert status == 200 and out["model_version"] == "2"
        _, _, text = c.call("GET", "/metrics")
        metrics = text.decode()
        assert _metric(metrics, 'edge_request_log_lines{kind="observed"}') == 2
        assert _metric(metrics, 'edge_request_log_lines{kind="dropped"}') == 0
        c.close()
    lines = _lines(logs, "requests-")  # the server closed its log on SIGTERM: every line is there
    assert len(lines) == 4
    assert [ln["request_id"] for ln in lines[:3]] == [rid] * 3
    assert [ln["model"]["version"] for ln in lines] == ["1", "1", "1", "2"]
    v1 = json.loads((bundle["v1"] / "artifact.json").read_text())["sha256"]
    v2 = json.loads((bundle["v2"] / "artifact.json").read_text())["sha256"]
    assert v1 != v2 and lines[0]["model"]["sha256"] == v1 and lines[-1]["model"]["sha256"] == v2
    assert lines[0]["input"]["mode"] == "raw" and np.array(lines[0]["input"]["values"]).size == 64
    assert [(f["request_id"], f["label"]) for f in _lines(logs, "feedback-")] == [(rid, "0")]


def test_default_log_dir_is_beside_the_bundle(bundle: dict[str, Path], digits: dict[str, Any]) -> None:  # noqa: F811
    from edge_runtime.serve import default_log_dir

    assert default_log_dir(str(bundle["bundle"])) == bundle["bundle"].parent / "logs"


def test_replay_sends_in_order_with_feedback(bundle: dict[str, Path], digits: dict[str, Any],  # noqa: F811
                                             tmp_path: Path) -> None:
    """``load --replay``: one request per input, in the file's order, each true label posted back."""
    from edgeship.devices.serving.replay import read_stream, replay

    stream = tmp_path / "stream.npz"
    np.savez(stream, x=digits["raw"][:12], y=digits["y"][:12])
    instances, truth = read_stream(stream)
    logs = tmp_path / "logs"
    with HostServer(bundle["bundle"], workers=1, extra=["--log-dir", str(logs)]) as srv:
        r = replay(f"{srv.url}/v1/models/base:predict", instances, truth, feedback=True)
    assert (r.sent, r.ok, r.feedback) == (12, 12, 12)
    lines = _lines(logs, "requests-")
    feedback = {f["request_id"]: f["label"] for f in _lines(logs, "feedback-")}
    assert [feedback[ln["request_id"]] for ln in lines] == [str(v) for v in digits["y"][:12]]


def test_systemd_user_unit_and_commands() -> None:
    """A real Pi runs the server as a systemd *user* unit: restarted on failure, started at boot
    (with lingering), bound to loopback, logs beside the bundle; no command needs sudo."""
    from edgeship.devices.serving.service import (
        LINGER_NOTE,
        UNIT_NAME,
        ServeOptions,
        systemd_commands,
        unit_file,
    )

    unit = unit_file("edgeship", ServeOptions(port=9000, log_inputs="raw", artifacts=["base/tflite-int8"]))
    lines = unit.splitlines()
    assert "Restart=on-failure" in lines and "WantedBy=default.target" in lines
    assert "WorkingDirectory=%h/edgeship" in lines and "Environment=PYTHONPATH=%h/edgeship/bundle" in lines
    (start,) = [ln for ln in lines if ln.startswith("ExecStart=")]
    assert start == ("ExecStart=%h/edgeship/venv/bin/python -m edge_runtime serve bundle --host 127.0.0.1 "
                     "--port 9000 --log-dir logs --log-inputs raw --log-sample 1 --artifact base/tflite-int8")
    assert "WorkingDirectory=/srv/my models" in unit_file("/srv/my models", ServeOptions()).splitlines()
    assert '"/srv/my models/venv/bin/python"' in unit_file("/srv/my models", ServeOptions())
    cmds = systemd_commands("start") + systemd_commands("stop")
    assert all(c[:2] == ["systemctl", "--user"] and "sudo" not in c for c in cmds)
    assert ["systemctl", "--user", "enable", UNIT_NAME] in cmds
    assert "sudo loginctl enable-linger pi" in LINGER_NOTE.format(user="pi")


def test_device_verbs_bad_input_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(invoke(tmp_path, "monitor", "latest"), "--from FOLDER, --emulated or --host")
    assert_one_line_error(invoke(tmp_path, "serve", "status", "--url", "http://127.0.0.1:1", "--emulated"),
                          "one of --url, --emulated or --host")
    assert_one_line_error(invoke(tmp_path, "deploy", "pi", "latest", "--emulated", "--serve",
                                 "--serve-port", "0"), "--serve-port")


# -- slow: the server on the emulated Pi ----------------------------------------------------------


def _emulation_missing() -> str | None:
    from edgeship.core.errors import MissingDependencyError
    from edgeship.devices.pi import emulator

    try:
        emulator.check_qemu()
    except MissingDependencyError as e:
        return str(e)
    return None


needs_emulation = pytest.mark.skipif(_emulation_missing() is not None, reason=str(_emulation_missing()))
PORT = 18517  # loopback only; a fixed port so `serve status` finds it from serve.json alone


@pytest.fixture(scope="module")
def served(digits_run: RunDir, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The digits CNN exported to TFLite and served (float32) on the emulated Pi; stopped after."""
    from edgeship.devices.pi.emulator import EmulatedPi
    from edgeship.devices.serving.service import DeviceServer
    from edgeship.export.stage import ExportConfig, export_run

    base = tmp_path_factory.mktemp("serve-device")
    dst = base / "runs" / digits_run.path.name
    shutil.copytree(digits_run.path, dst)
    run = RunDir(dst)
    export_run(run, ExportConfig(formats=["tflite"]))
    remote = str(base / "pi")
    server = DeviceServer(EmulatedPi(), remote)
    try:
        # In a child process: the venv's precompile forks workers, which must not inherit this
        # process's TensorFlow (digits_run trained here).
        done = subprocess.run([sys.executable, "-P", "-m", "edgeship", "--runs-dir", str(base / "runs"),
                               "deploy", "pi", "latest", "--emulated", "--serve", "--serve-port", str(PORT),
                               "--remote-dir", remote, "--format", "tflite", "--quantize", "float32",
                               "--json"],
                              capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, done.stderr[-2000:]
        out = json.loads(done.stdout)
        yield {"run": run, "runs": base / "runs", "remote": remote, "server": server, "deploy": out}
    finally:
        state = server.state() or {}
        server.stop(quiet=True)
        assert not alive(int(state.get("pid") or 0))


def _predict(url: str, instances: list[Any]) -> tuple[int, Any]:
    from edgeship.devices.serving.service import http_call

    return http_call("POST", f"{url}/v1/models/base:predict", {"instances": instances}, timeout=60)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@needs_emulation
def test_deploy_serve_update_refuse_rollback_on_the_emulated_pi(served: dict[str, Any]) -> None:
    """deploy --serve leaves an aarch64 server on 127.0.0.1; a re-deploy of another artifact under
    steady traffic drops nothing; a model failing its golden check is refused while the old one
    serves; rollback returns to the previous version; status reports it."""
    from edgeship.devices.serving.replay import read_stream, replay
    from edgeship.devices.serving.service import ServeError

    out, server, run, runs = served["deploy"], served["server"], served["run"], served["runs"]
    assert out["serving"]["action"] == "started" and out["serving"]["manager"] == "supervisor"
    url = out["serving"]["url"]
    assert url == f"http://127.0.0.1:{PORT}"
    x = np.load(run.path / "data/test_raw.npz")["x"]
    status, body = _predict(url, [x[0].tolist()])
    assert status == 200 and body["model_version"] == "1", body
    s = invoke_json(runs, "serve", "status", "--emulated", "--remote-dir", served["remote"])
    assert s["ready"] and s["pid"] == out["serving"]["pid"]
    # the aarch64 interpreter, emulated (and saying so), answered
    _, info = server.request("GET", "/readyz")
    assert info["device"]["arch"] == "aarch64" and info["device"]["emulated"] is True

    # an update to the int8 artifact while a replay runs: every request answered
    instances, truth = read_stream(run.path / "data/test_raw.npz")
    done = threading.Event()
    results: list[Any] = []

    def traffic() -> None:  # 8 requests/s in chunks of 16 until the deploy returns (at most 600 s)
        for i in range(300):  # the test split in order, so the request log holds undrifted traffic
            at = (16 * i) % (len(instances) - 16)
            results.append(replay(f"{url}/v1/models/base:predict", instances[at:at + 16], truth[at:at + 16],
                                  rate=8.0))
            if done.is_set():
                return

    t = threading.Thread(target=traffic)
    t.start()
    try:
        upd = invoke_json(runs, "deploy", "pi", "latest", "--emulated", "--serve", "--serve-port", str(PORT),
                          "--remote-dir", served["remote"], "--format", "tflite", "--quantize", "int8")
    finally:
        done.set()
        t.join(120)
    assert upd["serving"]["action"] == "updated" and upd["serving"]["models"]["base"]["model_version"] == "2"
    sent = sum(r.sent for r in results)
    statuses = {k: sum(r.statuses.get(k, 0) for r in results) for r in results for k in r.statuses}
    assert sent >= 32 and statuses == {"200": sent}, statuses  # zero dropped or failed requests
    versions = [r.versions for r in results]
    assert "1" in versions[0] and "2" in versions[-1], versions  # the switch happened under the traffic

    # a model that fails its golden check (its recorded answers rotated) is refused; v2 serves on
    rdir = Path(served["remote"])
    wrong = rdir / "wrong"
    shutil.copytree(rdir / "bundle", wrong, symlinks=True)
    golden = json.loads((wrong / "golden.json").read_text())
    for entry in golden["artifacts"].values():
        entry["top1"] = [(v + 1) % 10 for v in entry["top1"]]
    (wrong / "golden.json").write_text(json.dumps(golden))
    with pytest.raises(ServeError, match=r"refused.*golden check.*version 2 keeps serving"):
        server.load("base", "wrong/artifacts/base/tflite-int8")
    status, body = _predict(url, [x[0].tolist()])
    assert status == 200 and body["model_version"] == "2"

    rb = invoke(runs, "serve", "rollback", "--emulated", "--remote-dir", served["remote"])
    assert rb.exit_code == 0 and "version 1 serving again" in rb.stdout, rb.stdout
    status, body = _predict(url, [x[0].tolist()])
    assert status == 200 and body["model_version"] == "1"
    bad = invoke(runs, "serve", "rollback", "--emulated", "--host", "pi@pi")
    assert_one_line_error(bad, "one of --url, --emulated or --host")


@pytest.mark.slow
@pytest.mark.timeout(1800)
@needs_emulation
def test_monitor_pulls_the_emulated_pis_logs(served: dict[str, Any], tmp_path: Path) -> None:
    """Replay the test split: monitor --emulated exits 0; an inverted, noisy stream: exit 3 naming
    the image statistic; then `serve stop` ends the server by its pid."""
    from edgeship.devices.serving.replay import read_stream, replay

    run, runs, url = served["run"], served["runs"], served["deploy"]["serving"]["url"]
    server = served["server"]
    predict = f"{url}/v1/models/base:predict"
    instances, truth = read_stream(run.path / "data/test_raw.npz")
    assert replay(predict, instances[:200], truth[:200], feedback=True).ok == 200
    ok = invoke(runs, "monitor", "latest", "--emulated", "--remote-dir", served["remote"], "--window", "100",
                "--no-save")
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    assert "pulled" in ok.stdout and "no drift" in ok.stdout
    raw = np.load(run.path / "data/test_raw.npz")
    rng = np.random.default_rng(0)
    shifted = np.clip(16 - raw["x"] + rng.normal(0, 1.6, raw["x"].shape), 0, 16).astype(np.float32)
    assert replay(predict, [v.tolist() for v in shifted[:200]]).ok == 200
    alert = invoke(runs, "monitor", "latest", "--emulated", "--remote-dir", served["remote"],
                   "--window", "100", "--no-save")
    assert alert.exit_code == 3, alert.stdout + alert.stderr
    assert "feature 'image." in alert.stdout
    pid = int((server.state() or {})["pid"])
    stopped = invoke(runs, "serve", "stop", "--emulated", "--remote-dir", served["remote"])
    assert stopped.exit_code == 0 and "stopped" in stopped.stdout
    assert not alive(pid)
