"""The benchmark harness: the result schema, storing results, the host driver on real exports,
``edgeship bench`` and its dispatch to other devices, and a device run without TensorFlow.

Percentiles and the timing loop itself are tested in test_edge_runtime.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _models import exported_copy
from clihelp import assert_one_line_error, invoke, invoke_json

from edge_runtime import EdgeModel, InputError
from edge_runtime.result import (
    LATENCY_KEYS,
    SCHEMA_VERSION,
    ResultSchemaError,
    require_valid,
    result_name,
    validate_result,
)
from edge_runtime.timing import device_kind, peak_rss_mb
from edgeship.benchmarks.harness import BenchSettings, parse_threads, select_artifacts
from edgeship.benchmarks.store import load_results, save_results
from edgeship.core.errors import InputError as EdgeshipInputError
from edgeship.core.errors import RunError
from edgeship.core.runstore import RunDir, RunStore
from edgeship.devices import registry
from edgeship.devices.options import PiOptions
from edgeship.devices.registry import DriverUnavailableError, get_driver

ROOT = Path(__file__).resolve().parent.parent


def fake_result(**over: Any) -> dict[str, Any]:
    """A schema-valid result with made-up numbers."""
    r: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "on": "host", "model": "cnn", "variant": "base",
        "artifact": "exports/base/tflite-int8", "format": "tflite", "quantize": "int8",
        "backend": "ai-edge-litert", "backend_version": "2.3.0", "threads": 1, "warmup": 2, "runs": 5,
        "latency_ms": {"mean": 0.3, "std": 0.1, "min": 0.1, "p50": 0.3, "p90": 0.4, "p95": 0.45,
                       "p99": 0.5, "max": 0.5},
        "end_to_end_ms": None, "init_ms": 10.0, "first_ms": 1.0, "peak_rss_mb": 50.0, "bytes": 1000,
        "accuracy": 0.97, "samples_ms": [0.1, 0.2, 0.3, 0.4, 0.5],
        "device": {"cpu_model": "x", "cores": 2, "arch": "x86_64", "os": "Debian", "python": "3.11",
                   "governor": None, "emulated": False, "hostname": "box", "machine_id": "abc"},
        "device_id": "host-box-000000", "rounds": 5, "p50_ci_ms": [0.28, 0.33], "calls_per_sample": 1,
        "clock_step_ms": 6e-05, "accuracy_source": "device",
    }
    r.update(over)
    p50 = r["latency_ms"].get("p50") if isinstance(r.get("latency_ms"), dict) else None
    if "p50_ci_ms" not in over and isinstance(p50, float) and p50 == p50:
        r["p50_ci_ms"] = [round(p50 * 0.95, 6), round(p50 * 1.05, 6)]
    return r


def v1_result(**over: Any) -> dict[str, Any]:
    """A result as schema 1 wrote it: no rounds, no interval, no device id."""
    r = fake_result(schema_version=1, **over)
    for k in ("device_id", "rounds", "p50_ci_ms", "calls_per_sample", "clock_step_ms", "accuracy_source"):
        r.pop(k)
    return r


def empty_run(root: Path) -> RunDir:
    with RunStore(root).new_run("fake", seed=0) as run:
        pass
    return run


# ---------------------------------------------------------------- schema (fast)


def test_a_valid_result_has_no_problems() -> None:
    assert validate_result(fake_result()) == []
    assert validate_result(fake_result(threads=None, accuracy=None, bytes=None, peak_rss_mb=None)) == []
    assert require_valid(fake_result())["on"] == "host"


@pytest.mark.parametrize(("change", "needle"), [
    ({"on": "cloud"}, "on must be one of host, browser, pi"),
    ({"schema_version": 3}, "schema_version must be one of (1, 2)"),
    ({"rounds": 0}, "rounds must be an integer >= 1"),
    ({"p50_ci_ms": [0.4, 0.2]}, "p50_ci_ms must be [lo, hi]"),
    ({"p50_ci_ms": [0.31, 0.4]}, "p50 (0.3) lies outside its interval"),
    ({"calls_per_sample": 0}, "calls_per_sample must be an integer >= 1"),
    ({"clock_step_ms": 0}, "clock_step_ms must be a number > 0"),
    ({"accuracy_source": "guess"}, "accuracy_source must be one of"),
    ({"format": "coreml"}, "format must be one of"),
    ({"threads": 0}, "threads must be an integer >= 1 or null"),
    ({"runs": 0}, "runs must be an integer >= 1"),
    ({"accuracy": 97.0}, "accuracy must be a fraction in [0, 1]"),
    ({"bytes": -1}, "bytes must be a positive integer"),
    ({"latency_ms": {"p50": 1.0}}, "latency_ms lacks mean, std, min"),
    ({"latency_ms": {**dict.fromkeys(LATENCY_KEYS, 1.0), "p50": float("nan")}}, "latency_ms.p50 must be"),
    ({"latency_ms": {**dict.fromkeys(LATENCY_KEYS, 1.0), "p90": 0.5}}, "p50 (1.0) > p90 (0.5)"),
    ({"device": {"cpu_model": "x"}}, "device lacks cores, arch"),
    ({"device": {**fake_result()["device"], "emulated": "yes"}}, "device.emulated must be true or false"),
    ({"samples_ms": [1, -1]}, "samples_ms must be a list of numbers >= 0"),
])
def test_each_schema_problem_is_named(change: dict[str, Any], needle: str) -> None:
    problems = validate_result(fake_result(**change))
    assert any(needle in p for p in problems), problems
    with pytest.raises(ResultSchemaError, match="does not follow schema 2"):
        require_valid(fake_result(**change))


def test_missing_fields_and_non_objects() -> None:
    r = fake_result()
    del r["latency_ms"], r["device"]
    assert validate_result(r)[0] == "missing latency_ms, device"
    assert validate_result([1]) == ["a result must be a JSON object, got list"]


def test_result_names_are_stable_and_carry_the_device_id() -> None:
    assert result_name(fake_result()) == "host-box-000000-base-tflite-int8-t1"
    assert result_name(fake_result(threads=None, artifact="/abs/exports/pruned/onnx-float32",
                                   variant="pruned")) == "host-box-000000-pruned-onnx-float32-tauto"
    emu = v1_result(on="pi", device={**fake_result()["device"], "emulated": True})
    assert result_name(emu) == "pi-emulated-base-tflite-int8-t1"  # schema 1: no device id


def test_two_pis_with_one_host_name_get_two_ids_and_two_files(tmp_path: Path) -> None:
    from edge_runtime.result import device_id

    facts = {**fake_result()["device"], "hostname": "raspberrypi", "board": "Raspberry Pi 4 Model B"}
    a = device_id("pi", {**facts, "machine_id": "111111111111"})
    b = device_id("pi", {**facts, "machine_id": "222222222222"})
    emulated = device_id("pi", {**facts, "machine_id": "111111111111", "emulated": True})
    assert a != b and a.startswith("pi-raspberrypi-") and emulated.startswith("pi-emulated-raspberrypi-")
    assert a == device_id("pi", {**facts, "machine_id": "111111111111"})  # stable
    run = empty_run(tmp_path)
    first = fake_result(on="pi", device_id=a, device={**facts, "machine_id": "111111111111"})
    second = fake_result(on="pi", device_id=b, device={**facts, "machine_id": "222222222222"})
    save_results(run, [first], label="pi a")
    save_results(run, [second], label="pi b")  # a second Pi: the first's file stays
    stored = load_results(run, strict=True)
    assert sorted(r["device_id"] for r in stored) == sorted([a, b])


def test_a_schema_1_result_is_read_and_upgraded(tmp_path: Path) -> None:
    from edge_runtime.result import upgrade_result

    old = v1_result()
    assert validate_result(old) == []
    up = upgrade_result(old)
    assert up["rounds"] == 1 and up["p50_ci_ms"] is None and up["accuracy_source"] == "export validation"
    assert up["device_id"].startswith("host-box-") and validate_result(up) == []
    run = empty_run(tmp_path)
    (run.path / "bench").mkdir()
    (run.path / "bench" / "host-base-tflite-int8-t1.json").write_text(json.dumps(old))
    (loaded,) = load_results(run, strict=True)
    assert loaded["rounds"] == 1 and loaded["p50_ci_ms"] is None


def test_device_kind_from_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGESHIP_DEVICE", raising=False)
    assert device_kind() in ("host", "pi")  # pi only on a Raspberry Pi board
    assert device_kind("browser") == "browser"
    monkeypatch.setenv("EDGESHIP_DEVICE", "pi")
    assert device_kind() == "pi" and device_kind("host") == "host"
    monkeypatch.setenv("EDGESHIP_DEVICE", "phone")
    with pytest.raises(InputError, match="device kind must be one of host, browser, pi, got 'phone'"):
        device_kind()


def test_parse_threads() -> None:
    assert parse_threads("1,2") == (1, 2) and parse_threads(4) == (4,) and parse_threads([2, 2, 1]) == (2, 1)
    for bad, needle in (("0", "threads must be 1 or more"), ("a", "'a' is not a number"), ("", "no thread")):
        with pytest.raises(EdgeshipInputError, match=needle):
            parse_threads(bad)


# ---------------------------------------------------------------- the store (fast)


def test_save_replaces_same_name_and_keeps_others(tmp_path: Path) -> None:
    run = empty_run(tmp_path)
    one = fake_result()
    two = fake_result(threads=2, latency_ms={**one["latency_ms"], "p50": 0.35})
    paths = save_results(run, [one, two], label="host")
    assert [p.name for p in paths] == ["host-box-000000-base-tflite-int8-t1.json",
                                       "host-box-000000-base-tflite-int8-t2.json"]
    again = fake_result(latency_ms={**one["latency_ms"], "p50": 0.2})
    save_results(run, [again], label="host again")
    loaded = {Path(r["file"]).name: r for r in load_results(run)}
    assert set(loaded) == {p.name for p in paths}
    assert loaded["host-box-000000-base-tflite-int8-t1.json"]["latency_ms"]["p50"] == 0.2
    assert loaded["host-box-000000-base-tflite-int8-t1.json"]["label"] == "host again"
    assert loaded["host-box-000000-base-tflite-int8-t2.json"]["label"] == "host"
    stages = run.stages("bench")
    assert len(stages) == 2 and stages[1]["params"]["label"] == "host again"
    assert stages[0]["metrics"]["results"] == 2


def test_invalid_or_duplicate_results_write_nothing(tmp_path: Path) -> None:
    run = empty_run(tmp_path)
    with pytest.raises(EdgeshipInputError, match=r"host/base/exports/base/tflite-int8 does not follow.*runs"):
        save_results(run, [fake_result(), fake_result(runs=0, threads=3)], label="host")
    with pytest.raises(EdgeshipInputError,
                       match="two results would share bench/host-box-000000-base-tflite-int8-t1"):
        save_results(run, [fake_result(), fake_result()], label="host")
    with pytest.raises(EdgeshipInputError, match="no benchmark results"):
        save_results(run, [], label="host")
    assert not (run.path / "bench").exists() and run.stages("bench") == []


def test_load_skips_or_names_a_damaged_file(tmp_path: Path) -> None:
    run = empty_run(tmp_path)
    save_results(run, [fake_result()], label="host")
    (run.path / "bench" / "broken.json").write_text("{not json")
    assert len(load_results(run)) == 1
    with pytest.raises(RunError, match=r"broken\.json is not readable JSON"):
        load_results(run, strict=True)


# ---------------------------------------------------------------- dispatch (fast)


def test_a_missing_driver_is_one_clean_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(registry.DRIVERS, "browser", ("no_such_module:bench_browser", "not yet"))
    monkeypatch.setitem(registry.DRIVERS, "pi", ("test_bench:no_such_function", "not yet"))
    with pytest.raises(DriverUnavailableError, match=r"needs no_such_module:bench_browser, which is"):
        get_driver("browser")
    run = empty_run(tmp_path / "runs")
    assert_one_line_error(invoke(tmp_path / "runs", "bench", run.id, "--on", "browser"), "not yet")
    assert_one_line_error(invoke(tmp_path / "runs", "bench", run.id, "--on", "pi", "--emulated"),
                          "does not define yet")


RECORDED: dict[str, Any] = {}


def fake_pi_driver(run: RunDir, settings: BenchSettings, options: PiOptions, *, progress: Any = None,
                   log: Any = None) -> list[dict[str, Any]]:
    """Stands in for edgeship.devices.pi_driver:bench_pi."""
    RECORDED.clear()
    RECORDED.update(settings=settings, options=options, log=log)
    progress.update(1, "fake")
    device = {**fake_result()["device"], "arch": "aarch64", "emulated": options.emulated}
    return [fake_result(on="pi", threads=t, device=device, runs=settings.runs) for t in settings.threads]


def test_pi_options_pass_through_and_results_are_stored(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setitem(registry.DRIVERS, "pi", ("test_bench:fake_pi_driver", ""))
    run = empty_run(tmp_path / "runs")
    out = invoke_json(tmp_path / "runs", "bench", run.id, "--on", "pi", "--emulated", "--runs", "7",
                      "--threads", "1,4", "--port", "2222", "--identity", "key", "--accept-new-host-key",
                      "--format", "tflite-int8")
    assert [r["threads"] for r in out["results"]] == [1, 4]
    assert RECORDED["options"] == PiOptions(emulated=True, port=2222, identity="key",
                                            accept_new_host_key=True)
    assert RECORDED["settings"] == BenchSettings(formats="tflite-int8", threads=(1, 4), runs=7)
    assert callable(RECORDED["log"])
    names = sorted(p.name for p in (run.path / "bench").iterdir())
    assert names == ["host-box-000000-base-tflite-int8-t1.json", "host-box-000000-base-tflite-int8-t4.json"]
    assert run.stages("bench")[-1]["params"]["label"] == "pi emulated"


@pytest.mark.parametrize(("args", "needles"), [
    (["--runs", "0"], ["--runs", "0 is not in the range x>=1"]),
    (["--warmup", "-1"], ["--warmup", "-1 is not in the range x>=0"]),
    (["--rounds", "0"], ["--rounds", "0 is not in the range x>=1"]),
    (["--threads", "0"], ["threads must be 1 or more"]),
    (["--emulated"], ["--emulated goes with --on pi"]),
    ([], ["has no exports", "edgeship export"]),
])
def test_bad_bench_flags_are_one_line(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    run = empty_run(tmp_path / "runs")
    assert_one_line_error(invoke(tmp_path / "runs", "bench", run.id, *args), *needles)


# ---------------------------------------------------------------- real exports (slow)


@pytest.fixture(scope="module")
def exported(digits_run: RunDir, tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """The session's digits exports plus an untuned TVM host build, in a private copy."""
    from edgeship.export.stage import ExportConfig, export_run

    shared, _ = exported_copy(digits_run, tmp_path_factory)
    dst = tmp_path_factory.mktemp("bench-digits") / "runs" / shared.path.name
    shutil.copytree(shared.path, dst)
    run = RunDir(dst)
    export_run(run, ExportConfig(formats="tvm", trials=0))
    return run


@pytest.fixture()
def run_copy(exported: RunDir, tmp_path: Path) -> RunDir:
    dst = tmp_path / "runs" / exported.path.name
    shutil.copytree(exported.path, dst)
    return RunDir(dst)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tflite-float32", "tflite-int8", "onnx-float32", "tvm-host"])
def test_each_backend_gives_the_export_validations_predictions(exported: RunDir, name: str) -> None:
    folder = exported.path / "exports" / "base" / name
    meta = json.loads((folder / "artifact.json").read_text())
    with np.load(exported.path / "data/splits.npz") as npz:
        x, y = npz["x_test"], npz["y_test"]
    probs = EdgeModel.load(folder, threads=1).infer(x)
    assert float((probs.argmax(1) == y).mean()) == meta["validation"]["accuracy"]


@pytest.mark.slow
def test_bench_host_gives_valid_results_for_every_backend(exported: RunDir) -> None:
    from edgeship.devices.host import bench_host

    seen: list[str] = []

    class Bar:
        def update(self, advance: int = 1, status: str = "") -> None:
            seen.append(status)

    settings = BenchSettings(formats="tflite-int8,onnx-float32,tvm", threads=(1, 2), runs=20, warmup=2,
                             rounds=2)
    results = bench_host(exported, settings, progress=Bar())
    ours = peak_rss_mb()  # this process holds TensorFlow: far bigger than one runtime
    assert len(results) == 6 and len(seen) == 12  # two rounds of six
    assert all(r["rounds"] == 2 and r["p50_ci_ms"] for r in results)
    assert all(r["accuracy_source"] == "device" for r in results)
    assert {(r["format"], r["threads"]) for r in results} == {
        (f, t) for f in ("tflite", "onnx", "tvm") for t in (1, 2)}
    for r in results:
        assert validate_result(r) == [], r["artifact"]
        assert r["on"] == "host" and r["device"]["emulated"] is False and r["runs"] == 20
        assert r["artifact"].startswith("exports/base/") and r["run_id"] == exported.id
        assert len(r["samples_ms"]) == 40 and r["end_to_end_ms"]["p50"] > 0
        assert 0 < r["peak_rss_mb"] < ours, "peak RSS must be the measuring process's own, not ours"
        assert r["init_ms"] > 0 and 0 < r["accuracy"] <= 1
    assert {r["backend"] for r in results} == {"ai-edge-litert", "onnxruntime", "apache-tvm"}


@pytest.mark.slow
def test_failed_and_foreign_arch_exports_are_skipped(run_copy: RunDir) -> None:
    base = run_copy.path / "exports" / "base"
    os.replace(base / "onnx-int8", base / "onnx-int8.failed")
    pi = shutil.copytree(base / "tvm-host", base / "tvm-rpi4")
    meta = json.loads((pi / "artifact.json").read_text())
    meta["target"] = {"name": "rpi4", "arch": "aarch64"}
    (pi / "artifact.json").write_text(json.dumps(meta))
    notes: list[str] = []
    chosen = {a.name for a in select_artifacts(run_copy, "base", "onnx,tvm", log=notes.append)}
    assert chosen == {"onnx-float32", "tvm-host"}
    assert any("onnx-int8.failed: it failed export validation" in n for n in notes)
    assert any("tvm-rpi4: built for aarch64" in n and "--on pi" in n for n in notes)
    with pytest.raises(EdgeshipInputError, match="no export matches --format coreml; this run has"):
        select_artifacts(run_copy, "all", "coreml")
    with pytest.raises(EdgeshipInputError, match="no exports of variant 'nope'"):
        select_artifacts(run_copy, "nope", "all")


@pytest.mark.slow
def test_cli_bench_stores_and_prints_results(run_copy: RunDir) -> None:
    runs = run_copy.path.parent
    out = invoke_json(runs, "bench", run_copy.id, "--format", "tflite-float32,tflite-int8", "--threads",
                      "1", "--runs", "20", "--warmup", "2")
    assert len(out["results"]) == 2 and all(validate_result(r) == [] for r in out["results"])
    files = sorted(p.name for p in (run_copy.path / "bench").iterdir())
    device = out["results"][0]["device_id"]
    assert files == [f"{device}-base-tflite-float32-t1.json", f"{device}-base-tflite-int8-t1.json"]
    assert all(r["rounds"] == 5 and r["p50_ci_ms"] and r["accuracy_source"] == "device"
               and r["top1_agreement"] is not None for r in out["results"])
    table = invoke(runs, "bench", run_copy.id, "--format", "onnx-float32", "--threads", "1", "--runs", "20")
    assert table.exit_code == 0 and "onnx-float32" in table.stdout and "p50" in table.stdout
    assert len(list((run_copy.path / "bench").iterdir())) == 3


@pytest.mark.slow
def test_bad_artifacts_are_one_line_errors(run_copy: RunDir, tmp_path: Path) -> None:
    from edgeship.devices.host import HostBenchError, bench_artifact

    (tmp_path / "empty").mkdir()
    with pytest.raises(HostBenchError, match=r"has no artifact\.json"):
        bench_artifact(tmp_path / "empty", runs=5)
    model = run_copy.path / "exports" / "base" / "tflite-int8" / "model.tflite"
    model.write_bytes(model.read_bytes() + b"x")
    result = invoke(run_copy.path.parent, "bench", run_copy.id, "--format", "tflite-int8", "--runs", "5")
    assert_one_line_error(result, "does not match artifact.json", "altered or truncated")
    assert not (run_copy.path / "bench").exists()


_BLOCK_TF = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras", "keras", "edgeship", "export", "training"):
            raise ImportError(name + " is not on this device")
sys.meta_path.insert(0, Block())
sys.argv = ["edge_runtime", *sys.argv[1:]]
runpy.run_module("edge_runtime", run_name="__main__")
"""


@pytest.mark.slow
def test_device_bench_on_a_copied_artifact_without_tensorflow(exported: RunDir, tmp_path: Path) -> None:
    device = tmp_path / "device"
    shutil.copytree(ROOT / "edge_runtime", device / "edge_runtime",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(exported.path / "exports" / "base" / "tflite-int8", device / "digits-int8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(EDGESHIP_DEVICE="pi", EDGESHIP_EMULATED="1")
    done = subprocess.run([sys.executable, "-c", _BLOCK_TF, "bench", "digits-int8", "--runs", "20",
                           "--warmup", "2", "--threads", "1", "--json"],
                          cwd=device, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert validate_result(r) == []
    assert r["on"] == "pi" and r["device"]["emulated"] is True and r["artifact"].endswith("digits-int8")
    assert result_name(r) == f"{r['device_id']}-base-digits-int8-t1"
    assert r["device_id"].startswith("pi-emulated-")
