"""A post-training int8 TFLite that fails validation ships with its first and worst layers in
float (selective int8), says so, and is refused instead with ``--strict-int8``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _models import hand_run, read_artifact

from edgeship.export.float_fallback import MAX_FLOAT_SHARE, candidates, float_layers
from edgeship.export.stage import ExportConfig, export_run


def _errors(n: int, standing: dict[int, float] | None = None) -> list[dict]:
    standing = standing or {}
    return [{"layer": f"l{i // 2}", "op": "CONV_2D", "rmse_steps": standing.get(i, 0.3), "tensor": f"t{i}"}
            for i in range(n)]


def test_candidates_grow_from_the_layers_that_stand_out_then_the_first_ops() -> None:
    errors = _errors(200, {51: 1.4})  # tensor t51 is layer l25's second: both its tensors go
    sets = list(candidates(errors))
    assert sets[0] == ["t50", "t51"]
    assert sets[1] == ["t0", "t1", "t2", "t3", "t4", "t50", "t51"]
    assert [len(s) for s in sets] == [2, 7, 12, 22]
    assert float_layers(errors, sets[1]) == ["l0", "l1", "l2", "l25"]


def test_candidates_stop_at_a_quarter_of_the_ops() -> None:
    errors = _errors(30)  # nothing stands out; 7 tensors at most
    assert [len(s) for s in candidates(errors)] == [5]
    assert all(len(s) <= max(1, int(len(errors) * MAX_FLOAT_SHARE)) for s in candidates(_errors(12)))
    assert list(candidates([])) == []


def _model_int8_cannot_hold() -> tuple[object, tuple[np.ndarray, ...]]:
    """A trained classifier whose first Dense gets one weight 1000x the rest on an input that is
    always 0: the Keras model is unchanged, but int8 weights then have a step of ~8 and the
    layer's other weights round to zero, so full int8 loses the model."""
    from edgeship.training.keras_env import keras

    k = keras()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 160)
    x = (rng.normal(size=(160, 6)) + y[:, None] * 1.5).astype(np.float32)
    x[:, 0] = 0.0
    k.utils.set_random_seed(0)
    inputs = k.Input((6,))
    wide = k.layers.Dense(8, activation="relu", name="wide")
    h = k.layers.Dense(8, activation="relu", name="plain")(wide(inputs))
    model = k.Model(inputs, k.layers.Dense(3, activation="softmax", name="head")(h))
    model.compile(optimizer=k.optimizers.Adam(0.03), loss="sparse_categorical_crossentropy")
    model.fit(x[:120], y[:120], epochs=40, verbose=0)
    w, b = wide.get_weights()
    w[0, 0] = 1000.0
    wide.set_weights([w, b])
    return model, (x[:120], y[:120], x[120:], y[120:])


@pytest.mark.slow
def test_a_refused_int8_ships_with_the_layer_it_loses_in_float(tmp_path: Path) -> None:
    model, (xt, yt, xs, ys) = _model_int8_cannot_hold()
    run = hand_run(tmp_path, model, xt, yt, xs, ys, ["a", "b", "c"])
    (strict,) = export_run(run, ExportConfig(formats="tflite", quantize="int8", int8_fallback=False))
    assert not strict.passed and "int8 loses it most at layer 'wide'" in strict.validation["failures"][0]
    assert "int8_float_layers" not in read_artifact(strict.dir)
    assert run.last_stage("export")["params"]["strict_int8"] is True
    (mixed,) = export_run(run, ExportConfig(formats="tflite", quantize="int8"))
    assert mixed.passed and mixed.dir.name == "tflite-int8" and not strict.dir.exists()
    meta = read_artifact(mixed.dir)
    assert meta["int8_float_layers"] == ["wide"]
    assert meta["inputs"][0]["dtype"] == "int8" and meta["outputs"][0]["dtype"] == "int8"
    (said,) = [w for w in mixed.validation["warnings"] if w.startswith("full int8 was refused")]
    assert "1 of 3 layers in float ('wide')" in said and "--strict-int8" in said and "\n" not in said
    assert mixed.validation["top1_agreement"] >= 0.9
