"""Pruning, clustering and QAT reach the layers of nested models (a keras.applications backbone,
a Sequential inside a model), tested by tfmot's properties: the target sparsity is reached,
the stripped model computes what the wrapped one did, the source model is left untouched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clihelp import invoke_json

from edgeship.compression.base import PassContext, flatten, has_nested_models, kernels

pytestmark = pytest.mark.slow


def _nested_model() -> Any:
    """Most weights sit in two nested Sequentials, as in a model built from blocks."""
    from edgeship.training.keras_env import keras

    k = keras()
    block = k.Sequential([k.layers.Conv2D(16, 3, padding="same", activation="relu", input_shape=(8, 8, 8)),
                          k.layers.Conv2D(16, 3, activation="relu")], name="block")
    head = k.Sequential([k.layers.Dense(32, activation="relu", input_shape=(576,)),
                         k.layers.Dense(10, activation="softmax")], name="head")
    inp = k.Input((8, 8, 1))
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
    return k.Model(inp, head(k.layers.Flatten()(block(x))))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data.reshape(-1, 8, 8, 1) / 16.0).astype(np.float32), d.target.astype(np.int64)


def _ctx(epochs: int = 1) -> PassContext:
    x, y = _digits()
    return PassContext(x[:512], y[:512], x[512:640], y[512:640], [str(i) for i in range(10)], "mine", {},
                       epochs=epochs, batch_size=64)


def test_pruning_a_nested_model_reaches_the_target_and_strip_keeps_outputs() -> None:
    from edgeship.compression.base import fine_tune
    from edgeship.compression.prune import PruneConfig, sparsity_reached, wrap_for_pruning
    from edgeship.training.keras_env import tfmot

    source = _nested_model()
    before = [w.copy() for w in source.get_weights()]
    ctx = _ctx(epochs=2)
    wrapped = wrap_for_pruning(source, ctx, PruneConfig(sparsity=0.5))
    fine_tune(wrapped, ctx, extra_callbacks=[tfmot().sparsity.keras.UpdatePruningStep()])
    stripped = tfmot().sparsity.keras.strip_pruning(wrapped)
    x = ctx.x_val[:64]
    np.testing.assert_allclose(wrapped.predict(x, verbose=0), stripped.predict(x, verbose=0), atol=1e-6)
    found = kernels(stripped)
    assert len(found) == 5 and "stem" in found
    for name, kernel in found.items():
        assert abs((kernel == 0).mean() - 0.5) <= 0.01, name
    assert sparsity_reached(stripped, ctx.notes["pruned_layers"])["overall"] == pytest.approx(0.5, abs=0.01)
    assert ctx.notes["prune_skipped_layers"] == []
    assert all(np.array_equal(a, b) for a, b in zip(before, source.get_weights(), strict=True))


def test_flatten_inlines_a_keras_application_and_keeps_what_it_computes() -> None:
    from edgeship.compression.prune import PruneConfig, dense_share, wrap_for_pruning
    from edgeship.training.keras_env import keras

    k = keras()
    backbone = k.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False,
                                          weights=None)
    inp = k.Input((32, 32, 3))
    model = k.Model(inp, k.layers.Dense(10, activation="softmax")(
        k.layers.GlobalAveragePooling2D()(backbone(inp))))
    flat = flatten(model)
    assert has_nested_models(model) and not has_nested_models(flat)
    x = np.random.default_rng(1).standard_normal((4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(model(x, training=False), flat(x, training=False), rtol=1e-5, atol=1e-6)
    nested, inlined = kernels(model), kernels(flat)
    assert len(inlined) == len(nested) == 53
    for name, kernel in nested.items():
        np.testing.assert_array_equal(inlined[name], kernel)
    # Every convolution and Dense layer gets a pruning wrapper (tfmot prunes no depthwise kernel).
    ctx = PassContext(x, np.zeros(4, np.int64), x, np.zeros(4, np.int64), ["a"], "mine", {}, epochs=1)
    wrap_for_pruning(model, ctx, PruneConfig(0.5))
    plain = [n for n, layer in ((layer.name, layer) for layer in flat.layers)
             if type(layer).__name__ in ("Conv2D", "Dense")]
    assert sorted(ctx.notes["pruned_layers"]) == sorted(plain) and len(plain) == 36
    assert dense_share(model, ctx.notes["pruned_layers"]) is None  # depthwise kernels: a few percent


def test_compress_your_own_nested_model_prunes_and_quantizes_every_layer(tmp_path: Path) -> None:
    model = _nested_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = _digits()
    model.fit(x, y, epochs=2, verbose=0)
    path = tmp_path / "nested.keras"
    model.save(path)
    out = invoke_json(tmp_path / "runs", "compress", "--model", str(path), "--dataset", "digits",
                      "--prune", "0.5", "--quantize", "qat", "--epochs", "1")
    (v,) = out["variants"]
    assert v["name"] == "prune50-qat"
    assert v["sparsity"] >= 0.48  # nested layers left dense would give about 0.05
    record = json.loads((Path(v["dir"]) / "variant.json").read_text())
    reached = record["sparsity_reached"]
    assert reached["requested"] == 0.5 and reached["overall"] >= 0.48
    assert len(reached["layers"]) == 5
    assert all(s >= 0.48 for s in reached["layers"].values()), reached["layers"]
    assert "pqat" in record["passes"]


def test_a_sparsity_that_was_not_reached_fails_in_one_line() -> None:
    from edgeship.compression.prune import PruneConfig, SparsityNotReachedError, check_sparsity

    reached = {"overall": 0.016, "layers": {"backbone_conv": 0.0, "dense": 0.5}}
    with pytest.raises(SparsityNotReachedError, match=r"reached 1\.6% sparsity, not the 50% asked") as e:
        check_sparsity(PruneConfig(0.5), reached, [])
    assert "backbone_conv" in str(e.value) and "\n" not in str(e.value)
    check_sparsity(PruneConfig(0.5), {"overall": 0.49, "layers": {}}, [])  # within 2 points
    with pytest.raises(SparsityNotReachedError, match="2:4"):
        check_sparsity(PruneConfig(structure="2:4"), {"overall": 0.3, "layers": {"a": 0.3}}, [])


def test_clustering_a_nested_model_keeps_at_most_n_values_in_every_kernel() -> None:
    from edgeship.compression.cluster import ClusterConfig, cluster

    stripped = cluster(_nested_model(), _ctx(epochs=1), ClusterConfig(clusters=8))
    found = kernels(stripped)
    assert len(found) == 5
    for name, kernel in found.items():
        assert np.unique(kernel).size <= 8, name


@pytest.mark.parametrize("momentum", [0.999, 0.9])
def test_pruning_leaves_exact_batch_norm_statistics_in_a_slow_averaging_model(momentum: float) -> None:
    """keras.applications' batch norm averages at 0.99-0.999: pruning's fine-tuning leaves their
    moving statistics behind the final weights (a stock MobileNetV3Small fell to chance), so the
    pass recomputes them on the train split. A model that averages at 0.9 (edgeship's own) is
    left exactly as fine-tuning made it."""
    from edgeship.compression.prune import PruneConfig, prune
    from edgeship.training.batchnorm import batch_norm_layers, recompute_statistics
    from edgeship.training.keras_env import keras

    k = keras()
    inp = k.Input((8, 8, 1))
    x = inp
    for i in range(3):
        x = k.layers.Conv2D(16, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = k.layers.BatchNormalization(momentum=momentum, name=f"bn{i}")(x)
        x = k.layers.ReLU()(x)
    out = k.layers.Dense(10, activation="softmax")(k.layers.GlobalAveragePooling2D()(x))
    model = k.Model(inp, out)
    ctx = _ctx(epochs=1)
    pruned = prune(model, ctx, PruneConfig(sparsity=0.5))
    moving = [layer.get_weights() for layer in batch_norm_layers(pruned)]
    assert all(layer.momentum == momentum for layer in batch_norm_layers(pruned))  # its own, kept
    exact = k.models.clone_model(pruned)
    exact.set_weights(pruned.get_weights())
    recompute_statistics(exact, ctx.x_train)
    for layer, before in zip(batch_norm_layers(exact), moving, strict=True):
        after = layer.get_weights()  # gamma, beta, moving mean, moving variance
        close = all(np.allclose(a, b, rtol=1e-3, atol=1e-5)
                    for a, b in zip(after[2:], before[2:], strict=True))
        assert close == (momentum > 0.9), layer.name
    assert ("batch_norm_recomputed" in ctx.notes) == (momentum > 0.9)


def test_an_lstm_left_dense_by_pruning_is_said_so(capsys: pytest.CaptureFixture[str]) -> None:
    """The zoo's LSTM was named prune50 from its Dense head, 0.12 sparse over every kernel, and
    only metrics.json said so."""
    from edgeship.compression.prune import PruneConfig, dense_share, wrap_for_pruning
    from edgeship.training.keras_env import keras

    k = keras()
    inp = k.Input((8, 8))
    lstm = k.layers.LSTM(32, name="lstm")(inp)
    model = k.Model(inp, k.layers.Dense(10, activation="softmax", name="head")(lstm))
    x, y = _digits()
    seqs = x[..., 0]  # 8 steps of 8 pixels
    ctx = PassContext(seqs[:64], y[:64], seqs[64:80], y[64:80], [str(i) for i in range(10)], "mine", {},
                      epochs=1)
    wrap_for_pruning(model, ctx, PruneConfig(0.5))
    assert ctx.notes["pruned_layers"] == ["head"]
    share, names = dense_share(model, ctx.notes["pruned_layers"])
    assert names == ["lstm"] and share == pytest.approx(8 * 128 / (8 * 128 + 32 * 10))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pruning leaves 76% of the kernel weights dense (lstm)" in err
    assert "about 12% sparse" in err
    # A model whose kernels are all pruned (nested ones included) stays quiet.
    wrap_for_pruning(_nested_model(), _ctx(), PruneConfig(0.5))
    assert "kernel weights dense" not in capsys.readouterr().err
