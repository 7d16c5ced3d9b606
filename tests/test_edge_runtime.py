"""edge_runtime: what ships to a device. Real exports, real runtimes, no TensorFlow in the
import path, and each bad input as a one-line error."""

from __future__ import annotations

import gc
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

from edge_runtime import ArtifactError, EdgeModel, InputError, MissingRuntimeError
from edge_runtime.cli import main as edge_main
from edge_runtime.preprocess import (
    lookup_u8,
    preprocess_image,
    preprocess_tabular,
    raw_from_u8,
    resize_bilinear,
    u8_table,
)
from edge_runtime.timing import device_facts, percentile, summarize_ms, time_calls
from edgeship.core.runstore import RunDir

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- timing (fast)


def test_percentiles_on_known_lists() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert percentile([4, 1, 3, 2], 0) == 1 and percentile([4, 1, 3, 2], 100) == 4
    assert percentile([7], 99) == 7
    assert percentile(list(range(1, 101)), 95) == pytest.approx(95.05)
    values = np.random.default_rng(0).exponential(size=257).tolist()
    for p in (50, 90, 95, 99):
        assert percentile(values, p) == pytest.approx(np.percentile(values, p), rel=1e-12)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_in_milliseconds() -> None:
    s = summarize_ms([1_000_000, 2_000_000, 3_000_000, 4_000_000])
    assert list(s) == ["mean", "std", "min", "p50", "p90", "p95", "p99", "max"]
    assert s["mean"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0 and s["p50"] == 2.5
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 4]), abs=1e-6)  # population std
    assert s["p99"] == pytest.approx(3.97)


def test_time_calls_discards_warmup_and_pauses_gc() -> None:
    seen: list[bool] = []
    samples = time_calls(lambda: seen.append(gc.isenabled()), runs=5, warmup=3)
    assert len(samples) == 5 and all(s >= 0 for s in samples)
    assert seen == [True] * 3 + [False] * 5 and gc.isenabled()
    with pytest.raises(InputError, match="runs must be at least 1"):
        time_calls(lambda: None, runs=0, warmup=0)


def test_device_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESHIP_EMULATED", "1")
    facts = device_facts()
    assert {"cpu_model", "cores", "arch", "os", "python", "governor", "emulated"} <= set(facts)
    assert facts["emulated"] is True and facts["cores"] >= 1 and facts["cpu_model"]
    monkeypatch.delenv("EDGESHIP_EMULATED")
    assert device_facts()["emulated"] is False


# ---------------------------------------------------------------- preprocessing (fast)

IMAGE_SPEC = {"kind": "image", "height": 4, "width": 4, "channels": 1, "color_mode": "L",
              "raw_range": [0, 16], "scale": 0.0625, "mean": [0.3], "std": [0.4]}
TABLE_SPEC = {
    "kind": "tabular",
    "columns": [
        {"name": "age", "type": "numeric", "fill": 41.0, "mean": 40.0, "std": 10.0},
        {"name": "color", "type": "categorical", "fill": "red", "vocabulary": ["blue", "red"]},
    ],
    "features": ["age", "color=blue", "color=red"],
}


def test_image_formula_resize_and_channels() -> None:
    raw = np.random.default_rng(0).uniform(0, 16, (3, 4, 4, 1)).astype(np.float32)
    x = preprocess_image(IMAGE_SPEC, raw)
    assert x.dtype == np.float32 and np.allclose(x, (raw * 0.0625 - 0.3) / 0.4)
    assert np.allclose(preprocess_image(IMAGE_SPEC, raw[..., 0]), x)  # (N, H, W) is greyscale
    flat = np.full((1, 8, 8, 3), 8.0, np.float32)  # bigger RGB image, constant colour
    assert np.allclose(preprocess_image(IMAGE_SPEC, flat), (8 * 0.0625 - 0.3) / 0.4, atol=1e-5)
    ramp = np.arange(8, dtype=np.float32)[None, None, :, None].repeat(8, 1)
    assert np.allclose(resize_bilinear(ramp, 8, 4)[0, 0, :, 0], [0.5, 2.5, 4.5, 6.5])
    with pytest.raises(InputError, match=r"span \[0, 255\].*\[0, 16\]"):
        preprocess_image(IMAGE_SPEC, np.linspace(0, 255, 16).reshape(1, 4, 4, 1))
    with pytest.raises(InputError, match="have 2 channels but the model takes 1"):
        preprocess_image(IMAGE_SPEC, np.zeros((1, 4, 4, 2)))


def test_tabular_rows_as_sequences_and_dicts() -> None:
    rows = [[50, "blue"], {"color": "red", "age": 30, "target": "ignored"}, [None, ""], ["", "green"]]
    x = preprocess_tabular(TABLE_SPEC, rows)
    assert x.dtype == np.float32
    assert np.allclose(x, [[1.0, 1, 0], [-1.0, 0, 1], [0.1, 0, 1], [0.1, 0, 0]])
    with pytest.raises(InputError, match="row 0 has 1 values, expected 2 in this order: age, color"):
        preprocess_tabular(TABLE_SPEC, [[1]])
    with pytest.raises(InputError, match="row 0 lacks column"):
        preprocess_tabular(TABLE_SPEC, [{"age": 1}])
    with pytest.raises(InputError, match="'abc' is not a number"):
        preprocess_tabular(TABLE_SPEC, [["abc", "red"]])
    with pytest.raises(InputError, match="batch of rows"):
        preprocess_tabular(TABLE_SPEC, {"age": 1, "color": "red"})


# ---------------------------------------------------------------- real artifacts


@pytest.fixture(scope="session")
def artifacts(digits_run: RunDir, tabular_run: RunDir,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every TFLite and ONNX export of the digits CNN and the wine MLP (shared, read-only)."""
    return {"digits": exported_copy(digits_run, tmp_path_factory)[0],
            "wine": exported_copy(tabular_run, tmp_path_factory)[0]}


def _dir(artifacts: dict[str, Any], key: str, name: str) -> Path:
    return artifacts[key].path / "exports" / "base" / name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tflite-float32", "tflite-int8", "onnx-float32", "onnx-int8"])
def test_predict_on_raw_inputs_matches_the_preprocessed_path(artifacts: dict, name: str) -> None:
    run = artifacts["digits"]
    model = EdgeModel.load(_dir(artifacts, "digits", name), threads=1)
    splits = np.load(run.path / "data/splits.npz")
    raw = np.load(run.path / "data/test_raw.npz")["x"]
    probs = model.infer(splits["x_test"])
    assert probs.shape == (len(raw), 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1, atol=0.05)
    pred = model.predict(raw)
    # numpy preprocessing == training's; int8 allows one quantisation step of slack
    assert np.allclose(pred.probabilities, probs, atol=1e-6 if "float" in name else 1 / 128)
    assert pred.labels == [model.labels[i] for i in pred.probabilities.argmax(1)]
    assert (pred.indices == probs.argmax(1)).mean() >= 0.99
    accuracy = float((probs.argmax(1) == splits["y_test"]).mean())
    assert accuracy == json.loads((model.path / "artifact.json").read_text())["validation"]["accuracy"]
    one = model.predict_one(raw[3])
    assert one.label == pred.labels[3] and one.confidence == pytest.approx(pred[3].confidence)
    for n in (0, 1, 7):  # any batch size, including after a larger one
        assert model.infer(splits["x_test"][:n]).shape == (n, 10)


@pytest.mark.slow
def test_tabular_preprocessing_matches_training(artifacts: dict) -> None:
    import csv

    run = artifacts["wine"]
    model = EdgeModel.load(_dir(artifacts, "wine", "onnx-float32"))
    with open(run.path / "data/test_raw.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    x = model.preprocess(rows)
    assert np.allclose(x, np.load(run.path / "data/splits.npz")["x_test"], atol=1e-5)
    columns = model.columns
    one = model.predict_one([rows[0][c] for c in columns])
    assert one.label == model.predict(rows[:1]).labels[0]


@pytest.mark.slow
def test_bad_inputs_name_the_expected_shape(artifacts: dict) -> None:
    model = EdgeModel.load(_dir(artifacts, "digits", "tflite-int8"))
    with pytest.raises(InputError, match=r"expected a preprocessed batch \(N, 8, 8, 1\) float32; got shape"):
        model.infer(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(InputError, match=r"got dtype int64"):
        model.infer(np.zeros((2, 8, 8, 1), np.int64))
    with pytest.raises(InputError, match=r"one sample \(8, 8, 1\): add a batch axis"):
        model.infer(np.zeros((8, 8, 1), np.float32))
    bad = np.zeros((3, 8, 8, 1), np.float32)
    bad[1, 0, 0, 0] = np.nan
    bad[2, 1, 1, 0] = np.inf
    with pytest.raises(InputError, match=r"NaN or infinite values \(rows 1, 2\)"):
        model.infer(bad)


@pytest.mark.slow
def test_altered_model_file_is_refused_before_loading(artifacts: dict, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_runtime.model as edge_model

    for name, file in (("tflite-int8", "model.tflite"), ("onnx-float32", "model.onnx")):
        copy = shutil.copytree(_dir(artifacts, "digits", name), tmp_path / name)
        blob = (copy / file).read_bytes()
        opened: list[tuple] = []
        monkeypatch.setattr(edge_model, "open_backend", lambda *a, seen=opened: seen.append(a))
        for tampered in (blob[:-10], blob[:100] + bytes([blob[100] ^ 1]) + blob[101:]):
            (copy / file).write_bytes(tampered)
            with pytest.raises(ArtifactError, match="altered or truncated") as info:
                EdgeModel.load(copy)
            assert "\n" not in str(info.value)
        assert opened == []
        monkeypatch.undo()


@pytest.mark.slow
def test_missing_artifact_json_and_runtime(artifacts: dict, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ArtifactError, match=r"has no artifact\.json"):
        EdgeModel.load(tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingRuntimeError, match=r"pip install onnxruntime==1\.32\.0"):
        EdgeModel.load(_dir(artifacts, "digits", "onnx-float32"))
    for mod in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime",
                "tflite_runtime.interpreter", "tensorflow"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(MissingRuntimeError, match=r"no TFLite runtime is installed; pip install ai-edge"):
        EdgeModel.load(_dir(artifacts, "digits", "tflite-int8"))
    folder = shutil.copytree(_dir(artifacts, "wine", "onnx-int8"), tmp_path / "v2")
    meta = json.loads((folder / "artifact.json").read_text())
    (folder / "artifact.json").write_text(json.dumps({**meta, "schema_version": 2}))
    with pytest.raises(ArtifactError, match="schema_version 2"):
        EdgeModel.load(folder)


_BLOCKER = """
import importlib.abc, sys
FORBIDDEN = ("tensorflow", "tf_keras", "keras", "edgeship", "training", "export", "compression")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"{name} is forbidden on a device")
sys.meta_path.insert(0, Block())
"""


@pytest.mark.slow
def test_runs_without_tensorflow_or_edgeship(artifacts: dict, tmp_path: Path) -> None:
    """A device layout: edge_runtime and the artifact folders copied out of the run."""
    device = tmp_path / "device"
    shutil.copytree(ROOT / "edge_runtime", device / "edge_runtime",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for key, name in (("digits", "tflite-int8"), ("digits", "onnx-int8"), ("wine", "tflite-float32")):
        shutil.copytree(_dir(artifacts, key, name), device / f"{key}-{name}")
    raw = np.load(artifacts["digits"].path / "data/test_raw.npz")["x"][:5]
    np.save(device / "raw.npy", raw)
    code = _BLOCKER + """
import numpy as np
import edge_runtime
from edge_runtime import EdgeModel
from edge_runtime.rounds import benchmark
raw = np.load("raw.npy")
out = {}
for name in ("digits-tflite-int8", "digits-onnx-int8"):
    m = EdgeModel.load(name, threads=1)
    out[name] = m.predict(raw).labels
wine = EdgeModel.load("wine-tflite-float32")
out["wine"] = wine.predict_one(wine.example_raw(1)[0]).label
out["bench"] = benchmark("digits-onnx-int8", runs=3, warmup=1)["latency_ms"]["p50"] > 0
bad = [m for m in sys.modules if m.split(".")[0] in FORBIDDEN]
assert not bad, bad
assert edge_runtime.__file__.startswith(os.getcwd()), edge_runtime.__file__
print(json.dumps(out))
""".replace("import numpy as np\n", "import json, os, numpy as np\n", 1)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    done = subprocess.run([sys.executable, "-c", code], cwd=device, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    expected = EdgeModel.load(_dir(artifacts, "digits", "tflite-int8")).predict(raw).labels
    assert out["digits-tflite-int8"] == expected
    assert out["digits-onnx-int8"] == expected  # the same digits, whichever runtime
    assert out["wine"] in json.loads((device / "wine-tflite-float32/artifact.json").read_text())["labels"]
    assert out["bench"] is True


# ---------------------------------------------------------------- the device CLI


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = edge_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_cli_predict_npy_csv_and_image(artifacts: dict, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    digits = _dir(artifacts, "digits", "tflite-int8")
    raw = np.load(artifacts["digits"].path / "data/test_raw.npz")["x"][:4]
    np.save(tmp_path / "raw.npy", raw)
    code, out, _ = _cli(capsys, "predict", str(digits), str(tmp_path / "raw.npy"), "--json", "--top", "3")
    assert code == 0
    preds = json.loads(out)["predictions"]
    assert [p["label"] for p in preds] == EdgeModel.load(digits).predict(raw).labels
    assert len(preds[0]["top"]) == 3
    png = tmp_path / "digit.png"
    Image.fromarray((raw[0, ..., 0] * 255 / 16).round().astype(np.uint8), mode="L").save(png)
    code, out, _ = _cli(capsys, "predict", str(digits), str(png), "--json")
    assert code == 0 and json.loads(out)["predictions"][0]["label"] == preds[0]["label"]
    wine = _dir(artifacts, "wine", "onnx-float32")
    code, out, _ = _cli(capsys, "predict", str(wine), str(artifacts["wine"].path / "data/test_raw.csv"))
    assert code == 0 and len(out.strip().splitlines()) > 10


@pytest.mark.slow
def test_cli_bench_json(artifacts: dict, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _cli(capsys, "bench", str(_dir(artifacts, "wine", "tflite-float32")), "--runs", "20",
                        "--warmup", "2", "--threads", "1", "--json")
    assert code == 0
    r = json.loads(out)
    assert set(r["latency_ms"]) == {"mean", "std", "min", "p50", "p90", "p95", "p99", "max"}
    assert r["latency_ms"]["min"] <= r["latency_ms"]["p50"] <= r["latency_ms"]["max"]
    assert r["end_to_end_ms"]["p50"] >= r["latency_ms"]["p50"]
    assert r["runs"] == 20 and r["warmup"] == 2 and r["threads"] == 1 and r["backend"] == "ai-edge-litert"
    assert r["init_ms"] > 0 and r["first_ms"] > 0 and r["peak_rss_mb"] > 0 and r["bytes"] > 0
    assert r["device"]["emulated"] is False and r["rounds"] == 5 and r["p50_ci_ms"] is not None
    assert r["accuracy"] is None and r["accuracy_source"] is None  # no --test: nothing measured here


@pytest.mark.slow
def test_cli_bench_measures_accuracy_on_the_given_test_split(artifacts: dict, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    from edge_runtime.testset import write_testset

    folder = _dir(artifacts, "digits", "tflite-int8")
    meta = json.loads((folder / "artifact.json").read_text())
    model = EdgeModel.load(folder)
    raw = model.example_raw(40, seed=3)
    predicted = np.asarray(model.predict(raw).indices)
    labels = predicted.copy()
    wrong = np.arange(0, 40, 5)  # 8 of 40 rows labelled with another digit than the model says
    labels[wrong] = (predicted[wrong] + 1) % 10
    test = write_testset(tmp_path / "test", raw, labels, "made up")
    code, out, _ = _cli(capsys, "bench", str(folder), "--runs", "10", "--warmup", "1", "--rounds", "2",
                        "--threads", "1,2", "--test", str(test), "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["threads"] for r in rows] == [1, 2] and meta["format"] == "tflite"
    assert all(r["accuracy"] == pytest.approx(32 / 40) and r["accuracy_source"] == "device" for r in rows)
    assert rows[0]["evaluation"]["samples"] == 40
    assert rows[0]["evaluation"]["predictions"] == predicted.tolist()
    assert all(r["ci_level"] == 0.5 and r["calibration"]["call_ms"] > 0 for r in rows)  # 2 rounds: 50 %
    assert all(isinstance(r["calibration"]["drifted"], bool) and r["calibration"]["end_call_ms"] > 0
               for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize(("args", "needle"), [
    (["bench", "{empty}"], "has no artifact.json"),
    (["bench", "{art}", "--runs", "0"], "runs must be at least 1, got 0"),
    (["bench", "{art}", "--threads", "0"], "--threads must be 1 or more"),
    (["bench", "{art}", "--rounds", "0"], "rounds must be at least 1, got 0"),
    (["bench", "{art}", "--test", "{txt}"], "use .npz or .json"),
    (["predict", "{art}", "{txt}"], "use .npy, .csv"),
    (["predict", "{art}", "{missing}"], "does not exist"),
    (["predict", "{art}", "{csv}"], "needs a tabular model"),
])
def test_cli_errors_are_one_line_exit_2(artifacts: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                        args: list[str], needle: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.txt").write_text("1")
    (tmp_path / "x.csv").write_text("a\n1\n")
    subs = {"{empty}": str(tmp_path / "empty"), "{art}": str(_dir(artifacts, "digits", "tflite-int8")),
            "{txt}": str(tmp_path / "x.txt"), "{missing}": str(tmp_path / "nope.npy"),
            "{csv}": str(tmp_path / "x.csv")}
    code, _, err = _cli(capsys, *[subs.get(a, a) for a in args])
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("INFO:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


@pytest.mark.slow
def test_python_dash_m_entry_point(artifacts: dict) -> None:
    art = str(_dir(artifacts, "wine", "onnx-int8"))
    cmd = [sys.executable, "-m", "edge_runtime", "bench", art, "--runs", "5", "--warmup", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "invoke" in done.stdout and "p50" in done.stdout


@pytest.mark.parametrize("spec", [
    {"kind": "image", "height": 8, "width": 8, "channels": 1, "raw_range": [0, 16], "scale": 0.0625,
     "mean": [0.3], "std": [0.42]},
    {"kind": "image", "height": 5, "width": 7, "channels": 3, "raw_range": [0, 255], "scale": 1 / 255,
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.0, 0.225]},
    {"kind": "image", "height": 4, "width": 4, "channels": 3},
], ids=["digits-range", "imagenet-zero-std", "defaults"])
def test_the_8_bit_lookup_is_bit_identical_to_preprocess(spec: dict[str, Any]) -> None:
    """The server preprocesses decoded images by table lookup; it must be exactly the arithmetic
    training used, not merely close (the golden check and the monitor compare against it)."""
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(3, spec["height"], spec["width"], spec["channels"]), dtype=np.uint8)
    u8[0, 0, 0] = 0
    u8[0, 0, 1] = 255
    want = preprocess_image(spec, raw_from_u8(spec, u8))
    got = lookup_u8(u8_table(spec), u8)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want)
