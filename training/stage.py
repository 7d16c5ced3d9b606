"""The training stage: data in, a new run out.

Load -> split -> fit preprocessing on train -> train with early stopping (images of 32 px and
up: augmented, with a rate that halves on plateaus) -> recompute batch-norm statistics on train
-> evaluate on test -> baselines, and a warning when validation does not beat them -> write the
run. The run only appears once everything is written.
"""

from __future__ import annotations

import csv
import io
import json
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.console import info, warn
from edgeship.core.errors import InputError
from edgeship.core.runstore import RunDir, RunStore
from edgeship.training import preprocessing
from edgeship.training.baselines import baseline_verdict, run_baselines
from edgeship.training.batchnorm import SHORT_TRAINING_MOMENTUM, recompute_statistics
from edgeship.training.card import model_card, plot_curves
from edgeship.training.datasets import RawDataset, load_dataset
from edgeship.training.evaluation import classification_metrics
from edgeship.training.imported import load_foreign_model, rescales_own_inputs
from edgeship.training.keras_env import keras, seed_everything
from edgeship.training.keras_env import tf as tf_module
from edgeship.training.models import ModelOptions, build_model, count_params, resolve_model_name
from edgeship.training.splits import Split, balanced_class_weight, split_dataset


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "digits"
    target: str | None = None
    time_column: str | None = None
    image_size: tuple[int, int] = (32, 32)
    model: str | None = None
    width: float = 1.0
    alpha: float = 0.35
    dropout: float = 0.1
    epochs: int = 60
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 8
    seed: int = 0
    class_weight: str | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    augment: str = "auto"  # auto: on for images of at least AUGMENT_MIN_SIDE pixels a side

    def check(self) -> None:
        if self.epochs < 1:
            raise InputError(f"--epochs {self.epochs}: train for at least 1 epoch")
        if self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size}: use a positive batch size")
        if not self.learning_rate > 0:
            raise InputError(f"--learning-rate {self.learning_rate}: use a positive rate, e.g. 1e-3")
        if self.width <= 0:
            raise InputError(f"--width {self.width}: use a positive width multiplier")
        if self.class_weight not in (None, "none", "balanced"):
            raise InputError(f"--class-weight {self.class_weight}: use 'balanced' or 'none'")
        if min(self.image_size) < 4:
            raise InputError(f"--image-size {self.image_size}: use at least 4 pixels a side")
        if self.augment not in ("auto", "on", "off"):
            raise InputError(f"--augment {self.augment}: use auto, on or off")


# Small shifts and zooms are label-preserving at 32 px and up; on the 8x8 digits one pixel is
# 12 % of the digit, so ``auto`` leaves small images (and the default run) alone.
AUGMENT_MIN_SIDE = 32
AUGMENT_SHIFT = 0.1  # fraction of height and width
AUGMENT_ZOOM = 0.1


def augments(cfg: TrainConfig, kind: str, input_shape: tuple[int, ...]) -> bool:
    """Whether training augments: ``on``/``off`` as asked; ``auto`` for images >= 32 px a side."""
    if kind != "image" or cfg.augment == "off":
        return False
    return cfg.augment == "on" or min(input_shape[0], input_shape[1]) >= AUGMENT_MIN_SIDE


@dataclass
class Prepared:
    """A dataset after splitting and train-fitted preprocessing."""

    data: RawDataset
    split: Split
    spec: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class TrainResult:
    run: RunDir
    metrics: dict[str, Any]


def prepare(cfg: TrainConfig, raw_pixels: bool = False) -> Prepared:
    """Load, split and preprocess; ``raw_pixels`` for a model that rescales its own images."""
    data = load_dataset(cfg.dataset, target=cfg.target, time_column=cfg.time_column,
                        image_size=cfg.image_size)
    split = split_dataset(data, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    return _preprocessed(data, split, raw_pixels)


def _preprocessed(data: RawDataset, split: Split, raw_pixels: bool) -> Prepared:
    spec = preprocessing.fit(data, split.train, raw_pixels)
    arrays = {}
    for part in ("train", "val", "test"):
        idx = getattr(split, part)
        arrays[f"x_{part}"] = preprocessing.transform(spec, data.select(idx))
        arrays[f"y_{part}"] = data.y[idx]
    return Prepared(data, split, spec, arrays)


def train(store: RunStore, cfg: TrainConfig, progress: Any = None) -> TrainResult:
    """Train one model and commit it as a new run."""
    cfg.check()
    prep = prepare(cfg)
    data = prep.data
    model_name = resolve_model_name(cfg.model, data.kind)
    with store.new_run(f"{data.name}-{model_name}", cfg.seed) as run:
        params = {**asdict(cfg), "model": model_name}
        with run.stage("train", params) as st:
            _write_data(st.output_dir("data"), prep)
            metrics, model_section = _fit_and_evaluate(st.output_dir("model"), prep, cfg, model_name,
                                                       progress)
            data_section = _data_section(prep, cfg)
            st.set_section("data", data_section)
            st.set_section("model", model_section)
            st.metrics.update(_headline(metrics), epochs_run=metrics["epochs_run"])
            card = model_card({**run.manifest, "data": data_section, "model": model_section},
                              metrics)
            (st.output_dir("model") / "model_card.md").write_text(card, encoding="utf-8")
    return TrainResult(run=run, metrics=metrics)


def _fit_and_evaluate(out: Path, prep: Prepared, cfg: TrainConfig, model_name: str,
                      progress: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    k = keras()
    a, labels = prep.arrays, prep.data.labels
    seed_everything(cfg.seed)
    options = ModelOptions(width=cfg.width, alpha=cfg.alpha, dropout=cfg.dropout)
    model = build_model(model_name, a["x_train"].shape[1:], len(labels), options)
    model.compile(optimizer=k.optimizers.Adam(cfg.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    class_weight = (balanced_class_weight(a["y_train"], len(labels))
                    if cfg.class_weight == "balanced" else None)
    callbacks = [k.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                           restore_best_weights=True)]
    augment = augments(cfg, prep.data.kind, a["x_train"].shape[1:])
    if augment:  # the small-image-folder recipe: augmented data, and a rate that halves on plateaus
        callbacks.append(k.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(2, cfg.patience // 3),
            min_lr=cfg.learning_rate / 16))
    if progress is not None:
        callbacks.append(_EpochProgress(progress))
    t0 = time.perf_counter()
    if augment:
        inputs: dict[str, Any] = {"x": _augmented(a["x_train"], a["y_train"], cfg.batch_size,
                                                  cfg.seed)}
    else:
        inputs = {"x": a["x_train"], "y": a["y_train"], "batch_size": cfg.batch_size,
                  "shuffle": True}
    history = model.fit(
        **inputs, validation_data=(a["x_val"], a["y_val"]), epochs=cfg.epochs,
        class_weight=class_weight, callbacks=callbacks, verbose=0,
    ).history
    # The moving averages lag the final (restored) weights: recompute them on the train split.
    bn_layers = recompute_statistics(model, a["x_train"])
    wall = time.perf_counter() - t0
    metrics = _evaluate_and_save(out, model, prep, cfg.seed, wall)
    metrics.update({
        "epochs_run": len(history["loss"]),
        "best_epoch": int(np.argmin(history["val_loss"])) + 1,
        "class_weight": class_weight,
        "augmentation": ({"shift": AUGMENT_SHIFT, "zoom": AUGMENT_ZOOM} if augment else None),
        "batch_norm": ({"layers": bn_layers, "momentum": SHORT_TRAINING_MOMENTUM,
                        "statistics": "recomputed on the train split after training"}
                       if bn_layers else None),
    })
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    _write_history(out / "history.csv", history)
    plot_curves(history, out / "curves.png")
    model_section = {"name": model_name, "options": asdict(options), "params": metrics["params"],
                     "path": "model/model.keras"}
    return metrics, model_section


def _evaluate_and_save(out: Path, model: Any, prep: Prepared, seed: int, wall: float) -> dict[str, Any]:
    """Test metrics, baselines and the saved model: the same for trained and imported models."""
    a, labels = prep.arrays, prep.data.labels
    probs = model.predict(a["x_test"], batch_size=256, verbose=0)
    val_probs = model.predict(a["x_val"], batch_size=256, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    baselines = run_baselines(a["x_train"], a["y_train"], a["x_test"], a["y_test"], len(labels),
                              seed, x_val=a["x_val"], y_val=a["y_val"])
    val_acc = float((val_probs.argmax(axis=1) == a["y_val"]).mean()) if len(a["y_val"]) else 0.0
    beats, warnings = baseline_verdict(val_acc, baselines, len(a["y_val"]))
    for line in warnings:
        warn(line)
    metrics = {
        "test": classification_metrics(probs, a["y_test"], labels),
        "val_accuracy": val_acc,
        "baselines": baselines,
        "beats_baselines": beats,
        "warnings": warnings,
        "params": count_params(model),
        "wall_time_s": round(wall, 3),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def adopt(store: RunStore, model_file: str | Path, cfg: TrainConfig) -> TrainResult:
    """Start a run from a Keras model trained elsewhere, on a dataset edgeship can load."""
    prep = prepare(cfg)
    model, origin = load_foreign_model(Path(model_file), prep.arrays["x_train"].shape[1:],
                                       len(prep.data.labels))
    rescaler = rescales_own_inputs(model) if prep.data.kind == "image" else None
    if rescaler is not None:
        prep = _preprocessed(prep.data, prep.split, raw_pixels=True)
        origin["rescales_inputs"] = rescaler
        info(f"{Path(model_file).name} rescales its own inputs (layer '{rescaler}'): it is fed "
             "pixels on the 0-255 scale, not standardised ones")
    params = {**asdict(cfg), "model_file": str(model_file)}
    with store.new_run(f"{prep.data.name}-imported", cfg.seed) as run, run.stage("import", params) as st:
        _write_data(st.output_dir("data"), prep)
        out = st.output_dir("model")
        metrics = _evaluate_and_save(out, model, prep, cfg.seed, 0.0)
        data_section = _data_section(prep, cfg)
        model_section = {"name": "imported", "options": {}, "params": metrics["params"],
                         "path": "model/model.keras", "origin": origin}
        st.set_section("data", data_section)
        st.set_section("model", model_section)
        st.metrics.update(_headline(metrics))
    return TrainResult(run=run, metrics=metrics)


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """What the manifest's stage entry and `edgeship runs` show of a model's metrics."""
    return {
        "test_accuracy": metrics["test"]["accuracy"],
        "test_macro_f1": metrics["test"]["macro_f1"],
        "baselines": {k: v["accuracy"] for k, v in metrics["baselines"].items()},
        "val_accuracy": metrics["val_accuracy"],
        "beats_baselines": metrics["beats_baselines"],
        "warnings": metrics["warnings"],
    }


def _augmented(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> Any:
    """Shuffled batches with random shifts and zooms, applied outside the model so exports
    never contain augmentation layers. Edges repeat the border pixels (``nearest``)."""
    tf, k = tf_module(), keras()
    shift = k.layers.RandomTranslation(AUGMENT_SHIFT, AUGMENT_SHIFT, fill_mode="nearest",
                                       seed=seed)
    zoom = k.layers.RandomZoom(AUGMENT_ZOOM, fill_mode="nearest", seed=seed + 1)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        len(x), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return ds.map(lambda xb, yb: (zoom(shift(xb, training=True), training=True), yb)).prefetch(2)


def _write_data(out: Path, prep: Prepared) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "splits.npz", **prep.arrays)
    test_idx = prep.split.test
    raw = prep.data.select(test_idx)
    if prep.data.kind == "image":
        np.savez_compressed(out / "test_raw.npz", x=raw.astype(np.float32), y=prep.data.y[test_idx])
    else:
        frame = raw.copy()
        frame["__label__"] = [prep.data.labels[i] for i in prep.data.y[test_idx]]
        frame.to_csv(out / "test_raw.csv", index=False)


def _write_history(path: Path, history: dict[str, list[float]]) -> None:
    keys = list(history)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["epoch", *keys])
    for i in range(len(history[keys[0]])):
        writer.writerow([i + 1, *(f"{history[key][i]:.6f}" for key in keys)])
    path.write_text(buf.getvalue(), encoding="utf-8")


def _data_section(prep: Prepared, cfg: TrainConfig) -> dict[str, Any]:
    data, split, a = prep.data, prep.split, prep.arrays
    counts = np.bincount(data.y, minlength=len(data.labels))
    return {
        "dataset": data.name,
        "source": data.source,
        "kind": data.kind,
        "sha256": data.sha256,
        "rows": data.rows,
        "dropped_rows": data.dropped_rows,
        "target": data.target,
        "labels": data.labels,
        "class_counts": {label: int(c) for label, c in zip(data.labels, counts, strict=True)},
        "input": {"shape": list(a["x_train"].shape[1:]), "dtype": "float32"},
        "features": prep.spec.get("features"),
        "preprocessing": prep.spec,
        "split": {"method": split.method, "sizes": split.sizes(), **split.info},
        "class_weight": cfg.class_weight if cfg.class_weight != "none" else None,
        "files": {"splits": "data/splits.npz",
                  "test_raw": "data/test_raw.npz" if data.kind == "image" else "data/test_raw.csv"},
    }


class _EpochProgress:
    """Adapts Keras epochs to edgeship's progress display."""

    def __new__(cls, progress: Any) -> Any:
        k = keras()

        class Callback(k.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                logs = logs or {}
                progress.update(1, status=(
                    f"loss {logs.get('loss', float('nan')):.3f}  "
                    f"val_acc {logs.get('val_accuracy', float('nan')):.3f}"
                ))

        return Callback()
