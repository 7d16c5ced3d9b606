"""Reading ``artifact.json`` and checking the model file against it.

The artifact folder is all a device gets, so everything is checked here, before any runtime
touches the model file: a truncated or corrupted copy fails with a clear message instead of a
crash (or, worse, wrong answers) inside the runtime.

What the sha256 does not do: it sits in ``artifact.json`` beside the model file, so it catches
damage, not tampering; whoever can edit the model file can edit ``artifact.json`` too. A TVM
artifact is a shared library, native code that runs with this process's rights the moment it
is loaded, so run one only from a source you trust, and edge_runtime refuses one that others
could have replaced (see ``refuse_writable_native_code``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
from pathlib import Path
from typing import Any

from edge_runtime.errors import ArtifactError

ARTIFACT_FILE = "artifact.json"
SCHEMA_VERSION = 1
FORMATS = ("tflite", "onnx", "tvm")
NATIVE_FORMATS = ("tvm",)  # the model file is a shared library: loading it runs its code
_REQUIRED = ("schema_version", "format", "file", "sha256", "inputs", "outputs")


def artifact_dir(path: str | Path) -> Path:
    """An artifact folder from the folder itself or its artifact.json."""
    p = Path(path)
    if p.is_file() and p.name == ARTIFACT_FILE:
        return p.parent
    if not p.exists():
        raise ArtifactError(f"{p} does not exist; pass an export folder (one holding {ARTIFACT_FILE})")
    if not p.is_dir():
        raise ArtifactError(f"{p} is a file; pass the export folder that holds it and {ARTIFACT_FILE}")
    return p


def read_artifact(path: str | Path) -> dict[str, Any]:
    """Parse and sanity-check ``artifact.json`` in an artifact folder."""
    folder = artifact_dir(path)
    file = folder / ARTIFACT_FILE
    if not file.is_file():
        raise ArtifactError(
            f"{folder} has no {ARTIFACT_FILE}; pass an export folder "
            "(runs/<id>/exports/<variant>/<format>/) or re-export with `edgeship export`"
        )
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"{file} cannot be read as JSON ({e}); re-export the model") from e
    if not isinstance(meta, dict):
        raise ArtifactError(f"{file} is not a JSON object; re-export the model")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ArtifactError(f"{file} lacks {', '.join(missing)}; re-export the model")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise ArtifactError(
            f"{file} has schema_version {meta['schema_version']!r}, this edge_runtime reads "
            f"{SCHEMA_VERSION}; update edge_runtime or re-export"
        )
    if meta["format"] not in FORMATS:
        raise ArtifactError(
            f"{file} has format {meta['format']!r}; edge_runtime runs {', '.join(FORMATS)}"
        )
    if len(meta["inputs"]) != 1 or len(meta["outputs"]) != 1:
        raise ArtifactError(f"{file}: edge_runtime supports one input and one output per model")
    return meta


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_model_file(folder: Path, meta: dict[str, Any]) -> Path:
    """The model file's path, once its size and sha256 match artifact.json."""
    name = str(meta["file"])
    if Path(name).name != name:
        raise ArtifactError(f"artifact.json names file {name!r}; it must be a plain file name")
    model = folder / name
    if not model.is_file():
        raise ArtifactError(f"{model} is missing; copy the whole export folder, not only artifact.json")
    if meta["format"] in NATIVE_FORMATS:
        refuse_writable_native_code(folder, model)
    size = model.stat().st_size
    expected_size = meta.get("bytes")
    digest = sha256_file(model)
    if digest != meta["sha256"] or (expected_size is not None and size != expected_size):
        raise ArtifactError(
            f"{model} does not match artifact.json (sha256 {digest[:12]}... != "
            f"{str(meta['sha256'])[:12]}..., {size} bytes vs {expected_size}): the file was altered "
            "or truncated; copy it again or re-export"
        )
    return model


def refuse_writable_native_code(folder: Path, model: Path) -> None:
    """Refuse a shared-library artifact that a user other than its owner could have replaced.

    The file and its folder must not be writable by others (anyone on the machine) nor by their
    group: a group such as ``users`` or a shared project group lets every member swap the library
    for their own code, which then runs as whoever loads it (often the device's main user or a
    service). The one group write allowed is the owner's private group (named like the owner,
    with no other members: Debian and Ubuntu's default with umask 002), which adds nobody.
    The sha256 cannot stand in for this: whoever can replace the file can rewrite artifact.json.
    """
    if os.name != "posix":  # no POSIX mode bits to read
        return
    for path in (model, folder):
        st = path.stat()
        others = st.st_mode & stat.S_IWOTH
        group = st.st_mode & stat.S_IWGRP and not _owners_private_group(st)
        if others or group:
            who = "every user" if others else "its group"
            fix = f"chmod go-w {shlex.quote(str(folder))} {shlex.quote(str(model))}"
            raise ArtifactError(
                f"{path} is writable by {who}, and a TVM artifact is native code that runs when "
                f"loaded, so edge_runtime refuses it; if you trust where it came from, run `{fix}`"
            )


def _owners_private_group(st: os.stat_result) -> bool:
    try:
        import grp
        import pwd

        owner, group = pwd.getpwuid(st.st_uid), grp.getgrgid(st.st_gid)
    except (ImportError, KeyError):
        return False
    return (group.gr_name == owner.pw_name and owner.pw_gid == st.st_gid
            and set(group.gr_mem) <= {owner.pw_name})
