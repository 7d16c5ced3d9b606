"""What the export stage reads from a run: its splits, raw test split, data facts and models.

Kept apart from the stage so the run-directory layout an export depends on (data/splits.npz,
data/test_raw.*, model/ and variants/, the committed ONNX exports) is read in one place; the
one thing written here is ``reference.json``, the Keras model's answers that devices are
compared with.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.artifact import ARTIFACT_FILE
from edgeship.core.errors import DataError, RunError
from edgeship.core.fsutil import read_json, sha256_file, write_json_atomic
from edgeship.core.runstore import RunDir
from edgeship.export import get_format
from edgeship.training.keras_env import load_model

BASE = "base"
REFERENCE_FILE = "reference.json"  # exports/<variant>/: the Keras top-1, for on-device agreement


def model_path(run: RunDir, manifest: dict[str, Any], variant: str) -> Path:
    """The Keras model file of ``variant`` (``base``: the trained model), or a ``RunError``."""
    if variant == BASE:
        path = run.path / "model" / "model.keras"
        if not path.is_file():
            raise RunError(
                f"run {run.id} has no trained model (model/model.keras); train one with `edgeship train`"
            )
        return path
    entry = (manifest.get("variants") or {}).get(variant) or {}
    folder = entry.get("dir") or f"variants/{variant}"
    # QAT variants are saved as .h5: tf_keras cannot reload them from the native format.
    for name in dict.fromkeys([entry.get("model_file") or "model.keras", "model.keras", "model.h5"]):
        if (run.path / folder / name).is_file():
            return run.path / folder / name
    raise RunError(f"variant '{variant}' of run {run.id} has no model file in {folder}/; recreate it")


def onnx_export_file(run: RunDir, variant: str, quantize: str) -> Path | None:
    """The model file of the variant's passing ONNX export of ``quantize``, or None."""
    folder = run.path / "exports" / variant / get_format("onnx").dirname(quantize)
    meta_path = folder / ARTIFACT_FILE
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError):
        return None
    model = folder / str(meta.get("file", ""))
    passed = bool((meta.get("validation") or {}).get("passed"))
    return model if passed and model.is_file() and meta.get("format") == "onnx" else None


def load_splits(run: RunDir) -> dict[str, np.ndarray]:
    """data/splits.npz: float32 ``x_train``/``x_test``, ``y_test`` and ``y_train`` if saved."""
    path = run.path / "data" / "splits.npz"
    if not path.is_file():
        raise RunError(f"run {run.id} has no data/splits.npz; it was not trained by `edgeship train`")
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in ("x_train", "x_test", "y_test") if k not in npz.files]
        if missing:
            raise RunError(f"{path} lacks {', '.join(missing)}; retrain the run")
        data = {k: npz[k] for k in ("x_train", "x_test", "y_test")}
        if "y_train" in npz.files:  # stratifies the calibration rows
            data["y_train"] = npz["y_train"]
    data["x_train"] = data["x_train"].astype(np.float32, copy=False)
    data["x_test"] = data["x_test"].astype(np.float32, copy=False)
    if len(data["x_test"]) == 0:
        raise DataError(f"{path} has an empty test split; nothing to validate exports on")
    return data


def load_raw_test(run: RunDir) -> dict[str, Any] | None:
    """The test split before preprocessing (data/test_raw.npz or .csv), as the page takes it.

    ``{"x": images (N, H, W, C) float32 | rows (lists in preprocessing column order, numbers as
    float or None, categories as str), "y": int64 class indices, "source": relative path}``;
    None if the run has neither file.
    """
    data = run.manifest.get("data") or {}
    labels = [str(v) for v in data.get("labels") or []]
    npz = run.path / "data" / "test_raw.npz"
    if npz.is_file():
        with np.load(npz, allow_pickle=False) as f:
            return {"x": f["x"].astype(np.float32, copy=False), "y": f["y"].astype(np.int64),
                    "source": "data/test_raw.npz"}
    path = run.path / "data" / "test_raw.csv"
    if not path.is_file():
        return None
    columns = (data.get("preprocessing") or {}).get("columns") or []
    xs, ys = _read_raw_csv(path, columns, {label: i for i, label in enumerate(labels)})
    return {"x": xs, "y": np.asarray(ys, dtype=np.int64), "source": "data/test_raw.csv"}


def _read_raw_csv(path: Path, columns: list[dict[str, Any]],
                  index: dict[str, int]) -> tuple[list[list[Any]], list[int]]:
    """Rows of ``path`` in ``columns`` order (numeric as float, missing as None) and their
    class indices (``__label__`` looked up in ``index``)."""
    xs: list[list[Any]] = []
    ys: list[int] = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            values: list[Any] = []
            for col in columns:
                v = row.get(col["name"])
                if v is None or v == "":
                    values.append(None)
                elif col.get("type") == "numeric":
                    try:
                        values.append(float(v))
                    except ValueError:
                        values.append(None)
                else:
                    values.append(v)
            xs.append(values)
            label = row.get("__label__")
            if label not in index:
                raise RunError(f"{path} has label {label!r}, not one of the run's labels; retrain the run")
            ys.append(index[label])
    return xs, ys


def data_facts(run: RunDir, manifest: dict[str, Any]) -> tuple[list[str], dict[str, Any] | None, str | None]:
    """(labels, preprocessing spec, model name) from the run's manifest."""
    data = manifest.get("data")
    if not data or "labels" not in data:
        raise RunError(f"run {run.id} records no data.labels in its manifest; retrain it")
    return list(data["labels"]), data.get("preprocessing"), (manifest.get("model") or {}).get("name")


def load_keras(path: Path) -> Any:
    """A run's tf_keras model, loaded as compress saved it (``keras_env.load_model``: tfmot's QAT
    objects and tf_keras's application layers in scope); a one-line error if it cannot be."""
    try:
        return load_model(path)
    except (TypeError, ValueError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise RunError(f"{path} cannot be loaded as a tf_keras model ({reason})") from e


def is_qat(model: Any) -> bool:
    """Whether a loaded model has tfmot's Quantize layers (trained quantisation-aware)."""
    return any(type(layer).__name__.startswith("Quantize") for layer in getattr(model, "layers", []))


def check_input_shape(model: Any, x_test: np.ndarray, path: Path) -> None:
    want = tuple(model.inputs[0].shape[1:])
    have = tuple(x_test.shape[1:])
    if want != have:
        raise RunError(f"{path} takes inputs {want} but data/splits.npz holds {have}; retrain or recreate it")


def source_record(run: RunDir, model_file: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """artifact.json's ``source``: the Keras file it was built from and the data's hash."""
    return {"path": str(model_file.relative_to(run.path)), "sha256": sha256_file(model_file),
            "data_sha256": (manifest.get("data") or {}).get("sha256")}


def write_reference(path: Path, reference: np.ndarray, model_file: Path, run: RunDir) -> None:
    """The Keras model's top-1 on the test split: devices report their top-1 agreement with it."""
    write_json_atomic(path, {
        "top1": [int(i) for i in reference.argmax(axis=1)],
        "model": str(model_file.relative_to(run.path)),
        "test": "data/splits.npz x_test, in order (the rows of data/test_raw.*)",
    })
