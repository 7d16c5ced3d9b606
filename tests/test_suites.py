"""Smoke tests of the benchmark suites: each runs for real, on its ``--smoke`` setting, in a fresh process.

The figures of a smoke run say nothing about speed (a few calls on a briefly trained model);
these tests check that every suite runs to the end and prints the ratios it promises.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _browser import browser_or_skip
from _models import copy_run

from edgeship.core.runstore import RunDir

ROOT = Path(__file__).resolve().parents[1]
RATIO = r"(\d+\.\d+)x"

pytestmark = pytest.mark.slow


def run_suite(name: str, *args: str, cwd: Path) -> str:
    """``python -m edgeship.benchmarks.suites.<name> *args``; its stdout, after checking it exited 0."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONIOENCODING": "utf-8", "COLUMNS": "160"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-m", f"edgeship.benchmarks.suites.{name}", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def ratios(pattern: str, text: str) -> list[float]:
    """The numbers of the first line matching ``pattern`` (a regex with groups), as floats."""
    m = re.search(pattern, text, re.MULTILINE)
    assert m, f"no line matching {pattern!r} in:\n{text}"
    return [float(g) for g in m.groups()]


def test_reference_suite_smoke(tmp_path: Path) -> None:
    out = run_suite("reference", "--smoke", "--out", str(tmp_path), cwd=tmp_path)
    int8_f32, ort_tflite = ratios(rf"^digits\s+{RATIO}\s+{RATIO}\s+not measured\s+not measured", out)
    assert 0 < int8_f32 < 100 and 0 < ort_tflite < 100
    p50s = ratios(r"^digits\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+-\s+-$", out)
    assert all(p > 0 for p in p50s)
    (overhead,) = ratios(r"^  digits\s+\d+\.\d+ ms / \d+\.\d+ ms = (\d+\.\d+)x\s+(?:ok|OVER TARGET)$", out)
    assert overhead > 0
    cold = ratios(rf"^  digits\s+time \d+ ms / \d+ ms = {RATIO}\s+peak RSS \S+ MB / \S+ MB = {RATIO}", out)
    assert all(r > 0 for r in cold)
    (run,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in (run / "bench").glob("*.json")), "the timings are stored in the run"


def test_browser_suite_smoke(tmp_path: Path) -> None:
    browser_or_skip()
    out = run_suite("browser", "--smoke", "--out", str(tmp_path), cwd=tmp_path)
    for q in ("fp32", "int8"):
        for runtime in ("litert", "onnxruntime", "litert.js", "onnxruntime-web"):
            figures = ratios(rf"^  {q} {re.escape(runtime)}\s+(\d+\.\d+)\s+(\d+\.\d+)\s+{RATIO}$", out)
            assert len(figures) == 3 and all(f > 0 for f in figures), (q, runtime)
    for t in (1, 2):
        (ratio,) = ratios(rf"^  target t{t}: best browser '[^']+' \S+ ms / fastest native '[^']+' \S+ ms = "
                          rf"{RATIO}; <= 3.0x: (?:MET|NOT MET)$", out)
        assert ratio > 0
    (gain,) = ratios(rf"^  target 2nd thread: faster runtime '[^']+' t1 \S+ -> t2 \S+ ms = {RATIO}", out)
    assert gain > 0
    assert "relaxed SIMD" in out and "WebGPU" in out
    assert (tmp_path / "results.json").is_file()


def test_export_suite_smoke(tmp_path: Path) -> None:
    out = run_suite("export", "--smoke", "--cache-dir", str(tmp_path / "cache"),
                    "--json", str(tmp_path / "results.json"), cwd=tmp_path)
    for fmt in ("tflite-float32", "tflite-int8", "onnx", "tvm-untuned", "tvm-tuned"):
        assert re.search(rf"{fmt}\W+[\d,.]+ KB\W+\d+\.\d s", out), f"no {fmt} row in:\n{out}"
    (untuned,) = ratios(r"TVM tuned / untuned\s+= (\d+\.\d+)\s+\(target <= 0\.3: (?:met|NOT met)\)", out)
    (tflite,) = ratios(r"TVM tuned / TFLite f32\s+= (\d+\.\d+)\s+\(target <= 1\.0: (?:met|NOT met)\)", out)
    assert untuned > 0 and tflite > 0
    assert (tmp_path / "results.json").is_file()


def test_fleet_suite_smoke(tmp_path: Path) -> None:
    out = run_suite("fleet", "--smoke", "--json", str(tmp_path / "fleet.json"), cwd=tmp_path)
    one, two = ratios(r"^  1 device\s+(\d+\.\d) s\n  2 devices (\d+\.\d) s$", out)
    (speedup,) = ratios(rf"^  target 2 devices >= 1\.6x faster: {RATIO}: (?:MET|NOT MET)$", out)
    assert one > 0 and two > 0 and speedup > 0
    assert "tuned vs untuned rpi4 build: skipped (--trials 0)" in out
    assert (tmp_path / "fleet.json").is_file()


def test_compression_suite_smoke(tmp_path: Path) -> None:
    out = run_suite("compression", "--smoke", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    for variant in ("int8", "prune75"):  # ... TFLite B, gzip B, x float32, gzip x f32 gzip, wall s
        size, gzip_size = ratios(rf"^\W*{variant}\W.*\W(\d\.\d{{3}})\W+(\d\.\d{{3}})\W+\d+\W*$", out)
        assert 0 < size <= 1.5 and 0 < gzip_size <= 1.5
    (int8,) = ratios(r"int8 <= 0\.30x float32 size\W+(?:yes|no)\W+(\d\.\d{3})x", out)
    assert int8 < 0.5, "int8 weights take about a quarter of float32's bytes"


def test_real_models_suite_smoke(tmp_path: Path) -> None:
    out = run_suite("real_models", "--smoke", "--runs-dir", str(tmp_path / "real"), cwd=tmp_path)
    for model in ("mobilenetv2 alpha 0.35", "small cnn", "baseline zero-rule",
                  "baseline logistic-regression"):
        (acc,) = ratios(rf"^  {re.escape(model)}\s+(\d\.\d{{4}})", out)
        assert 0 <= acc <= 1, model
    sparsity, size = ratios(r"^prune 0\.5 \+ int8 \(\S+\): sparsity (\d\.\d{3}) \(pruned layers; "
                            rf".* int8 size {RATIO} float32", out)
    assert 0 < sparsity < 1 and 0 < size < 1
    through, listed = ratios(r"^  (\d+) of (\d+) go through$", out)
    assert listed == 1 and 0 <= through <= 1  # each application family has its own test (test_stock_models)
    assert re.search(r"^  LSTM\s+[\d,]+\s+\d\.\d{3}/\d+\s", out, re.MULTILINE), "no zoo row for the LSTM"
    assert "every zoo model goes through or stops in one line" in out and ": BUG " not in out
    assert re.search(r"^  every zoo model validates, or fails in one line naming a layer: \d+/1 validated",
                     out, re.MULTILINE)
    assert re.search(r"^  MobileNetV2 test accuracy >= 0\.90: \d\.\d{4}: (?:MET|NOT MET)$", out, re.MULTILINE)


def test_stability_smoke(digits_run: RunDir, tmp_path: Path) -> None:
    """The real suite on its smoke setting: the figures it prints agree with its own table (the
    overlap share with the yes/NO column, the spreads with the spread columns) and the level of
    its 2-round intervals is stated (50 %)."""
    from edgeship.export.stage import ExportConfig, export_run

    run = copy_run(digits_run, tmp_path)
    export_run(run, ExportConfig(formats="tflite"))
    out = run_suite("stability", str(run.path), "--smoke", cwd=tmp_path)
    pairs = re.findall(r"^\S+ base/tflite-(?:float32|int8) t([12])\s+\d+\.\d+\s+\d+\.\d+\s+(yes|NO|-)\s+"
                       r"(\d+\.\d+)x\s+(\d+\.\d+)x$", out, re.MULTILINE)
    assert sorted(p[0] for p in pairs) == ["1", "1", "2", "2"], out
    first, second = ratios(rf"^ship this on \S+: first .+ \((?:same|DIFFERENT)\); recommended p50 / "
                           rf"fastest within budget: {RATIO}, {RATIO}$", out)
    assert first >= 1.0 and second >= 1.0  # never faster than the fastest within the budget
    overlap, median, largest = ratios(
        r"^intervals overlapping: (\d+)% of 4 \(target >= 90 %\); p50 spread "
        rf"across rounds: median {RATIO}, max {RATIO}; interval level: 50\.00%$", out)
    judged = [p[1] for p in pairs if p[1] != "-"]
    assert overlap == round(100 * judged.count("yes") / len(judged))
    spreads = sorted(float(x) for p in pairs for x in p[2:])
    assert abs(largest - spreads[-1]) <= 0.011 and abs(median - (spreads[3] + spreads[4]) / 2) <= 0.011
    assert not (run.path / "bench").exists(), "nothing is stored in the run"


def test_stability_figures_from_fixed_sessions() -> None:
    """``compare_sessions`` on two fixed sessions: the two int8 artifacts' point p50s swap inside
    overlapping intervals (noise), so the recommendation must not follow them; float32 moved
    beyond its interval."""
    from test_report import result

    from edgeship.benchmarks.suites.stability import compare_sessions

    def session(base: float, pruned: float, f32: float, spread: float) -> list[dict]:
        return [result(variant="base", artifact="tflite-int8", p50=base, bytes=12_000,
                       round_p50_ms=[base, base * spread]),
                result(variant="pruned", artifact="tflite-int8", p50=pruned, bytes=11_000,
                       round_p50_ms=[pruned, pruned * 1.02]),
                result(variant="base", artifact="tflite-float32", p50=f32, bytes=40_000,
                       round_p50_ms=[f32, f32 * 1.01])]

    stats = compare_sessions(session(0.100, 0.102, 0.300, 1.04), session(0.102, 0.100, 0.200, 1.10))
    assert [p["overlap"] for p in stats["pairs"]] == [True, True, False]
    assert stats["overlap_fraction"] == pytest.approx(2 / 3)
    assert stats["spread_median"] == pytest.approx(1.02) and stats["spread_max"] == pytest.approx(1.10)
    [device] = stats["devices"]
    assert device["first"] == device["second"] == ("pruned/tflite-int8", 1) and device["same"]
    assert device["tied_first"] == ["base/tflite-int8"] and device["tied_second"] == ["base/tflite-int8"]
    assert device["ratio_first"] == pytest.approx(1.02) and device["ratio_second"] == pytest.approx(1.0)
    assert stats["ci_levels"] == [0.9375]
