"""The test split a device measures accuracy on, as one file that travels with the artifacts.

Images travel as ``.npz`` (``x``: raw inputs N x H x W x C, ``y``: class indices), read with
``allow_pickle=False``; table rows as ``.json`` (``{"x": [[value, ...], ...], "y": [...]}``, values
in the preprocessing spec's column order, null for missing), since rows mix numbers and text.
Both are raw inputs: the device applies the artifact's own preprocessing, as it would in use.
"""

from __future__ import annotations

import io
import json
import zipfile
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
        _savez_stable(path, {"x": x.astype(np.float32), "y": y, "source": np.asarray(source)})
    else:
        path = path.with_suffix(".json")
        path.write_text(json.dumps({"x": list(x), "y": y.tolist(), "source": source}), encoding="utf-8")
    return path


def _savez_stable(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` without the zip entries' timestamps: the same split gives the same bytes, so a
    redeploy sends nothing new."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def read_testset(path: str | Path) -> dict[str, Any]:
    """``{"x", "y", "source"}`` from a file ``write_testset`` made; one-line errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"test set {path} does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                data = {"x": f["x"].astype(np.float32), "y": f["y"].astype(np.int64),
                        "source": str(f["source"].reshape(-1)[0]) if "source" in f.files else path.name}
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
