"""ONNX export: tf2onnx from the Keras model (opset 17), checked with ``onnx.checker``.

int8 is onnxruntime's static quantisation: QDQ format, per-channel weights, int8 activations
calibrated on train-split samples. The model input and output stay float32, so the same
artifact runs in onnxruntime and in onnxruntime-web.
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from export import ExportedModel, ExportError, ExportRequest, UnsupportedOperatorError, captured_stderr
from export.artifact import io_entry
from training.keras_env import tf as get_tf

MODEL_FILE = "model.onnx"
OPSET = 17
INPUT_NAME = "input"
CALIBRATION_BATCH = 32

_ONNX_DTYPES = {1: "float32", 3: "int8", 2: "uint8", 10: "float16"}


def export_onnx(req: ExportRequest) -> ExportedModel:
    import onnx

    out = Path(req.out_dir) / MODEL_FILE
    float_path = out if req.quantize == "float32" else Path(req.out_dir) / ".float.onnx"
    convert_keras(req.keras_model, float_path)
    extra: dict[str, Any] = {"opset": OPSET, "converter": {"name": "tf2onnx", "version": _version("tf2onnx")},
                             "qat": bool(req.qat)}
    if req.quantize == "int8":
        if req.qat:  # tf2onnx already turned the fake-quant nodes into QDQ pairs
            float_path.replace(out)
            extra["quantization"] = {"method": "qat (QDQ from tf2onnx)"}
        else:
            if req.representative is None or len(req.representative) == 0:
                raise ExportError("ONNX int8 needs a calibration set from the train split; none was given")
            quantize_qdq(float_path, out, req.representative)
            float_path.unlink()
            extra["quantization"] = {"method": "onnxruntime.quantize_static", "format": "QDQ",
                                     "per_channel": True, "activations": "int8", "weights": "int8",
                                     "calibration_samples": len(req.representative)}
    elif req.quantize != "float32":
        raise ExportError(f"ONNX cannot export quantization {req.quantize!r} (float32 or int8)")
    check(out)
    proto = onnx.load(str(out))
    return ExportedModel(
        file=out,
        inputs=[_io(v) for v in proto.graph.input],
        outputs=[_io(v) for v in proto.graph.output],
        runtime=_runtime(),
        extra=extra,
    )


def convert_keras(model: Any, path: Path) -> Path:
    """tf2onnx ``from_keras`` with a free batch dimension and the input named ``input``."""
    tf = get_tf()
    import onnx
    import tf2onnx

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError("ONNX export supports models with one input and one output")
    shape = (None, *model.inputs[0].shape[1:])
    spec = (tf.TensorSpec(shape, tf.float32, name=INPUT_NAME),)
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
    with captured_stderr():
        try:
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
        except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError) as e:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise ExportError(f"tf2onnx could not convert the model: {first[:300]}") from e
    unsupported = [n for n in proto.graph.node
                   if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)]
    if unsupported:
        ops = list(dict.fromkeys(n.op_type for n in unsupported))
        layers = _layers_for([n.name for n in unsupported], model)
        where = f" in layer {', '.join(layers)}" if layers else ""
        raise UnsupportedOperatorError(
            f"tf2onnx cannot convert TensorFlow op {', '.join(ops)}{where} to ONNX opset {OPSET}; "
            "replace that layer or export with --format tflite"
        )
    onnx.save(proto, str(path))
    return path


def check(path: Path) -> None:
    """``onnx.checker`` with the full check (shape inference included)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ExportError(f"the ONNX checker rejected {path.name}: {first[:300]}") from e


def quantize_qdq(src: Path, dst: Path, samples: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    data = np.asarray(samples, dtype=np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(range(0, len(data), CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self._batches, None)
            return None if start is None else {INPUT_NAME: data[start:start + CALIBRATION_BATCH]}

    pre = src.with_name(".pre.onnx")
    with captured_stderr():
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    pre.unlink(missing_ok=True)


def _io(value: Any) -> dict[str, Any]:
    t = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    dtype = _ONNX_DTYPES.get(t.elem_type)
    if dtype is None:
        raise ExportError(
            f"ONNX tensor {value.name} has element type {t.elem_type}; edgeship expects float32"
        )
    return io_entry(value.name, dims, dtype)


def _layers_for(node_names: list[str], model: Any) -> list[str]:
    known = {layer.name: type(layer).__name__ for layer in getattr(model, "layers", [])}
    found: list[str] = []
    for name in node_names:
        for part in name.split("/")[:-1]:
            if part in known and f"'{part}' ({known[part]})" not in found:
                found.append(f"'{part}' ({known[part]})")
    return found


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _runtime() -> dict[str, Any]:
    version = _version("onnxruntime")
    return {"name": "onnxruntime", "version": version,
            "requirements": [f"onnxruntime=={version}", "numpy"]}
