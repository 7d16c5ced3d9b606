"""ONNX -> Relax: the export's ONNX graph imported with a static batch of 1, unsupported ops named.

Its own module because both the build (in the exporting process) and the tuning child (a
fresh Python) import the same graph the same way: Relax tunes and plans memory for static
shapes, so the free batch dimension is fixed at 1 and ``edge_runtime`` runs larger batches
in chunks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.errors import InputError
from edgeship.export import UnsupportedOperatorError


def load_onnx(path: Path) -> Any:
    """The ONNX model at ``path``, or a one-line ``InputError`` (missing or unreadable)."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise InputError(f"ONNX file {path} does not exist; export ONNX first")
    try:
        return onnx.load_model_from_string(path.read_bytes())
    except DecodeError as e:
        raise InputError(f"{path} is not a readable ONNX model ({e}); re-export it") from None


def import_onnx(proto: Any) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """ONNX -> Relax with batch 1, plus artifact.json I/O entries; unsupported ops named."""
    from tvm import relax

    shapes, inputs = _static_inputs(proto)
    mod = _from_onnx(proto, shapes, {k["name"]: k["dtype"] for k in inputs})
    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    outputs = [
        {"name": v.name, "shape": [int(d) for d in ty.shape.values], "dtype": str(ty.dtype),
         "quantization": None}
        for v, ty in zip(proto.graph.output, fields, strict=True)
    ]
    return mod, inputs, outputs


def _static_inputs(proto: Any) -> tuple[dict[str, list[int]], list[dict[str, Any]]]:
    """The graph inputs' shapes with the batch fixed at 1, and their artifact.json entries."""
    from onnx import helper

    initializers = {t.name for t in proto.graph.initializer}
    shapes: dict[str, list[int]] = {}
    inputs = []
    for v in proto.graph.input:
        if v.name in initializers:
            continue
        tt = v.type.tensor_type
        dims = []
        for i, d in enumerate(tt.shape.dim):
            if d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif i == 0:
                dims.append(1)  # the free batch: fixed at 1
            else:
                raise InputError(f"ONNX input {v.name!r} has a free dimension {i} "
                                 f"({d.dim_param or '?'}); TVM needs static shapes beyond the batch")
        shapes[v.name] = dims
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        inputs.append({"name": v.name, "shape": dims, "dtype": dtype, "quantization": None})
    return shapes, inputs


def _from_onnx(proto: Any, shapes: dict[str, list[int]], dtypes: dict[str, str]) -> Any:
    """Relax's ONNX frontend; an operator it lacks becomes ``UnsupportedOperatorError``."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    try:
        return from_onnx(proto, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)
    except tvm.error.OpNotImplemented as e:
        ops = str(e).split(":", 1)[-1].split("\n")[0].strip()
        names = sorted({o.strip() for o in ops.split(",") if o.strip()})
        nodes = [f"{n.op_type} (node {n.name!r})" for n in proto.graph.node if n.op_type in names]
        raise UnsupportedOperatorError(
            f"TVM's Relax ONNX frontend (tvm.relax.frontend.onnx.from_onnx, apache-tvm "
            f"{tvm.__version__}) does not support {', '.join(dict.fromkeys(nodes)) or ops}; "
            "use the tflite or onnx format for this model") from None
    except (tvm.error.OpError, NotImplementedError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
        raise UnsupportedOperatorError(
            f"TVM's Relax ONNX frontend (tvm.relax.frontend.onnx.from_onnx, apache-tvm "
            f"{tvm.__version__}) cannot convert this model: {first}; use the tflite or onnx format"
        ) from None
