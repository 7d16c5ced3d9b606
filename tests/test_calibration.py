"""One int8 calibration for compress and export, and QAT variants exported as int8 only.

The routine is tested on arrays; the rest on a copy of the session's wine run (a real MLP),
with variants made by ``compress_run`` (or saved by hand, as another tool would).
"""

from __future__ import annotations

import numpy as np
import pytest
from _models import copy_run, read_artifact
from clihelp import assert_one_line_error, invoke

from edgeship.core.errors import DataError, InputError
from edgeship.core.runstore import RunDir
from edgeship.training.calibration import CALIBRATION_ROWS, calibration_set, class_quotas

# ---------------------------------------------------------------- the routine


def _imbalanced(n: int = 1000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(4, size=n, p=[0.6, 0.25, 0.13, 0.02])
    return rng.normal(size=(n, 5)).astype(np.float32), y.astype(np.int64)


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    x, y = _imbalanced()
    a, b, c = (calibration_set(x, y, seed=s) for s in (3, 3, 4))
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.rows, x[a.indices])
    assert a.describe() == b.describe() != c.describe()
    assert a.describe()["rows"] == CALIBRATION_ROWS == len(a.rows)
    assert set(a.describe()) == {"rows", "seed", "stratified", "indices_sha256"}
    assert list(a.indices) == sorted(set(a.indices.tolist()))  # distinct, in train-split order
    assert a.rows.dtype == np.float32 and a.rows.flags.c_contiguous


def test_rows_are_stratified_in_proportion_to_each_class() -> None:
    x, y = _imbalanced()
    cal = calibration_set(x, y, seed=0)
    assert cal.stratified
    got = np.bincount(y[cal.indices], minlength=4)
    want = np.bincount(y, minlength=4) * CALIBRATION_ROWS / len(y)
    assert got.sum() == CALIBRATION_ROWS
    assert np.all(np.abs(got - want) < 1), (got, want)


def test_a_rare_class_still_gets_a_row() -> None:
    quotas = class_quotas(np.array([990, 9, 1]), 50)
    assert quotas.sum() == 50 and quotas.min() >= 1 and list(quotas) == [48, 1, 1]


def test_without_class_labels_rows_are_plain_random() -> None:
    x, _ = _imbalanced()
    cal = calibration_set(x, None, seed=0, n=40)
    assert not cal.stratified and len(cal.indices) == 40
    small = calibration_set(x[:30], None, seed=0)  # fewer rows than asked: all of them
    assert np.array_equal(small.indices, np.arange(30))


@pytest.mark.parametrize(("rows", "needle"), [
    (np.zeros((5, 3), np.float32), "at least 10 train samples; this run has 5"),
    (np.full((20, 3), np.nan, np.float32), "NaN or infinite"),
])
def test_unusable_train_splits_are_one_line(rows: np.ndarray, needle: str) -> None:
    with pytest.raises(DataError, match=needle) as info:
        calibration_set(rows, np.zeros(len(rows), np.int64), seed=0)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- compress and export agree


@pytest.fixture()
def run(tabular_run: RunDir, tmp_path) -> RunDir:
    return copy_run(tabular_run, tmp_path / "runs")


@pytest.fixture()
def cli_with_export(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeship import cli

    monkeypatch.setitem(cli.COMMANDS, "export", ("edgeship.cli.export:export", "Export."))


@pytest.mark.slow
def test_compress_and_export_calibrate_on_the_same_rows(run: RunDir) -> None:
    from edgeship.compression.stage import CompressConfig, compress_run
    from edgeship.export.stage import ExportConfig, export_run

    result = compress_run(run, CompressConfig(quantize="int8", seed=7, name="ptq"))
    recorded = result.metrics["calibration"]
    with np.load(run.path / "data/splits.npz") as npz:
        expected = calibration_set(npz["x_train"], npz["y_train"], seed=run.manifest["seed"]).describe()
    assert recorded == expected and recorded["stratified"]  # the run's seed, not compress --seed
    assert run.manifest["variants"]["ptq"]["calibration"] == recorded
    assert read_artifact_json(result.dir / "metrics.json")["calibration"] == recorded

    made = export_run(run, ExportConfig(variants="ptq", formats="tflite,onnx", quantize="int8"))
    made += export_run(run, ExportConfig(variants="ptq", formats="tflite", quantize="int8", io="float32"))
    assert sorted(r.dir.name for r in made) == ["onnx-int8", "tflite-int8", "tflite-int8-fio"]
    for r in made:
        assert r.passed, r.validation
        assert read_artifact(r.dir)["calibration"] == recorded, r.dir.name
    # The very model compress measured: same converter, same rows, same bytes and accuracy.
    fio = next(r for r in made if r.dir.name == "tflite-int8-fio")
    assert fio.bytes == result.metrics["tflite_bytes"]
    assert fio.validation["accuracy"] == pytest.approx(result.metrics["test_accuracy"])
    assert run.last_stage("export")["params"]["calibration"] == recorded


# ---------------------------------------------------------------- QAT variants: int8 only


@pytest.fixture()
def qat_run(run: RunDir) -> RunDir:
    from edgeship.compression.stage import CompressConfig, compress_run

    compress_run(run, CompressConfig(quantize="qat", epochs=1, name="wine-qat"))
    assert run.manifest["variants"]["wine-qat"]["qat"] is True
    assert run.manifest["variants"]["wine-qat"]["calibration"] is None  # QAT learns its ranges
    return run


@pytest.mark.slow
def test_a_qat_variant_exports_int8_only_by_default(cli_with_export: None, qat_run: RunDir) -> None:
    result = invoke(qat_run.path.parent, "export", qat_run.id, "--variant", "wine-qat")
    assert result.exit_code == 0, result.stderr
    folders = sorted(p.name for p in (qat_run.path / "exports/wine-qat").iterdir() if p.is_dir())
    assert folders == ["onnx-int8", "tflite-int8", "web-int8"]
    assert "wine-qat: QAT variant, exporting int8 only; pass --qat-float for float32" in result.stderr
    assert "wine-qat: QAT variant, skipping tvm" in result.stderr
    for name in folders:
        meta = read_artifact(qat_run.path / "exports/wine-qat" / name)
        assert meta["quantize"] == "int8" and meta["validation"]["passed"], name
        assert meta["calibration"] is None  # no rows: the ranges come from training
    # Only TVM asked for: nothing a QAT variant should ship, so a one-line error naming the flag.
    assert_one_line_error(invoke(qat_run.path.parent, "export", qat_run.id, "--variant", "wine-qat",
                                 "--format", "tvm"), "QAT variant wine-qat", "--qat-float")


@pytest.mark.slow
def test_qat_float_builds_float32_with_a_warning(cli_with_export: None, qat_run: RunDir) -> None:
    result = invoke(qat_run.path.parent, "export", qat_run.id, "--variant", "wine-qat",
                    "--format", "tflite", "--quantize", "float32", "--qat-float")
    assert result.exit_code == 0, result.stderr
    folder = qat_run.path / "exports/wine-qat/tflite-float32"
    meta = read_artifact(folder)
    assert meta["quantize"] == "float32" and meta["qat"] is True and meta["validation"]["passed"]
    (warning,) = meta["validation"]["warnings"]
    assert "fake-quant" in warning and "slower" in warning
    assert f"wine-qat/tflite-float32: warning: {warning}" in " ".join(result.stderr.split())
    assert qat_run.last_stage("export")["params"]["qat_float"] is True


@pytest.mark.slow
def test_a_hand_saved_qat_model_is_recognised_from_its_config(tmp_path) -> None:
    """A QAT .h5 with no ``qat`` in its manifest entry (not made by compress) is still int8 only."""
    import tensorflow_model_optimization as tfmot
    from _models import hand_run, tiny_mlp

    from edgeship.export.stage import ExportConfig, export_run, variant_is_qat

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    x = rng.normal(size=(120, 6)).astype(np.float32) + y[:, None] * 1.5
    run = hand_run(tmp_path, tiny_mlp(6, 3), x[:90], y[:90], x[90:], y[90:], ["a", "b", "c"])
    qat = tfmot.quantization.keras.quantize_model(tiny_mlp(6, 3))
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(x[:90], y[:90], epochs=3, verbose=0)
    with run.stage("compress", {}) as st:
        qat.save(st.output_dir("variants/q") / "model.h5")
        st.set_section("variants", {"q": {"dir": "variants/q", "model_file": "model.h5"}})
    assert variant_is_qat(run, run.manifest, "q") and not variant_is_qat(run, run.manifest, "base")
    lines: list[str] = []
    results = export_run(run, ExportConfig(variants="all", formats="tflite"), log=lines.append)
    assert sorted((r.variant, r.dir.name) for r in results) == [
        ("base", "tflite-float32"), ("base", "tflite-int8"), ("q", "tflite-int8")]
    assert "q: QAT variant, exporting int8 only; pass --qat-float for float32" in lines
    base_int8 = next(r for r in results if r.variant == "base" and r.quantize == "int8")
    assert read_artifact(base_int8.dir)["calibration"]["stratified"] is True
    with pytest.raises(InputError, match="QAT variant q exports int8 only"):
        export_run(run, ExportConfig(variants="q", formats="tvm"))


def read_artifact_json(path) -> dict:
    import json

    return json.loads(path.read_text())
