"""What every compression pass shares: its input data, fine-tuning, and the clone rule.

A pass is a function ``(model, ctx, config) -> model`` registered by name. It never touches
the model it is given: tfmot's wrappers hold the very layer objects of the model they wrap,
so every pass works on a clone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeship.core.errors import EdgeshipError
from edgeship.training.batchnorm import SHORT_TRAINING_MOMENTUM, batch_norm_layers, recompute_statistics
from edgeship.training.keras_env import custom_objects, keras, seed_everything


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
    twin = k.models.clone_model(model, clone_function=clone_function)
    twin.set_weights(model.get_weights())
    return twin


def is_kernel_layer(layer: Any) -> bool:
    """Dense and convolutions: the layers tfmot's pruning and clustering act on."""
    k = keras()
    return isinstance(layer, k.layers.Dense | k.layers.Conv2D | k.layers.DepthwiseConv2D |
                      k.layers.Conv1D)


def wrap_kernel_layers(model: Any, wrapper: Callable[[Any], Any],
                       eligible: Callable[[Any], bool] = lambda layer: True) -> tuple[Any, list[str]]:
    """A copy of ``model`` with ``wrapper`` (a tfmot wrapper) on each eligible kernel layer.

    Nested models are inlined first (``flatten``), so their kernel layers are wrapped too.
    Returns the copy and the names of kernel layers left as they were: ineligible ones and
    those the wrapper refused.
    """
    skipped: list[str] = []

    def wrap(layer: Any) -> Any:
        # ``flat`` is ours alone, so wrapping its layer objects in place is safe.
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

    flat = flatten(model)
    return keras().models.clone_model(flat, clone_function=wrap), skipped


def fine_tune(model: Any, ctx: PassContext, extra_callbacks: list[Any] | None = None,
              epochs: int | None = None, loss: Any = "sparse_categorical_crossentropy") -> dict[str, list]:
    """Train for a fixed number of epochs: schedules (pruning) need a known length.

    Batch-norm layers track at most ``SHORT_TRAINING_MOMENTUM`` meanwhile: an imported
    keras.applications model's 0.99-0.999 would keep the moving statistics of the weights as
    they were before pruning for thousands of steps, and the fine-tuned model would predict one
    class at inference. Each layer's own momentum is put back afterwards (edgeship's built-in
    models already train at 0.9, so nothing changes for them).
    """
    k = keras()
    seed_everything(ctx.seed)
    model.compile(optimizer=k.optimizers.Adam(ctx.learning_rate), loss=loss, metrics=["accuracy"])
    callbacks = list(extra_callbacks or [])
    if ctx.progress is not None:
        callbacks.append(_progress_callback(ctx.progress))
    bn = batch_norm_layers(model)
    saved = [layer.momentum for layer in bn]
    for layer in bn:
        layer.momentum = min(layer.momentum, SHORT_TRAINING_MOMENTUM)
    try:
        history = model.fit(
            ctx.x_train, ctx.y_train, validation_data=(ctx.x_val, ctx.y_val),
            epochs=epochs or ctx.epochs, batch_size=ctx.batch_size, class_weight=ctx.class_weight,
            callbacks=callbacks, verbose=0, shuffle=True,
        )
    finally:
        for layer, momentum in zip(bn, saved, strict=True):
            layer.momentum = momentum
    return history.history


def settle_batch_norm(model: Any, ctx: PassContext) -> int:
    """Recompute the moving statistics of a fine-tuned model whose batch norm averages slowly.

    A model trained elsewhere keeps its layers' own momentum (keras.applications: 0.99-0.999).
    Even tracked at 0.9 while fine-tuning, the averages lag the last changes of the weights (the
    final pruning mask lands a few steps before the end), and a deep network then predicts one
    class at inference: a stock MobileNetV3Small at 0.88 validation accuracy fell to 0.09 after
    ``--prune 0.5``, and 0.86 with the statistics recomputed. Recomputed here exactly on the train
    split under the final weights, as training does. edgeship's own models (0.9, trained for
    hundreds of steps) are left as they are. Returns the number of layers recomputed.
    """
    layers = batch_norm_layers(model)
    if not any(layer.momentum > SHORT_TRAINING_MOMENTUM for layer in layers):
        return 0
    n = recompute_statistics(model, ctx.x_train)
    ctx.notes["batch_norm_recomputed"] = n
    return n


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


class CannotFlatten(EdgeshipError):
    """A nested model whose graph cannot be inlined (a subclassed model, or one called twice)."""


def has_nested_models(model: Any) -> bool:
    """Whether any layer of ``model`` is itself a model (a keras.applications backbone, a Sequential)."""
    return any(isinstance(layer, keras().Model) for layer in model.layers)


def flatten(model: Any) -> Any:
    """A copy of ``model`` with every nested model inlined into one functional graph, weights kept.

    tfmot wraps only the top level's layers: a MobileNetV2 backbone is one nested layer, so
    pruning, clustering and QAT would leave it untouched. Inlining the nested graphs (through
    their public configs) lets every kernel layer be wrapped. The copy is checked to compute
    what ``model`` computes; a model without nested models is simply cloned.
    """
    if not has_nested_models(model):
        return clone(model)
    k = keras()
    config, origin = _flat_config(model)
    flat = k.Model.from_config(config, custom_objects=custom_objects())
    for layer in flat.layers:
        source = origin.get(layer.name)
        if source is not None and source.weights:
            layer.set_weights(source.get_weights())
    _check_same_outputs(model, flat)
    return flat


def _flat_config(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``model``'s functional config with nested models inlined, and flat layer name -> layer."""
    k = keras()
    if isinstance(model, k.Sequential):
        config = _sequential_as_functional(model)
    else:
        config = copy.deepcopy(model.get_config())
        if not isinstance(config, dict) or "input_layers" not in config or "layers" not in config:
            raise CannotFlatten(f"nested model '{model.name}' is a subclassed model (no graph to inline); "
                                "rebuild it with the functional API or Sequential")
    used = {entry["name"] for entry in config["layers"]}
    layers: list[dict[str, Any]] = []
    origin: dict[str, Any] = {}
    outputs: dict[str, list[list[Any]]] = {}  # an inlined model's name -> its output tensors

    def outer_ref(name: str, node: int, tensor: int) -> list[Any] | None:
        return list(outputs[name][tensor]) if name in outputs else None

    for entry in config["layers"]:
        if entry["class_name"] == "InputLayer":
            layers.append(entry)
            continue
        layer = model.get_layer(entry["name"])
        entry = _remap(entry, outer_ref)
        if not isinstance(layer, k.Model):
            layers.append(entry)
            origin[entry["name"]] = layer
            continue
        nodes = entry.get("inbound_nodes") or []
        if len(nodes) != 1:
            raise CannotFlatten(f"nested model '{layer.name}' is called {len(nodes)} times; "
                                "edgeship inlines a nested model called once")
        inner, inner_origin = _flat_config(layer)
        args = [ref[:3] for ref in _refs(nodes[0])]
        inner_inputs = [ref[0] for ref in inner["input_layers"]]
        if len(args) != len(inner_inputs):
            raise CannotFlatten(f"nested model '{layer.name}' takes {len(inner_inputs)} inputs but is "
                                f"called with {len(args)}")
        bound = dict(zip(inner_inputs, args, strict=True))
        renamed: dict[str, str] = {}
        for inner_entry in inner["layers"]:
            if inner_entry["class_name"] == "InputLayer":
                continue
            old = inner_entry["name"]
            renamed[old] = _unique(f"{layer.name}_{old}", used) if old in used else old
            used.add(renamed[old])

        def inner_ref(name: str, node: int, tensor: int, bound=bound, renamed=renamed) -> list[Any] | None:
            if name in bound:
                return list(bound[name])
            if name in renamed:
                return [renamed[name], node, tensor]
            return None

        for inner_entry in inner["layers"]:
            if inner_entry["class_name"] == "InputLayer":
                continue
            new_entry = _remap(inner_entry, inner_ref)
            new_entry["name"] = renamed[inner_entry["name"]]
            new_entry["config"]["name"] = new_entry["name"]
            layers.append(new_entry)
            origin[new_entry["name"]] = inner_origin[inner_entry["name"]]
        outputs[layer.name] = [inner_ref(*ref[:3]) or list(ref[:3]) for ref in inner["output_layers"]]
    config["layers"] = layers
    config["output_layers"] = [outer_ref(*ref[:3]) or list(ref[:3]) for ref in config["output_layers"]]
    return config, origin


def _sequential_as_functional(model: Any) -> dict[str, Any]:
    """A Sequential's config as a functional one: an input layer, then each layer on the last."""
    k = keras()
    entries = copy.deepcopy(model.get_config()["layers"])
    if entries and entries[0]["class_name"] == "InputLayer":
        first = entries.pop(0)
        first["name"] = first["config"]["name"]
        first["inbound_nodes"] = []
    else:
        name = _unique(f"{model.name}_input", {e["config"]["name"] for e in entries})
        first = {"class_name": "InputLayer", "name": name, "inbound_nodes": [],
                 "config": {"batch_input_shape": list(model.input_shape),
                            "dtype": k.backend.floatx(), "sparse": False, "ragged": False, "name": name}}
    layers = [first]
    previous = [first["name"], 0, 0]
    for entry in entries:
        entry["name"] = entry["config"]["name"]
        entry["inbound_nodes"] = [[[*previous, {}]]]
        layers.append(entry)
        previous = [entry["name"], 0, 0]
    return {"name": model.name, "layers": layers, "input_layers": [[first["name"], 0, 0]],
            "output_layers": [previous]}


def _is_ref(obj: Any) -> bool:
    """A serialized tensor reference: [layer name, node index, tensor index(, kwargs)]."""
    return (isinstance(obj, list) and len(obj) in (3, 4) and isinstance(obj[0], str)
            and isinstance(obj[1], int) and isinstance(obj[2], int))


def _refs(obj: Any) -> list[list[Any]]:
    """Every tensor reference in a node, in order."""
    if _is_ref(obj):
        return [obj]
    if isinstance(obj, list):
        return [r for x in obj for r in _refs(x)]
    return []


def _remap(obj: Any, fn: Callable[[str, int, int], list[Any] | None]) -> Any:
    """``obj`` with every tensor reference ``fn`` knows replaced (kwargs kept, and remapped too)."""
    if _is_ref(obj):
        mapped = fn(obj[0], obj[1], obj[2])
        head = mapped if mapped is not None else obj[:3]
        return [*head, *[_remap(x, fn) for x in obj[3:]]]
    if isinstance(obj, list):
        return [_remap(x, fn) for x in obj]
    if isinstance(obj, dict):
        return {key: _remap(value, fn) for key, value in obj.items()}
    return obj


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate


def _check_same_outputs(model: Any, flat: Any) -> None:
    """The flat copy must compute what the nested model computes (random inputs, inference mode)."""
    rng = np.random.default_rng(0)
    shapes = model.input_shape if isinstance(model.input_shape, list) else [model.input_shape]
    x = [rng.standard_normal((2, *shape[1:])).astype(np.float32) for shape in shapes]
    x_in = x if len(x) > 1 else x[0]
    want = np.asarray(model(x_in, training=False))
    got = np.asarray(flat(x_in, training=False))
    if want.shape != got.shape or not np.allclose(want, got, rtol=1e-4, atol=1e-5):
        raise CannotFlatten(f"inlining the nested models of '{model.name}' changed its outputs; "
                            "compress it as a model without nested models")
