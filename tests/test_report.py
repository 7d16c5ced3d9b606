"""``edgeship report``: per-device-id sections sorted by p50, verdicts only where p50 intervals
separate, "ship this" per device, a terminal table that fits 120 columns, emulation labels, a
self-contained HTML page, old (schema 1) results; on results made up here and on a real run."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from _models import exported_copy
from clihelp import assert_one_line_error, invoke
from rich.console import Console

from edge_runtime.result import device_id, validate_result
from edgeship.benchmarks.store import save_results
from edgeship.core.runstore import RunDir, RunStore
from edgeship.report import (
    EMULATED,
    NO_DIFFERENCE,
    NO_INTERVAL,
    build_report,
    compare,
    device_table,
    print_report,
    recommendations,
    render_markdown,
    write_report,
)
from edgeship.report.terminal import legend

CI_METHOD = "order-statistic (distribution-free) interval for the median of round p50s, test"


def lat(p50: float) -> dict[str, float]:
    return {"mean": p50 * 1.02, "std": p50 * 0.05, "min": p50 * 0.9, "p50": p50, "p90": p50 * 1.1,
            "p95": p50 * 1.15, "p99": p50 * 1.3, "max": p50 * 1.6}


def facts(**over: Any) -> dict[str, Any]:
    return {"cpu_model": "Xeon", "cores": 2, "arch": "x86_64", "os": "Debian", "python": "3.11",
            "governor": None, "emulated": False, "hostname": "devbox", **over}


def result(on: str = "host", *, variant: str, artifact: str, p50: float, ci: Any = "auto",
           **over: Any) -> dict[str, Any]:
    """A schema 2 result; ``ci`` defaults to p50 +- 3 % (5 rounds); None: one round."""
    fmt, _, quant = artifact.partition("-")
    quant = quant.split("-")[0] or "float32"  # web is float32, web-int8 int8, tflite-int8-fio int8
    interval = [round(p50 * 0.97, 6), round(p50 * 1.03, 6)] if ci == "auto" else ci
    device = over.pop("device", None) or facts()
    r: dict[str, Any] = {
        "schema_version": 2, "on": on, "device_id": device_id(on, {**device, **_browser(over)}),
        "model": "cnn", "variant": variant, "artifact": f"exports/{variant}/{artifact}", "format": fmt,
        "quantize": quant, "backend": "ai-edge-litert", "backend_version": "2.3.0", "threads": 1,
        "warmup": 2, "runs": 7, "rounds": 1 if interval is None else 5, "latency_ms": lat(p50),
        "p50_ci_ms": interval, "ci_method": CI_METHOD if interval else "none: one round",
        "ci_level": 0.9375 if interval else None,
        "calls_per_sample": 4, "clock_step_ms": 0.000001,
        "tail_ms": {"p50": p50, "p90": p50 * 1.2, "p99": p50 * 2, "max": p50 * 3, "samples": 50},
        "end_to_end_ms": None, "init_ms": 10.0, "first_ms": 1.0, "peak_rss_mb": 50.0, "bytes": 1000,
        "accuracy": 0.97, "accuracy_source": "device", "top1_agreement": 1.0,
        "samples_ms": [p50 * f for f in (0.9, 0.95, 1.0, 1.0, 1.05, 1.1, 1.6)], "device": device,
    }
    r.update(over)
    assert validate_result(r) == [], validate_result(r)
    return r


def _browser(over: dict[str, Any]) -> dict[str, Any]:
    return {k: over[k] for k in ("browser", "browser_version") if k in over}


WEB = {"on": "browser", "backend": "onnxruntime-web", "browser": "chromium", "browser_version": "156",
       "peak_rss_mb": None}
PI = facts(arch="aarch64", emulated=True, cpu_model="Cortex-A72", hostname="edgeship-pi")


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
    save_results(run, [
        result(variant="base", artifact="tflite-float32", p50=0.25, bytes=4000),
        result(variant="base", artifact="tflite-int8", p50=0.32, bytes=1200, accuracy=0.965),
        result(variant="pruned", artifact="tflite-float32", p50=0.30, bytes=4000, accuracy=0.96),
        # overlaps its float32 (0.30) and its parent's int8 (0.32): no flag, "no measurable difference"
        result(variant="pruned", artifact="tflite-int8", p50=0.305, bytes=1200, accuracy=0.95),
    ], label="host")
    save_results(run, [result(variant="base", artifact="web", p50=2.0, samples_ms=None, **WEB),
                       result(variant="base", artifact="web-int8", p50=1.0, **WEB)], label="browser")
    save_results(run, [result("pi", variant="base", artifact="tflite-float32", p50=5.0, device=PI)],
                 label="pi emulated")
    return run


# ---------------------------------------------------------------- compare (pure)

OVERLAPPING = ([0.0089, 0.0094], [0.0091, 0.0097])
SEPARATED = ([0.0089, 0.0094], [0.0120, 0.0131])


def test_compare_on_fixed_intervals() -> None:
    a, b = OVERLAPPING
    assert compare(a, b) == "same" and compare(b, a) == "same"
    a, b = SEPARATED
    assert compare(a, b) == "faster" and compare(b, a) == "slower"
    assert compare([1.0, 2.0], [2.0, 3.0]) == "same"  # touching intervals share a point
    assert compare(None, b) is None and compare(a, None) is None  # one round: no verdict


# Two fixed sample sets per case: five rounds of seven samples (ms per call).
ROUNDS_A = [[1.00, 1.02, 0.99, 1.01, 1.03, 0.98, 1.00], [1.01, 1.00, 1.02, 0.99, 1.04, 1.00, 1.01],
            [0.99, 1.00, 1.01, 1.00, 0.98, 1.02, 1.03], [1.02, 1.01, 1.00, 0.99, 1.00, 1.01, 1.05],
            [1.00, 0.99, 1.01, 1.02, 1.00, 1.00, 0.97]]
ROUNDS_NEAR = [[v + 0.005 for v in r] for r in ROUNDS_A]  # 0.5 % slower: inside the noise
ROUNDS_FAR = [[v * 1.25 for v in r] for r in ROUNDS_A]  # 25 % slower


def test_compare_on_order_statistic_intervals_of_fixed_samples() -> None:
    from edge_runtime import stats  # the project's own module: an import error fails, never skips

    a = stats.p50_interval(ROUNDS_A)
    assert a == pytest.approx((1.00, 1.01))  # five rounds: the lowest and highest round p50
    near, far = stats.p50_interval(ROUNDS_NEAR), stats.p50_interval(ROUNDS_FAR)
    assert compare(a, near) == "same" and compare(near, a) == "same"
    assert compare(a, far) == "faster" and compare(far, a) == "slower"
    assert stats.p50_interval(ROUNDS_A[:1]) is None and compare(None, far) is None


# ---------------------------------------------------------------- the report model


def test_devices_rows_verdicts_and_flags(measured: RunDir) -> None:
    rep = build_report(measured)
    kinds = [(d.kind, d.emulated) for d in rep.devices]
    assert kinds == [("host", False), ("browser", False), ("pi", True)]
    host = rep.devices[0]
    assert host.key == device_id("host", facts()) and host.key.startswith("host-devbox-")
    assert host.title.startswith(f"{host.key}: host devbox, Xeon (x86_64, 2 cores)")
    assert [r.name for r in host.rows] == ["base/tflite-float32", "pruned/tflite-float32",
                                           "pruned/tflite-int8", "base/tflite-int8"]
    flags = {r.name: r.flags for r in host.rows}
    assert flags["base/tflite-float32"] == []
    assert flags["pruned/tflite-float32"] == ["+20% p50 vs parent base (intervals separate)"]
    assert flags["base/tflite-int8"] == ["int8 +28% p50 vs float32 (intervals separate)"]
    assert flags["pruned/tflite-int8"] == []  # overlaps both references
    codes = {r.name: "".join(r.codes) for r in host.rows}
    assert codes == {"base/tflite-float32": "R", "pruned/tflite-float32": "S", "pruned/tflite-int8": "",
                     "base/tflite-int8": "Q"}
    text = " ".join(host.verdicts)
    assert "fastest here: base/tflite-float32, 1 thread at p50 0.250 ms [0.242, 0.258]" in text
    assert "faster than the next artifact, pruned/tflite-float32 t1" in text
    assert "int8 is slower than float32 on this CPU" in text and "keep float32 here" in text
    assert "FLAGGED" in text and "base/tflite-int8 (t1)" in text and "pruned/tflite-float32 (t1)" in text
    assert (f"compression steps with {NO_DIFFERENCE} from what they started from: "
            "pruned/tflite-int8 t1 vs base/tflite-int8, pruned/tflite-int8 t1 vs pruned/tflite-float32"
            ) in text
    pi = rep.devices[2]
    assert pi.emulated and EMULATED in pi.title and all(v.startswith(EMULATED) for v in pi.verdicts)
    assert "pi edgeship-pi, Cortex-A72 (aarch64" in pi.title and pi.rows[0].codes == ["R", "E"]
    browser = rep.devices[1]
    assert not browser.emulated and "chromium 156" in browser.title and browser.key.startswith("browser-")
    assert any("web: int8 is 2.0x faster than float32 in this browser" in v for v in browser.verdicts)
    names = [c["variant"] for c in rep.compression]
    assert names == ["base", "pruned"] and rep.compression[1]["passes"] == "prune"


def test_an_int8_with_layers_in_float_is_flagged(measured: RunDir) -> None:
    """Export's selective int8 (full int8 failed validation) is not full int8's speed or size:
    the row says so wherever it is shown."""
    folder = measured.path / "exports" / "pruned" / "tflite-int8"
    folder.mkdir(parents=True)
    (folder / "artifact.json").write_text(json.dumps({"format": "tflite", "variant": "pruned",
                                                      "int8_float_layers": ["conv1", "conv2"]}))
    host = build_report(measured).devices[0]
    rows = {r.name: r for r in host.rows}
    said = "int8 with 2 layers kept in float (full int8 failed validation)"
    assert rows["pruned/tflite-int8"].flags == [said]
    assert "F" in rows["pruned/tflite-int8"].codes and "F" not in rows["base/tflite-int8"].codes
    assert "F int8 with some layers kept in float" in legend(host)


def test_overlapping_intervals_give_no_verdict(tmp_path: Path) -> None:
    """int8 vs float32, two thread counts, the fastest pair: all overlap, so no claim is made."""
    with RunStore(tmp_path / "runs").new_run("fake", seed=0) as run:
        pass
    save_results(run, [
        result(variant="base", artifact="tflite-float32", p50=0.100, bytes=4000),
        result(variant="base", artifact="tflite-float32", p50=0.101, threads=2, bytes=4000),
        result(variant="base", artifact="tflite-int8", p50=0.102, bytes=1200),
        result(variant="base", artifact="tflite-int8", p50=0.103, threads=2, bytes=1200),
    ], label="host")
    verdicts = build_report(run).devices[0].verdicts
    text = " ".join(verdicts)
    assert f"{NO_DIFFERENCE} from the next artifact, base/tflite-int8 t1" in text
    assert f"tflite: int8 vs float32: {NO_DIFFERENCE} on this CPU" in text and "int8 is smaller" in text
    assert f"threads: {NO_DIFFERENCE} between 1 and 2 threads for 2 of 2 artifacts" in text
    for claim in ("faster than", "slower than", "do not pay off", "FLAGGED", "x faster"):
        assert claim not in text, verdicts


def test_threads_verdict_needs_separate_intervals(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs").new_run("fake", seed=0) as run:
        pass
    save_results(run, [result(variant="base", artifact="tflite-int8", p50=0.1),
                       result(variant="base", artifact="tflite-int8", p50=0.2, threads=2)], label="host")
    text = " ".join(build_report(run).devices[0].verdicts)
    assert "more threads do not pay off here: 2 threads were measurably slower than 1" in text


def test_two_device_ids_two_sections_and_a_shared_id_is_not_merged(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs").new_run("fake", seed=0) as run:
        pass
    other = facts(hostname="ci-runner", cpu_model="EPYC")
    save_results(run, [result(variant="base", artifact="tflite-int8", p50=0.2),
                       result(variant="base", artifact="tflite-int8", p50=0.1, device=other)], label="host")
    rep = build_report(run)
    ids = sorted([device_id("host", facts()), device_id("host", other)])
    assert sorted(d.key for d in rep.devices) == ids
    assert all(len(d.rows) == 1 and d.note is None for d in rep.devices)
    assert len(rep.recommendations) == 2
    assert {"host devbox, Xeon", "host ci-runner, EPYC"} == {d.title.split(": ")[1].split(" (")[0]
                                                             for d in rep.devices}
    # Two Pis that claim one id (e.g. set by hand) but differ in their facts: two sections, one note.
    shared = "pi-raspberrypi-000000"
    pis = [result("pi", variant="base", artifact="tflite-int8", p50=p, device_id=shared,
                  device=facts(hostname="raspberrypi", arch="aarch64", cpu_model=cpu, board=board))
           for p, cpu, board in ((5.0, "Cortex-A72", "Raspberry Pi 4"),
                                 (3.0, "Cortex-A76", "Raspberry Pi 5"))]
    rows = recommendations(pis)
    assert [r["device"] for r in rows] == [f"{shared}#1", f"{shared}#2"]
    (run.path / "bench" / "pi-a.json").write_text(json.dumps(pis[0]))
    (run.path / "bench" / "pi-b.json").write_text(json.dumps(pis[1]))
    split = [d for d in build_report(run).devices if d.device_id == shared]
    assert [len(d.rows) for d in split] == [1, 1]
    note = split[0].note
    assert note == split[1].note and note.startswith(f"2 devices report id {shared}")
    assert "board Raspberry Pi 4" in note and "cpu_model Cortex-A76" in note and "never merged" in note
    md = render_markdown(build_report(run))
    assert md.count(note) == 2 and "Raspberry Pi 5" in md


# ---------------------------------------------------------------- ship this

BUDGET_SET = [
    # the fastest, but 8 points below the best accuracy
    result(variant="tiny", artifact="tflite-int8", p50=0.10, accuracy=0.90, bytes=500),
    result(variant="base", artifact="tflite-int8", p50=0.20, ci=[0.19, 0.21], accuracy=0.975, bytes=1200),
    result(variant="base", artifact="tflite-int8", p50=0.22, ci=[0.21, 0.23], accuracy=0.975, threads=2),
    result(variant="base", artifact="tflite-float32", p50=0.205, ci=[0.20, 0.215], accuracy=0.98,
           bytes=4000),
    result(variant="base", artifact="onnx-float32", p50=0.15, accuracy=None),  # no accuracy: left out
    result(variant="pruned", artifact="tflite-float32", p50=0.40, accuracy=0.98),
]


def test_recommendation_is_the_fastest_within_the_budget() -> None:
    [rec] = recommendations(BUDGET_SET)  # default budget: 1.0 point of 0.98
    assert (rec["name"], rec["threads"], rec["p50_ms"], rec["p50_ci_ms"]) == ("base/tflite-int8", 1, 0.2,
                                                                            [0.19, 0.21])
    assert rec["accuracy"] == 0.975 and rec["accuracy_source"] == "device" and rec["bytes"] == 1200
    assert rec["best_accuracy"] == 0.98 and rec["without_accuracy_left_out"] == 1
    assert [t["name"] for t in rec["tied_with"]] == ["base/tflite-float32"]  # intervals overlap
    ru = rec["runner_up"]  # the fastest other artifact that is not tied
    assert ru["name"] == "pruned/tflite-float32" and ru["not_measurably_slower"] is False
    assert rec["line"] == (f"ship this on {rec['device']}: base/tflite-int8 t1, p50 0.200 ms [0.190, 0.210] "
                           "at 93.75%, accuracy 97.50% (device), 1.2 KiB (tied with base/tflite-float32 t1 "
                           "(p50 intervals overlap the fastest's; of the tied, the smallest file, then the "
                           "most accurate, then by name); runner-up pruned/tflite-float32 t1, p50 0.400 ms "
                           "[0.388, 0.412] at 93.75%: measurably slower)")
    [tight] = recommendations(BUDGET_SET, 0.1)
    assert tight["name"] == "base/tflite-float32" and tight["runner_up"]["name"] == "pruned/tflite-float32"
    assert tight["runner_up"]["not_measurably_slower"] is False and "measurably slower)" in tight["line"]
    [loose] = recommendations(BUDGET_SET, 10)
    assert loose["name"] == "tiny/tflite-int8" and loose["runner_up"]["comparison"] == "slower"


def test_the_fewest_threads_that_are_not_measurably_slower_ship() -> None:
    def at(threads: int, p50: float, ci: list[float]) -> dict:
        return result(variant="base", artifact="tflite-int8", p50=p50, ci=ci, accuracy=0.98, threads=threads)

    two, four = at(2, 0.20, [0.18, 0.22]), at(4, 0.19, [0.185, 0.20])
    [rec] = recommendations([at(1, 0.21, [0.19, 0.23]), two, four])
    assert (rec["threads"], rec["p50_ms"]) == (1, 0.21)  # 4 threads is a hair faster, not measurably
    [rec] = recommendations([at(1, 0.40, [0.38, 0.42]), two, four])
    assert rec["threads"] == 2  # the second thread pays; the third and fourth do not


def test_a_tie_is_broken_by_size_not_by_the_point_p50() -> None:
    """Two sessions of the same artifacts whose point p50s swap inside overlapping intervals (the
    noise that flipped the host's answer between sessions): the same artifact ships both times,
    the smaller file, and the line names the tied set."""
    def session(base: float, pruned: float) -> list[dict[str, Any]]:
        return [result(variant="base", artifact="tflite-int8", p50=base, bytes=12_000),
                result(variant="pruned", artifact="tflite-int8", p50=pruned, bytes=11_000),
                result(variant="base", artifact="tflite-float32", p50=0.300, bytes=40_000)]  # separate

    for base, pruned in ((0.100, 0.102), (0.102, 0.100)):
        [rec] = recommendations(session(base, pruned))
        assert (rec["name"], rec["p50_ms"]) == ("pruned/tflite-int8", pruned)
        assert [t["name"] for t in rec["tied_with"]] == ["base/tflite-int8"]
        assert "tied with base/tflite-int8 t1 (p50 intervals overlap the fastest's" in rec["line"]
        assert rec["runner_up"]["name"] == "base/tflite-float32"
        assert rec["runner_up"]["not_measurably_slower"] is False
    # Same size: the more accurate; same accuracy too: the first by name.
    same_size = [result(variant="a", artifact="tflite-int8", p50=0.100, accuracy=0.975),
                 result(variant="b", artifact="tflite-int8", p50=0.101, accuracy=0.980)]
    assert recommendations(same_size)[0]["name"] == "b/tflite-int8"
    same_all = [result(variant="b", artifact="tflite-int8", p50=0.100),
                result(variant="a", artifact="tflite-int8", p50=0.101)]
    assert recommendations(same_all)[0]["name"] == "a/tflite-int8"


def test_nothing_at_or_below_the_zero_rule_ships(tmp_path: Path) -> None:
    """A chance-level model (9.3 % and 10.7 % against a zero-rule of 10.7 %) is never recommended:
    the line says no artifact qualifies; the baseline is read from the run's model/metrics.json."""
    chance = [result(variant="base", artifact="tflite-int8", p50=0.2, accuracy=0.093),
              result(variant="base", artifact="tflite-float32", p50=0.3, accuracy=0.107)]  # equal: not above
    [rec] = recommendations(chance, zero_rule=0.107)
    assert rec["qualifies"] is False and rec["name"] is None and rec["below_zero_rule_left_out"] == 2
    assert rec["line"].startswith(f"ship this on {rec['device']}: no artifact qualifies: the best accuracy "
                                  "measured here, 10.70% (base/tflite-float32), is not above the zero-rule "
                                  "baseline 10.70%")
    # Only what is above the baseline competes, however fast the rest is.
    above = result(variant="big", artifact="tflite-float32", p50=0.9, accuracy=0.5)
    [rec] = recommendations([*chance, above], zero_rule=0.107)
    assert rec["name"] == "big/tflite-float32" and rec["below_zero_rule_left_out"] == 2
    with RunStore(tmp_path / "runs").new_run("fake", seed=0) as run, run.stage("train") as st:
        model = st.output_dir("model")
        (model / "metrics.json").write_text(json.dumps(
            {"test": {"accuracy": 0.093}, "baselines": {"zero_rule": {"accuracy": 0.107, "macro_f1": 0.02},
                                                        "logistic_regression": {"accuracy": 0.9}}}))
    save_results(run, chance, label="host")
    rep = build_report(run)
    assert rep.zero_rule == 0.107 and rep.recommendations[0]["qualifies"] is False
    assert not any("R" in r.codes for r in rep.rows)
    assert "no artifact qualifies" in render_markdown(rep) and "above the zero-rule baseline (10.70%)" in \
        render_markdown(rep)


def test_every_interval_states_its_level(measured: RunDir) -> None:
    """Tables, verdicts and ship-this lines print the level beside each interval; a drifted call
    time is flagged K."""
    save_results(measured, [result(variant="base", artifact="onnx-float32", p50=0.6, rounds=2, ci_level=0.5,
                                   calibration={"call_ms": 0.2, "end_call_ms": 0.6, "drift": 3.0,
                                                "drifted": True})], label="host")
    rep = build_report(measured)
    md = render_markdown(rep)
    assert "| 0.2500 | [0.2425, 0.2575] at 93.75% |" in md and "| [0.5820, 0.6180] at 50% |" in md
    assert "p50 0.250 ms [0.242, 0.258] at 93.75%" in rep.recommendations[0]["line"]
    assert "1 thread at p50 0.250 ms [0.242, 0.258] at 93.75%" in " ".join(rep.devices[0].verdicts)
    onnx = next(r for r in rep.devices[0].rows if r.artifact == "onnx-float32")
    assert "K" in onnx.codes and "call time drifted 3.0x during the session: k may be off" in onnx.flags
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(device_table(rep.devices[0]))
    text = console.export_text()
    assert "250 [242, 258] 94%" in text and "600 [582, 618] 50%" in text  # us; two levels: one per row


def test_recommendation_on_latency_alone_without_accuracy() -> None:
    rs = [result(variant="base", artifact="tflite-int8", p50=0.2, accuracy=None, accuracy_source=None),
          result(variant="base", artifact="onnx-float32", p50=0.3, accuracy=None, accuracy_source=None,
                 ci=None)]
    [rec] = recommendations(rs)
    assert rec["name"] == "base/tflite-int8" and not rec["accuracy_measured"]
    assert "accuracy not measured (chosen on latency alone)" in rec["line"]
    assert rec["runner_up"]["comparison"] is None and "no verdict without intervals" in rec["line"]


def test_recommendations_come_first_everywhere(measured: RunDir) -> None:
    rep = build_report(measured)
    assert [r["kind"] for r in rep.recommendations] == ["host", "browser", "pi"]
    host = rep.recommendations[0]
    assert host["name"] == "base/tflite-float32" and host["runner_up"]["name"] == "pruned/tflite-float32"
    assert host["runner_up"]["not_measurably_slower"] is False
    md = render_markdown(rep)
    assert md.index("ship this on host-devbox-") < md.index("## Method") < md.index("| variant |")
    runs = measured.path.parent
    data = json.loads(invoke(runs, "report", measured.id, "--format", "json").stdout)
    assert list(data)[:4] == ["run_id", "run_dir", "accuracy_budget_points", "recommendations"]
    assert [r["line"] for r in data["recommendations"]] == [r["line"] for r in rep.recommendations]
    table = invoke(runs, "report", measured.id, "--accuracy-budget", "0")
    assert table.exit_code == 0 and table.stdout.lstrip().startswith("Ship this")
    assert "ship this on browser-" in table.stdout.split("\n\n")[0]


def test_edgeship_run_carries_recommendations(measured: RunDir, monkeypatch: pytest.MonkeyPatch) -> None:
    """``edgeship run --json`` has "recommendations"; the terminal ends with a ship-this line per device
    (the pipeline itself is stubbed: its results are the fixture's)."""
    import edgeship.cli.run
    from edgeship.benchmarks.store import load_results
    from edgeship.pipeline import PipelineResult

    files = {k: str(v) for k, v in write_report(measured).items()}
    done = PipelineResult(run=measured, train=None, bench=load_results(measured), report=files)
    monkeypatch.setattr(edgeship.cli.run, "run_pipeline", lambda store, cfg, progress: done)
    monkeypatch.setattr(edgeship.cli.run, "train_summary", lambda result: {"stub": True})
    monkeypatch.setattr(edgeship.cli.run, "print_train_summary", lambda s: None)
    monkeypatch.setattr(edgeship.cli.run, "print_variants", lambda run, summaries, search: None)
    runs = measured.path.parent
    data = json.loads(invoke(runs, "run", "--json").stdout)
    lines = [r["line"] for r in build_report(measured).recommendations]
    assert [r["line"] for r in data["recommendations"]] == lines and len(lines) == 3
    assert data["recommendations"][0]["name"] == "base/tflite-float32"
    shown = invoke(runs, "run")
    assert shown.exit_code == 0, shown.stderr
    tail = shown.stdout.split("\nreport:")[-1]  # the paths may wrap: a worker's tmp path is long
    assert tail.count("ship this on ") == 3 and tail.index("ship this on ") < tail.index("next: edgeship")


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "-0.5", "lots"])
def test_accuracy_budget_must_be_finite_and_not_negative(measured: RunDir, bad: str) -> None:
    assert_one_line_error(invoke(measured.path.parent, "report", measured.id, "--accuracy-budget", bad),
                          "--accuracy-budget must be a finite number of percentage points >= 0", bad)


# ---------------------------------------------------------------- rendering


def test_terminal_table_fits_120_columns(measured: RunDir) -> None:
    long = "prune75-pqat-distill25-cluster16-lowrank-int8"
    save_results(measured, [result(variant=long, artifact="tflite-int8-fio", p50=12.345, ci=None),
                            result(variant="base", artifact="tvm-host", p50=0.0091, threads=4,
                                   ci=[0.0089, 0.0094])], label="host")
    rep = build_report(measured)
    for dev in rep.devices:
        console = Console(width=120, record=True, file=io.StringIO())
        console.print(device_table(dev))
        lines = console.export_text().splitlines()
        assert all(len(ln) <= 120 for ln in lines), max(lines, key=len)
        body = [ln for ln in lines if re.search(r"\d\.\d+K|\s-\s", ln) and not ln.startswith(dev.key)]
        assert len(body) == len(dev.rows), "\n".join(lines)  # one line per row: nothing wrapped
        assert any("[" in ln and "]" in ln for ln in body)
    host = device_table(rep.devices[0])
    headers = [c.header for c in host.columns]
    assert headers[3] == "p50 ms [93.75% int.]" and headers[4] == "p99 ms 1-call" and headers[-1] == "flags"
    console = Console(width=120, record=True, file=io.StringIO())
    print_report(rep, {"html": "r.html", "md": "r.md"}, console)
    text = console.export_text()
    assert all(len(ln) <= 120 for ln in text.splitlines())
    assert "flags: R ship this" in text and "S slower than its parent variant" in text
    assert "N no interval (1 round)" in text and "12.3 [-]" in text and "p99 1-call: single-call" in text
    assert "0.00910 [0.00890, 0.00940]" in text  # ms: the host table has a 12 ms row
    table_lines = [ln for ln in text.splitlines() if "tflite-int8-fio" in ln or "prune75" in ln]
    assert len(table_lines) == 1 and len(table_lines[0]) <= 120


def test_html_is_one_self_contained_file(measured: RunDir) -> None:
    files = write_report(measured)
    page = files["html"].read_text()
    assert page.count("class='flag artifact-row'") == 2 and page.count("artifact-row") == 7
    assert page.count("class='ship artifact-row'") == 3 and page.count("ship this on ") == 3
    assert page.count("class='plot pareto'") == 3  # one per device
    for name in ("base-tflite-float32", "base-tflite-int8", "pruned-tflite-float32", "pruned-tflite-int8",
                 "base-web", "base-web-int8"):
        assert f"id='dist-{name}'" in page and f"href='#dist-{name}'" in page
    assert page.count("data:image/png;base64,") == 9
    assert not re.search(r"""(src|href)=['"](https?:|//)""", page) and "<link" not in page
    assert EMULATED in page and "onnxruntime-web" in page and "Compression" in page
    assert "Cortex-A72" in page and "Environment" in page and CI_METHOD in page
    assert [p.name for p in measured.path.iterdir() if p.name.startswith(".report")] == []
    md = files["md"].read_text()
    assert md == render_markdown(build_report(measured)) + "\n"
    assert "| base | tflite-int8 |" in md and EMULATED in md and "keep float32 here" in md
    assert "interleaved rounds" in md and "median of the rounds' p50s" in md and CI_METHOD in md
    assert "at least 100 steps" in md and "single-call samples" in md and "measured on the device" in md


def test_cli_formats(measured: RunDir) -> None:
    runs = measured.path.parent
    table = invoke(runs, "report", measured.id)
    assert table.exit_code == 0, table.stderr
    assert "fastest here" in table.stdout and "emulated" in table.stdout and "report.html" in table.stdout
    rows = list(csv.DictReader(io.StringIO(invoke(runs, "report", measured.id, "--format", "csv").stdout)))
    assert len(rows) == 7 and rows[0]["device"].startswith("host-devbox-") and rows[0]["p50"] == "0.25"
    assert rows[0]["p50_ci_lo"] == "0.2425" and rows[0]["codes"] == "R" and rows[0]["rounds"] == "5"
    assert rows[0]["ci_level"] == "0.9375"
    assert {r["emulated"] for r in rows} == {"True", "False"}
    data = json.loads(invoke(runs, "report", measured.id, "--format", "json").stdout)
    assert [d["kind"] for d in data["devices"]] == ["host", "browser", "pi"]
    assert "samples" not in data["devices"][0]["rows"][0]
    assert data["devices"][0]["rows"][0]["p50_ci_ms"] == [0.2425, 0.2575]
    assert data["ci_methods"] == {CI_METHOD: 7}
    assert invoke(runs, "report", measured.id, "--format", "html").stdout.startswith("<!doctype html>")


def v1(variant: str, artifact: str, p50: float, **over: Any) -> dict[str, Any]:
    """A result as schema 1 wrote it: one timing session, host-validated accuracy, no device id."""
    r = result(variant=variant, artifact=artifact, p50=p50)
    for k in ("device_id", "rounds", "p50_ci_ms", "ci_level", "ci_method", "calls_per_sample",
              "clock_step_ms", "tail_ms", "accuracy_source", "top1_agreement"):
        r.pop(k)
    r.update(schema_version=1, **over)
    assert validate_result(r) == []
    return r


def test_schema_1_results_render_without_verdicts(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs").new_run("fake", seed=0) as run:
        pass
    bench = run.path / "bench"
    bench.mkdir()
    for i, r in enumerate([v1("base", "tflite-float32", 0.25), v1("base", "tflite-int8", 0.40),
                           v1("base", "tflite-int8", 0.80, threads=2),
                           v1("pruned", "tflite-float32", 0.5)]):
        (bench / f"host-{i}.json").write_text(json.dumps(r))
    rep = build_report(run)
    [dev] = rep.devices
    assert dev.key == device_id("host", facts()) and all(r.ci is None and r.rounds == 1 for r in dev.rows)
    assert all(r.accuracy_source == "export validation" for r in dev.rows)
    text = " ".join(dev.verdicts)
    assert NO_INTERVAL in text and "threads: no interval (1 round), no verdict." in text
    for claim in ("faster than", "slower than", "do not pay off", "FLAGGED", NO_DIFFERENCE):
        assert claim not in text, dev.verdicts
    assert all(r.flags == [NO_INTERVAL] and "N" in r.codes and "V" in r.codes for r in dev.rows)
    rec = rep.recommendations[0]
    assert rec["name"] == "base/tflite-float32" and "(no interval, 1 round)" in rec["line"]
    assert "accuracy 97.00% (export validation)" in rec["line"]
    assert "none: schema 1 result" in render_markdown(rep)
    for fmt in ("table", "md", "json", "csv", "html"):
        shown = invoke(tmp_path / "runs", "report", run.id, "--format", fmt)
        assert shown.exit_code == 0 and "Traceback" not in shown.stdout + shown.stderr, shown.stderr


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
    assert shown.exit_code == 0 and "fastest here" in shown.stdout and "ship this on host-" in shown.stdout
    page = (dst / "report.html").read_text()
    assert page.count("artifact-row") == 3
    for name in ("tflite-float32", "tflite-int8", "onnx-float32"):
        assert f"id='dist-base-{name}'" in page
    assert page.count("data:image/png;base64,") == 4
    assert "ai-edge-litert" in page and "onnxruntime" in page and (dst / "report.md").is_file()
