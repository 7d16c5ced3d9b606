"""The deploy's steps that need no device: the probe's answers, space, pip's errors, wheel hashes.

A scripted device stands in for the probe's one remote command; everything else is real
(files, hashes, the lock pip reads). The deploys themselves, to a real sshd and to the
emulated Pi, are in test_deploy.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgeship.devices import wheels
from edgeship.devices.errors import DeployError, DevicePythonError, NoSpaceError
from edgeship.devices.install import check_space, pip_error, runtime_modules
from edgeship.devices.probe import DeviceInfo, probe

# -- what the device reports: fast checks with a scripted device ----------------------------


class _Scripted:
    """A device whose one command (the probe) exits ``rc`` printing ``stdout``."""

    name = "pi@test"
    emulated = False
    board = None
    venv_args = ()

    def __init__(self, rc: int = 0, stdout: str = ""):
        self.rc, self.stdout = rc, stdout

    def run(self, argv: Any, **_kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(argv), self.rc, self.stdout, "")


def _probe_json(**over: Any) -> str:
    base = {"machine": "aarch64", "python": "3.11.2", "ensurepip": True, "board": None,
            "dir_state": "new", "free_bytes": 10**10, "venv_stamp": None, "error": None}
    return json.dumps({**base, **over})


def test_probe_names_the_package_to_install() -> None:
    cases = [
        (_Scripted(127), "no python3 on pi@test.*apt install python3 python3-venv"),
        (_Scripted(stdout=_probe_json(ensurepip=False)), "no venv support.*apt install python3-venv"),
        (_Scripted(stdout=_probe_json(python="3.7.3")), "Python 3.7.3.*3.10"),
        (_Scripted(stdout=_probe_json(dir_state="foreign")), "not made by edgeship.*--remote-dir"),
    ]
    for device, pattern in cases:
        with pytest.raises((DevicePythonError, DeployError), match=pattern):
            probe(device, "edgeship")  # type: ignore[arg-type]
    info = probe(_Scripted(stdout="INFO: noise\n" + _probe_json(board="Raspberry Pi 4 Model B Rev 1.5")),
                 "edgeship")  # type: ignore[arg-type]
    assert info.pi_model == "rpi4" and info.python_minor == "3.11"


def test_space_and_pip_errors_are_one_line(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "m.tflite").write_bytes(b"x" * 1000)
    info = DeviceInfo(machine="aarch64", python="3.11.2", ensurepip=True, board=None,
                      dir_state="new", free_bytes=50 * 2**20, venv_stamp=None)
    check_space("pi@test", "edgeship", info, bundle, ["ai-edge-litert==2.3.0"], None, install=False)
    with pytest.raises(NoSpaceError, match=r"no space left on pi@test: 50 MB free.*about 166 MB"):
        check_space("pi@test", "edgeship", info, bundle, ["ai-edge-litert==2.3.0"], None, install=True)
    done = subprocess.CompletedProcess(
        [], 1, "", "Looking in links: bundle/wheels\nERROR: Could not find a version that satisfies "
        "the requirement numpy\nERROR: No matching distribution found for numpy\n")
    assert str(pip_error(done, "pi@test", offline=True)).startswith(
        "pip install on pi@test failed: ERROR: No matching distribution found for numpy (")
    full = subprocess.CompletedProcess([], 1, "", "OSError: [Errno 28] No space left on device\n")
    assert isinstance(pip_error(full, "pi@test", offline=False), NoSpaceError)


def test_wheels_are_pinned_with_their_sha256(tmp_path: Path) -> None:
    files = {"numpy-2.2.6-cp311-cp311-manylinux_2_17_aarch64.whl": "a" * 64,
             "ai_edge_litert-2.3.0-cp311-cp311-manylinux_2_17_aarch64.whl": "b" * 64,
             "numpy-2.2.6-cp311-cp311-manylinux_2_28_aarch64.whl": "c" * 64}
    lock = wheels.hashed_requirements(files, ["ai-edge-litert==2.3.0", "numpy>=1.26,<3"])
    assert lock.splitlines() == [f"ai-edge-litert==2.3.0 --hash=sha256:{'b' * 64}",
                                 f"numpy==2.2.6 --hash=sha256:{'a' * 64} --hash=sha256:{'c' * 64}"]
    with pytest.raises(wheels.WheelsError, match="lack onnxruntime"):
        wheels.hashed_requirements(files, ["onnxruntime==1.32.0"])
    # A cached wheel that changed since its download is refused before it is shipped.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "numpy-2.2.6-cp311-cp311-linux_x86_64.whl").write_bytes(b"wheel")
    (cache / "wheels.json").write_text(json.dumps(
        {"files": {"numpy-2.2.6-cp311-cp311-linux_x86_64.whl": "0" * 64}}))
    with pytest.raises(wheels.WheelsError, match="does not match the sha256 recorded"):
        wheels.link_wheels(cache, tmp_path / "bundle-wheels", ["numpy"])


def test_runtime_modules_are_the_import_names() -> None:
    """What the new venv must import before the device switches to it."""
    assert runtime_modules(["numpy>=1.26,<3", "ai-edge-litert==2.3.0"]) == ["numpy", "ai_edge_litert"]
    assert runtime_modules(["apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post0",
                            "onnxruntime==1.32.0"]) == ["tvm", "tvm_ffi", "onnxruntime"]


def test_tvm_artifacts_say_they_are_native_code(tmp_path: Path) -> None:
    """artifact.json of a TVM build carries the note; the deploy prints one line per TVM artifact."""
    from types import SimpleNamespace

    from edgeship.devices.deploy import native_code_notes
    from edgeship.export import ExportedModel
    from edgeship.export.artifact import build_artifact

    lib = tmp_path / "model.so"
    lib.write_bytes(b"\x7fELF")
    common = {"quantize": "float32", "io": None, "run_id": "r", "variant": "base", "model_name": "cnn",
              "labels": ["a", "b"], "preprocessing": None, "source": {}}
    exported = ExportedModel(file=lib, runtime={"name": "apache-tvm"})
    meta = build_artifact(exported, fmt="tvm", **common)
    assert meta["native_code"]["shared_library"] is True
    assert "native code" in meta["native_code"]["note"] and "trust" in meta["native_code"]["note"]
    assert "not tampering" in meta["native_code"]["note"]
    assert "native_code" not in build_artifact(exported, fmt="tflite", **common)
    arts = [SimpleNamespace(rel="exports/base/tvm-rpi4", format="tvm"),
            SimpleNamespace(rel="exports/base/tflite-int8", format="tflite")]
    (note,) = native_code_notes(arts, "pi@pi")
    assert "exports/base/tvm-rpi4" in note and "native code" in note and "trust" in note


def test_switch_replaces_the_link_and_removes_only_old_installs(tmp_path: Path) -> None:
    """The device-side switch script, run by a real python3: a pre-link venv/ folder (an older
    edgeship's layout) and a previous install both go, the new one is what venv/ resolves to."""
    import sys

    from edgeship.devices.install import _SWITCH_PY, VENV, VENV_PREFIX

    (tmp_path / "venv/bin").mkdir(parents=True)  # an older deploy: a real folder
    (tmp_path / "bundle").mkdir()
    for name in ("venv-aaaa", "venv-bbbb"):
        (tmp_path / name / "bin").mkdir(parents=True)
        (tmp_path / name / "bin/python").write_text(name)

    def switch(new: str) -> None:
        subprocess.run([sys.executable, "-c", _SWITCH_PY, new, VENV, VENV_PREFIX], cwd=tmp_path, check=True)

    switch("venv-aaaa")
    assert (tmp_path / "venv").is_symlink() and (tmp_path / "venv/bin/python").read_text() == "venv-aaaa"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "venv", "venv-aaaa"]
    (tmp_path / "venv-cccc/bin").mkdir(parents=True)
    (tmp_path / "venv-cccc/bin/python").write_text("venv-cccc")
    switch("venv-cccc")
    assert (tmp_path / "venv/bin/python").read_text() == "venv-cccc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "venv", "venv-cccc"]


def test_a_new_pair_is_prepared_beside_the_old_and_switched_by_one_rename(tmp_path: Path) -> None:
    """The device-side scripts, run by a real python3 in a folder laid out as an older edgeship left
    it (bundle/ a folder, venv -> venv-aaaa): the new bundle is seeded with hard links (never the
    venv link), the switch makes bundle -> bundle-new and venv -> bundle/venv, and only then
    does the old pair go."""
    import os
    import sys

    from edgeship.devices.install import _PREPARE_PY, _SWITCH_PAIR_PY, BUNDLE, VENV, VENV_PREFIX

    def py(script: str, *args: str) -> str:
        return subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout

    (tmp_path / "bundle/artifacts/a").mkdir(parents=True)
    (tmp_path / "bundle/artifacts/a/model.tflite").write_bytes(b"old model")
    for name in ("venv-aaaa", "venv-bbbb"):
        (tmp_path / name / "bin").mkdir(parents=True)
        (tmp_path / name / "bin/python").write_text(name)
    (tmp_path / "venv").symlink_to("venv-aaaa")

    assert json.loads(py(_PREPARE_PY, "bundle-1111", BUNDLE, VENV, VENV_PREFIX)) == {"venv": "venv-aaaa"}
    seeded = tmp_path / "bundle-1111/artifacts/a/model.tflite"
    assert os.path.samefile(seeded, tmp_path / "bundle/artifacts/a/model.tflite")
    (tmp_path / "bundle-1111/venv").symlink_to("../venv-bbbb")  # the deploy's pair step
    py(_SWITCH_PAIR_PY, "bundle-1111", BUNDLE, VENV)
    assert os.readlink(tmp_path / "bundle") == "bundle-1111"
    assert os.readlink(tmp_path / "venv") == "bundle/venv"
    assert (tmp_path / "venv/bin/python").read_text() == "venv-bbbb"  # the pair's venv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "bundle-1111", "venv", "venv-bbbb"]

    # The next deploy: seeded from the bundle in use, without its venv link; an unfinished
    # bundle-* from an interrupted deploy is removed by the switch too.
    assert json.loads(py(_PREPARE_PY, "bundle-2222", BUNDLE, VENV, VENV_PREFIX)) == {"venv": "venv-bbbb"}
    assert not os.path.lexists(tmp_path / "bundle-2222/venv")
    assert (tmp_path / "bundle-2222/artifacts/a/model.tflite").read_bytes() == b"old model"
    (tmp_path / "bundle-3333").mkdir()
    (tmp_path / "bundle-2222/venv").symlink_to("../venv-bbbb")  # the venv is reused
    before = (tmp_path / "bundle/artifacts/a/model.tflite").stat().st_ino
    py(_SWITCH_PAIR_PY, "bundle-2222", BUNDLE, VENV)
    assert os.readlink(tmp_path / "bundle") == "bundle-2222"
    assert (tmp_path / "bundle/artifacts/a/model.tflite").stat().st_ino == before  # nothing recopied
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "bundle-2222", "venv", "venv-bbbb"]


def test_the_golden_answers_are_the_artifacts_own_and_the_keras_ones_for_another_cpu(
    tmp_path: Path,
) -> None:
    """golden.json: the artifact's own top-1 on the first rows when it runs here; the recorded Keras
    top-1 for a build this machine cannot run; only loading when there is no test split."""
    from types import SimpleNamespace

    import numpy as np

    from edge_runtime.testset import write_testset
    from edgeship.devices.bundle import GOLDEN_ROWS, DeployedArtifact, golden_answers

    run = SimpleNamespace(path=tmp_path / "run")
    (run.path / "exports/base").mkdir(parents=True)
    keras_top1 = [(i * 7) % 3 for i in range(50)]
    (run.path / "exports/base/reference.json").write_text(json.dumps({"top1": keras_top1}))
    testset = write_testset(tmp_path / "testset", np.zeros((50, 4), np.float32), np.zeros(50), "t")
    cross = SimpleNamespace(rel="exports/base/tvm-rpi4", variant="base", dir=tmp_path / "missing",
                            meta={"target": {"name": "rpi4", "arch": "not-this-cpu"}})
    sent = DeployedArtifact(rel=cross.rel, remote="artifacts/base/tvm-rpi4", variant="base", format="tvm",
                            quantize="float32", target="rpi4")
    golden = golden_answers(run, [cross], [sent], testset)  # type: ignore[arg-type]
    entry = golden["artifacts"]["artifacts/base/tvm-rpi4"]
    assert golden["rows"] == GOLDEN_ROWS and golden["testset"] == testset.name
    assert entry["top1"] == keras_top1[:GOLDEN_ROWS] and "reference.json" in entry["source"]
    assert golden_answers(run, [cross], [sent], None)["artifacts"][sent.remote]["top1"] is None  # type: ignore[arg-type]
