"""Batch-norm statistics that match the trained weights, for models trained for a few hundred steps.

A BatchNormalization layer normalises with the batch's own statistics while training and with
its moving averages at inference. The averages start at mean 0 / variance 1 and forget that
start at ``momentum`` per step: keras.applications' 0.999 needs thousands of steps, while a
small image folder gives ~40 steps an epoch. The network then trains well and predicts one
constant output at inference (seen: MobileNetV2 on 350 digit images, validation loss ln 10 for
ten epochs, 0.75 validation accuracy with batch statistics and 0.11 with the moving ones).

Two remedies, both used by training: ``set_momentum`` (0.9 forgets the start in ~20 steps, so
validation loss, early stopping and the restored best epoch mean something), and
``recompute_statistics`` after training (the exact train-split averages under the final weights,
as SWA's ``update_bn`` does), so the moving averages no longer lag the weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from edgeship.training.keras_env import keras

SHORT_TRAINING_MOMENTUM = 0.9


def batch_norm_layers(model: Any) -> list[Any]:
    """Every BatchNormalization layer, nested models (a keras.applications backbone) included."""
    k = keras()
    return [layer for layer in _walk(model) if isinstance(layer, k.layers.BatchNormalization)]


def _walk(layer: Any) -> Iterator[Any]:
    yield layer
    for child in getattr(layer, "layers", []):
        yield from _walk(child)


def set_momentum(model: Any, momentum: float = SHORT_TRAINING_MOMENTUM) -> int:
    """Give every batch-norm layer ``momentum``; returns how many there are."""
    layers = batch_norm_layers(model)
    for layer in layers:
        layer.momentum = momentum
    return len(layers)


def recompute_statistics(model: Any, x: np.ndarray, batch_size: int = 128) -> int:
    """Replace every batch-norm layer's moving mean and variance by their average over ``x``.

    Runs ``x`` through the model in training mode once, with each layer's momentum set so that
    batch ``i`` is weighted by its share of the rows seen so far (a cumulative average, not an
    exponential one). Weights are not touched. Returns the number of layers updated (0: none).
    """
    layers = batch_norm_layers(model)
    if not layers or not len(x):
        return 0
    saved = [layer.momentum for layer in layers]
    seen = 0
    try:
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size]
            for layer in layers:  # 0.0 for the first batch: the start values are dropped
                layer.momentum = seen / (seen + len(batch))
            model(batch, training=True)
            seen += len(batch)
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer.momentum = momentum
    return len(layers)
