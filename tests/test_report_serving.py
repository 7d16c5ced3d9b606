"""``edgeship report``'s "Serving" and "Monitoring" sections, on runs with real data: a load sweep
that ``edgeship load`` ran against a server it started on 127.0.0.1, and the request logs of an
exported wine model judged by ``edgeship monitor``; plus runs with neither and with bad files."""

from __future__ import annotations

import csv
import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _models import copy_run
from clihelp import invoke
from test_report import result
from test_serve import write_artifact

from edgeship.benchmarks.store import save_results
from edgeship.core.runstore import RunDir, RunStore
from edgeship.devices.serving.load import LOOPBACK_ONLY_ENV
from edgeship.report import EMULATED


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A run with one hand-made ONNX export and a real two-rate sweep stored in ``serve/``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    store = RunStore(tmp_path_factory.mktemp("report-serving"))
    with store.new_run("hand", seed=0) as run, run.stage("train", {"by": "hand"}) as st:
        np.savez(st.output_dir("data") / "test_raw.npz", x=d.images.astype(np.float32)[:64, ..., None],
                 y=d.target[:64])
        w = rng.normal(size=(64, 10)).astype(np.float32)
        write_artifact(st.output_dir("exports/base/onnx-float32"), w, np.zeros(10, np.float32))
    mp = pytest.MonkeyPatch()
    mp.setenv(LOOPBACK_ONLY_ENV, "1")
    try:
        done = invoke(store.root, "load", run.id, "--artifact", "base/onnx-float32", "--rates", "20,60",
                      "--duration", "1s", "--slo-ms", "2000", "--workers", "1")
    finally:
        mp.undo()
    assert done.exit_code == 0, done.output
    return run


def private(run: RunDir, tmp_path: Path) -> RunDir:
    dst = tmp_path / "runs" / run.path.name
    shutil.copytree(run.path, dst)
    return RunDir(dst)


def test_a_sweep_makes_a_serving_section_with_curve_knee_and_layout(swept: RunDir, tmp_path: Path) -> None:
    run = private(swept, tmp_path)
    (sweep,) = (run.path / "serve").glob("*.json")
    doc = json.loads(sweep.read_text())
    assert doc["knee"] is not None, doc["rates"]  # 2 s of SLO: both rates met it
    shown = invoke(run.path.parent, "report", run.id, "--format", "md")
    assert shown.exit_code == 0, shown.output
    md = (run.path / "report.md").read_text()
    assert md == shown.stdout
    serving = md.split("## Serving", 1)[1].split("\n## ", 1)[0]
    assert f"### {doc['device_id']}: " in serving
    assert f"knee {doc['knee']['rate']:g}/s offered" in serving
    assert "1 worker x 1 thread, queue" in serving and "loop front" in serving
    assert "no benchmark results in this run" in md  # only a sweep: says what is missing, no error
    (png,) = re.findall(r"!\[throughput-latency curve on [^\]]+\]\(([^)]+\.png)\)", serving)
    assert (run.path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [ln for ln in serving.splitlines() if re.match(r"\| (20|60) \|", ln)]
    assert len(rows) == 2, serving
    page = (run.path / "report.html").read_text()
    section = page.split("<h2 id='serving'>", 1)[1].split("<h2 ", 1)[0]
    assert "class='plot serving' src='data:image/png;base64," in section
    assert f"knee {doc['knee']['rate']:g}/s offered" in section and "1 worker x 1 thread" in section
    assert EMULATED not in section  # the host is not emulated
    data = json.loads(invoke(run.path.parent, "report", run.id, "--format", "json").stdout)
    assert data["serving"]["devices"][0]["sweeps"][0]["knee"] == doc["knee"]
    table = invoke(run.path.parent, "report", run.id)
    assert table.exit_code == 0 and "Serving:" in table.stdout and "knee" in table.stdout


def test_emulated_device_labelled_and_a_bad_sweep_a_labelled_skip(swept: RunDir, tmp_path: Path) -> None:
    run = private(swept, tmp_path)
    (sweep,) = (run.path / "serve").glob("*.json")
    doc = json.loads(sweep.read_text())
    doc["device_id"], doc["device"]["emulated"] = "pi-emulated-edgeship-pi-abc123", True
    (run.path / "serve" / "pi.json").write_text(json.dumps(doc))
    (run.path / "serve" / "broken.json").write_text('{"schema_version": 1, "kind": "serve-sw')
    (run.path / "serve" / "future.json").write_text(json.dumps({**doc, "schema_version": 9}))
    (run.path / "serve" / "norates.json").write_text(json.dumps({**doc, "rates": []}))
    shown = invoke(run.path.parent, "report", run.id, "--format", "md")
    assert shown.exit_code == 0 and "Traceback" not in shown.output
    md = shown.stdout
    pi = md.split("### pi-emulated-edgeship-pi-abc123", 1)[1].split("###", 1)[0]
    assert EMULATED in pi.splitlines()[0] and EMULATED in pi  # heading and every sweep line
    assert "- skipped serve/broken.json: not readable JSON" in md
    assert "- skipped serve/future.json: schema_version 9, this edgeship reads 1" in md
    assert "- skipped serve/norates.json: no rates" in md
    assert "left a load sweep out of the report: serve/broken.json" in shown.stderr
    page = (run.path / "report.html").read_text()
    assert page.count("class='plot serving'") == 2 and "skipped serve/broken.json" in page
    assert len([p for p in (run.path / "report-plots").glob("serving-pi-emulated-*.png")]) == 1
    (run.path / "serve" / "pi.json").unlink()
    assert invoke(run.path.parent, "report", run.id, "--format", "md").exit_code == 0
    assert [p.name for p in (run.path / "report-plots").glob("serving-pi-emulated-*.png")] == []  # gone


def test_a_run_with_neither_has_no_such_sections(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs").new_run("fake", seed=0) as run:
        pass
    save_results(run, [result(variant="base", artifact="tflite-float32", p50=0.25)], label="host")
    (run.path / "serve").mkdir()  # an empty folder is no sweep
    shown = invoke(tmp_path / "runs", "report", run.id, "--format", "md")
    assert shown.exit_code == 0, shown.output
    assert "## Serving" not in shown.stdout and "## Monitoring" not in shown.stdout
    page = (run.path / "report.html").read_text()
    assert "id='serving'" not in page and "id='monitoring'" not in page
    assert not (run.path / "report-plots").exists()
    assert "no benchmark results in this run" not in shown.stdout


# ---------------------------------------------------------------- monitoring (a trained wine model)


def replay(run: RunDir, folder: Path, rows: list[dict[str, Any]], scales: list[float]) -> None:
    """Predict each row once per entry of ``scales`` (alcohol multiplied by it), log it as the server
    does, and post every true label as feedback."""
    from edge_runtime.model import EdgeModel
    from edge_runtime.serve.requestlog import LogConfig, RequestLog

    model = EdgeModel.load(run.path / "exports" / "base" / "tflite-float32")
    labels = []
    with RequestLog(LogConfig(folder, inputs="raw"), {"base": model.artifact}) as log:
        for scale in scales:
            for row in rows:
                raw = {k: v * (scale if k == "alcohol" else 1.0) for k, v in row.items() if k != "__label__"}
                p = model.predict_one(raw)
                rid = uuid.uuid4().hex
                labels.append((rid, row["__label__"]))
                log.observe({"time": 1e9 + len(labels), "request_id": rid, "model": "base", "version": 1,
                             "queue_s": 0.0002, "preprocess_s": 0.0001, "invoke_s": 0.0003,
                             "instances": [raw], "predictions": [{"label": p.label, "index": p.index,
                                                                  "confidence": p.confidence}]})
    with RequestLog(LogConfig(folder), {}) as log:
        for rid, label in labels:
            log.record_feedback(rid, label)


@pytest.mark.slow
def test_monitor_results_make_a_monitoring_section(tabular_run: RunDir, tmp_path: Path) -> None:
    from edgeship.export.stage import ExportConfig, export_run

    run = copy_run(tabular_run, tmp_path / "runs")
    export_run(run, ExportConfig(formats="tflite", quantize="float32"))
    with open(run.path / "data" / "test_raw.csv", newline="") as fh:
        rows = [{k: float(v) if k != "__label__" else v for k, v in r.items()} for r in csv.DictReader(fh)]
    replay(run, tmp_path / "logs", rows, [1.0, 1.0, 1.5, 1.5])
    judged = invoke(run.path.parent, "monitor", run.id, "--from", str(tmp_path / "logs"), "--window",
                    str(len(rows)), "--device-id", "pi-emulated-edgeship-pi-abc123")
    assert judged.exit_code == 3, judged.output
    (run.path / "monitor" / "junk.json").write_text(json.dumps({"kind": "monitor", "schema_version": 1}))
    shown = invoke(run.path.parent, "report", run.id, "--format", "md")
    assert shown.exit_code == 0, shown.output
    md = shown.stdout
    mon = md.split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    heading = mon.split("### ", 1)[1].splitlines()[0]
    assert heading.startswith("pi-emulated-edgeship-pi-abc123: model base") and EMULATED in heading
    assert "drifted: alcohol (windows 2, 3)" in mon and "'ash'" not in mon
    assert re.search(r"live accuracy \d+\.\d% on \d+ labels \(test split \d+\.\d%\)", mon), mon
    windows = [ln for ln in mon.splitlines() if re.match(r"\| [0-3] \|", ln)]
    assert len(windows) == 4 and "alcohol" not in windows[0] and "| alcohol |" in windows[2]
    assert "- skipped monitor/junk.json: no device_id; no model; windows is not a list" in mon
    (png,) = re.findall(r"\]\((report-plots/monitor-[^)]+\.png)\)", mon)
    assert (run.path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (run.path / "report.html").read_text()
    section = page.split("<h2 id='monitoring'>", 1)[1].split("<h2 ", 1)[0]
    assert "class='plot monitoring' src='data:image/png;base64," in section
    assert "drifted: alcohol" in section and "live accuracy" in section and EMULATED in section
