"""The device's request log (edge_runtime/serve/requestlog.py): rotation cap, never blocking,
sampling, the three input modes, image statistics, int8 clipping, feedback."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.errors import InputError
from edge_runtime.serve.requestlog import (
    BINS_FILE,
    LogConfig,
    RequestLog,
    UnknownRequest,
    clipped_fraction,
    image_stats,
)

TABULAR = {
    "sha256": "a" * 64,
    "inputs": [{"name": "x", "shape": [-1, 4], "dtype": "float32", "quantization": None}],
    "preprocessing": {"kind": "tabular", "features": ["age", "size", "color=blue", "color=red"], "columns": [
        {"name": "age", "type": "numeric", "fill": 40.0, "mean": 40.0, "std": 10.0},
        {"name": "size", "type": "numeric", "fill": 1.0, "mean": 1.0, "std": 1.0},
        {"name": "color", "type": "categorical", "fill": "red", "vocabulary": ["blue", "red"]},
    ]},
}
IMAGE = {
    "sha256": "b" * 64,
    "inputs": [{"name": "x", "shape": [-1, 8, 8, 1], "dtype": "int8",
                "quantization": {"scale": 0.01, "zero_point": 0}}],
    "preprocessing": {"kind": "image", "height": 8, "width": 8, "channels": 1, "color_mode": "L",
                      "raw_range": [0, 16], "scale": 0.0625, "mean": [0.0], "std": [1.0]},
}


def record(i: int, instance: Any, model: str = "m", label: str = "a") -> dict[str, Any]:
    return {"time": 1000.0 + i, "request_id": f"req-{i}", "model": model, "version": 1,
            "queue_s": 0.001, "preprocess_s": 0.002, "invoke_s": 0.003, "instances": [instance],
            "predictions": [{"label": label, "index": 0, "confidence": 0.9, "probabilities": [0.9, 0.1]}]}


def lines_of(folder: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(folder.glob("requests-*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return out


def test_rotation_keeps_at_most_max_files_and_the_newest_lines(tmp_path: Path) -> None:
    cfg = LogConfig(tmp_path, inputs="raw", max_bytes=4096, max_files=3)
    with RequestLog(cfg, {"m": TABULAR}) as log:
        for i in range(400):
            log.observe(record(i, {"age": 30 + i % 20, "size": 2.0, "color": "blue"}))
            if i % 50 == 49:
                log.flush()
    files = sorted(tmp_path.glob("requests-*.jsonl"))
    assert len(files) == 3, [p.name for p in files]
    assert all(p.stat().st_size <= 4096 for p in files)
    assert log.stats()["files_deleted"] > 0
    kept = lines_of(tmp_path)
    assert kept[-1]["request_id"] == "req-399", "the newest lines survive rotation"
    assert 0 < len(kept) < 400


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    gate = threading.Event()
    log = RequestLog(LogConfig(tmp_path, queue_size=2), {"m": TABULAR})
    real = log._lines
    log._lines = lambda rec: (gate.wait(10), real(rec))[1]  # type: ignore[method-assign]  # a slow disk
    t0 = time.perf_counter()
    for i in range(50):
        log.observe(record(i, [40, 1, "red"]))
    took = time.perf_counter() - t0
    gate.set()
    log.close()
    s = log.stats()
    assert took < 1.0, f"observe blocked for {took:.2f} s"
    assert s["dropped"] >= 47 and s["dropped"] + s["written"] == 50, s


def test_sampling_keeps_about_the_asked_fraction(tmp_path: Path) -> None:
    with RequestLog(LogConfig(tmp_path, sample=0.25, seed=0, inputs="none"), {"m": TABULAR}) as log:
        for i in range(2000):
            log.observe(record(i, [40, 1, "red"]))
    s = log.stats()
    assert s["observed"] == 2000 and 420 <= s["written"] <= 580, s
    assert s["written"] + s["sampled_out"] == 2000


@pytest.mark.parametrize("mode", ["none", "summary", "raw"])
def test_each_line_holds_what_the_mode_promises(tmp_path: Path, mode: str) -> None:
    bins = {"age": [30.0, 40.0, 50.0]}
    with RequestLog(LogConfig(tmp_path, inputs=mode), {"m": TABULAR}, bins=bins) as log:
        log.observe(record(0, {"age": 45, "size": None, "color": "green"}))
    (line,) = lines_of(tmp_path)
    assert line["request_id"] == "req-0"
    assert line["model"] == {"name": "m", "version": "1", "sha256": "a" * 64}
    assert line["latency_ms"] == {"queue": 1.0, "preprocess": 2.0, "invoke": 3.0, "total": 6.0}
    assert line["prediction"] == {"label": "a", "index": 0} and line["confidence"] == 0.9
    inp = line["input"]
    assert inp["mode"] == mode
    if mode == "raw":
        assert inp["values"] == {"age": 45, "size": None, "color": "green"}
    elif mode == "summary":
        assert inp["bins"]["age"] == 2  # 40 <= 45 < 50
        assert inp["bins"]["size"] == "__missing__"
        assert inp["categories"] == {"color": "__other__"}  # not in the vocabulary
        described = json.loads((tmp_path / BINS_FILE).read_text())["m"]
        assert described["numeric"]["age"] == bins["age"]
        assert len(described["numeric"]["size"]) == 9  # the normal-decile fallback
    else:
        assert set(inp) == {"mode"}


def test_image_statistics_and_int8_clipping(tmp_path: Path) -> None:
    spec = IMAGE["preprocessing"]
    dark = image_stats(spec, np.zeros((8, 8, 1), np.float32))
    assert dark["mean"] == 0 and dark["std"] == 0 and dark["hist"][0] == 1.0 and sum(dark["hist"]) == 1.0
    half = np.zeros((8, 8, 1), np.float32)
    half[:4] = 1.0  # raw 16 * scale 0.0625
    s = image_stats(spec, half)
    assert s["mean"] == 0.5 and s["std"] == 0.5 and s["hist"][0] == 0.5 and s["hist"][-1] == 0.5
    quant = IMAGE["inputs"][0]["quantization"]  # int8, scale 0.01: representable [-1.28, 1.27]
    assert clipped_fraction(np.array([0.0, 1.0, 1.5, -2.0]), quant, "int8") == 0.5
    assert clipped_fraction(np.array([5.0]), None, "float32") is None
    raw = np.full((8, 8), 16.0).tolist()  # raw 16 -> x = 1.0: representable
    with RequestLog(LogConfig(tmp_path, inputs="raw"), {"m": IMAGE}) as log:
        log.observe(record(0, raw))
    (line,) = lines_of(tmp_path)
    assert line["input"]["mean"] == 1.0 and line["input"]["clipped"] == 0.0
    assert np.asarray(line["input"]["values"]).shape == (8, 8, 1)


def test_feedback_for_a_logged_request_is_stored_and_an_unknown_id_refused(tmp_path: Path) -> None:
    with RequestLog(LogConfig(tmp_path), {"m": TABULAR}) as log:
        log.observe(record(7, [40, 1, "red"]))
        stored = log.record_feedback("req-7", "b")
        with pytest.raises(UnknownRequest, match="req-8"):
            log.record_feedback("req-8", "b")
    assert stored["label"] == "b"
    (fb,) = (json.loads(line) for p in tmp_path.glob("feedback-*.jsonl")
             for line in p.read_text().splitlines())
    assert fb["request_id"] == "req-7" and fb["label"] == "b"
    # A new log over the same folder (a server restart) finds the id in the files.
    with RequestLog(LogConfig(tmp_path), {"m": TABULAR}) as again:
        again.record_feedback("req-7", "a")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sample": 0}, "--log-sample"), ({"sample": 1.5}, "--log-sample"),
    ({"inputs": "full"}, "--log-inputs"), ({"max_files": 1}, "at least 2")])
def test_bad_log_settings_are_one_line_errors(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InputError, match=match):
        RequestLog(LogConfig(tmp_path, **kwargs))


def test_a_malformed_record_is_counted_and_the_writer_goes_on(tmp_path: Path) -> None:
    with RequestLog(LogConfig(tmp_path), {"m": TABULAR}) as log:
        log.observe({**record(0, [40, 1, "red"]), "predictions": ["not a dict"]})
        log.observe({**record(1, [40, 1, "red"]), "instances": [object()]})
        log.observe(record(2, [40, 1, "red"]))
    s = log.stats()
    assert s["errors"] == 2 and s["written"] == 2, s
    assert [ln["input"]["mode"] for ln in lines_of(tmp_path)] == ["error", "summary"]
