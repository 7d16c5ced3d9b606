"""The emulated Pi: an aarch64 Debian 12 userland under QEMU, with real aarch64 wheels.

The slow tests build the root filesystem once into the Pi cache (``$EDGESHIP_PI_CACHE``,
default ``~/.cache/edgeship/pi-rootfs``; about a minute) and reuse it afterwards. Only the
first-use tests build their own, into an empty temp cache, to show what a fresh machine does.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clihelp import assert_one_line_error, invoke

from edgeship.core.errors import MissingDependencyError
from edgeship.devices import cache, wheels
from edgeship.devices.deploy import open_device
from edgeship.devices.pi import RemoteCommandError, emulator, local_manifest, qemu
from edgeship.devices.pi import rootfs as rfs

TFLITE = wheels.RUNTIME_REQUIREMENTS["tflite"]


def _emulation_missing() -> str | None:
    try:
        qemu.check_qemu()
    except MissingDependencyError as e:
        return str(e)
    try:
        rfs.build_command()  # debootstrap, and fakeroot unless root
    except MissingDependencyError as e:
        return str(e) if rfs.rootfs_info() is None else None
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
    qemu.check_qemu.cache_clear()
    try:
        with pytest.raises(MissingDependencyError) as e:
            qemu.check_qemu()
    finally:
        qemu.check_qemu.cache_clear()
    msg = str(e.value)
    assert "7.2" in msg and "apt-get install -t bookworm-backports qemu-user-static" in msg
    assert "\n" not in msg


def test_cache_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.ENV_CACHE, str(tmp_path / "pi"))
    assert cache.cache_dir() == tmp_path / "pi"
    assert rfs.rootfs_dir().parent == tmp_path / "pi"
    assert rfs.rootfs_info() is None


@pytest.fixture()
def fresh_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty Pi cache, and a PATH of stand-in tools (QEMU 10, dpkg) with nothing else.

    Returns the PATH folder: a test adds debootstrap or fakeroot there with ``_tool``.
    """
    tools = tmp_path / "bin"
    tools.mkdir()
    _tool(tools, qemu.QEMU, "echo 'qemu-aarch64 version 10.0.2 (stand-in)'")
    _tool(tools, "dpkg")
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.setattr(rfs, "SBIN_DIRS", ())  # no /usr/sbin/debootstrap fallback
    monkeypatch.setenv(cache.ENV_CACHE, str(tmp_path / "pi"))
    qemu.check_qemu.cache_clear()
    yield tools
    qemu.check_qemu.cache_clear()


def _tool(folder: Path, name: str, body: str = "exit 0") -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize(("euid", "present", "install"), [
    (0, [], "apt-get install debootstrap"),
    (1000, ["debootstrap"], "apt-get install fakeroot"),
    (1000, [], "apt-get install debootstrap fakeroot"),
])
def test_first_use_without_the_tools_names_what_to_install(
    fresh_machine: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    euid: int, present: list[str], install: str,
) -> None:
    for name in present:
        _tool(fresh_machine, name)
    monkeypatch.setattr(rfs.os, "geteuid", lambda: euid)
    with pytest.raises(MissingDependencyError) as e:
        open_device(emulated=True)
    msg = str(e.value)
    assert msg.endswith(install) and "\n" not in msg, msg
    assert rfs.FIRST_USE not in capsys.readouterr().err  # no promise of a build first
    assert not rfs.rootfs_dir().exists()


def test_first_use_without_qemu_names_the_backports_package(fresh_machine: Path) -> None:
    (fresh_machine / qemu.QEMU).unlink()
    _tool(fresh_machine, "debootstrap")
    with pytest.raises(MissingDependencyError, match=f"not found: {qemu.QEMU_FIX}$"):
        emulator.EmulatedPi()


def test_cli_setup_without_debootstrap_is_one_line(fresh_machine: Path, tmp_path: Path) -> None:
    result = invoke(tmp_path / "runs", "pi", "emulator", "setup", "--runtime", "none")
    assert_one_line_error(result, "debootstrap", "apt-get install debootstrap")


def test_mirror_comes_from_env_or_apt_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each source gives one known answer: the variable, a deb822 stanza, a one-line list, none."""
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    monkeypatch.setenv(rfs.ENV_MIRROR, "http://mirror.example/debian")
    assert rfs.apt_mirror(apt) == "http://mirror.example/debian"
    monkeypatch.delenv(rfs.ENV_MIRROR)
    with pytest.raises(rfs.EmulatorError, match=rfs.ENV_MIRROR):  # no sources at all
        rfs.apt_mirror(apt)
    (apt / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64] http://list.example/debian bookworm main\n")
    assert rfs.apt_mirror(apt) == "http://list.example/debian"
    (apt / "sources.list.d/debian.sources").write_text(
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb\nURIs: http://other.example/debian\nSuites: trixie\n\n"
        "Types: deb\nURIs: http://deb822.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    assert rfs.apt_mirror(apt) == "http://deb822.example/debian"  # .sources come first


def test_install_wheels_unpacks_purelib(tmp_path: Path) -> None:
    whl = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("demo/__init__.py", "X = 1\n")
        z.writestr("demo-1.0.data/purelib/demo_extra.py", "Y = 2\n")
        z.writestr("demo-1.0.dist-info/METADATA", "Name: demo\n")
    site = wheels.install_wheels([whl], tmp_path / "site")
    assert (site / "demo" / "__init__.py").is_file()
    assert (site / "demo_extra.py").is_file()
    assert not list(site.glob("*.data"))
    wheels.install_wheels([whl], site)  # again: replaced, not merged or failed
    assert json.loads((site / "edgeship-site.json").read_text())["wheels"] == [whl.name]


# -- slow: the real emulated userland -------------------------------------------------------


@pytest.fixture(scope="module")
def rootfs() -> Path:
    return rfs.ensure_rootfs()


@pytest.fixture(scope="module")
def tflite_site(rootfs: Path) -> Path:
    return wheels.ensure_site(TFLITE)


@pytest.mark.slow
@needs_emulation
def test_rootfs_is_aarch64_python311_and_cached(rootfs: Path) -> None:
    info = rfs.rootfs_info(rootfs)
    assert info is not None and info["machine"] == "aarch64" and info["python"].startswith("3.11")
    assert rfs.ensure_rootfs() == rootfs  # stamped: no rebuild
    done = emulator.run(["python3", "-c", "import platform; print(platform.machine())"])
    assert done.stdout.strip() == "aarch64"
    with pytest.raises(RemoteCommandError, match=r"exit 3"):
        emulator.run(["python3", "-c", "import sys; sys.exit(3)"])
    with pytest.raises(RemoteCommandError, match="did not finish within 1 s"):
        emulator.run(["python3", "-c", "import time; time.sleep(30)"], timeout=1)


def _tiny_models(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A 2-layer tf_keras model as float32 and full-int8 .tflite, plus test inputs."""
    from edgeship.training.keras_env import keras, tf

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
    for whl in wheels.download_wheels(TFLITE).glob("*.whl"):
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


# -- slow: first use on a fresh machine (an empty cache: a real build of its own) ----------


class _Recorder:
    """A progress factory that keeps what it was told, in place of the terminal bar."""

    def __init__(self) -> None:
        self.bars: list[tuple[str, int | None]] = []
        self.updates: list[tuple[int, str]] = []

    @contextmanager
    def __call__(self, description: str, total: int | None) -> Iterator[Any]:
        self.bars.append((description, total))
        yield self

    def update(self, advance: int = 1, status: str = "") -> None:
        self.updates.append((advance, status))


def _first_use(recorder: _Recorder, capsys: pytest.CaptureFixture[str]) -> tuple[Any, float]:
    start = time.monotonic()
    pi = open_device(emulated=True, setup_progress=recorder)
    seconds = time.monotonic() - start
    assert rfs.FIRST_USE in capsys.readouterr().err
    assert recorder.bars == [("emulated Pi setup", rfs.ROOTFS_STEPS)]
    assert sum(a for a, _ in recorder.updates) == rfs.ROOTFS_STEPS
    assert "built in" in recorder.updates[-1][1]
    assert pi.rootfs == rfs.rootfs_dir() and pi.home.parent == cache.cache_dir()
    dev = pi.rootfs / "dev"  # no plain file may shadow the host's /dev/null, /dev/urandom
    assert not [p for p in dev.iterdir() if p.is_file() and not p.is_symlink()]
    done = pi.run(["python3", "-c", "import os, platform; print(platform.machine(), "
                   "len(open('/dev/urandom', 'rb').read(8)))"])
    assert done.stdout.split() == ["aarch64", "8"]
    again = _Recorder()
    open_device(emulated=True, setup_progress=again)  # set up: no bar, no message
    assert again.bars == [] and rfs.FIRST_USE not in capsys.readouterr().err
    return pi, seconds


@pytest.mark.slow
@needs_emulation
def test_first_use_sets_the_emulated_pi_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(cache.ENV_CACHE, str(tmp_path / "fresh"))
    pi, seconds = _first_use(_Recorder(), capsys)
    info = rfs.rootfs_info(pi.rootfs)
    assert info is not None and info["python"].startswith("3.11.")
    print(f"first-use setup: {seconds:.1f} s")


@pytest.mark.slow
@needs_emulation
@pytest.mark.skipif(shutil.which("fakeroot") is None, reason="apt-get install fakeroot")
def test_first_use_as_a_user_builds_under_fakeroot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a user without root gets: debootstrap under fakeroot, no fake device files."""
    monkeypatch.setenv(cache.ENV_CACHE, str(tmp_path / "fresh"))
    monkeypatch.setattr(rfs.os, "geteuid", lambda: 1000)
    assert rfs.build_command()[0] == shutil.which("fakeroot")
    _, seconds = _first_use(_Recorder(), capsys)
    print(f"first-use setup under fakeroot: {seconds:.1f} s")
