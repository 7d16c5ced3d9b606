"""The test split a device measures accuracy on, as one file that travels with the artifacts.

Images travel as ``.npz`` (``x``: raw inputs N x H x W x C, ``y``: class indices), read with
``allow_pickle=False``; table rows as ``.json`` (``{"x": [[value, ...], ...], "y": [...]}``, values
in the preprocessing spec's column order, null for missing), since rows mix numbers and text.
Both are raw inputs: the device applies the artifact's own preprocessing, as it would in use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import InputError

SUFFIXES = (".npz", ".json")


def write_testset(path: str | Path, x: Any, y: Any, source: str) -> Path:
    """Write a test split for ``read_testset``: ``.npz`` for an array, ``.json`` for rows."""
    path = Path(path)
    y = np.asarray(y, dtype=np.int64)
    if isinstance(x, np.ndarray) and x.dtype.kind in "fiu":
        path = path.with_suffix(".npz")
        np.savez(path, x=x.astype(np.float32), y=y, source=np.asarray(source))
    else:
        path = path.with_suffix(".json")
        path.write_text(json.dumps({"x": list(x), "y": y.tolist(), "source": source}), encoding="utf-8")
    return path


def read_testset(path: str | Path) -> dict[str, Any]:
    """``{"x", "y", "source"}`` from a file ``write_testset`` made; one-line errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"test set {path} does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                data = {"x": f["x"].astype(np.float32), "y": f["y"].astype(np.int64),
                        "source": str(f["source"]) if "source" in f.files else path.name}
        elif path.suffix == ".json":
            raw = json.loads(path.read_text(encoding="utf-8"))
            data = {"x": raw["x"], "y": np.asarray(raw["y"], dtype=np.int64),
                    "source": raw.get("source") or path.name}
        else:
            raise InputError(f"test set {path.name}: use {' or '.join(SUFFIXES)}")
    except (KeyError, ValueError, TypeError, OSError) as e:
        raise InputError(f"test set {path} is not readable ({e}); recreate it") from e
    if len(data["x"]) != len(data["y"]):
        raise InputError(f"test set {path} has {len(data['x'])} inputs but {len(data['y'])} labels")
    return data
