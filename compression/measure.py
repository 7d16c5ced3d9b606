"""What every variant is measured on, so variants compare like for like.

Sizes come from real TFLite conversions (and their gzip size, which is what sparsity and
clustering buy); accuracies from Keras and, for the deployable form, from the TFLite
interpreter itself. This is a measurement, not the export: ``edgeship export`` converts again
with validation and writes artifacts.
"""

from __future__ import annotations

import gzip
import re
from typing import Any

import numpy as np

from edge_runtime.model import dequantize, quantize
from edge_runtime.timing import summarize_ms, time_calls
from edgeship.core.errors import EdgeshipError
from edgeship.training.calibration import Calibration
from edgeship.training.evaluation import accuracy
from edgeship.training.keras_env import custom_objects, keras, quiet_native_stderr, tf

RECURRENT = frozenset({"LSTM", "GRU", "SimpleRNN", "RNN"})  # the layers that take unroll=True
_TF_OP = re.compile(r"'tf\.(\w+)' op")
_SCOPE = re.compile(r'"([^"@]+)@__inference')


class ConversionError(EdgeshipError):
    """The TFLite converter cannot convert this model; the message names the op or layer."""


def tflite_bytes(model: Any, mode: str, calibration: np.ndarray | None = None) -> bytes:
    """Convert with TFLiteConverter: float32, float16, dynamic, int8 (PTQ) or qat (already fake-quant).

    int8 calibrates on exactly the ``calibration`` rows given (``training.calibration`` picks
    them, the same ones export uses), not a slice of them. A recurrent model is converted
    unrolled (``unrolled_for_tflite``); a model TFLite cannot express is a one-line
    ``ConversionError``, not the converter's pages of MLIR.
    """
    t = tf()
    model = unrolled_for_tflite(model)
    converter = t.lite.TFLiteConverter.from_keras_model(model)
    if mode in ("dynamic", "float16", "int8", "qat"):
        converter.optimizations = [t.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [t.float16]
    if mode == "int8":
        if calibration is None:
            raise ValueError("int8 conversion needs calibration rows")
        rows = np.asarray(calibration, dtype=np.float32)

        def representative() -> Any:
            for row in rows:
                yield [row[None, ...]]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with quiet_native_stderr():
            return converter.convert()
    except Exception as e:  # ConverterError lives in a private TF module
        if "tensorflow" not in type(e).__module__ and type(e).__name__ != "ConverterError":
            raise
        reason = _first_error(e, model)
        raise ConversionError(f"TFLite cannot convert this model ({mode}): {reason}; compress measures "
                              "every variant as TFLite, so replace that layer") from None


def recurrent_layers(model: Any) -> list[Any]:
    """LSTM, GRU and SimpleRNN layers of ``model``, inside nested models and Bidirectional too."""
    found = []
    for layer in getattr(model, "layers", []):
        inner = getattr(layer, "forward_layer", None) or getattr(layer, "layer", None)
        if type(layer).__name__ in RECURRENT or type(inner).__name__ in RECURRENT:
            found.append(layer)
        elif hasattr(layer, "layers"):
            found += recurrent_layers(layer)
    return found


def unrolled_for_tflite(model: Any) -> Any:
    """``model`` itself, or (when it has LSTM/GRU/SimpleRNN layers) a copy with them unrolled.

    Why: from a Keras model with a free batch dimension the converter keeps the recurrence
    as a loop over a TensorList whose element shape is unknown, and fails
    (``TensorListReserve``). Traced at batch 1 instead, an LSTM becomes TFLite's fused
    ``UNIDIRECTIONAL_SEQUENCE_LSTM``, whose state is a variable tensor that carries over from
    one call to the next: every answer after the first is wrong unless the runtime resets it.
    Unrolled over the model's fixed sequence length, each step is plain builtin ops (fully
    connected, add, logistic, tanh), stateless, with a free batch and every quantization;
    the outputs equal Keras' (same weights). The price is a graph that grows with the sequence
    length. A sequence length that is not fixed cannot unroll: a one-line ``ConversionError``.
    """
    rnns = recurrent_layers(model)
    if not rnns:
        return model

    config = model.get_config()
    _set_unroll(config)
    k = keras()
    try:
        with k.utils.custom_object_scope(custom_objects()):
            copy = type(model).from_config(config)
        copy.set_weights(model.get_weights())
    except ValueError as e:
        if "time dimension is undefined" not in str(e) and "unroll" not in str(e).lower():
            raise
        names = ", ".join(f"'{r.name}' ({type(r).__name__})" for r in rnns)
        raise ConversionError(
            f"recurrent layer {names} has no fixed sequence length, which TFLite needs: build the "
            "model with a fixed number of time steps (Input(shape=(steps, features)))") from None
    return copy


def loop_layers(model: Any) -> list[str]:
    """Layers that run a loop over time steps (recurrent and convolutional-recurrent ones), as
    "'name' (Class)": where a TensorList op the converter rejects comes from, since its error
    locations name no layer."""
    found = []
    for layer in getattr(model, "layers", []):
        cls = type(layer).__name__
        if any(part in cls for part in ("LSTM", "GRU", "RNN")):
            found.append(f"'{layer.name}' ({cls})")
        elif hasattr(layer, "layers"):
            found += loop_layers(layer)
    return found


def _set_unroll(node: Any) -> None:
    if isinstance(node, list):
        for value in node:
            _set_unroll(value)
    elif isinstance(node, dict):
        if node.get("class_name") in RECURRENT and isinstance(node.get("config"), dict):
            node["config"]["unroll"] = True
        for value in node.values():
            _set_unroll(value)


def _first_error(e: Exception, model: Any) -> str:
    """The converter's failure in a few words: the TensorFlow ops it could not express and the
    layers they come from (the op scopes of its locations), else its first error line."""
    text = str(e)
    ops = list(dict.fromkeys(_TF_OP.findall(text)))
    if ops:
        known = {layer.name: type(layer).__name__ for layer in getattr(model, "layers", [])}
        layers = list(dict.fromkeys(f"'{part}' ({known[part]})" for scope in _SCOPE.findall(text)
                                    for part in scope.split("/")[:-1] if part in known))
        if not layers and any(op.startswith("TensorList") for op in ops):
            layers = loop_layers(model)
        where = f" in layer {', '.join(layers[:3])}" if layers else ""
        return f"TensorFlow op {', '.join(ops[:5])}{where} has no TFLite builtin"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else type(e).__name__)
    return first[:240]


def tflite_predict(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Run a TFLite flatbuffer over ``x`` with LiteRT (TensorFlow's interpreter if absent)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - the dev environment has LiteRT
        Interpreter = tf().lite.Interpreter
    interp = Interpreter(model_content=model_bytes, num_threads=1)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], [len(x), *x.shape[1:]])
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    interp.set_tensor(inp["index"], quantize(x.astype(np.float32), inp["dtype"], _q(inp)))
    interp.invoke()
    return dequantize(interp.get_tensor(out["index"]), _q(out))


def _q(detail: dict[str, Any]) -> tuple[float, int] | None:
    """(scale, zero point) of an integer tensor, as edge_runtime's quantize/dequantize take it."""
    if np.dtype(detail["dtype"]).kind not in "iu":
        return None
    scale, zero = detail["quantization"]
    return (float(scale), int(zero))


def weight_stats(model: Any) -> dict[str, Any]:
    """Parameters, non-zeros, sparsity and distinct values per kernel."""
    from edgeship.compression.base import kernels

    total = sum(int(np.prod(w.shape)) for w in model.get_weights())
    nonzero = sum(int(np.count_nonzero(w)) for w in model.get_weights())
    per_layer = {}
    for name, kernel in kernels(model).items():
        per_layer[name] = {
            "size": int(kernel.size),
            "sparsity": round(float(1 - np.count_nonzero(kernel) / kernel.size), 4),
            "unique_values": int(np.unique(kernel).size),
        }
    kernel_total = sum(v["size"] for v in per_layer.values())
    kernel_zeros = sum(v["size"] * v["sparsity"] for v in per_layer.values())
    return {
        "params": total,
        "nonzero_params": nonzero,
        "sparsity": round(kernel_zeros / kernel_total, 4) if kernel_total else 0.0,
        "layers": per_layer,
    }


def measure_variant(model: Any, deploy_mode: str, calibration: Calibration | None, x_val: np.ndarray,
                    y_val: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """Every number a variant is compared on. ``deploy_mode``: float32, float16, dynamic, int8, qat.

    int8 needs ``calibration`` (``training.calibration.calibration_set`` with the run's seed,
    as export uses); ``metrics["calibration"]`` says which rows it was, None when none were used.
    """
    if deploy_mode == "int8" and calibration is None:
        raise ValueError("int8 measurement needs the run's calibration rows")
    keras_test = accuracy(model.predict(x_test, batch_size=512, verbose=0), y_test)
    keras_val = accuracy(model.predict(x_val, batch_size=512, verbose=0), y_val)
    # A QAT model's float conversion is not meaningful; its float32 reference is itself at int8.
    float_bytes = tflite_bytes(model, "qat" if deploy_mode == "qat" else "float32")
    rows = calibration.rows if calibration is not None else None
    deploy_bytes = (float_bytes if deploy_mode in ("float32", "qat")
                    else tflite_bytes(model, deploy_mode, rows))
    deploy_test = accuracy(tflite_predict(deploy_bytes, x_test), y_test)
    deploy_val = accuracy(tflite_predict(deploy_bytes, x_val), y_val)
    quantized = deploy_mode in ("int8", "qat")
    return {
        "keras_test_accuracy": keras_test,
        "keras_val_accuracy": keras_val,
        "test_accuracy": deploy_test,
        "val_accuracy": deploy_val,
        "deploy_form": "int8" if quantized else deploy_mode,
        "calibration": calibration.describe() if deploy_mode == "int8" and calibration else None,
        "tflite_float32_bytes": None if deploy_mode == "qat" else len(float_bytes),
        "tflite_float32_gzip_bytes": None if deploy_mode == "qat" else _gzip_len(float_bytes),
        "tflite_bytes": len(deploy_bytes),
        "tflite_gzip_bytes": _gzip_len(deploy_bytes),
        **weight_stats(model),
    }


def _gzip_len(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def tflite_latency_ms(model_bytes: bytes, x_one: np.ndarray, runs: int = 200, warmup: int = 20) -> float:
    """Median single-thread invoke latency on this host: the search's latency objective, timed by
    the loop every device uses (``edge_runtime.timing``)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover
        Interpreter = tf().lite.Interpreter
    interp = Interpreter(model_content=model_bytes, num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    data = x_one.astype(np.float32)[None, ...]
    if inp["dtype"] == np.int8:
        scale, zero = inp["quantization"]
        data = np.clip(np.round(data / scale + zero), -128, 127).astype(np.int8)
    interp.set_tensor(inp["index"], data)
    return summarize_ms(time_calls(interp.invoke, runs, warmup))["p50"]
