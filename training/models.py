"""The model registry, keyed by name.

Every builder takes ``width`` (a multiplier on channels and units), so compression can build
"the same architecture, narrower" as a distillation student. The last two layers are always a
linear ``logits`` Dense and a ``probabilities`` softmax: exports see probabilities, and
distillation reads the logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeship.core.errors import InputError
from edgeship.training.batchnorm import set_momentum
from edgeship.training.keras_env import keras


@dataclass(frozen=True)
class ModelOptions:
    width: float = 1.0
    alpha: float = 0.35  # MobileNetV2's own width multiplier
    dropout: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kinds: tuple[str, ...]
    description: str
    build: Callable[[tuple[int, ...], int, ModelOptions], Any]


def _units(n: int, width: float) -> int:
    return max(2, round(n * width))


def _head(x: Any, n_classes: int) -> Any:
    k = keras()
    logits = k.layers.Dense(n_classes, name="logits")(x)
    return k.layers.Activation("softmax", name="probabilities")(logits)


def _cnn(shape: tuple[int, ...], n_classes: int, opt: ModelOptions) -> Any:
    k = keras()
    inputs = k.Input(shape=shape, name="input")
    x, filters, size = inputs, 16, min(shape[0], shape[1])
    x = k.layers.Conv2D(_units(filters, opt.width), 3, padding="same", activation="relu",
                        name="conv0")(x)
    block = 1
    while True:
        filters *= 2
        x = k.layers.Conv2D(_units(filters, opt.width), 3, padding="same", activation="relu",
                            name=f"conv{block}")(x)
        x = k.layers.MaxPooling2D(2, name=f"pool{block}")(x)
        size //= 2
        block += 1
        if size <= 4 or block > 4:
            break
    x = k.layers.Flatten(name="flatten")(x)
    x = k.layers.Dense(_units(64, opt.width), activation="relu", name="dense")(x)
    if opt.dropout:
        x = k.layers.Dropout(opt.dropout, name="dropout")(x)
    return k.Model(inputs, _head(x, n_classes), name="cnn")


def _dscnn(shape: tuple[int, ...], n_classes: int, opt: ModelOptions) -> Any:
    """Depthwise-separable blocks, the keyword-spotting family's workhorse."""
    k = keras()
    inputs = k.Input(shape=shape, name="input")
    x = k.layers.Conv2D(_units(32, opt.width), 3, padding="same", name="stem")(inputs)
    x = k.layers.BatchNormalization(name="stem_bn")(x)
    x = k.layers.ReLU(name="stem_relu")(x)
    size = min(shape[0], shape[1])
    for i, filters in enumerate((32, 64, 64)):
        stride = 2 if size > 4 else 1
        x = k.layers.DepthwiseConv2D(3, strides=stride, padding="same", name=f"dw{i}")(x)
        x = k.layers.BatchNormalization(name=f"dw{i}_bn")(x)
        x = k.layers.ReLU(name=f"dw{i}_relu")(x)
        x = k.layers.Conv2D(_units(filters, opt.width), 1, name=f"pw{i}")(x)
        x = k.layers.BatchNormalization(name=f"pw{i}_bn")(x)
        x = k.layers.ReLU(name=f"pw{i}_relu")(x)
        size = (size + stride - 1) // stride
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    if opt.dropout:
        x = k.layers.Dropout(opt.dropout, name="dropout")(x)
    return k.Model(inputs, _head(x, n_classes), name="dscnn")


def _mlp(shape: tuple[int, ...], n_classes: int, opt: ModelOptions) -> Any:
    k = keras()
    inputs = k.Input(shape=shape, name="input")
    x = inputs
    for i, units in enumerate((64, 32)):
        x = k.layers.Dense(_units(units, opt.width), activation="relu", name=f"dense{i}")(x)
        if opt.dropout:
            x = k.layers.Dropout(opt.dropout, name=f"dropout{i}")(x)
    return k.Model(inputs, _head(x, n_classes), name="mlp")


def _mobilenetv2(shape: tuple[int, ...], n_classes: int, opt: ModelOptions) -> Any:
    """keras.applications' MobileNetV2 with random weights: the scale reference."""
    k = keras()
    if min(shape[0], shape[1]) < 32:
        raise InputError(
            f"mobilenetv2 needs images of at least 32x32, not {shape[0]}x{shape[1]}; pass "
            "--image-size 96 with an image folder, or use --model cnn"
        )
    alpha = opt.alpha * opt.width
    base = k.applications.MobileNetV2(
        input_shape=shape, alpha=alpha, include_top=False, weights=None, pooling="avg"
    )
    inputs = k.Input(shape=shape, name="input")
    x = base(inputs)
    if opt.dropout:
        x = k.layers.Dropout(opt.dropout, name="dropout")(x)
    return k.Model(inputs, _head(x, n_classes), name="mobilenetv2")


MODELS: dict[str, ModelEntry] = {
    "cnn": ModelEntry("cnn", ("image",), "small conv net", _cnn),
    "dscnn": ModelEntry("dscnn", ("image",), "depthwise-separable conv net", _dscnn),
    "mobilenetv2": ModelEntry("mobilenetv2", ("image",),
                              "keras.applications MobileNetV2, random init", _mobilenetv2),
    "mlp": ModelEntry("mlp", ("tabular",), "two hidden Dense layers", _mlp),
}

DEFAULT_FOR_KIND = {"image": "cnn", "tabular": "mlp"}


def resolve_model_name(name: str | None, kind: str) -> str:
    if name in (None, "", "auto"):
        return DEFAULT_FOR_KIND[kind]
    if name not in MODELS:
        raise InputError(f"unknown model '{name}'; valid models: {', '.join(MODELS)}")
    entry = MODELS[name]
    if kind not in entry.kinds:
        fits = [m for m, e in MODELS.items() if kind in e.kinds]
        raise InputError(f"model '{name}' is for {'/'.join(entry.kinds)} data, this dataset is "
                         f"{kind}: use one of {', '.join(fits)}")
    return name


def build_model(name: str, input_shape: tuple[int, ...], n_classes: int,
                options: ModelOptions | None = None) -> Any:
    """A fresh, uncompiled tf_keras model from the registry.

    Its batch-norm layers get momentum 0.9 (keras.applications uses 0.999): edgeship trains on
    small datasets for a few hundred steps, and slower moving averages stay near their
    initial values, so inference would use statistics unrelated to the weights (see
    ``training.batchnorm``).
    """
    if name not in MODELS:
        raise InputError(f"unknown model '{name}'; valid models: {', '.join(MODELS)}")
    model = MODELS[name].build(tuple(input_shape), n_classes, options or ModelOptions())
    set_momentum(model)
    return model


def count_params(model: Any) -> int:
    return int(sum(int(w.shape.num_elements()) for w in model.weights))
