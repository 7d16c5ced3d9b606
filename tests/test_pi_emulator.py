"""The emulated Pi: an aarch64 Debian 12 userland under QEMU, with real aarch64 wheels.

The slow tests build the root filesystem once into the Pi cache (``$EDGESHIP_PI_CACHE``,
default ``~/.cache/edgeship/pi-rootfs``; about a minute) and reuse it afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeship.errors import MissingDependencyError
from edgeship.pi import RemoteCommandError, emulator, local_manifest

TFLITE = emulator.RUNTIME_REQUIREMENTS["tflite"]


def _emulation_missing() -> str | None:
    try:
        emulator.check_qemu()
    except MissingDependencyError as e:
        return str(e)
    if shutil.which("debootstrap") is None and not os.path.exists("/usr/sbin/debootstrap"):
        return "apt-get install debootstrap"
    if emulator.rootfs_info() is None and os.geteuid() != 0:
        return "building the root filesystem needs root"
    return None


needs_emulation = pytest.mark.skipif(
    _emulation_missing() is not None, reason=f"no emulated Pi here: {_emulation_missing()}"
)


# -- fast: no root filesystem needed --------------------------------------------------------


def test_old_qemu_is_refused_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "qemu-aarch64-static"
    fake.write_text("#!/bin/sh\necho 'qemu-aarch64 version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    emulator.check_qemu.cache_clear()
    try:
        with pytest.raises(MissingDependencyError) as e:
            emulator.check_qemu()
    finally:
        emulator.check_qemu.cache_clear()
    msg = str(e.value)
    assert "7.2" in msg and "apt-get install -t bookworm-backports qemu-user-static" in msg
    assert "\n" not in msg


def test_cache_dir_follows_env_and_missing_rootfs_says_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(emulator.ENV_CACHE, str(tmp_path / "pi"))
    assert emulator.cache_dir() == tmp_path / "pi"
    assert emulator.rootfs_dir().parent == tmp_path / "pi"
    with pytest.raises(emulator.EmulatorError, match="edgeship pi emulator setup"):
        emulator.require_rootfs()


def test_mirror_comes_from_env_or_apt_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(emulator.ENV_MIRROR, "http://mirror.example/debian")
    assert emulator.apt_mirror() == "http://mirror.example/debian"
    monkeypatch.delenv(emulator.ENV_MIRROR)
    try:
        url = emulator.apt_mirror()
    except emulator.EmulatorError as e:
        assert emulator.ENV_MIRROR in str(e)
    else:
        assert url.startswith(("http://", "https://"))


def test_install_wheels_unpacks_purelib(tmp_path: Path) -> None:
    whl = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("demo/__init__.py", "X = 1\n")
        z.writestr("demo-1.0.data/purelib/demo_extra.py", "Y = 2\n")
        z.writestr("demo-1.0.dist-info/METADATA", "Name: demo\n")
    site = emulator.install_wheels([whl], tmp_path / "site")
    assert (site / "demo" / "__init__.py").is_file()
    assert (site / "demo_extra.py").is_file()
    assert not list(site.glob("*.data"))
    emulator.install_wheels([whl], site)  # again: replaced, not merged or failed
    assert json.loads((site / "edgeship-site.json").read_text())["wheels"] == [whl.name]


# -- slow: the real emulated userland -------------------------------------------------------


@pytest.fixture(scope="module")
def rootfs() -> Path:
    return emulator.ensure_rootfs()


@pytest.fixture(scope="module")
def tflite_site(rootfs: Path) -> Path:
    return emulator.ensure_site(TFLITE)


@pytest.mark.slow
@needs_emulation
def test_rootfs_is_aarch64_python311_and_cached(rootfs: Path) -> None:
    info = emulator.rootfs_info(rootfs)
    assert info is not None and info["machine"] == "aarch64" and info["python"].startswith("3.11")
    assert emulator.ensure_rootfs() == rootfs  # stamped: no rebuild
    done = emulator.run(["python3", "-c", "import platform; print(platform.machine())"])
    assert done.stdout.strip() == "aarch64"
    with pytest.raises(RemoteCommandError, match=r"exit 3"):
        emulator.run(["python3", "-c", "import sys; sys.exit(3)"])
    with pytest.raises(RemoteCommandError, match="did not finish within 1 s"):
        emulator.run(["python3", "-c", "import time; time.sleep(30)"], timeout=1)


def _tiny_models(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A 2-layer tf_keras model as float32 and full-int8 .tflite, plus test inputs."""
    from training.keras_env import keras, tf

    k, t = keras(), tf()
    k.utils.set_random_seed(0)
    model = k.Sequential([
        k.layers.Input((6,)),
        k.layers.Dense(16, activation="relu"),
        k.layers.Dense(3, activation="softmax"),
    ])
    x = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
    conv = t.lite.TFLiteConverter.from_keras_model(model)
    fp32 = tmp_path / "tiny.tflite"
    fp32.write_bytes(conv.convert())
    conv = t.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [t.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x[i : i + 1]] for i in range(len(x)))
    conv.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = t.int8
    int8 = tmp_path / "tiny_int8.tflite"
    int8.write_bytes(conv.convert())
    return fp32, int8, x


# Runs unchanged on the host (x86_64) and in the emulated Pi (aarch64).
INFER = """
import platform, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
x = np.load(sys.argv[2])
it = Interpreter(model_path=sys.argv[1])
inp, out = it.get_input_details()[0], it.get_output_details()[0]
if inp["dtype"] == np.int8:
    s, z = inp["quantization"]
    x = np.clip(np.round(x / s + z), -128, 127).astype(np.int8)
it.resize_tensor_input(inp["index"], x.shape)
it.allocate_tensors()
it.set_tensor(inp["index"], x)
it.invoke()
np.save(sys.argv[3], it.get_tensor(out["index"]))
print(platform.machine())
"""


@pytest.mark.slow
@needs_emulation
@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning")
def test_litert_in_emulation_matches_host(tflite_site: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    fp32, int8, x = _tiny_models(tmp_path)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "infer.py"
    script.write_text(INFER)
    for model in (fp32, int8):
        host_out, emu_out = tmp_path / f"{model.stem}.host.npy", tmp_path / f"{model.stem}.emu.npy"
        host = subprocess.run(
            [sys.executable, str(script), str(model), str(tmp_path / "x.npy"), str(host_out)],
            capture_output=True, text=True, check=True,
        )
        emu = emulator.run(
            ["python3", str(script), str(model), str(tmp_path / "x.npy"), str(emu_out)],
            pythonpath=[tflite_site], timeout=600,
        )
        assert (host.stdout.strip(), emu.stdout.strip()) == ("x86_64", "aarch64")
        a, b = np.load(host_out), np.load(emu_out)
        assert a.dtype == b.dtype and a.shape == b.shape == (32, 3)
        if a.dtype == np.int8:
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # one quantisation step
        else:
            np.testing.assert_allclose(a, b, atol=1e-6)
        assert (a.argmax(1) == b.argmax(1)).all()


@pytest.mark.slow
@needs_emulation
def test_emulated_pi_deploy_steps_venv_pip_offline(rootfs: Path, tmp_path: Path) -> None:
    """The deploy's steps on the emulated device: sync, venv, offline pip, verify, run, fetch."""
    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    for whl in emulator.download_wheels(TFLITE).glob("*.whl"):
        shutil.copy2(whl, bundle / "wheels")
    (bundle / "requirements.txt").write_text("\n".join(TFLITE) + "\n")
    (bundle / "check.py").write_text(
        "import json, platform, numpy, ai_edge_litert\n"
        "json.dump({'machine': platform.machine(), 'numpy': numpy.__version__},"
        " open('result.json', 'w'))\n"
    )
    pi = emulator.EmulatedPi(home=tmp_path / "home")
    remote = "apps/demo one; $(touch PWNED)"
    first = pi.sync(bundle, remote)
    assert first.method == "copy" and len(first.sent) == sum(p.is_file() for p in bundle.rglob("*"))
    assert pi.sync(bundle, remote).sent == []

    # No ensurepip under emulation (it runs pip as a child process, which would escape
    # to the host): the venv is made without pip and Debian's pip wheel installs in-process.
    pi.run(["python3", "-m", "venv", "--without-pip", "venv"], cwd=remote)
    pi.run(["venv/bin/python", f"{pi.pip_wheel}/pip", "install", "--no-index", "--no-compile",
            "--find-links", "wheels", "-r", "requirements.txt"], cwd=remote, timeout=900)
    assert pi.sha256_manifest(remote)["check.py"] == local_manifest(bundle)["check.py"]
    pi.run(["venv/bin/python", "check.py"], cwd=remote)
    got = pi.fetch(f"{remote}/result.json", tmp_path / "back" / "result.json")
    assert json.loads(got.read_text())["machine"] == "aarch64"
    assert not list(tmp_path.rglob("PWNED"))
