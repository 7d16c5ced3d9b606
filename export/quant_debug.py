"""Where post-training int8 loses a model: the layers with the largest quantization error.

Run only when a TFLite int8 artifact fails validation, so its one-line reason names a layer
instead of only a number. TensorFlow Lite's ``QuantizationDebugger`` runs a model in which
every quantized op is followed by a ``NumericVerify`` op comparing its output with the float
op's on the same input: the error of each layer on its own, not accumulated from the ones
before. Each layer is ranked by the root-mean-square of that error over its output's
quantization step (``scale``), the measure TensorFlow's debugger guide uses. Rounding alone
gives 1/sqrt(12) ~ 0.29 steps; the guide treats layers above 0.7 (2.4 times rounding) as
suspect, typically a wide activation range (an unbounded activation, a residual sum, a
squeeze-excite gate) that 256 levels cannot cover. Quantization-aware training learns ranges
that fit; keeping that layer in float is the other fix (``float_fallback``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship.compression.measure import unrolled_for_tflite
from edgeship.export import captured_stderr
from edgeship.training.keras_env import tf as get_tf

DEBUG_ROWS = 64  # test rows the debugger runs: enough to rank layers, bounded in time
TOP = 3
OUTPUT_TENSOR = "StatefulPartitionedCall"  # the model's output, not a layer of it
ROUNDING = 1 / math.sqrt(12)  # RMS error of rounding alone, in quantization steps
STANDS_OUT = 0.7  # TensorFlow's debugger guide's threshold for a suspect layer
NARROW_MARGIN = 0.3  # a median top-2 probability gap below this: training, not int8, is the weak part


@dataclass(frozen=True)
class Int8Debug:
    """One debugger run: every quantized tensor's error, in the model's op order, and the
    calibrated model, which ``float_fallback`` re-quantizes without calibrating again."""

    errors: list[dict[str, Any]]  # per tensor: layer, op, rmse_steps, tensor
    calibrated: bytes


def debug_int8(model: Any, representative: np.ndarray, rows: np.ndarray) -> Int8Debug:
    """Calibrate ``model`` on ``representative`` and measure each quantized tensor's error on
    the first ``DEBUG_ROWS`` of ``rows``."""
    tf = get_tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(unrolled_for_tflite(model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    cal = np.asarray(representative, dtype=np.float32)
    data = np.asarray(rows[:DEBUG_ROWS], dtype=np.float32)
    converter.representative_dataset = lambda: ([cal[i:i + 1]] for i in range(len(cal)))
    with captured_stderr():
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: ([data[i:i + 1]] for i in range(len(data))))
        debugger.run()
        text = io.StringIO()
        debugger.layer_statistics_dump(text)
    return Int8Debug(tensor_errors(csv.DictReader(io.StringIO(text.getvalue()))), debugger.calibrated_model)


def worst_layers(model: Any, representative: np.ndarray, rows: np.ndarray,
                 top: int = TOP) -> list[dict[str, Any]]:
    """The ``top`` layers by RMS error over their quantization step, worst first.

    Each: ``layer`` (the Keras layer name the TFLite tensor came from), ``op`` (TFLite's op),
    ``rmse_steps`` (RMS error in quantization steps) and ``tensor``.
    """
    return worst_of(debug_int8(model, representative, rows).errors, top)


def tensor_errors(stats: Iterable[Mapping[str, str]]) -> list[dict[str, Any]]:
    """The debugger's per-tensor rows, in op order, as ``layer``/``op``/``rmse_steps``/``tensor``
    (rows without a finite error or a scale, and the model's output, left out)."""
    errors = []
    for row in stats:
        scale, mse = float(row.get("scale") or 0), float(row.get("mean_squared_error") or "nan")
        if scale > 0 and math.isfinite(mse) and not row["tensor_name"].startswith(OUTPUT_TENSOR):
            errors.append({"layer": layer_name(row["tensor_name"]), "op": row.get("op_name", ""),
                           "rmse_steps": round(math.sqrt(mse) / scale, 3), "tensor": row["tensor_name"]})
    return errors


def rank_layers(stats: Iterable[Mapping[str, str]], top: int = TOP) -> list[dict[str, Any]]:
    """The debugger's per-tensor rows ranked by RMS error over the quantization step (see
    ``worst_of``)."""
    return worst_of(tensor_errors(stats), top)


def worst_of(errors: Iterable[dict[str, Any]], top: int = TOP) -> list[dict[str, Any]]:
    """One entry per Keras layer (its worst tensor), worst first: a LayerNormalization is two
    MEAN ops, and naming it twice would crowd out the next layer worth looking at."""
    worst: dict[str, dict[str, Any]] = {}
    for entry in errors:
        if entry["layer"] not in worst or entry["rmse_steps"] > worst[entry["layer"]]["rmse_steps"]:
            worst[entry["layer"]] = entry
    return sorted(worst.values(), key=lambda r: -r["rmse_steps"])[:top]


def layer_name(tensor: str) -> str:
    """``model/block_3_expand/Conv2D;...`` -> ``block_3_expand``: the Keras layer of a TFLite tensor."""
    first = tensor.split(";")[0]
    parts = [p for p in first.split("/") if p]
    return parts[1] if len(parts) > 2 else parts[0] if parts else tensor


def describe_layers(layers: list[dict[str, Any]], margin: float | None = None) -> str:
    """One clause for a validation failure: the layer that stands out, or that none does.

    Rounding alone gives an RMS error of 1/sqrt(12) ~ 0.29 steps; a layer at or above
    ``STANDS_OUT`` has a range 8 bits cover poorly. When none does, the refusal comes from the
    model as a whole: rounding errors build up over its depth (``margin``, the Keras model's
    median gap between its top two classes, says how much room its answers had).
    """
    if not layers:
        return ""
    head, rest = layers[0], layers[1:]
    if head["rmse_steps"] >= STANDS_OUT:
        tail = "; then " + ", ".join(f"'{r['layer']}' {r['rmse_steps']:g}" for r in rest) if rest else ""
        return (f"int8 loses it most at layer '{head['layer']}' ({head['op']}: RMS error "
                f"{head['rmse_steps']:g} quantization steps, {head['rmse_steps'] / ROUNDING:.1f}x rounding "
                f"alone{tail}): try `--quantize qat` (ranges "
                "learned in training) or ship float16")
    gap = f" (its top two classes are a median {margin:.3f} apart)" if margin is not None else ""
    advice = ("train the model further (its answers have little room), or try `--quantize qat`"
              if margin is not None and margin < NARROW_MARGIN else "try `--quantize qat` or ship float16")
    return (f"no layer stands out (the worst, '{head['layer']}', is off by {head['rmse_steps']:g} "
            f"quantization steps, {head['rmse_steps'] / ROUNDING:.1f}x rounding alone): the error "
            f"builds up over the model's depth{gap}; {advice}")


def top2_margin(probabilities: np.ndarray) -> float | None:
    """The median gap between each row's two largest probabilities."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2 or not len(p):
        return None
    two = np.sort(p, axis=1)[:, -2:]
    return float(np.median(two[:, 1] - two[:, 0]))
