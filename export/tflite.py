"""TFLite export through ``TFLiteConverter.from_keras_model``.

float32; float16 weights; dynamic-range (int8 weights, float activations); full int8 from a
representative set drawn from the train split, with int8 or float32 model input and output.
A quantisation-aware-trained model carries its own ranges and converts to int8 without one.
LSTM/GRU/SimpleRNN layers are converted unrolled over their fixed sequence length
(``compression.measure.unrolled_for_tflite`` says why), the same graph compress measured.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.compression.measure import (
    ConversionError,
    loop_layers,
    recurrent_layers,
    unrolled_for_tflite,
)
from edgeship.export import (
    ExportedModel,
    ExportError,
    ExportRequest,
    UnsupportedOperatorError,
    captured_stderr,
)
from edgeship.export.artifact import io_entry
from edgeship.training.keras_env import tf as get_tf

MODEL_FILE = "model.tflite"
REPRESENTATIVE_BATCH = 1  # the converter calibrates one sample per step


def export_tflite(req: ExportRequest) -> ExportedModel:
    """The variant as a TFLite file with a free batch dimension (``-1``), as devices take it."""
    return convert(req, Path(req.out_dir) / MODEL_FILE)


def convert(req: ExportRequest, path: Path, *, batch: int | None = None) -> ExportedModel:
    """Convert ``req.keras_model`` to ``path``; ``batch`` fixes the batch dimension.

    LiteRT.js (the browser's TFLite runtime) refuses a model whose input has a free batch
    dimension, so the web bundle converts with ``batch=1``: the graph is traced at that
    static shape (``from_concrete_functions``), everything else is the same conversion.
    """
    tf = get_tf()
    model = req.keras_model
    unrolled = bool(recurrent_layers(model))
    try:
        model = unrolled_for_tflite(model)
    except ConversionError as e:
        raise ExportError(str(e)) from None
    if batch is None:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    else:
        spec = tf.TensorSpec([batch, *model.input_shape[1:]], tf.float32)
        concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    if req.quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif req.quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif req.quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if not req.qat:
            if req.representative is None or len(req.representative) == 0:
                raise ExportError(
                    "TFLite int8 needs a representative set from the train split; none was given"
                )
            converter.representative_dataset = _representative(req.representative)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if req.io == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    elif req.quantize != "float32":
        raise ExportError(f"TFLite cannot export quantization {req.quantize!r}")
    failure: Exception | None = None
    with captured_stderr() as log:
        try:
            flatbuffer = converter.convert()
        except Exception as e:  # ConverterError and friends live in private TF modules
            if not _is_converter_error(e):
                raise
            failure = e
    if failure is not None:  # explained once the converter's stderr is collected
        raise _explain(failure, log, model) from None
    path.write_bytes(flatbuffer)
    inputs, outputs = describe(path)
    return ExportedModel(
        file=path,
        inputs=inputs,
        outputs=outputs,
        runtime=_runtime(),
        extra={"converter": {"name": "tensorflow.lite.TFLiteConverter", "version": tf.__version__},
               "qat": bool(req.qat), **({"recurrent": "unrolled"} if unrolled else {})},
    )


def _representative(samples: np.ndarray) -> Any:
    data = np.asarray(samples, dtype=np.float32)

    def gen() -> Any:
        for i in range(0, len(data), REPRESENTATIVE_BATCH):
            yield [data[i:i + REPRESENTATIVE_BATCH]]

    return gen


def describe(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The model's I/O spec as the LiteRT interpreter reports it (free batch dim as -1)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = get_tf().lite.Interpreter
    with captured_stderr():
        it = Interpreter(model_path=str(path))

    def entry(d: dict[str, Any]) -> dict[str, Any]:
        shape = d.get("shape_signature", d["shape"])
        scale, zero = d["quantization"]
        return io_entry(d["name"], shape, d["dtype"], (scale, zero) if scale else None)

    return [entry(d) for d in it.get_input_details()], [entry(d) for d in it.get_output_details()]


def _runtime() -> dict[str, Any]:
    try:
        version = metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        version = "2.3.0"
    return {"name": "ai-edge-litert", "version": version,
            "requirements": [f"ai-edge-litert=={version}", "numpy"]}


def _is_converter_error(e: Exception) -> bool:
    names = {cls.__name__ for cls in type(e).__mro__}
    return bool(names & {"ConverterError", "ConverterException"}) or "tensorflow" in type(e).__module__


_OP = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")
_SCOPE = re.compile(r'"([^"@]+)@__inference')
_SELECT = re.compile(r"TF Select ops: ([\w, ]+)")
_ANY_OP = re.compile(r"error: 'tf\.(\w+)' op")  # e.g. TensorListReserve "requires element_shape to be static"


def _explain(e: Exception, log: list[str], model: Any) -> ExportError:
    text = str(e) + "\n" + "".join(log)
    ops = list(dict.fromkeys(_OP.findall(text)))
    if not ops:
        m = _SELECT.search(text)
        ops = [o.strip() for o in m.group(1).split(",")] if m else []
    if not ops:
        ops = list(dict.fromkeys(_ANY_OP.findall(text)))
    if ops:
        layers = _layers_for(ops, text, model)
        if not layers and any(op.startswith("TensorList") for op in ops):
            layers = loop_layers(model)
        where = f" in layer {', '.join(layers)}" if layers else ""
        return UnsupportedOperatorError(
            f"the TFLite converter cannot convert TensorFlow op {', '.join(ops)}{where}: it is not a "
            "TFLite builtin; replace that layer or export with --format onnx"
        )
    first = next((ln.strip() for ln in str(e).splitlines() if "error" in ln.lower()), str(e).splitlines()[0]
                 if str(e) else type(e).__name__)
    return ExportError(f"the TFLite converter failed: {first[:300]}")


def _layers_for(ops: list[str], text: str, model: Any) -> list[str]:
    """Layer names (with class) from the op scopes in the converter's locations."""
    known = {layer.name: type(layer).__name__ for layer in getattr(model, "layers", [])}
    found: list[str] = []
    for scope in _SCOPE.findall(text):
        parts = scope.split("/")
        if parts[-1] not in ops and not any(parts[-1].startswith(op) for op in ops):
            continue
        for part in parts[:-1]:
            if part in known:
                label = f"'{part}' ({known[part]})"
                if label not in found:
                    found.append(label)
    return found
