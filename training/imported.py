"""Loading a model someone else trained, without running code it carries.

A ``.keras`` file loads in Keras' safe mode, which refuses serialized Python (Lambda layers).
An HDF5 file has no safe mode, so its config is read first and any Lambda refused before
Keras sees it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from edgeship.core.errors import InputError
from edgeship.core.fsutil import sha256_file
from edgeship.training.keras_env import load_model

UNSAFE_LAYERS = {"Lambda"}


def load_foreign_model(path: Path, input_shape: tuple[int, ...],
                       n_classes: int) -> tuple[Any, dict[str, Any]]:
    if not path.is_file():
        raise InputError(f"no such model file: {path}; check the path")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        _refuse_unsafe(_h5_config(path), path)
    elif suffix == ".keras":
        _refuse_unsafe(_keras_zip_config(path), path)
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


def _refuse_unsafe(config: dict[str, Any] | None, path: Path) -> None:
    if config is None:
        raise InputError(f"{path.name} is not a Keras model (no model config inside)")
    found = sorted(_class_names(config) & UNSAFE_LAYERS)
    if found:
        raise InputError(f"{path.name} refused: it holds a {found[0]} layer, whose Python code would run "
                         "on load; rebuild the model without Lambda layers")


def _class_names(node: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("class_name"), str):
            names.add(node["class_name"])
        for value in node.values():
            names |= _class_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= _class_names(value)
    return names


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
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
