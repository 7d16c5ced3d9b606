"""A refused int8 TFLite names the layer 8 bits cannot hold (TFLite's quantization debugger)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeship.export.quant_debug import (
    STANDS_OUT,
    describe_layers,
    layer_name,
    rank_layers,
    top2_margin,
    worst_layers,
)


def _model_with_a_wide_dense() -> tuple[object, np.ndarray]:
    """Dense 'wide': one weight 1000x the rest, on an input that is always 0. Per-tensor int8
    weights then have a step of ~8, and every other weight rounds to zero."""
    from edgeship.training.keras_env import keras

    k = keras()
    inputs = k.Input((4,))
    wide = k.layers.Dense(8, name="wide")
    x = k.layers.Dense(8, activation="relu", name="plain")(wide(inputs))
    model = k.Model(inputs, k.layers.Dense(3, activation="softmax", name="head")(x))
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 8)).astype(np.float32)
    w[0, 0] = 1000.0
    wide.set_weights([w, np.zeros(8, np.float32)])
    rows = rng.normal(size=(64, 4)).astype(np.float32)
    rows[:, 0] = 0.0
    return model, rows


@pytest.mark.slow
def test_the_layer_int8_cannot_hold_is_named() -> None:
    model, rows = _model_with_a_wide_dense()
    layers = worst_layers(model, rows, rows)
    assert layers[0]["layer"] == "wide" and layers[0]["rmse_steps"] >= STANDS_OUT
    line = describe_layers(layers, 0.2)
    assert "layer 'wide'" in line and "--quantize qat" in line and "\n" not in line


def test_no_layer_standing_out_is_said_so() -> None:
    conv = {"layer": "conv", "op": "CONV_2D", "rmse_steps": 0.31, "tensor": "m/conv/x"}
    line = describe_layers([conv], 0.05)
    assert line.startswith("no layer stands out") and "'conv'" in line and "0.050 apart" in line
    assert "train the model further" in line  # little room: the model is the weak part
    roomy = describe_layers([conv], 0.67)  # room enough: rounding over depth, not training
    assert "train" not in roomy and "--quantize qat" in roomy and "float16" in roomy
    assert "1.1x rounding alone" in line


def test_a_layer_at_three_times_rounding_is_named() -> None:
    """EfficientNetB0's squeeze-excite 1x1 convolution at 0.905 steps (the next layer 0.48) was
    called "about rounding alone" under a threshold of 1 step; TensorFlow's guide suspects 0.7."""
    se = {"layer": "block3b_se_reduce", "op": "CONV_2D", "rmse_steps": 0.905, "tensor": "m/se/x"}
    nxt = {"layer": "block3b_se_expand", "op": "CONV_2D", "rmse_steps": 0.48, "tensor": "m/ex/x"}
    line = describe_layers([se, nxt], 0.98)
    assert line.startswith("int8 loses it most at layer 'block3b_se_reduce'")
    assert "3.1x rounding alone" in line and STANDS_OUT < 0.905


def test_a_layer_is_ranked_once_by_its_worst_tensor() -> None:
    """ConvNeXt's LayerNormalization is two MEAN ops: the refusal named it twice, crowding out
    the next layer."""
    ln = "convnext/downsampling_layernorm_0/moments/mean"
    rows = [
        {"tensor_name": ln, "op_name": "MEAN", "scale": "0.01", "mean_squared_error": "0.0625"},
        {"tensor_name": ln + "_1", "op_name": "MEAN", "scale": "0.01", "mean_squared_error": "0.0169"},
        {"tensor_name": "convnext/head_layernorm/mean", "op_name": "MEAN", "scale": "0.1",
         "mean_squared_error": "0.0169"},
        {"tensor_name": "StatefulPartitionedCall:0", "op_name": "SOFTMAX", "scale": "0.004",
         "mean_squared_error": "1.0"},  # the model's output, not a layer
        {"tensor_name": "convnext/stem/Conv2D", "op_name": "CONV_2D", "scale": "0",
         "mean_squared_error": "1"},  # no scale: not quantized
    ]
    ranked = rank_layers(rows)
    assert [(r["layer"], r["rmse_steps"]) for r in ranked] == [
        ("downsampling_layernorm_0", 25.0), ("head_layernorm", 1.3)]
    line = describe_layers(ranked)
    assert line.count("downsampling_layernorm_0") == 1 and "then 'head_layernorm' 1.3" in line


def test_tensor_names_map_to_keras_layers() -> None:
    assert layer_name("mobilenetv2/block_3_expand/Conv2D;mobilenetv2/block_3_expand_BN/x") == "block_3_expand"
    assert layer_name("dense_1") == "dense_1"


def test_top2_margin() -> None:
    assert top2_margin(np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1]])) == pytest.approx(0.3)
    assert top2_margin(np.zeros((0, 3))) is None
