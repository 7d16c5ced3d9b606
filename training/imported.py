"""Loading a model someone else trained, without running code it carries.

Keras rebuilds a model from a config that names, for every layer and every object a layer
holds (initializers, regularizers, activations, the optimizer...), a class and the Python
module to import it from. For ``.keras`` files Keras' own ``safe_mode`` only refuses pickled
lambdas, and for ``.h5`` files tf_keras ignores it; either way a config naming another module
makes Keras import it. So the config is read here first (``config.json`` inside the ``.keras``
zip, the ``model_config`` attribute of the HDF5 file) and every object in it is checked against
an allowlist before Keras sees the file:

- layer classes from ``tf_keras.layers``, and the models ``Sequential``/``Functional``/``Model``;
- the objects those layers and a compiled model hold, from tf_keras's own ``initializers``,
  ``regularizers``, ``constraints``, ``activations``, ``optimizers`` (and their schedules),
  ``losses``, ``metrics`` and ``mixed_precision.Policy``;
- tfmot's quantization wrappers and configs, which edgeship's own QAT variants (``model.h5``)
  hold; pruned and clustered variants are saved stripped, as stock layers;
- what tf_keras's own ``applications`` write: ConvNeXt's ``LayerScale`` and ``StochasticDepth``
  (from ``tf_keras.src.applications.convnext`` only), TensorFlow's own initializer classes
  (EfficientNetV2's ``tf.constant_initializer`` is ``Constant`` from
  ``tensorflow.python.ops.init_ops_v2``, which TensorFlow has already imported), and a
  ``TFOpLambda`` calling one of ``SAFE_TF_FUNCTIONS``: side-effect-free elementwise arithmetic
  and activations (MobileNetV3's and RegNet's ``x + 3``, ``x * (1 / 6)``; residual adds).

Refused: ``Lambda`` (Python code stored in the file), ``TFOpLambda`` of any other function and
``SlicingOpLambda`` (a TensorFlow function named in the file, what ``tf.math.sin(x)`` or
``x[:, :2]`` on a Keras tensor records), ``TensorFlowOpLayer`` (an arbitrary TensorFlow op), any
class registered as a custom object, subclassed models, and any module outside tf_keras (and
tfmot for its wrappers). A file Keras 3 wrote (``import keras``) is refused in one line that
says so: its config is another format, and tf_keras cannot rebuild it.
"""

from __future__ import annotations

import inspect
import json
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.errors import InputError
from edgeship.core.fsutil import sha256_file
from edgeship.training.keras_env import application_layers, keras, load_model, qat_objects

ARBITRARY_TF = "it runs arbitrary TensorFlow code"
REFUSED = {
    "Lambda": "it runs Python code stored in the file",
    "TFOpLambda": ARBITRARY_TF,
    "SlicingOpLambda": ARBITRARY_TF,
    "TensorFlowOpLayer": ARBITRARY_TF,
    "__lambda__": "it is Python code stored in the file",
}
# Plain data markers Keras' JSON uses for shapes, tuples and constants: nothing is imported.
DATA_MARKERS = {"TensorShape", "__tuple__", "__ellipsis__", "__tensor__", "__numpy__", "__bytes__"}
MODELS = {"Sequential", "Functional", "Model"}
# TFOpLambda functions (the API name tf_keras stores, looked up in TensorFlow's namespace, never
# imported): elementwise arithmetic and activations, no state, no I/O, no shape tricks.
SAFE_TF_FUNCTIONS = frozenset({
    "__operators__.add", "math.add", "math.subtract", "math.multiply", "math.truediv",
    "math.divide", "math.negative", "math.maximum", "math.minimum", "math.square", "math.sqrt",
    "math.rsqrt", "math.sigmoid", "math.tanh", "nn.relu", "nn.relu6", "nn.sigmoid", "nn.silu",
    "nn.swish", "nn.gelu",
})
# Layers tf_keras's applications define outside tf_keras.layers: (module, class).
APPLICATION_LAYERS = {
    ("tf_keras.src.applications.convnext", "LayerScale"),
    ("tf_keras.src.applications.convnext", "StochasticDepth"),
}
# TensorFlow's own initializer module (``tf.constant_initializer`` and friends), loaded with TF.
TF_INITIALIZER_MODULE = "tensorflow.python.ops.init_ops_v2"
# Public tf_keras layers left out: DenseFeatures rebuilds feature columns, which carry their own
# serialized functions.
LEFT_OUT_LAYERS = {"DenseFeatures"}
TFMOT_MODULE = "tensorflow_model_optimization."


def load_foreign_model(path: Path, input_shape: tuple[int, ...],
                       n_classes: int) -> tuple[Any, dict[str, Any]]:
    if not path.is_file():
        raise InputError(f"no such model file: {path}; check the path")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        _refuse_keras3(path, _h5_keras_version(path))
        check_config(_h5_config(path), path)
    elif suffix == ".keras":
        _refuse_keras3(path, _keras_zip_version(path))
        check_config(_keras_zip_config(path), path)
    else:
        raise InputError(f"{path.name} is not a Keras model: use a .keras (native) or .h5 file")
    try:
        with keras().utils.custom_object_scope(_application_layers()):  # .h5 names them bare
            model = load_model(path)
    except (ValueError, TypeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path.name} could not be loaded as a Keras model ({first[:200]})") from e
    got = tuple(model.input_shape[1:])
    if got != tuple(input_shape):
        raise InputError(f"{path.name} expects inputs of shape {got}, but the dataset gives "
                         f"{tuple(input_shape)}; pick the dataset the model was trained on")
    outputs = model.output_shape[-1]
    if outputs != n_classes:
        raise InputError(f"{path.name} has {outputs} outputs, but the dataset has {n_classes} classes")
    return model, {"file": str(path.resolve()), "sha256": sha256_file(path), "format": suffix[1:]}


def _refuse_keras3(path: Path, version: str | None) -> None:
    """A file Keras 3 wrote: say so, and how to save one edgeship reads, before any other check."""
    if version and version.split(".")[0].isdigit() and int(version.split(".")[0]) >= 3:
        raise InputError(
            f"{path.name} was saved by Keras 3 (keras {version[:20]}); edgeship reads Keras 2 "
            "(tf_keras) models: build and save it with `import tf_keras as keras` "
            "(or TF_USE_LEGACY_KERAS=1 and tf.keras), then model.save('model.keras')")


def check_config(config: Any, path: Path) -> None:
    """Refuse, in one line naming the layer and why, a config Keras could not rebuild from
    tf_keras's own classes alone. Nothing named in the config is imported."""
    if not isinstance(config, dict):
        raise InputError(f"{path.name} is not a Keras model (no model config inside)")
    problem = _first_problem(config, None)
    if problem:
        raise InputError(f"{path.name} refused: {problem}")


def _first_problem(node: Any, layer: str | None) -> str | None:
    if isinstance(node, list):
        for value in node:
            if problem := _first_problem(value, layer):
                return problem
        return None
    if not isinstance(node, dict):
        return None
    if "class_name" in node:
        inner = node.get("config")
        name = node.get("name") or (inner.get("name") if isinstance(inner, dict) else None)
        if isinstance(name, str) and node.get("class_name") not in DATA_MARKERS:
            layer = name
        if problem := _object_problem(node, layer):
            return problem
    for value in node.values():
        if problem := _first_problem(value, layer):
            return problem
    return None


def _object_problem(node: dict[str, Any], layer: str | None) -> str | None:
    cls, module, registered = node.get("class_name"), node.get("module"), node.get("registered_name")
    where = f"layer {layer!r}" if layer else "the model config"
    rebuild = "rebuild the model without it"
    if not isinstance(cls, str) or not isinstance(module, str | None):
        return f"{where} has a malformed class entry ({str(cls)[:60]!r}); it is not a file Keras wrote"
    if cls == "TFOpLambda" and _keras_module(module or "keras") and registered in (None, cls):
        fn = (node.get("config") or {}).get("function")
        if fn in SAFE_TF_FUNCTIONS:
            return None
        return (f"{where} is TFOpLambda calling tf.{str(fn)[:60]}: {ARBITRARY_TF}, and only "
                f"elementwise arithmetic and activations (tf.math.add, multiply, ...) are accepted; "
                f"{rebuild}")
    if cls in REFUSED:
        return f"{where} is {cls}: {REFUSED[cls]}; {rebuild}"
    if cls in DATA_MARKERS:
        return None
    allowed = _allowed()
    shown = f"{cls} from module {module!r}" if module else cls
    if cls == "function":
        fn = node.get("config")
        if module not in (None, "builtins") and not _keras_module(module):
            return (f"{where} names function {fn!r} from module {module!r}, outside tf_keras: loading it "
                    f"would import that module; {rebuild}")
        if fn not in allowed["functions"] or registered not in (None, "function", fn):
            return (f"{where} names function {str(fn)[:60]!r}, which is not one of tf_keras's "
                    f"activations, losses or metrics; {rebuild}")
        return None
    if (module, cls) in APPLICATION_LAYERS and registered in (None, cls):
        return None
    if module is None and cls in {c for _, c in APPLICATION_LAYERS}:  # .h5 names them bare:
        return None  # resolved only to the classes of APPLICATION_LAYERS (load_foreign_model)
    if module == TF_INITIALIZER_MODULE and cls in allowed["initializers"] and registered in (None, cls):
        return None
    if module is not None and not _keras_module(module) and not (
            cls in allowed["tfmot"] and module.startswith(TFMOT_MODULE)):
        return (f"{where} is {shown}, outside tf_keras: loading it would import and run that "
                f"module; only tf_keras's own layers are accepted, {rebuild}")
    if registered not in (None, cls):
        return (f"{where} is {cls}, registered as the custom object {str(registered)[:60]!r}: its "
                f"code is not part of tf_keras; {rebuild}")
    if cls not in allowed["classes"] and cls not in allowed["tfmot"]:
        return (f"{where} is {shown}, which is not a tf_keras layer (nor an initializer, "
                f"regularizer, optimizer, loss or metric of tf_keras); {rebuild}")
    return None


def _keras_module(module: str) -> bool:
    return module in ("keras", "tf_keras") or module.startswith(("keras.", "tf_keras."))


@cache
def _allowed() -> dict[str, frozenset[str]]:
    """Class and function names tf_keras itself exports, plus tfmot's QAT objects."""
    k = keras()

    def public(module: Any) -> dict[str, Any]:
        return {n: getattr(module, n) for n in dir(module) if not n.startswith("_")}

    layers = {n for n, obj in public(k.layers).items()
              if inspect.isclass(obj) and issubclass(obj, k.layers.Layer)}
    classes = (layers - set(REFUSED) - LEFT_OUT_LAYERS) | MODELS | {"Policy"}
    functions: set[str] = set()
    initializers = {n for n, obj in public(k.initializers).items() if inspect.isclass(obj)}
    for module in (k.initializers, k.regularizers, k.constraints, k.activations, k.optimizers,
                   k.optimizers.schedules, k.losses, k.metrics):
        for n, obj in public(module).items():
            if inspect.isclass(obj):
                classes.add(n)
            elif inspect.isfunction(obj) and n not in ("get", "serialize", "deserialize"):
                functions.add(n)
    return {"classes": frozenset(classes), "functions": frozenset(functions),
            "initializers": frozenset(initializers), "tfmot": frozenset(qat_objects())}


def _application_layers() -> dict[str, Any]:
    """APPLICATION_LAYERS as classes, for files (.h5) that name them without their module."""
    layers = application_layers()
    return {cls: layers[cls] for _, cls in APPLICATION_LAYERS}


def _keras_zip_config(path: Path) -> dict[str, Any] | None:
    try:
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError):
        return None


def _keras_zip_version(path: Path) -> str | None:
    """``keras_version`` from a .keras zip's metadata.json (None when absent or unreadable)."""
    try:
        with zipfile.ZipFile(path) as z:
            version = json.loads(z.read("metadata.json")).get("keras_version")
    except (zipfile.BadZipFile, KeyError, ValueError, AttributeError):
        return None
    return version if isinstance(version, str) else None


def _h5_keras_version(path: Path) -> str | None:
    """``keras_version`` from an HDF5 model file's attributes."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("keras_version")
    except OSError:
        return None
    version = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    return version if isinstance(version, str) else None


def _h5_config(path: Path) -> dict[str, Any] | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError:
        return None
    if raw is None:
        return None
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, AttributeError):
        return None


# A leading Rescaling this small, or a Normalization this wide, scales 0-255 pixels (1/255 and
# 1/127.5 in tf_keras's applications; ConvNeXt's ImageNet std of ~58 on that scale).
RAW_PIXEL_SCALE = 1 / 64
RAW_PIXEL_STD = 8.0


def rescales_own_inputs(model: Any) -> str | None:
    """The layer through which an image model scales raw 0-255 pixels itself, if it starts
    with one (before any layer with weights); else None.

    Stock applications built with ``include_preprocessing`` (MobileNetV3, EfficientNet and
    EfficientNetV2, ConvNeXt, RegNet) begin so. Fed standardised pixels (values of order one)
    they see 1/127.5 of their input range: pretrained ones answer at chance, and trained from
    scratch they barely learn (a 32x32 RegNetX002 reached 0.13 on the digits).
    """
    for layer in _leading_layers(model):
        kind = type(layer).__name__
        if kind == "Rescaling":
            if float(np.max(np.abs(np.asarray(layer.scale, float)))) <= RAW_PIXEL_SCALE:
                return str(layer.name)
        elif kind == "Normalization":
            variance = getattr(layer, "variance", None)
            if variance is not None and float(np.sqrt(np.mean(np.asarray(variance)))) >= RAW_PIXEL_STD:
                return str(layer.name)
        elif layer.weights:
            return None
    return None


def _leading_layers(model: Any) -> Any:
    """A model's layers in order, nested models opened in place."""
    for layer in model.layers:
        if hasattr(layer, "layers") and type(layer).__name__ in MODELS:
            yield from _leading_layers(layer)
        else:
            yield layer
