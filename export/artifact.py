"""Writing ``artifact.json`` (schema in docs/architecture.md), the one file a device reads.

Everything a device needs besides the model file goes here, copied out of the run: labels,
the preprocessing spec, the I/O spec with quantisation parameters, the runtime to install and
the validation results, so an export folder can be moved anywhere and still be used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.artifact import ARTIFACT_FILE, SCHEMA_VERSION
from edgeship.core import __version__
from edgeship.core.fsutil import sha256_file, write_json_atomic
from edgeship.core.runstore import now_iso
from edgeship.export import ExportedModel

# Written into every TVM artifact.json (``native_code``): the file is a shared library.
NATIVE_CODE_NOTE = (
    "This artifact is a shared library: loading it runs native code with the rights of whoever "
    "loads it, on this machine or a device. Run it only if you built it or trust where it came "
    "from. The sha256 in this file catches damage, not tampering (whoever can replace the "
    "library can edit this file too); edge_runtime refuses it when others can write its file "
    "or folder."
)


def io_entry(
    name: str, shape: Any, dtype: Any, quantization: tuple[float, int] | None = None
) -> dict[str, Any]:
    """One entry of ``inputs``/``outputs``: -1 for free dims, quantization only for integer dtypes."""
    dims = [int(d) if d is not None and int(d) >= 0 else -1 for d in shape]
    dt = np.dtype(dtype)
    quant = None
    if dt.kind in "iu" and quantization is not None:
        scale, zero = quantization
        quant = {"scale": float(scale), "zero_point": int(zero)}
    return {"name": str(name), "shape": dims, "dtype": dt.name, "quantization": quant}


def build_artifact(
    exported: ExportedModel,
    *,
    fmt: str,
    quantize: str,
    io: str | None,
    run_id: str,
    variant: str,
    model_name: str | None,
    labels: list[str],
    preprocessing: dict[str, Any] | None,
    source: dict[str, Any],
) -> dict[str, Any]:
    """The artifact.json dict, with the model file's sha256 and size; ``validation`` is filled later."""
    file = Path(exported.file)
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "format": fmt,
        "file": file.name,
        "sha256": sha256_file(file),
        "bytes": file.stat().st_size,
        "run_id": run_id,
        "variant": variant,
        "model": model_name,
        "quantize": quantize,
        "io": io,
        "target": exported.target,
        "inputs": exported.inputs,
        "outputs": exported.outputs,
        "output_kind": "probabilities",
        "labels": [str(label) for label in labels],
        "preprocessing": preprocessing,
        "runtime": exported.runtime,
        "validation": None,
        "source": source,
        "created": now_iso(),
        "edgeship_version": __version__,
    }
    if fmt == "tvm":
        meta["native_code"] = {"shared_library": True, "note": NATIVE_CODE_NOTE}
    for key, value in exported.extra.items():
        meta.setdefault(key, value)
    return meta


def write_artifact(folder: Path, meta: dict[str, Any]) -> Path:
    path = Path(folder) / ARTIFACT_FILE
    write_json_atomic(path, meta)
    return path
