"""The browser end to end: ``edgeship export --format web``, ``edgeship demo``, ``bench --on browser``.

The digits run comes from conftest (``edgeship train``); everything runs in a private copy of
it, in real headless Chromium against native onnxruntime.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _browser import browser_or_skip
from clihelp import assert_one_line_error, invoke, invoke_json

from edgeship.benchmarks.harness import BenchSettings
from edgeship.core.errors import MissingDependencyError
from edgeship.core.fsutil import sha256_file
from edgeship.core.runstore import RunDir

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _copy(run: RunDir, root: Path) -> RunDir:
    dst = root / run.path.name
    shutil.copytree(run.path, dst)
    return RunDir(dst)


@pytest.fixture(scope="module")
def web_run(digits_run: RunDir, tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """The digits run with ONNX and web exports, float32 and int8, made through the CLI."""
    browser_or_skip()
    run = _copy(digits_run, tmp_path_factory.mktemp("web-runs"))
    doc = invoke_json(run.path.parent, "export", run.id, "--format", "onnx,web", "--quantize", "float32,int8")
    assert [a["dir"].rsplit("/", 1)[-1] for a in doc["artifacts"]] == [
        "onnx-float32", "onnx-int8", "web", "web-int8"]
    assert all(a["validation"]["passed"] for a in doc["artifacts"])
    return run


# ---------------------------------------------------------------- export --format web


def test_export_web_bundle_is_validated_and_complete(web_run: RunDir) -> None:
    folder = web_run.path / "exports/base/web"
    meta = json.loads((folder / "artifact.json").read_text())
    bundle = json.loads((folder / "bundle.json").read_text())
    test_raw = np.load(web_run.path / "data/test_raw.npz")
    # Validated like every export: the bundle's own model file, run natively through edge_runtime.
    v = meta["validation"]
    assert meta["format"] == "web" and meta["quantize"] == "float32"
    assert v["passed"] and v["validated_as"] == "onnx" and v["criterion"] == "max_abs_diff"
    assert v["top1_agreement"] == 1.0 and v["samples"] == len(test_raw["y"])
    assert meta["sha256"] == sha256_file(folder / "model.onnx")
    # Every file of the bundle is listed with its sha256, in bundle.json and artifact.json.
    for name, entry in bundle["files"].items():
        assert sha256_file(folder / name) == entry["sha256"], name
    assert meta["bundle"]["files"] == bundle["files"]
    assert set(bundle["files"]) >= {"index.html", "app.js", "model.onnx", "ort-wasm-simd-threaded.wasm"}
    # The raw test split rides along for the page's example picker.
    assert bundle["examples"]["x"] == test_raw["x"].astype(int).tolist()
    assert bundle["examples"]["y"] == test_raw["y"].tolist()
    assert bundle["preprocessing"] == web_run.manifest["data"]["preprocessing"]
    # The browser-friendly rewrite happened and onnxruntime-web can read the IR.
    assert meta["web"]["rewrites"][0].startswith("drop_flatten_transpose: 1")
    assert meta["web"]["ir_version"] <= 13
    import onnx

    ops = [n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node]
    assert "Transpose" not in ops
    int8 = json.loads((web_run.path / "exports/base/web-int8/artifact.json").read_text())
    assert int8["quantize"] == "int8" and int8["validation"]["passed"]
    assert int8["validation"]["criterion"] == "accuracy_drop"
    assert int8["web"]["source_sha256"] == sha256_file(web_run.path / "exports/base/onnx-int8/model.onnx")
    assert int8["web"]["rewrites"][0].startswith("qdq_activations_to_uint8")  # same grid, exact
    onnx_int8 = json.loads((web_run.path / "exports/base/onnx-int8/artifact.json").read_text())["validation"]
    for key in ("accuracy", "top1_agreement"):
        assert int8["validation"][key] == onnx_int8[key]
    stage = web_run.last_stage("export")
    assert "exports/base/web/bundle.json" in {o["path"] for o in stage["outputs"]}


def test_export_web_builds_its_onnx_source_and_carries_both_runtimes(
    digits_run: RunDir, tmp_path: Path
) -> None:
    """``--format web`` alone: the ONNX export it is built from is made too, and the bundle holds
    the batch-1 TFLite model LiteRT.js needs, validated through native LiteRT."""
    run = _copy(digits_run, tmp_path)
    doc = invoke_json(tmp_path, "export", run.id, "--format", "web")
    assert [a["dir"].rsplit("/", 1)[-1] for a in doc["artifacts"]] == ["onnx-float32", "web"]
    assert all(a["validation"]["passed"] for a in doc["artifacts"])
    folder = run.path / "exports/base/web"
    bundle = json.loads((folder / "bundle.json").read_text())
    litert = bundle["runtimes"]["litert.js"]
    assert bundle["runtimes"]["onnxruntime-web"]["available"] and litert["available"]
    assert litert["version"] == "2.5.3" and litert["input"]["shape"] == [1, 8, 8, 1]  # static batch
    assert litert["validation"]["passed"] and litert["validation"]["top1_agreement"] == 1.0
    shipped = {"model.tflite", "litert.mjs", "litert-wasm-utils.mjs", "litert_wasm_threaded_internal.wasm"}
    assert shipped <= set(bundle["files"])
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(folder / "model.tflite")).get_input_details()[0]
    assert list(details["shape_signature"]) == [1, 8, 8, 1]


def test_export_web_litert_only_needs_no_onnx(digits_run: RunDir, tmp_path: Path) -> None:
    run = _copy(digits_run, tmp_path)
    doc = invoke_json(tmp_path, "export", run.id, "--format", "web", "--web-runtime", "litert",
                      "--quantize", "int8")
    assert [a["dir"].rsplit("/", 1)[-1] for a in doc["artifacts"]] == ["web-int8"]
    folder = run.path / "exports/base/web-int8"
    meta = json.loads((folder / "artifact.json").read_text())
    assert meta["validation"]["passed"] and meta["validation"]["validated_as"] == "tflite"
    assert meta["file"] == "model.tflite"
    bundle = json.loads((folder / "bundle.json").read_text())
    assert bundle["runtimes"]["onnxruntime-web"] == {
        "available": False, "reason": "not asked for (--web-runtime litert)"}
    assert "model.onnx" not in bundle["files"] and bundle["default_runtime"] == "litert.js"
    assert not (run.path / "exports/base/onnx-int8").exists()


# ---------------------------------------------------------------- edgeship demo


def _sigint_as_at_a_terminal() -> None:
    """The demo gets Ctrl-C as at a terminal, even if this test run inherited SIGINT ignored
    (a background job of a non-interactive shell passes that on to every child)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_demo(runs_dir: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeship", "--runs-dir", str(runs_dir), "demo", *args, "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_sigint_as_at_a_terminal,
    )
    text = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        text += line
        try:
            return proc, json.loads(text)
        except ValueError:
            continue
    proc.kill()
    raise AssertionError(f"edgeship demo printed no address: {text!r} {proc.stderr.read()!r}")  # type: ignore[union-attr]


def test_demo_serves_the_bundle_and_stops_on_ctrl_c(web_run: RunDir) -> None:
    proc, info = _start_demo(web_run.path.parent, web_run.id, "--port", "0")
    try:
        assert info["bundle"].endswith("exports/base/web") and info["url"].startswith("http://127.0.0.1:")
        conn = http.client.HTTPConnection("127.0.0.1", info["port"], timeout=10)
        conn.request("GET", "/")
        r = conn.getresponse()
        page = r.read().decode()
        assert r.status == 200 and "edgeship" in page
        assert r.getheader("Cross-Origin-Embedder-Policy") == "require-corp"
        conn.request("GET", "/bundle.json")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["metadata"]["run_id"] == web_run.id
        conn.request("GET", "/../manifest.json")
        r = conn.getresponse()
        r.read()
        assert r.status == 404  # nothing outside the bundle, not even the run's manifest
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=15)
    assert code == 0, proc.stderr.read()  # type: ignore[union-attr]
    with socket.socket() as s:  # the port was released (REUSEADDR only skips TIME_WAIT, not a listener)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", info["port"]))


def test_demo_port_in_use_suggests_another(web_run: RunDir) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = invoke(web_run.path.parent, "demo", web_run.id, "--port", str(port))
    line = assert_one_line_error(result, f"port {port} on 127.0.0.1 is in use", "try --port ")
    suggested = int(line.split("try --port ")[1].split()[0])
    assert suggested != port


def test_demo_without_a_bundle_names_the_command(digits_run: RunDir, tmp_path: Path) -> None:
    run = _copy(digits_run, tmp_path)
    result = invoke(tmp_path, "demo", run.id)
    assert_one_line_error(result, "no web bundle", f"edgeship export {run.id} --format web`")


# ---------------------------------------------------------------- bench --on browser


def test_bench_browser_is_schema_valid_isolated_and_matches_native(web_run: RunDir) -> None:
    from edge_runtime.result import validate_result
    from edgeship.devices.browser.session import bench_browser

    class Bar:
        def __init__(self) -> None:
            self.steps: list[str] = []

        def update(self, advance: int = 1, status: str = "") -> None:
            self.steps.append(status)

    bar = Bar()
    results = bench_browser(web_run, BenchSettings(threads=(1, 2), runs=30, warmup=3, rounds=2), progress=bar)
    assert [(r["artifact"], r["threads"]) for r in results] == [
        (f"exports/base/{b}-{rt}", t)
        for b in ("web", "web-int8") for rt in ("ort", "litert") for t in (1, 2)]
    assert len(bar.steps) == 16  # two rounds of eight pages (2 bundles x 2 runtimes x 2 threads), one browser
    versions = {"onnxruntime-web": "1.30.0", "litert.js": "2.5.3"}
    for r in results:
        meta = json.loads((web_run.path / r["bundle"] / "artifact.json").read_text())
        native_acc = (meta["validation"] if r["backend"] == "onnxruntime-web"
                      else meta["web_runtimes"]["litert.js"]["validation"])["accuracy"]
        assert validate_result(r) == []
        assert r["on"] == "browser" and r["format"] == "web" and r["runtime"] == r["backend"]
        assert r["backend_version"] == versions[r["backend"]] and r["accelerator"] == "wasm"
        litert_ep = "XNNPACK (WebAssembly)" + (", threaded build" if r["threads"] > 1 else "")
        assert r["execution_provider"] == ("CPUExecutionProvider" if r["backend"] == "onnxruntime-web"
                                           else litert_ep)
        assert r["cross_origin_isolated"] is True and r["simd"] is True
        assert any("WebGPU" in n for n in r["notes"])  # no adapter here: said in one line, not faked
        assert r["browser_version"].split(".")[0].isdigit()
        assert r["runs"] == 30 and len(r["samples_ms"]) == 60 and r["end_to_end_ms"]["p50"] > 0
        assert r["rounds"] == 2 and r["p50_ci_ms"] is not None and r["device_id"].startswith("browser-")
        assert r["clock_step_ms"] == pytest.approx(0.005)  # isolated: performance.now() steps by 5 us
        assert r["calls_per_sample"] * r["latency_ms"]["p50"] >= 100 * r["clock_step_ms"] * 0.5
        assert r["init_ms"] > 0 and r["first_ms"] > 0
        ev = r["evaluation"]
        assert ev["samples"] == len(np.load(web_run.path / "data/test_raw.npz")["y"])
        assert r["accuracy_source"] == "device" and r["top1_agreement"] >= 0.95
        # The page's preprocessing and WebAssembly give the native runtime's accuracy on the same file.
        # (XNNPACK in WebAssembly and natively may round one borderline int8 row apart: one row at most)
        assert abs(r["accuracy"] - native_acc) <= 1 / ev["samples"] + 1e-9
    assert [r["threads_requested"] for r in results] == [1, 2] * 4


def test_bench_on_browser_through_the_cli_stores_results(web_run: RunDir) -> None:
    from edgeship.benchmarks.store import load_results

    doc = invoke_json(web_run.path.parent, "bench", web_run.id, "--on", "browser", "--threads", "2",
                      "--runs", "20", "--warmup", "2")
    assert {r["artifact"] for r in doc["results"]} == {
        f"exports/base/{b}-{rt}" for b in ("web", "web-int8") for rt in ("ort", "litert")}
    stored = [r for r in load_results(web_run) if r["on"] == "browser"]
    assert len(stored) == 4 and all(r["threads"] == 2 and r["cross_origin_isolated"] for r in stored)
    assert web_run.last_stage("bench")["params"]["on"] == ["browser"]
    from edgeship.report import recommendations

    # Each bundle now knows which runtime the report's "ship this" rule picks here (the fastest,
    # or among those tied with it the smallest file): its page opens with that one.
    for b in ("web", "web-int8"):
        m = json.loads((web_run.path / "exports/base" / b / "measurements.json").read_text())
        mine = [r for r in stored if r["bundle"] == f"exports/base/{b}"]
        (pick,) = recommendations(mine)
        chosen = next(r for r in mine if r["artifact"].rsplit("/", 1)[-1] == pick["artifact"])
        assert m["recommended"]["runtime"] == chosen["runtime"] and len(m["results"]) == 2

    (rec,) = [x for x in recommendations(stored) if x["kind"] == "browser"]
    assert rec["backend"] in ("litert.js", "onnxruntime-web")
    assert rec["runner_up"] is not None or len(rec["tied_with"]) == 3  # every other one named: tied or not


def test_bench_browser_names_the_package_when_chromium_is_missing(web_run: RunDir, tmp_path: Path) -> None:
    from edgeship.devices.browser.session import bench_browser
    from edgeship.devices.options import BrowserOptions

    with pytest.raises(MissingDependencyError, match=r"Debian package `chromium`"):
        bench_browser(web_run, BenchSettings(threads=(1,), runs=1),
                      BrowserOptions(chromium=tmp_path / "no-chromium"))


def test_screenshot_of_the_exported_demo(web_run: RunDir, tmp_path: Path) -> None:
    """The page a person sees: a test example picked, its top-3, the environment; saved as a PNG."""
    from edgeship.devices.browser.chromium import BrowserDriver

    with BrowserDriver(web_run.path / "exports/base/web") as driver:
        demo = driver.open(threads=2)
        page = demo.page
        page.select_option("#examples", "0")
        page.wait_for_function("document.querySelectorAll('#top3 li').length === 3", timeout=10_000)
        assert "true label" in page.inner_text("#result-meta")
        assert "yes" in page.inner_text("#env")  # cross-origin isolated / SIMD shown
        shot = demo.screenshot(tmp_path / "edgeship-demo.png")
        demo.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("EDGESHIP_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["EDGESHIP_SCREENSHOT_DIR"]) / shot.name)


def test_tabular_run_bundles_its_raw_rows_and_matches_native(tabular_run: RunDir, tmp_path: Path) -> None:
    """A table: raw CSV rows ride in bundle.json, and the page's own preprocessing agrees with native."""
    browser_or_skip()
    import csv

    from edgeship.devices.browser.session import bench_browser

    run = _copy(tabular_run, tmp_path)
    doc = invoke_json(tmp_path, "export", run.id, "--format", "onnx,web")
    assert all(a["validation"]["passed"] for a in doc["artifacts"])
    bundle = json.loads((run.path / "exports/base/web/bundle.json").read_text())
    with open(run.path / "data/test_raw.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c["name"] for c in bundle["preprocessing"]["columns"]]
    assert len(bundle["examples"]["x"]) == len(rows)
    assert bundle["examples"]["x"][0] == [float(rows[0][c]) for c in columns]
    labels = bundle["labels"]
    assert [labels[i] for i in bundle["examples"]["y"]] == [r["__label__"] for r in rows]
    results = bench_browser(run, BenchSettings(threads=(1,), runs=10, warmup=1, rounds=2))
    assert sorted(r["backend"] for r in results) == ["litert.js", "onnxruntime-web"]  # a table: both run
    meta = json.loads((run.path / "exports/base/web/artifact.json").read_text())
    for r in results:
        assert r["top1_agreement"] == 1.0 and r["evaluation"]["samples"] == len(rows)
        native = (meta["validation"] if r["backend"] == "onnxruntime-web"
                  else meta["web_runtimes"]["litert.js"]["validation"])
        assert r["accuracy"] == pytest.approx(native["accuracy"])
