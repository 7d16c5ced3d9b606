"""A TVM artifact is a shared library: edge_runtime refuses one that others could have replaced."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

import edge_runtime.model as edge_model
from edge_runtime import EdgeModel
from edge_runtime.errors import ArtifactError

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


class Reached(Exception):
    """open_backend was called: the library would have been loaded."""


@pytest.fixture()
def tvm_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fabricated TVM artifact (a fake .so and a matching artifact.json), modes 0755/0644."""
    folder = tmp_path / "tvm-host"
    folder.mkdir()
    blob = b"\x7fELF not really a library"
    (folder / "model.so").write_bytes(blob)
    (folder / "artifact.json").write_text(json.dumps({
        "schema_version": 1, "format": "tvm", "file": "model.so",
        "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
        "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32", "quantization": None}],
        "outputs": [{"name": "y", "shape": [1, 2], "dtype": "float32", "quantization": None}],
    }))
    folder.chmod(0o755)
    (folder / "model.so").chmod(0o644)

    def reached(*args: object) -> None:
        raise Reached(args)

    monkeypatch.setattr(edge_model, "open_backend", reached)
    return folder


def test_a_tvm_artifact_with_safe_modes_reaches_the_runtime(tvm_folder: Path) -> None:
    with pytest.raises(Reached):
        EdgeModel.load(tvm_folder)


@pytest.mark.parametrize("target", ["file", "folder"])
def test_world_writable_tvm_artifact_is_refused_before_loading(tvm_folder: Path, target: str) -> None:
    path = tvm_folder / "model.so" if target == "file" else tvm_folder
    path.chmod(path.stat().st_mode | stat.S_IWOTH)
    with pytest.raises(ArtifactError) as e:
        EdgeModel.load(tvm_folder)  # not Reached: refused before the library is opened
    msg = str(e.value)
    assert "\n" not in msg and f"{path} is writable by every user" in msg
    assert "native code" in msg and f"chmod go-w {tvm_folder} {tvm_folder / 'model.so'}" in msg


@pytest.mark.allowed_skip(reason="a login in no group but its own cannot make the file group-owned")
def test_group_writable_tvm_artifact_is_refused_unless_the_group_is_the_owners_own(
        tvm_folder: Path) -> None:
    import grp
    import pwd

    so = tvm_folder / "model.so"
    so.chmod(0o664)
    owner = pwd.getpwuid(so.stat().st_uid)
    own = grp.getgrgid(so.stat().st_gid)
    if own.gr_name == owner.pw_name and owner.pw_gid == own.gr_gid and set(own.gr_mem) <= {owner.pw_name}:
        with pytest.raises(Reached):  # a private group (umask 002 on Debian/Ubuntu) adds nobody
            EdgeModel.load(tvm_folder)
    shared = [g for g in grp.getgrall() if g.gr_name != owner.pw_name]
    try:
        os.chown(so, -1, shared[0].gr_gid)
    except (PermissionError, IndexError):
        pytest.skip("cannot give the file to a shared group here")
    with pytest.raises(ArtifactError, match=r"model\.so is writable by its group.*chmod go-w"):
        EdgeModel.load(tvm_folder)


def test_tflite_and_onnx_files_are_data_not_code(tvm_folder: Path) -> None:
    """The check is for native code only: a world-writable .onnx still reaches its runtime (its
    sha256 still guards against damage)."""
    meta = json.loads((tvm_folder / "artifact.json").read_text())
    (tvm_folder / "artifact.json").write_text(json.dumps({**meta, "format": "onnx"}))
    (tvm_folder / "model.so").chmod(0o666)
    with pytest.raises(Reached):
        EdgeModel.load(tvm_folder)
