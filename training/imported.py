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
  hold; pruned and clustered variants are saved stripped, as stock layers.

Refused: ``Lambda`` (Python code stored in the file), ``TFOpLambda`` and ``SlicingOpLambda``
(an arbitrary TensorFlow function named in the file, what ``tf.math.sin(x)`` on a Keras tensor
records), ``TensorFlowOpLayer`` (an arbitrary TensorFlow op), any class registered as a custom
object, subclassed models, and any module outside tf_keras (and tfmot for its wrappers).
"""

from __future__ import annotations

import inspect
import json
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

from edgeship.core.errors import InputError
from edgeship.core.fsutil import sha256_file
from edgeship.training.keras_env import custom_objects, keras, load_model

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
        check_config(_h5_config(path), path)
    elif suffix == ".keras":
        check_config(_keras_zip_config(path), path)
    else:
        raise InputError(f"{path.name} is not a Keras model: use a .keras (native) or .h5 file")
    try:
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
    for module in (k.initializers, k.regularizers, k.constraints, k.activations, k.optimizers,
                   k.optimizers.schedules, k.losses, k.metrics):
        for n, obj in public(module).items():
            if inspect.isclass(obj):
                classes.add(n)
            elif inspect.isfunction(obj) and n not in ("get", "serialize", "deserialize"):
                functions.add(n)
    return {"classes": frozenset(classes), "functions": frozenset(functions),
            "tfmot": frozenset(custom_objects())}


def _keras_zip_config(path: Path) -> dict[str, Any] | None:
    try:
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError):
        return None


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
