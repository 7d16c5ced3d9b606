"""What bundle.json may say: the input spec, the model's I/O and the examples checked, made JSON-safe.

Kept apart from the bundling (copying the page, runtime and model; the temp-then-rename) so the
rules the page relies on read in one place: one input whose size matches the preprocessing
spec, shapes that match the ONNX graph, an IR version onnxruntime-web reads, examples that fit
the labels and columns, and no value JSON cannot hold (numpy arrays, NaN).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeship.core.errors import InputError

SCHEMA_VERSION = 1
INPUT_DTYPES = {"float32", "int8", "uint8"}
OUTPUT_KINDS = {"probabilities", "logits"}
MAX_IR_VERSION = 13  # onnxruntime-web 1.30.0 refuses newer: "max supported IR version: 13"


def model_interface(
    input_spec: Mapping[str, Any] | Sequence[Mapping[str, Any]], prep: Mapping[str, Any], onnx_path: Path
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the input spec, checked against ``prep`` and the graph; the output's name and shape, or
    None when onnx is not installed to read the graph)."""
    spec = _input_spec(input_spec, prep)
    model_io = _read_model_io(onnx_path)
    if model_io is None:
        return spec, None
    return _check_against_model(spec, model_io, onnx_path)


def tflite_interface(
    inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]], prep: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the input spec, the output's name and shape) of a TFLite model for LiteRT.js: one
    float32 input whose size matches ``prep``, read from the interpreter's I/O description."""
    spec = _input_spec(list(inputs), prep)
    if not outputs:
        raise InputError("the TFLite model has no output")
    out = outputs[0]
    return spec, {"name": out["name"], "shape": plain(list(out["shape"])),
                  "quantization": out.get("quantization")}


def _input_spec(
    input_spec: Mapping[str, Any] | Sequence[Mapping[str, Any]], prep: Mapping[str, Any]
) -> dict[str, Any]:
    """One input, validated against the preprocessing spec (sizes must agree)."""
    if not isinstance(input_spec, Mapping):
        specs = list(input_spec)
        if len(specs) != 1:
            raise InputError(f"the web page feeds one input; this model has {len(specs)}")
        input_spec = specs[0]
    spec = plain(dict(input_spec))
    shape = spec.get("shape")
    if not isinstance(shape, list) or len(shape) < 2:
        raise InputError(f"input shape {shape!r} must be a list [batch, ...] with a batch dimension")
    spec["shape"] = [d if isinstance(d, int) and d > 0 else -1 for d in shape]
    spec.setdefault("dtype", "float32")
    if spec["dtype"] not in INPUT_DTYPES:
        raise InputError(f"input dtype {spec['dtype']!r} is not one of {sorted(INPUT_DTYPES)}")
    if spec["dtype"] != "float32" and not spec.get("quantization"):
        raise InputError(f"a {spec['dtype']} input needs 'quantization': {{scale, zero_point}}")
    per_sample = spec["shape"][1:]
    if any(d < 0 for d in per_sample):
        raise InputError(f"input shape {shape!r} may be free only in the batch dimension")
    size = math.prod(per_sample)
    kind = prep.get("kind")
    if kind == "image":
        h, w, c = prep["height"], prep["width"], prep["channels"]
        if size != h * w * c:
            raise InputError(
                f"input shape {shape} does not hold a {h}x{w}x{c} image from the preprocessing spec"
            )
        if "layout" not in spec and len(per_sample) == 3:
            spec["layout"] = "NHWC" if per_sample[2] == c else "NCHW"
    elif kind == "tabular":
        n = sum(
            1 if col["type"] == "numeric" else len(col["vocabulary"]) for col in prep["columns"]
        )
        if size != n:
            raise InputError(
                f"input shape {shape} has {size} features; the preprocessing spec makes {n}"
            )
    else:
        raise InputError(f"preprocessing kind {kind!r} is neither 'image' nor 'tabular'")
    return spec


def _read_model_io(onnx_path: Path) -> dict[str, Any] | None:
    """Input/output names and shapes from the ONNX graph (None when onnx is not installed)."""
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        return None
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as e:
        raise InputError(f"{onnx_path} is not a readable ONNX model: {e}") from e
    inits = {i.name for i in model.graph.initializer}

    def io(v: Any) -> dict[str, Any]:
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
        return {"name": v.name, "shape": dims}

    if model.ir_version > MAX_IR_VERSION:
        raise InputError(
            f"{onnx_path.name} has ONNX IR version {model.ir_version}; onnxruntime-web reads up to "
            f"{MAX_IR_VERSION}: set model.ir_version = {MAX_IR_VERSION} (or export with tf2onnx)"
        )
    return {
        "inputs": [io(v) for v in model.graph.input if v.name not in inits],
        "outputs": [io(v) for v in model.graph.output],
    }


def _check_against_model(
    spec: dict[str, Any], model_io: dict[str, Any], onnx_path: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    inputs = model_io["inputs"]
    if len(inputs) != 1:
        raise InputError(f"{onnx_path} has {len(inputs)} inputs; the web page feeds exactly one")
    real = inputs[0]
    if spec.get("name") and spec["name"] != real["name"]:
        raise InputError(
            f"input_spec names input {spec['name']!r} but {onnx_path.name} calls it {real['name']!r}"
        )
    spec["name"] = real["name"]
    if len(real["shape"]) != len(spec["shape"]) or any(
        a > 0 and b > 0 and a != b for a, b in zip(real["shape"], spec["shape"], strict=True)
    ):
        raise InputError(
            f"input_spec shape {spec['shape']} does not match {onnx_path.name}'s {real['shape']}"
        )
    return spec, {"name": model_io["outputs"][0]["name"], "shape": model_io["outputs"][0]["shape"]}


def checked_examples(
    examples: Mapping[str, Any] | None, prep: Mapping[str, Any], n_labels: int
) -> dict[str, Any] | None:
    """``examples`` as bundle.json holds them (``{"x", "y"}``, JSON-safe), checked against the
    preprocessing columns and the number of labels."""
    if examples is None:
        return None
    if "x" not in examples:
        raise InputError("examples must be a mapping with 'x' (raw inputs) and optionally 'y'")
    xs = plain(examples["x"])
    ys = plain(examples.get("y")) if examples.get("y") is not None else None
    if ys is not None and len(ys) != len(xs):
        raise InputError(f"examples have {len(xs)} inputs but {len(ys)} labels")
    if prep["kind"] == "tabular":
        n_cols = len(prep["columns"])
        for row in xs:
            if isinstance(row, list) and len(row) != n_cols:
                raise InputError(f"an example row has {len(row)} values; the spec has {n_cols} columns")
    if ys is not None:
        for y in ys:
            if isinstance(y, int) and not 0 <= y < max(n_labels, 1):
                raise InputError(f"example label index {y} is outside the {n_labels} labels")
    return {"x": xs, "y": ys}


def plain(obj: Any) -> Any:
    """numpy values to JSON: arrays to lists, NaN/None/pandas NA to null (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, str | bytes):
        return obj.decode() if isinstance(obj, bytes) else obj
    if hasattr(obj, "tolist") and not isinstance(obj, int | float | bool):
        return plain(obj.tolist())
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, Path):
        return str(obj)
    if type(obj).__name__ in {"NAType", "NaTType"}:
        return None
    return obj


def check_json(manifest: Mapping[str, Any]) -> None:
    """A one-line ``InputError`` if ``manifest`` holds a value JSON cannot (NaN, an object)."""
    try:
        json.dumps(manifest, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InputError(f"bundle.json cannot hold a value given to build_web_bundle: {e}") from e
