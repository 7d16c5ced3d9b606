"""Real TensorFlow training: registry, determinism, the files a run holds, baselines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeship.core.runstore import RunDir, RunStore
from edgeship.training.models import MODELS, ModelOptions, build_model, count_params


@pytest.mark.slow
@pytest.mark.parametrize(("name", "shape"), [
    ("cnn", (8, 8, 1)), ("dscnn", (8, 8, 1)), ("mobilenetv2", (32, 32, 3)), ("mlp", (12,)),
])
def test_every_registered_model_builds_and_trains_one_step(name: str, shape: tuple[int, ...]) -> None:
    from edgeship.training.keras_env import keras, seed_everything

    assert name in MODELS
    seed_everything(0)
    model = build_model(name, shape, 3, ModelOptions(width=0.5))
    model.compile(optimizer=keras().optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(8, *shape)).astype(np.float32)
    y = np.arange(8) % 3
    before = [w.copy() for w in model.get_weights()]
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    probs = model.predict(x, verbose=0)
    assert probs.shape == (8, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert [layer.name for layer in model.layers[-2:]] == ["logits", "probabilities"]


def test_width_multiplier_shrinks_the_model() -> None:
    wide = build_model("cnn", (8, 8, 1), 10)
    narrow = build_model("cnn", (8, 8, 1), 10, ModelOptions(width=0.25))
    assert count_params(narrow) * 4 < count_params(wide)


@pytest.mark.slow
def test_digits_run_holds_everything_lineage_needs(digits_run: RunDir) -> None:
    m = digits_run.manifest
    data = m["data"]
    assert data["dataset"] == "digits" and data["input"] == {"shape": [8, 8, 1], "dtype": "float32"}
    assert data["split"]["sizes"] == {"train": 1257, "val": 270, "test": 270}
    assert data["preprocessing"]["kind"] == "image" and len(data["sha256"]) == 64
    assert data["labels"] == [str(i) for i in range(10)]
    for name in ("model.keras", "metrics.json", "history.csv", "curves.png", "model_card.md"):
        assert (digits_run.path / "model" / name).stat().st_size > 0
    metrics = json.loads((digits_run.path / "model/metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.9
    assert set(metrics["baselines"]) == {"zero_rule", "logistic_regression"}
    assert metrics["baselines"]["zero_rule"]["accuracy"] < 0.2
    assert len(metrics["test"]["confusion_matrix"]) == 10
    assert 0 <= metrics["test"]["ece"] < 0.2 and metrics["peak_memory_mb"] > 0
    (stage,) = m["stages"]
    paths = {o["path"] for o in stage["outputs"]}
    assert {"model/model.keras", "data/splits.npz", "data/test_raw.npz"} <= paths
    splits = np.load(digits_run.path / "data/splits.npz")
    assert splits["x_test"].shape == (270, 8, 8, 1) and splits["y_test"].dtype == np.int64
    history = (digits_run.path / "model/history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy")


@pytest.mark.slow
def test_saved_model_reproduces_recorded_accuracy(digits_run: RunDir) -> None:
    from edgeship.training.keras_env import keras

    model = keras().models.load_model(digits_run.path / "model/model.keras")
    splits = np.load(digits_run.path / "data/splits.npz")
    acc = float((model.predict(splits["x_test"], verbose=0).argmax(1) == splits["y_test"]).mean())
    assert acc == pytest.approx(digits_run.last_stage("train")["metrics"]["test_accuracy"])


@pytest.mark.slow
def test_training_is_deterministic(tmp_path: Path) -> None:
    from edgeship.training.stage import TrainConfig, train

    cfg = TrainConfig(dataset="iris", epochs=5, seed=11)
    a = train(RunStore(tmp_path / "a"), cfg)
    b = train(RunStore(tmp_path / "b"), cfg)
    assert a.metrics["test"] == b.metrics["test"]
    wa = np.load(a.run.path / "data/splits.npz")
    wb = np.load(b.run.path / "data/splits.npz")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa.files)
    sha = {o["path"]: o["sha256"] for o in a.run.last_stage("train")["outputs"]}
    sha_b = {o["path"]: o["sha256"] for o in b.run.last_stage("train")["outputs"]}
    assert sha["data/splits.npz"] == sha_b["data/splits.npz"]
