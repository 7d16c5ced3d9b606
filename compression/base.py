"""What every compression pass shares: its input data, fine-tuning, and the clone rule.

A pass is a function ``(model, ctx, config) -> model`` registered by name. It never touches
the model it is given: tfmot's wrappers hold the very layer objects of the model they wrap,
so every pass works on a clone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeship.training.keras_env import keras, seed_everything


@dataclass
class PassContext:
    """The run's data and the fine-tuning settings shared by all passes of one variant."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    labels: list[str]
    model_name: str  # the registry name of the original architecture
    model_options: dict[str, Any]
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 5e-4
    seed: int = 0
    class_weight: dict[int, float] | None = None
    progress: Any = None
    # What earlier passes did to this model, so later ones can preserve it (PQAT, CQAT).
    applied: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # JSON-ready facts for metrics.json
    side_models: dict[str, Any] = field(default_factory=dict)  # e.g. distillation's scratch twin

    @property
    def steps_per_epoch(self) -> int:
        return int(np.ceil(len(self.x_train) / self.batch_size))


def clone(model: Any, clone_function: Callable[[Any], Any] | None = None) -> Any:
    """A copy with its own variables (and, with ``clone_function``, its own layers)."""
    k = keras()
    copy = k.models.clone_model(model, clone_function=clone_function)
    copy.set_weights(model.get_weights())
    return copy


def is_kernel_layer(layer: Any) -> bool:
    """Dense and convolutions: the layers tfmot's pruning and clustering act on."""
    k = keras()
    return isinstance(layer, k.layers.Dense | k.layers.Conv2D | k.layers.DepthwiseConv2D |
                      k.layers.Conv1D)


def wrap_kernel_layers(model: Any, wrapper: Callable[[Any], Any],
                       eligible: Callable[[Any], bool] = lambda layer: True) -> tuple[Any, list[str]]:
    """A copy of ``model`` with ``wrapper`` (a tfmot wrapper) on each eligible kernel layer.

    Returns the copy and the names of kernel layers left as they were: nested models (tfmot
    cannot wrap them), ineligible ones, and those the wrapper refused.
    """
    skipped: list[str] = []

    def wrap(layer: Any) -> Any:
        # ``copy`` is ours alone, so wrapping its layer objects in place is safe.
        if hasattr(layer, "layers") and layer.weights:
            skipped.append(layer.name)
            return layer
        if not is_kernel_layer(layer):
            return layer
        if not eligible(layer):
            skipped.append(layer.name)
            return layer
        try:
            return wrapper(layer)
        except (ValueError, TypeError):
            skipped.append(layer.name)
            return layer

    copy = clone(model)
    return keras().models.clone_model(copy, clone_function=wrap), skipped


def fine_tune(model: Any, ctx: PassContext, extra_callbacks: list[Any] | None = None,
              epochs: int | None = None, loss: Any = "sparse_categorical_crossentropy") -> dict[str, list]:
    """Train for a fixed number of epochs: schedules (pruning) need a known length."""
    k = keras()
    seed_everything(ctx.seed)
    model.compile(optimizer=k.optimizers.Adam(ctx.learning_rate), loss=loss, metrics=["accuracy"])
    callbacks = list(extra_callbacks or [])
    if ctx.progress is not None:
        callbacks.append(_progress_callback(ctx.progress))
    history = model.fit(
        ctx.x_train, ctx.y_train, validation_data=(ctx.x_val, ctx.y_val),
        epochs=epochs or ctx.epochs, batch_size=ctx.batch_size, class_weight=ctx.class_weight,
        callbacks=callbacks, verbose=0, shuffle=True,
    )
    return history.history


def _progress_callback(progress: Any) -> Any:
    k = keras()

    class Report(k.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            progress.update(1, status=f"val_acc {logs.get('val_accuracy', float('nan')):.3f}")

    return Report()


def kernel_layers(model: Any) -> list[Any]:
    """Layers with a weight matrix worth compressing (Dense and convolutions), nested included."""
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers"):
            found.extend(kernel_layers(layer))
        elif any(w.name.endswith(("kernel:0", "depthwise_kernel:0")) for w in layer.weights):
            found.append(layer)
    return found


def kernels(model: Any) -> dict[str, np.ndarray]:
    """Name -> kernel array for every compressible layer."""
    out = {}
    for layer in kernel_layers(model):
        for w in layer.weights:
            if w.name.endswith(("kernel:0", "depthwise_kernel:0")):
                out[layer.name] = w.numpy()
                break
    return out
