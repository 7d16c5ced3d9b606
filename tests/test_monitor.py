"""The monitor's statistics on fixed samples, its windows, and how it reads a damaged log folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgeship.core.errors import InputError
from edgeship.devices.monitoring import drift
from edgeship.devices.monitoring.monitor import Thresholds, read_log_folder
from edgeship.devices.monitoring.windows import by_version, parse_window, split_windows


def test_psi_of_known_histograms() -> None:
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 ln 2 + 0.25 ln 1.5
    assert drift.psi([50, 50], [25, 75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert drift.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.274653, abs=1e-6)
    assert drift.psi([3, 5, 2], [30, 50, 20]) == pytest.approx(0.0)
    # An empty bin costs a bounded amount (floored at PSI_EPS), never infinity.
    assert 0 < drift.psi([1, 0], [0, 1]) < 20
    with pytest.raises(ValueError, match="same bins"):
        drift.psi([1, 2], [1, 2, 3])


def test_ks_of_known_samples() -> None:
    d, p = drift.ks(np.array([1, 2, 3, 4.0]), np.array([5, 6, 7, 8.0]))
    assert d == 1.0 and p == pytest.approx(2 / 70)  # exact: 2 of C(8, 4) orderings are as extreme
    d, p = drift.ks(np.arange(100.0), np.arange(100.0))
    assert d == 0.0 and p == 1.0


def test_chi_square_of_known_tables() -> None:
    stat, p = drift.chi_square(np.array([10, 20]), np.array([20, 10]))
    assert stat == pytest.approx(60 * 300**2 / 30**4) and p == pytest.approx(0.0098232, abs=1e-6)
    assert drift.chi_square(np.array([5, 0, 5]), np.array([5, 0, 5])) == (0.0, 1.0)
    assert drift.chi_square(np.array([5, 0]), np.array([7, 0])) == (0.0, 1.0)  # one category: nothing to test


def test_binning_matches_the_device() -> None:
    from edge_runtime.serve.requestlog import bin_index

    edges = drift.quantile_edges(np.arange(1, 101.0), bins=4)
    assert edges == [25.75, 50.5, 75.25]
    values = np.array([0.0, 25.75, 50.0, 99.0])
    assert drift.histogram(values, edges).tolist() == [1, 2, 0, 1]
    assert [bin_index(edges, v) for v in values] == [0, 1, 1, 3]


def test_numeric_drift_sees_a_scaled_feature_and_not_a_resample() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(10, 2, 1000)
    edges = drift.quantile_edges(ref)
    same = drift.numeric_drift(ref, rng.normal(10, 2, 200), edges)
    scaled = drift.numeric_drift(ref, rng.normal(10, 2, 200) * 1.5, edges)
    assert same.psi < 0.1 and same.p_value > 0.01
    assert scaled.psi > 1.0 and scaled.p_value < 1e-20


@pytest.mark.parametrize("text", ["0", "-3", "abc", "10x", "0m", "2000000"])
def test_bad_windows_are_one_line_errors(text: str) -> None:
    with pytest.raises(InputError, match="--window"):
        parse_window(text)


def test_window_forms() -> None:
    assert parse_window("200").count == 200
    assert parse_window("10m").seconds == 600 and parse_window("1.5h").seconds == 5400


def _line(t: float, sha: str) -> dict:
    return {"time": t, "request_id": f"r{t}", "model": {"name": "base", "version": "1", "sha256": sha},
            "prediction": {"label": "a", "index": 0}, "confidence": 0.9, "input": {"mode": "none"}}


def test_windows_never_mix_model_versions() -> None:
    lines = [_line(t, "old" if t % 3 else "new") for t in range(30)]  # interleaved, as during an update
    groups = [split_windows(g, parse_window("5")) for g in by_version(lines)]
    assert [g.version for g in groups] == ["new", "old"]
    assert [len(g.lines) for g in groups] == [10, 20]
    for g in groups:
        assert all(ln["model"]["sha256"] == g.version for w in g.windows for ln in w.lines)
    assert [len(g.windows) for g in groups] == [2, 4] and all(g.partial_tail == 0 for g in groups)
    (tail,) = [split_windows(g, parse_window("3")) for g in by_version(lines[:7]) if g.version == "old"]
    assert len(tail.windows) == 1 and tail.partial_tail == 1  # 4 "old" lines: one window, one left over


def test_time_windows_label_sparse_spans() -> None:
    lines = [_line(t, "v") for t in [*range(0, 100), 650.0]]  # 100 in the first 10 minutes, 1 later
    (g,) = [split_windows(g, parse_window("10m"), min_requests=30) for g in by_version(lines)]
    assert [len(w.lines) for w in g.windows] == [100, 1]
    assert [w.too_few for w in g.windows] == [False, True]


def test_truncated_and_corrupt_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    good = [json.dumps(_line(t, "v")) for t in range(5)]
    (tmp_path / "requests-000001.jsonl").write_text(
        "\n".join([*good[:3], "not json at all", json.dumps({"time": 1}), *good[3:]]) + "\n")
    (tmp_path / "requests-000002.jsonl").write_text(good[0] + "\n" + good[1][:40])  # a crash mid-line
    (tmp_path / "feedback-000001.jsonl").write_text('{"request_id": "r1.0", "label": "a"}\n{"oops"\n')
    log = read_log_folder(tmp_path)
    assert len(log.lines) == 6 and log.corrupt == 4
    assert log.feedback == {("r1.0", None): "a"}
    assert [f["lines"] for f in log.files] == [5, 1, 1] and all(len(f["sha256"]) == 64 for f in log.files)


def test_an_empty_or_missing_log_folder_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no request logs"):
        read_log_folder(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        read_log_folder(tmp_path / "nope")


@pytest.mark.parametrize(("field", "value"), [("psi", 0), ("alpha", 1.0), ("confidence_drop", -1),
                                              ("slo_ms", float("nan"))])
def test_bad_thresholds_are_refused(field: str, value: float) -> None:
    with pytest.raises(InputError):
        Thresholds(**{field: value}).check()


def _iid_windows(n_windows: int, seed: int = 0) -> tuple[float, float]:
    """False-alarm and detection fractions of the default thresholds on synthetic tabular traffic:
    10 numeric features, a 300-row reference, windows of 200 (raw-mode lines) from the same
    distribution, and from one where feature f3 is scaled by 1.5."""
    from edgeship.devices.monitoring.monitor import evaluate_window
    from edgeship.devices.monitoring.reference import Reference
    from edgeship.devices.monitoring.windows import Window

    rng = np.random.default_rng(seed)
    names = [f"f{i}" for i in range(10)]
    ref = Reference("r", "tabular", ["a", "b"], {"kind": "tabular", "columns": []},
                    numeric={n: rng.gamma(2.0, 3.0, 300) + 5 for n in names},
                    prediction_counts=np.array([150.0, 150.0]), mean_confidence=0.9)

    def window(scale: float) -> Window:
        lines = []
        for i in range(200):
            values = {n: float(rng.gamma(2.0, 3.0) + 5) * (scale if n == "f3" else 1.0) for n in names}
            lines.append({"time": float(i), "request_id": str(i), "confidence": 0.9,
                          "prediction": {"label": "a", "index": int(rng.integers(2))},
                          "input": {"mode": "raw", "values": values}})
        return Window("v", 0, lines)

    th = Thresholds()
    quiet = [evaluate_window(ref, window(1.0), th, {}, {})["alerts"] for _ in range(n_windows)]
    shifted = [evaluate_window(ref, window(1.5), th, {}, {})["alerts"] for _ in range(n_windows)]
    assert all("'f3'" in a[0] for a in shifted if a), "a shift is blamed on the scaled feature"
    return sum(map(bool, quiet)) / n_windows, sum(map(bool, shifted)) / n_windows


def test_default_thresholds_rarely_alarm_on_clean_traffic_and_catch_a_scaled_feature() -> None:
    false_alarms, detected = _iid_windows(40)
    assert false_alarms <= 0.05 and detected == 1.0


def test_confidence_clipping_live_accuracy_and_latency_rules() -> None:
    from edgeship.devices.monitoring.monitor import evaluate_window
    from edgeship.devices.monitoring.reference import Reference
    from edgeship.devices.monitoring.windows import Window

    ref = Reference("r", "tabular", ["a", "b"], {"kind": "tabular", "columns": []},
                    prediction_counts=np.array([50.0, 50.0]), mean_confidence=0.95, test_accuracy=0.9,
                    clipped=0.001)

    def lines(conf: float, clipped: float, ms: float) -> list[dict]:
        return [{"time": float(i), "request_id": f"r{i}", "instance": 0, "confidence": conf,
                 "prediction": {"label": "ab"[i % 2], "index": i % 2}, "latency_ms": {"total": ms},
                 "input": {"mode": "none", "clipped": clipped}} for i in range(40)]

    right = {(f"r{i}", None): "ab"[i % 2] for i in range(40)}
    wrong = {(f"r{i}", 0): "ba"[i % 2] for i in range(40)}
    calm = evaluate_window(ref, Window("v", 0, lines(0.93, 0.002, 5.0)), Thresholds(slo_ms=10), {}, right)
    assert calm["alerts"] == [] and calm["accuracy"] == {"live": 1.0, "labels": 40, "reference": 0.9,
                                                         "alert": False}
    assert calm["latency"]["p99_ms"] == 5.0 and calm["clipping"]["rate"] == 0.002
    bad = evaluate_window(ref, Window("v", 0, lines(0.6, 0.2, 50.0)), Thresholds(slo_ms=10), {}, wrong)
    text = " | ".join(bad["alerts"])
    for needle in ("mean confidence 0.60", "int8 clipping 20.0%", "live accuracy 0.00 on 40 labels",
                   "p99 latency 50.0 ms over the 10 ms SLO"):
        assert needle in text, text
    few = evaluate_window(ref, Window("v", 0, lines(0.93, 0.0, 5.0)), Thresholds(min_labels=50), {}, wrong)
    assert few["accuracy"]["alert"] is False, "too few labels to judge"
