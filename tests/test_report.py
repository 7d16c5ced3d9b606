"""``edgeship report``: per-device tables sorted by p50, verdicts, flags, emulation labels, and a
self-contained HTML page; on stored results made up here and on a real digits run."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmarks.report import EMULATED, build_report, render_markdown, write_report
from benchmarks.store import save_results
from edgeship.runstore import RunDir, RunStore
from tests._models import exported_copy
from tests.clihelp import assert_one_line_error, invoke
from tests.test_bench import fake_result


def lat(p50: float) -> dict[str, float]:
    return {"mean": p50 * 1.02, "std": p50 * 0.05, "min": p50 * 0.9, "p50": p50, "p90": p50 * 1.1,
            "p95": p50 * 1.15, "p99": p50 * 1.3, "max": p50 * 1.6}


def result(on: str = "host", *, variant: str, artifact: str, p50: float, **over: Any) -> dict[str, Any]:
    fmt, _, quant = artifact.partition("-")
    quant = quant.split("-")[0] or "float32"  # web is float32, web-int8 int8, tflite-int8-fio int8
    fields = {"samples_ms": [p50 * f for f in (0.9, 0.95, 1.0, 1.0, 1.05, 1.1, 1.6)], **over}
    return fake_result(on=on, variant=variant, artifact=f"exports/{variant}/{artifact}", format=fmt,
                       quantize=quant, latency_ms=lat(p50), **fields)


@pytest.fixture()
def measured(tmp_path: Path) -> RunDir:
    """A run with a pruned variant and results from the host, a browser and an emulated Pi."""
    with RunStore(tmp_path / "runs").new_run("fake", seed=0) as run, run.stage("compress") as st:
        folder = st.output_dir("variants/pruned")
        metrics = {"test_accuracy": 0.96, "accuracy_delta": -0.01, "sparsity": 0.5, "params": 1000,
                   "nonzero_params": 500, "tflite_bytes": 4000, "tflite_gzip_bytes": 2000,
                   "deploy_form": "float32", "applied": ["prune"]}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        st.set_section("variants", {"pruned": {"dir": "variants/pruned", "parent": "base",
                                               "passes": ["prune"]}})
    pi = {**fake_result()["device"], "arch": "aarch64", "emulated": True, "cpu_model": "Cortex-A72"}
    save_results(run, [
        result(variant="base", artifact="tflite-float32", p50=0.25, bytes=4000),
        result(variant="base", artifact="tflite-int8", p50=0.32, bytes=1200),  # int8 slower: keep float32
        result(variant="pruned", artifact="tflite-float32", p50=0.30, bytes=4000, accuracy=0.96),
    ], label="host")
    web = {"on": "browser", "backend": "onnxruntime-web", "browser": "chromium", "browser_version": "156",
           "peak_rss_mb": None}
    save_results(run, [result(variant="base", artifact="web", p50=2.0, samples_ms=None, **web),
                       result(variant="base", artifact="web-int8", p50=1.0, **web)], label="browser")
    save_results(run, [result("pi", variant="base", artifact="tflite-float32", p50=5.0, device=pi)],
                 label="pi emulated")
    return run


def test_devices_rows_verdicts_and_flags(measured: RunDir) -> None:
    rep = build_report(measured)
    assert [d.key for d in rep.devices] == ["host", "browser", "pi-emulated"]
    host = rep.devices[0]
    assert [r.name for r in host.rows] == ["base/tflite-float32", "pruned/tflite-float32", "base/tflite-int8"]
    flags = {r.name: r.flags for r in host.rows}
    assert flags["base/tflite-float32"] == []
    assert flags["pruned/tflite-float32"] == ["+20% p50 vs parent base"]
    assert flags["base/tflite-int8"] == ["int8 +28% p50 vs float32"]
    text = " ".join(host.verdicts)
    assert "fastest here: base/tflite-float32, 1 thread at p50 250.0 us" in text
    assert "int8 is slower than float32 on this CPU" in text and "keep float32 here" in text
    assert "FLAGGED" in text and "base/tflite-int8 (t1)" in text and "pruned/tflite-float32 (t1)" in text
    pi = rep.devices[2]
    assert pi.emulated and EMULATED in pi.title and all(v.startswith(EMULATED) for v in pi.verdicts)
    browser = rep.devices[1]
    assert not browser.emulated and "chromium 156" in browser.title
    assert any("web: int8 is 2.0x faster than float32" in v for v in browser.verdicts), browser.verdicts
    names = [c["variant"] for c in rep.compression]
    assert names == ["base", "pruned"] and rep.compression[1]["passes"] == "prune"


def test_html_is_one_self_contained_file(measured: RunDir) -> None:
    files = write_report(measured)
    page = files["html"].read_text()
    assert page.count("class='flag artifact-row'") == 2 and page.count("artifact-row") == 6
    assert page.count("class='plot pareto'") == 3  # one per device
    for name in ("base-tflite-float32", "base-tflite-int8", "pruned-tflite-float32", "base-web",
                 "base-web-int8"):
        assert f"id='dist-{name}'" in page and f"href='#dist-{name}'" in page
    assert page.count("data:image/png;base64,") == 8
    assert not re.search(r"""(src|href)=['"](https?:|//)""", page) and "<link" not in page
    assert EMULATED in page and "onnxruntime-web" in page and "Compression" in page
    assert "Cortex-A72" in page and "Environment" in page
    assert [p.name for p in measured.path.iterdir() if p.name.startswith(".report")] == []
    md = files["md"].read_text()
    assert md == render_markdown(build_report(measured)) + "\n"
    assert "| base | tflite-int8 |" in md and EMULATED in md and "keep float32 here" in md


def test_cli_formats(measured: RunDir) -> None:
    runs = measured.path.parent
    table = invoke(runs, "report", measured.id)
    assert table.exit_code == 0, table.stderr
    assert "fastest here" in table.stdout and "emulated" in table.stdout and "report.html" in table.stdout
    rows = list(csv.DictReader(io.StringIO(invoke(runs, "report", measured.id, "--format", "csv").stdout)))
    assert len(rows) == 6 and rows[0]["device"] == "host" and rows[0]["p50"] == "0.25"
    assert {r["emulated"] for r in rows} == {"True", "False"}
    data = json.loads(invoke(runs, "report", measured.id, "--format", "json").stdout)
    assert [d["device"] for d in data["devices"]] == ["host", "browser", "pi-emulated"]
    assert "samples" not in data["devices"][0]["rows"][0]
    assert invoke(runs, "report", measured.id, "--format", "html").stdout.startswith("<!doctype html>")


def test_no_results_is_one_line(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs").new_run("fake", seed=0) as run:
        pass
    assert_one_line_error(invoke(tmp_path / "runs", "report", run.id), "no benchmark results",
                          f"edgeship bench {run.id}")
    assert_one_line_error(invoke(tmp_path / "runs", "report", "nope"), "no run 'nope'")


@pytest.mark.slow
def test_bench_then_report_on_a_digits_run(digits_run: RunDir, tmp_path: Path,
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    shared, _ = exported_copy(digits_run, tmp_path_factory)
    dst = tmp_path / "runs" / shared.path.name
    shutil.copytree(shared.path, dst)
    run = RunDir(dst)
    done = invoke(dst.parent, "bench", run.id, "--format", "tflite-float32,tflite-int8,onnx-float32",
                  "--threads", "1", "--runs", "20", "--warmup", "2")
    assert done.exit_code == 0, done.stderr
    shown = invoke(dst.parent, "report", run.id)
    assert shown.exit_code == 0 and "fastest here" in shown.stdout
    page = (dst / "report.html").read_text()
    assert page.count("artifact-row") == 3
    for name in ("tflite-float32", "tflite-int8", "onnx-float32"):
        assert f"id='dist-base-{name}'" in page
    assert page.count("data:image/png;base64,") == 4
    assert "ai-edge-litert" in page and "onnxruntime" in page and (dst / "report.md").is_file()
