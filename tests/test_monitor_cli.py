"""``edgeship monitor`` and ``edgeship train --add-feedback`` on a real run: logs written by the
device's request log from real predictions of an exported artifact, judged against the run."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from _models import copy_run
from click.testing import CliRunner

from edge_runtime.model import EdgeModel
from edge_runtime.serve.requestlog import LogConfig, RequestLog
from edgeship.cli import cli
from edgeship.core.runstore import RunDir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wine(tabular_run: RunDir, tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """The wine run with TFLite float32 and int8 exports (two model versions to serve)."""
    from edgeship.export.stage import ExportConfig, export_run

    run = copy_run(tabular_run, tmp_path_factory.mktemp("monitor-runs"))
    export_run(run, ExportConfig(formats="tflite", quantize="float32,int8"))
    return run


def held_out_rows(run: RunDir) -> list[dict[str, Any]]:
    with open(run.path / "data" / "test_raw.csv", newline="") as fh:
        return [{k: float(v) if k != "__label__" else v for k, v in row.items()}
                for row in csv.DictReader(fh)]


def replay(run: RunDir, folder: Path, rows: list[dict[str, Any]], *, mode: str = "raw",
           fmt: str = "tflite-float32", scale: dict[str, float] | None = None, t0: float = 1e9) -> list[str]:
    """Predict each row with the exported artifact and log it as the server does; the request ids."""
    model = EdgeModel.load(run.path / "exports" / "base" / fmt)
    ids = []
    with RequestLog(LogConfig(folder, inputs=mode), {"base": model.artifact}) as log:
        for i, row in enumerate(rows):
            raw = {k: v * (scale or {}).get(k, 1.0) for k, v in row.items() if k != "__label__"}
            p = model.predict_one(raw)
            rid = uuid.uuid4().hex
            ids.append(rid)
            log.observe({"time": t0 + i, "request_id": rid, "model": "base", "version": 1,
                         "queue_s": 0.0002, "preprocess_s": 0.0001, "invoke_s": 0.0003, "instances": [raw],
                         "predictions": [{"label": p.label, "index": p.index, "confidence": p.confidence}]})
    return ids


def monitor(run: RunDir, folder: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["monitor", str(run.path), "--from", str(folder), *args],
                              catch_exceptions=False)


def test_quiet_stream_passes_and_a_scaled_feature_exits_3_naming_it(wine: RunDir, tmp_path: Path) -> None:
    rows = held_out_rows(wine)
    n = str(len(rows))
    replay(wine, tmp_path / "quiet", rows)
    quiet = monitor(wine, tmp_path / "quiet", "--window", n, "--json")
    assert quiet.exit_code == 0, quiet.output
    result = json.loads(quiet.stdout)
    assert result["alert"] is False and "no drift" in result["verdict"][0]
    (saved,) = result["files"]
    stored = json.loads(Path(saved).read_text())
    assert stored["schema_version"] == 1 and stored["device_id"] == "local"
    assert stored["model"]["sha256"] == json.loads(
        (wine.path / "exports/base/tflite-float32/artifact.json").read_text())["sha256"]
    assert stored["windows"][0]["features"]["alcohol"]["test"] == "ks"
    for mode in ("raw", "summary"):
        replay(wine, tmp_path / mode, rows, mode=mode, scale={"alcohol": 1.5})
        shifted = monitor(wine, tmp_path / mode, "--window", n, "--device-id", f"pi-{mode}")
        assert shifted.exit_code == 3, shifted.output
        assert "feature 'alcohol' drifted" in shifted.output
        assert "'ash'" not in shifted.output, shifted.output  # only the scaled feature is named
    saved_names = sorted(p.name.split("-")[0:2] for p in (wine.path / "monitor").glob("*.json"))
    assert [n[0] if n[0] == "local" else n[1] for n in saved_names] == ["local", "raw", "summary"]


def test_versions_feedback_and_bad_input(wine: RunDir, tmp_path: Path) -> None:
    rows = held_out_rows(wine)
    folder = tmp_path / "logs"
    ids = replay(wine, folder, rows, fmt="tflite-float32")
    replay(wine, folder, rows, fmt="tflite-int8", t0=2e9)  # an update to the int8 model
    with RequestLog(LogConfig(folder), {}) as log:
        for rid, row in zip(ids, rows, strict=True):
            log.record_feedback(rid, row["__label__"])
    (folder / "requests-000001.jsonl").open("a").write('{"time": 5, "truncated')
    result = monitor(wine, folder, "--window", str(len(rows)), "--json", "--no-save")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    shas = [r["model"]["sha256"] for r in out["results"]]
    assert len(set(shas)) == 2, "two model versions, judged apart"
    first = out["results"][0]
    assert first["log"]["corrupt_lines"] == 1 and first["log"]["feedback"] == len(rows)
    accuracy = first["windows"][0]["accuracy"]
    assert accuracy["labels"] == len(rows) and accuracy["live"] == first["reference"]["test_accuracy"]
    assert "accuracy" not in out["results"][1]["windows"][0]  # the int8 requests have no feedback
    assert out["results"][1]["reference"]["clipped"] is not None  # int8: calibration's clipping
    for args, message in [(["--window", "100000"], "larger than the log"), (["--window", "0"], "--window"),
                          (["--slo-ms", "0"], "--slo-ms")]:
        bad = monitor(wine, folder, *args)
        assert bad.exit_code == 2 and message in bad.output, bad.output
        assert "Traceback" not in bad.output
    empty = monitor(wine, tmp_path / "empty-but-there")
    assert empty.exit_code == 2 and "no such folder" in empty.output
    (tmp_path / "none").mkdir()
    assert "no request logs" in monitor(wine, tmp_path / "none").output


def test_retrain_with_feedback_records_its_lineage(wine: RunDir, tmp_path: Path) -> None:
    rows = held_out_rows(wine)[:12]
    summary, raw = tmp_path / "summary", tmp_path / "raw"
    for folder, mode in ((summary, "summary"), (raw, "raw")):
        ids = replay(wine, folder, rows, mode=mode)
        with RequestLog(LogConfig(folder), {}) as log:
            for rid, row in zip(ids, rows, strict=True):
                log.record_feedback(rid, row["__label__"])
    runs = wine.path.parent
    refused = CliRunner().invoke(cli, ["--runs-dir", str(runs), "train", "--from", str(wine.path),
                                       "--add-feedback", str(summary)])
    assert refused.exit_code == 2 and "--log-inputs raw" in refused.output, refused.output
    lonely = CliRunner().invoke(cli, ["--runs-dir", str(runs), "train", "--add-feedback", str(raw)])
    assert lonely.exit_code == 2 and "--from" in lonely.output
    done = CliRunner().invoke(cli, ["--runs-dir", str(runs), "train", "--from", str(wine.path),
                                    "--add-feedback", str(raw), "--json"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    new = RunDir(out["run_dir"])
    lineage = new.manifest["lineage"]
    assert lineage["parent_run"] == wine.id and lineage["feedback"]["rows_added"] == 12
    (used,) = [f for f in lineage["feedback"]["files"] if f["path"].startswith("requests-")]
    assert used["used"] == 12 and len(used["sha256"]) == 64
    old_sizes = wine.manifest["data"]["split"]["sizes"]
    assert new.manifest["data"]["split"]["sizes"]["train"] == old_sizes["train"] + 12
    assert new.manifest["data"]["split"]["sizes"]["test"] == old_sizes["test"]


def test_drift_suite_smoke(tmp_path: Path) -> None:
    """benchmarks/suites/drift.py on its smallest setting prints every figure it promises."""
    import os
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "160",
           "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-m", "edgeship.benchmarks.suites.drift", "--smoke", "--json",
                           str(tmp_path / "figures.json")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for name in ("breast_cancer summary", "breast_cancer raw", "digits summary"):
        assert re.search(rf"^  {name}\s+\d+/\d+ windows = \d+\.\d%", out, re.MULTILINE), out
    for name in ("'mean radius' x1.5", "priors 80% malignant", "digits inverted"):
        assert re.search(rf"{re.escape(name)}.*(requests \(window \d+\)|no alert)", out), out
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["window"] == 200 and len(figures["shifted"]) == 3
