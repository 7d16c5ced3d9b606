"""Selective int8: a post-training int8 TFLite that fails validation, retried with a few layers
kept in float.

Which layers: those whose own error stands out (``quant_debug.STANDS_OUT``), and the first
ops of the model, because an error made early is carried, and amplified, by every op after it.
TensorFlow's quantization debugger guide keeps the same two sets in float. Measured on stock
applications with 50 % pruning and a few epochs of training (90 test rows): with the first 5
ops in float, MobileNetV3Large's agreement with its Keras model went from 0.967 to 1.000 and
MobileNetV2's from 0.900 to 0.933; RegNetX002's went from 0.667 to 0.922 with the first 20.
The isolated error alone did not pick the right layers: none of these three had a layer above
0.4 quantization steps.

Candidates grow (the layers that stand out alone, then with the first 5, 10 and 20 ops), never
past a quarter of the quantized ops: a model that needs more is not an int8 model, and its
refusal stands. The first candidate that validates ships as the int8 artifact, its
``int8_float_layers`` naming what stayed float.
Only the quantizer runs again (the calibration is the debugger's), so a candidate costs a
quantization pass and a validation, seconds on these models.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from edgeship.export import captured_stderr
from edgeship.export.quant_debug import STANDS_OUT
from edgeship.training.keras_env import tf as get_tf

FIRST_OPS = (5, 10, 20)
MAX_FLOAT_SHARE = 0.25  # of the quantized ops: past this, the model is not an int8 model


def candidates(errors: Sequence[dict[str, Any]]) -> Iterator[list[str]]:
    """Tensor sets to keep in float, smallest first: every tensor of a layer that stands out,
    alone and then with the first ``FIRST_OPS`` ops; at most ``MAX_FLOAT_SHARE`` of ``errors``
    (at least one tensor)."""
    limit = max(1, int(len(errors) * MAX_FLOAT_SHARE))
    standing = {e["layer"] for e in errors if e["rmse_steps"] >= STANDS_OUT}
    worst = [e["tensor"] for e in errors if e["layer"] in standing]
    seen: set[tuple[str, ...]] = set()
    for first in (0, *FIRST_OPS):
        chosen = list(dict.fromkeys([e["tensor"] for e in errors[:first]] + worst))
        if not chosen or len(chosen) > limit or tuple(chosen) in seen:
            continue
        seen.add(tuple(chosen))
        yield chosen


def float_layers(errors: Sequence[dict[str, Any]], tensors: Sequence[str]) -> list[str]:
    """The Keras layers ``tensors`` belong to, in op order."""
    keep = set(tensors)
    return list(dict.fromkeys(e["layer"] for e in errors if e["tensor"] in keep))


def requantize(calibrated: bytes, float_tensors: Sequence[str], io: str) -> bytes:
    """The calibrated model quantized to int8 except the ops writing ``float_tensors``, with
    int8 or float32 input and output (``io``) as the plain conversion has them.

    ``mlir_quantize`` is the quantizer TFLiteConverter and the debugger both call; TensorFlow
    offers selective quantization only through it (the debugger's options hold no I/O type).
    """
    from tensorflow.lite.python import convert

    tf = get_tf()
    dtype = tf.int8 if io == "int8" else tf.float32
    with captured_stderr():
        return convert.mlir_quantize(calibrated, input_data_type=dtype, output_data_type=dtype,
                                     denylisted_nodes=list(float_tensors))
