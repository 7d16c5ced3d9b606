"""Models people ship, brought in by file: tf_keras's own applications, LSTM and GRU models.

Each application family is built with random weights at a small input size, saved, and
imported through the allowlist (``training.imported``); the loaded model must compute what
the saved one did. Recurrent models go through compress (TFLite measurement) and export to
TFLite and ONNX; a layer TFLite cannot express fails that format in one line while the other
formats go on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clihelp import assert_one_line_error, invoke

from edgeship.core.runstore import RunDir, RunStore
from edgeship.training.imported import load_foreign_model, rescales_own_inputs
from edgeship.training.keras_env import load_model

pytestmark = pytest.mark.slow

SHAPE = (32, 32, 3)  # the smallest input every family below accepts
FAMILIES = ["MobileNetV2", "MobileNetV3Small", "EfficientNetB0", "EfficientNetV2B0", "ConvNeXtTiny",
            "RegNetX002", "ResNet50", "DenseNet121"]
SMALL = {"MobileNetV2": {"alpha": 0.35}, "MobileNetV3Small": {"alpha": 0.75}}
# built with include_preprocessing: they take 0-255 pixels and scale them themselves
RESCALING = {"MobileNetV3Small", "EfficientNetB0", "EfficientNetV2B0", "ConvNeXtTiny", "RegNetX002"}


def _application(name: str) -> Any:
    from edgeship.training.keras_env import keras

    build = getattr(keras().applications, name)
    return build(input_shape=SHAPE, weights=None, classes=10, **SMALL.get(name, {}))


@pytest.mark.parametrize("name", FAMILIES)
def test_stock_application_imports(tmp_path: Path, name: str) -> None:
    """Refused before (TFOpLambda of x + 3, Constant initializer, LayerScale); now loaded, and the
    loaded model gives the saved model's outputs."""
    model = _application(name)
    suffix = ".h5" if name == "ConvNeXtTiny" else ".keras"  # .h5 names LayerScale without a module
    path = tmp_path / f"{name}{suffix}"
    model.save(path)
    loaded, origin = load_foreign_model(path, SHAPE, 10)
    x = np.random.default_rng(0).uniform(-1, 1, size=(4, *SHAPE)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    assert origin["format"] == suffix[1:] and loaded.count_params() == model.count_params()
    assert (rescales_own_inputs(loaded) is not None) == (name in RESCALING)
    # as the run keeps it (model/model.keras), and as compress loads it back: ConvNeXt's LayerScale
    # did not load back, so an imported ConvNeXt could not be compressed
    loaded.save(tmp_path / "model.keras")
    again = load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def _sequence_model(path: Path, layer: str) -> Path:
    """digits rows as a sequence of 8 steps of 8 features, then ``layer``."""
    from edgeship.training.keras_env import keras

    k = keras()
    inputs = k.Input((8, 8, 1))
    if layer == "ConvLSTM1D":
        x = k.layers.Flatten()(k.layers.ConvLSTM1D(4, 3)(inputs))
    else:
        x = getattr(k.layers, layer)(16)(k.layers.Reshape((8, 8))(inputs))
    k.Model(inputs, k.layers.Dense(10, activation="softmax")(x)).save(path)
    return path


def _only_run(runs: Path) -> RunDir:
    (path,) = [p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return RunDir(path)


@pytest.mark.parametrize("layer", ["LSTM", "GRU"])
def test_recurrent_model_compresses_and_exports_to_tflite_and_onnx(tmp_path: Path, layer: str) -> None:
    """compress measured LSTM/GRU through TFLite and died with the converter's TensorListReserve
    traceback; now the recurrence is unrolled over its 8 steps and every format matches Keras."""
    from edgeship.export.stage import ExportConfig, export_run

    runs = tmp_path / "runs"
    path = _sequence_model(tmp_path / f"{layer}.keras", layer)
    result = invoke(runs, "compress", "--model", str(path), "--dataset", "digits", "--quantize", "int8")
    assert result.exit_code == 0, result.stderr
    run = _only_run(runs)
    (variant,) = [p for p in (run.path / "variants").iterdir() if p.is_dir()]
    metrics = json.loads((variant / "metrics.json").read_text())
    assert metrics["tflite_bytes"] > 0 and metrics["deploy_form"] == "int8"
    results = export_run(run, ExportConfig(formats="tflite,onnx", quantize="float32"))
    assert sorted(r.dir.name for r in results) == ["onnx-float32", "tflite-float32"]
    for r in results:
        assert r.passed, (r.dir.name, r.validation)
        assert r.validation["top1_agreement"] == 1.0 and r.validation["max_abs_diff"] <= 1e-4
    tflite = next(r for r in results if r.format == "tflite")
    assert tflite.artifact["recurrent"] == "unrolled" and tflite.artifact["inputs"][0]["shape"][0] == -1


def test_layer_tflite_cannot_express_fails_one_format_and_export_goes_on(tmp_path: Path) -> None:
    """ConvLSTM1D (a loop TFLite cannot express with a free batch): compress says so in one line;
    export records tflite as failed with the reason and still makes and validates ONNX."""
    from edgeship.export.stage import ExportConfig, export_run
    from edgeship.training.stage import TrainConfig, adopt

    path = _sequence_model(tmp_path / "convlstm.keras", "ConvLSTM1D")
    result = invoke(tmp_path / "cli-runs", "compress", "--model", str(path), "--dataset", "digits",
                    "--quantize", "int8")
    assert_one_line_error(result, "TFLite cannot convert this model", "'conv_lstm1d' (ConvLSTM1D)",
                          "replace that layer")
    run = adopt(RunStore(tmp_path / "runs"), path, TrainConfig(dataset="digits")).run
    results = export_run(run, ExportConfig(formats="tflite,onnx", quantize="float32"))
    by = {r.dir.name: r for r in results}
    assert sorted(by) == ["onnx-float32", "tflite-float32.failed"]
    assert by["onnx-float32"].passed and by["onnx-float32"].validation["top1_agreement"] == 1.0
    failed = by["tflite-float32.failed"]
    (reason,) = failed.validation["failures"]
    assert "\n" not in reason and "TensorListReserve" in reason and "'conv_lstm1d' (ConvLSTM1D)" in reason
    meta = json.loads((failed.dir / "artifact.json").read_text())
    assert meta["validation"]["passed"] is False and meta["file"] is None
    assert sorted(p.name for p in failed.dir.iterdir()) == ["artifact.json"]
    exports = run.manifest["exports"]
    assert exports["exports/base/tflite-float32.failed"]["validation"]["passed"] is False
    assert exports["exports/base/onnx-float32"]["validation"]["passed"] is True


def test_a_model_that_rescales_its_pixels_is_fed_raw_pixels(tmp_path: Path) -> None:
    """Standardised pixels into a model starting with Rescaling(1/255) are 1/255 of its range: a
    stock EfficientNet, MobileNetV3, ConvNeXt or RegNet trained on 0-255 images then answers at
    chance (from scratch a 32x32 RegNetX002 learned 0.13 on the digits). Import feeds it 0-255."""
    from PIL import Image

    from edgeship.training.keras_env import keras
    from edgeship.training.stage import TrainConfig, adopt

    rng = np.random.default_rng(0)
    for label in ("dark", "light"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(12):
            level = 40 if label == "dark" else 200
            pixels = np.clip(rng.normal(level, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / label / f"{i}.png")
    k = keras()
    inputs = k.Input((8, 8, 3))
    x = k.layers.Rescaling(1 / 255, name="pixels")(inputs)
    x = k.layers.GlobalAveragePooling2D()(k.layers.Conv2D(2, 3)(x))
    k.Model(inputs, k.layers.Dense(2, activation="softmax")(x)).save(tmp_path / "m.keras")
    result = adopt(RunStore(tmp_path / "runs"), tmp_path / "m.keras",
                   TrainConfig(dataset=str(tmp_path / "photos"), image_size=(8, 8)))
    manifest = result.run.manifest
    spec = manifest["data"]["preprocessing"]
    assert spec["model_rescales"] and spec["scale"] == 1.0 and spec["std"] == [1.0] * 3
    assert manifest["model"]["origin"]["rescales_inputs"] == "pixels"
    x_test = np.load(result.run.path / "data" / "splits.npz")["x_test"]
    assert x_test.max() > 100  # 0-255 pixels, not standardised ones


def test_grouped_convolutions_convert_to_onnx(tmp_path: Path) -> None:
    """RegNet's grouped 3x3 convolutions stopped ONNX export ("tf2onnx cannot convert TensorFlow op
    PartitionedCall"): tf_keras runs them through XLA on the CPU. Traced plain, they become ONNX
    Conv with ``group`` and compute what Keras does; the model still runs in Keras afterwards."""
    import onnxruntime as ort

    from edgeship.export.onnx import convert_keras
    from edgeship.training.keras_env import keras

    k = keras()
    inputs = k.Input((8, 8, 4))
    x = k.layers.Conv2D(8, 3, groups=4, padding="same", activation="relu", name="grouped")(inputs)
    model = k.Model(inputs, k.layers.Dense(3, activation="softmax")(k.layers.GlobalAveragePooling2D()(x)))
    path = convert_keras(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 4)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-5)


def test_exact_gelu_converts_to_onnx(tmp_path: Path) -> None:
    """ConvNeXt's exact GELU stopped ONNX export ("tf2onnx cannot convert TensorFlow op Erfc in
    layer '..._gelu'"). Traced in its erf form it converts and computes what Keras does; the
    swap is gone afterwards."""
    import onnxruntime as ort
    from tf_keras.src import activations

    from edgeship.export.onnx import convert_keras
    from edgeship.training.keras_env import keras

    k = keras()
    before = activations.tf.nn.gelu
    inputs = k.Input((6,))
    x = k.layers.Dense(8, name="hidden")(inputs)
    x = k.layers.Activation("gelu", name="gelu")(x)
    model = k.Model(inputs, k.layers.Dense(3, activation="softmax")(x))
    path = convert_keras(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32) * 3
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-5)
    assert activations.tf.nn.gelu is before
