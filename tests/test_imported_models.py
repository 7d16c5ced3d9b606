"""Bring-your-own model: only tf_keras's own classes load; nothing a file names is imported first."""

from __future__ import annotations

import json
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from clihelp import assert_one_line_error, invoke

from edgeship.core.errors import InputError
from edgeship.core.runstore import RunDir
from edgeship.training.imported import load_foreign_model

SENTINEL = "edgeship_hostile_sentinel"


def _hostile_keras(tmp_path: Path, hostile: dict[str, Any], at_top: bool = False) -> Path:
    """A ``.keras`` zip written by hand, the way an attacker would: a Sequential whose second
    layer is ``hostile``, or (``at_top``) ``hostile`` as the model itself, the pattern of
    CVE-2025-1550, which tf_keras imports and calls ``from_config`` on before reading weights."""
    config = hostile if at_top else {
        "module": "keras", "class_name": "Sequential", "registered_name": None,
        "config": {"name": "sequential", "layers": [
            {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
             "config": {"batch_input_shape": [None, 4], "dtype": "float32", "name": "input_1"}},
            hostile,
        ]},
    }
    path = tmp_path / "hostile.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "2.21.0"}))
        z.writestr("config.json", json.dumps(config))
        z.writestr("model.weights.h5", b"")
    return path


@pytest.fixture()
def sentinel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable module that leaves a file behind when imported or when its class is built."""
    src = tmp_path / "src"
    src.mkdir()
    marker = tmp_path / "imported.txt"
    (src / f"{SENTINEL}.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "class Boom:\n"
        "    @classmethod\n"
        "    def from_config(cls, config):\n"
        f"        pathlib.Path({str(marker)!r}).write_text('called')\n"
        "        return cls()\n"
    )
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.delitem(sys.modules, SENTINEL, raising=False)
    return marker


@pytest.mark.parametrize("at_top", [True, False], ids=["as-the-model", "as-a-layer"])
def test_keras_file_naming_a_foreign_module_is_refused_unimported(tmp_path: Path, sentinel: Path,
                                                                  at_top: bool) -> None:
    path = _hostile_keras(tmp_path, {"module": SENTINEL, "class_name": "Boom", "registered_name": None,
                                     "config": {"name": "boom"}}, at_top)
    with pytest.raises(InputError) as e:
        load_foreign_model(path, (4,), 2)
    assert not sentinel.exists() and SENTINEL not in sys.modules  # first: nothing of it ran
    msg = str(e.value)
    assert "\n" not in msg and "layer 'boom'" in msg and SENTINEL in msg and "outside tf_keras" in msg


def test_keras_file_naming_os_system_is_refused_uncalled(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    calls: list[Any] = []
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append(a) or 0)
    hostile = {"module": "keras.layers", "class_name": "Dense", "registered_name": None,
               "config": {"name": "dense", "units": 2,
                          "activation": {"module": "os", "class_name": "function", "config": "system",
                                         "registered_name": "system"}}}
    with pytest.raises(InputError, match=r"layer 'dense' names function 'system' from module 'os'"):
        load_foreign_model(_hostile_keras(tmp_path, hostile), (4,), 2)
    as_class = {"module": "os", "class_name": "system", "registered_name": None, "config": {"name": "x"}}
    with pytest.raises(InputError, match=r"layer 'x' is system from module 'os', outside tf_keras"):
        load_foreign_model(_hostile_keras(tmp_path, as_class), (4,), 2)
    assert calls == []


@pytest.mark.parametrize(("entry", "needle"), [
    ({"module": "keras.layers", "class_name": "Dense", "registered_name": "mine>Dense",
      "config": {"name": "d"}}, "registered as the custom object 'mine>Dense'"),
    ({"module": "kerasevil", "class_name": "Dense", "registered_name": None,
      "config": {"name": "d"}}, "from module 'kerasevil', outside tf_keras"),
    ({"module": "keras.layers", "class_name": "MyLayer", "registered_name": None,
      "config": {"name": "d"}}, "MyLayer from module 'keras.layers', which is not a tf_keras layer"),
    ({"module": "keras.layers", "class_name": "Dense", "registered_name": None,
      "config": {"name": "d", "units": 2, "kernel_initializer": {
          "module": "keras.src.utils.generic_utils", "class_name": "function", "config": "func_load",
          "registered_name": None}}}, "function 'func_load', which is not one of tf_keras's"),
    ({"module": "tensorflow_model_optimization.x", "class_name": "Dense", "registered_name": None,
      "config": {"name": "d"}}, "outside tf_keras"),
], ids=["registered-custom", "keras-lookalike-module", "unknown-class", "keras-internal-function",
        "tfmot-module-for-a-non-tfmot-class"])
def test_other_ways_out_of_tf_keras_are_refused(tmp_path: Path, entry: dict[str, Any], needle: str) -> None:
    with pytest.raises(InputError, match="refused") as e:
        load_foreign_model(_hostile_keras(tmp_path, entry), (4,), 2)
    assert needle in str(e.value)


def test_h5_with_tf_op_lambda_is_refused(tmp_path: Path) -> None:
    """``tf.math.sin`` on a Keras tensor records a TFOpLambda; tf_keras ignores safe_mode for .h5."""
    from edgeship.training.keras_env import keras, tf

    k = keras()
    inputs = k.Input((4,))
    x = tf().math.sin(inputs)
    outputs = k.layers.Dense(2, activation="softmax")(x)
    path = tmp_path / "sin.h5"
    k.Model(inputs, outputs).save(path)
    with pytest.raises(InputError) as e:
        load_foreign_model(path, (4,), 2)
    assert str(e.value) == ("sin.h5 refused: layer 'tf.math.sin' is TFOpLambda calling tf.math.sin: it "
                            "runs arbitrary TensorFlow code, and only elementwise arithmetic and "
                            "activations (tf.math.add, multiply, ...) are accepted; rebuild the model "
                            "without it")


def _op_lambda(function: str, module: str = "keras.layers") -> dict[str, Any]:
    return {"module": module, "class_name": "TFOpLambda", "registered_name": None,
            "config": {"name": f"tf.{function}", "trainable": True, "dtype": "float32",
                       "function": function}}


@pytest.mark.parametrize("function", ["io.write_file", "py_function", "raw_ops.WriteFile",
                                      "compat.v1.py_func", "print", "debugging.assert_equal"])
def test_tf_op_lambda_outside_the_allowlist_is_refused(tmp_path: Path, function: str) -> None:
    """Only side-effect-free arithmetic passes: a TFOpLambda calling anything else (file I/O,
    Python callbacks, raw ops) is refused before Keras looks the function up."""
    with pytest.raises(InputError, match=f"is TFOpLambda calling tf.{function}") as e:
        load_foreign_model(_hostile_keras(tmp_path, _op_lambda(function)), (4,), 2)
    assert "\n" not in str(e.value) and "rebuild the model without it" in str(e.value)


def test_tf_op_lambda_from_outside_tf_keras_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"layer 'tf\.math\.multiply' is TFOpLambda: it runs arbitrary"):
        load_foreign_model(_hostile_keras(tmp_path, _op_lambda("math.multiply", module="evil")), (4,), 2)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_hard_sigmoid_arithmetic_loads(tmp_path: Path, suffix: str) -> None:
    """``relu6(x + 3) * (1 / 6)`` on Keras tensors, as MobileNetV3 writes it: TFOpLambdas of
    tf.__operators__.add and tf.math.multiply; the loaded model computes the same."""
    import numpy as np

    from edgeship.training.keras_env import keras

    k = keras()
    inputs = k.Input((4,))
    x = k.layers.Dense(8)(inputs)
    x = x * (k.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0))
    outputs = k.layers.Dense(2, activation="softmax")(x)
    model = k.Model(inputs, outputs)
    path = tmp_path / f"hard_swish{suffix}"
    model.save(path)
    loaded, _ = load_foreign_model(path, (4,), 2)
    data = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(data, verbose=0), model.predict(data, verbose=0), atol=1e-6)


def test_tf_constant_initializer_from_other_modules_is_refused(tmp_path: Path) -> None:
    """TensorFlow's own initializer module is accepted for its initializers only."""
    entry = {"module": "keras.layers", "class_name": "Dense", "registered_name": None,
             "config": {"name": "d", "units": 2, "kernel_initializer": {
                 "module": "tensorflow.python.ops.init_ops_v2", "class_name": "Boom",
                 "registered_name": "Boom", "config": {}}}}
    with pytest.raises(InputError, match=re.escape("layer 'd' is Boom from module 'tensorflow.python")):
        load_foreign_model(_hostile_keras(tmp_path, entry), (4,), 2)
    entry["config"]["kernel_initializer"]["module"] = "tensorflow.python.ops.evil"
    entry["config"]["kernel_initializer"]["class_name"] = "Constant"
    entry["config"]["kernel_initializer"]["registered_name"] = "Constant"
    with pytest.raises(InputError, match="outside tf_keras"):
        load_foreign_model(_hostile_keras(tmp_path, entry), (4,), 2)


def test_convnext_layer_scale_only_from_its_own_module(tmp_path: Path) -> None:
    entry = {"module": "tf_keras.src.applications.regnet", "class_name": "LayerScale",
             "registered_name": "LayerScale", "config": {"name": "ls", "init_values": 1e-6,
                                                          "projection_dim": 4}}
    needle = "layer 'ls' is LayerScale from module 'tf_keras.src.applications.regnet', which is not"
    with pytest.raises(InputError, match=re.escape(needle)):
        load_foreign_model(_hostile_keras(tmp_path, entry), (4,), 2)


def _keras3_zip(tmp_path: Path) -> Path:
    """A .keras file as Keras 3 writes it (metadata and config copied from keras 3.15)."""
    policy = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
              "registered_name": None}
    config = {"module": "keras", "class_name": "Sequential", "registered_name": None, "config": {
        "name": "sequential", "trainable": True, "dtype": policy, "layers": [
            {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
             "config": {"batch_shape": [None, 4], "dtype": "float32", "name": "input_layer"}},
            {"module": "keras.layers", "class_name": "Dense", "registered_name": None,
             "config": {"name": "dense", "dtype": policy, "units": 2, "activation": "softmax"}}]}}
    path = tmp_path / "k3.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1", "date_saved": "2026-12-07"}))
        z.writestr("config.json", json.dumps(config))
        z.writestr("model.weights.h5", b"")
    return path


KERAS3_MESSAGE = ("was saved by Keras 3 (keras 3.15.1); edgeship reads Keras 2 (tf_keras) models: build and "
                  "save it with `import tf_keras as keras`")


def test_keras3_file_is_refused_saying_so(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        load_foreign_model(_keras3_zip(tmp_path), (4,), 2)
    assert str(e.value).startswith("k3.keras " + KERAS3_MESSAGE) and "\n" not in str(e.value)
    result = invoke(tmp_path / "runs", "compress", "--model", str(_keras3_zip(tmp_path)),
                    "--dataset", "digits", "--quantize", "int8")
    assert_one_line_error(result, "k3.keras " + KERAS3_MESSAGE, "model.save('model.keras')")


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_real_keras3_files_are_refused_saying_so(tmp_path: Path, suffix: str) -> None:
    """Saved by the venv's own ``import keras`` (Keras 3), in a fresh process."""
    import os
    import subprocess

    path = tmp_path / f"model{suffix}"
    code = ("import keras\n"
            "m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation='softmax')])\n"
            f"m.save({str(path)!r})\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, timeout=300)
    with pytest.raises(InputError, match=r"was saved by Keras 3 \(keras 3\.") as e:
        load_foreign_model(path, (4,), 2)
    assert "import tf_keras as keras" in str(e.value) and "\n" not in str(e.value)


def test_slicing_op_lambda_is_refused(tmp_path: Path) -> None:
    from edgeship.training.keras_env import keras

    k = keras()
    inputs = k.Input((4,))
    outputs = k.layers.Dense(2, activation="softmax")(inputs[:, :2])
    path = tmp_path / "slice.keras"
    k.Model(inputs, outputs).save(path)
    with pytest.raises(InputError, match="is SlicingOpLambda: it runs arbitrary TensorFlow code"):
        load_foreign_model(path, (4,), 2)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_plain_dense_and_conv_models_still_load(tmp_path: Path, suffix: str) -> None:
    from edgeship.training.keras_env import keras

    k = keras()
    inputs = k.Input((8, 8, 1))
    x = k.layers.Conv2D(4, 3, activation="relu", kernel_regularizer="l2")(inputs)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.MaxPooling2D()(x)
    x = k.layers.Flatten()(x)
    x = k.layers.Dropout(0.1)(x)
    outputs = k.layers.Dense(10, activation="softmax")(x)
    model = k.Model(inputs, outputs)
    model.compile(k.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=[k.metrics.SparseCategoricalAccuracy(), "accuracy"])
    path = tmp_path / f"plain{suffix}"
    model.save(path)
    loaded, origin = load_foreign_model(path, (8, 8, 1), 10)
    assert loaded.count_params() == model.count_params() and origin["format"] == suffix[1:]


@pytest.mark.slow
def test_edgeships_own_qat_and_pruned_variants_still_load(digits_run: RunDir, tmp_path: Path) -> None:
    from edgeship.compression.stage import CompressConfig, compress_run

    dst = tmp_path / "runs" / digits_run.path.name
    shutil.copytree(digits_run.path, dst)
    run = RunDir(dst)
    shape = tuple(run.manifest["data"]["input"]["shape"])
    n = len(run.manifest["data"]["labels"])
    load_foreign_model(run.path / "model/model.keras", shape, n)
    for cfg in (CompressConfig(prune=0.5, quantize="qat", epochs=1),
                CompressConfig(cluster=8, epochs=1), CompressConfig(prune=0.5, epochs=1)):
        result = compress_run(run, cfg)
        record = json.loads((result.dir / "variant.json").read_text())
        model, _ = load_foreign_model(result.dir / record["model_file"], shape, n)
        assert model.count_params() > 0, result.name


def test_cli_refuses_a_hostile_file_in_one_line(tmp_path: Path, sentinel: Path) -> None:
    path = _hostile_keras(tmp_path, {"module": SENTINEL, "class_name": "Boom", "registered_name": None,
                                     "config": {"name": "boom"}}, at_top=True)
    runs = tmp_path / "runs"
    result = invoke(runs, "compress", "--model", str(path), "--dataset", "digits", "--prune", "0.5")
    assert not sentinel.exists() and SENTINEL not in sys.modules
    assert_one_line_error(result, "hostile.keras refused", "layer 'boom'", SENTINEL)
    assert not (runs.exists() and any(runs.iterdir()))
