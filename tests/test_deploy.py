"""``edgeship deploy pi``: a real sshd on 127.0.0.1 as the device, and the emulated aarch64 Pi.

The costly parts are made once per module: one exported run (TFLite float32 + int8, and TVM
for rpi4 when TVM is installed), one venv on the sshd "device" and one on the emulated Pi.
The sshd device is this machine (x86_64), so it runs the TFLite artifacts; the aarch64 TVM
build is skipped there, as it would be on any non-aarch64 device.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sshd
from clihelp import assert_one_line_error, invoke, invoke_json

from edge_runtime.result import validate_result
from edgeship.benchmarks.harness import BenchSettings
from edgeship.core.errors import MissingDependencyError
from edgeship.core.runstore import RunDir
from edgeship.devices import wheels
from edgeship.devices.deploy import deploy, deploy_pi
from edgeship.devices.errors import PipInstallError, VerifyError
from edgeship.devices.pi import SyncResult, emulator
from edgeship.devices.pi.ssh import ChangedHostKeyError, SshTarget, UnknownHostKeyError

# A folder name that breaks any unquoted shell use: spaces, ; $() backticks, quotes, glob.
NASTY = "dev ice; $(touch PWNED) `touch PWNED2` 'q' \"d\" *"

needs_sshd = pytest.mark.skipif(sshd.available() is not None, reason=str(sshd.available()))


def _emulation_missing() -> str | None:
    try:
        emulator.check_qemu()
    except MissingDependencyError as e:
        return str(e)
    return None  # the root filesystem is set up on first use (as a user too, under fakeroot)


needs_emulation = pytest.mark.skipif(_emulation_missing() is not None, reason=str(_emulation_missing()))


# -- shared, module-scoped ------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(digits_run: RunDir, tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A copy of the digits run with TFLite float32/int8 and, if TVM is here, TVM for rpi4."""
    from edgeship.export.stage import ExportConfig, export_run

    dst = tmp_path_factory.mktemp("deploy-runs") / digits_run.path.name
    shutil.copytree(digits_run.path, dst)
    run = RunDir(dst)
    try:
        export_run(run, ExportConfig(formats=["tflite", "tvm"], targets=["rpi4"]))
    except MissingDependencyError:
        export_run(run, ExportConfig(formats=["tflite"]))
    return run


def _has_tvm_rpi4(run: RunDir) -> bool:
    return (run.path / "exports/base/tvm-rpi4/artifact.json").is_file()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.SshServer]:
    with sshd.running_sshd(tmp_path_factory.mktemp("sshd")) as s:
        yield s


def _ssh(server: sshd.SshServer, known_hosts: Path) -> dict[str, Any]:
    """deploy_pi's SSH options for the test server; never ~/.ssh/config."""
    return {"host": server.host, "port": server.port, "identity": server.client_key,
            "known_hosts": known_hosts, "ssh_config": Path(os.devnull)}


@pytest.fixture()
def trusted(server: sshd.SshServer, tmp_path: Path) -> dict[str, Any]:
    kh = tmp_path / "known_hosts"
    kh.write_text(server.known_hosts_line())
    return _ssh(server, kh)


def _deploy_stages(run: RunDir) -> int:
    return len(run.stages("deploy"))


def _no_pwned(*roots: Path) -> None:
    for root in roots:
        assert not list(root.rglob("PWNED*")), root
    assert not list(Path.home().glob("PWNED*"))


# -- a real sshd as the device ------------------------------------------------------------


@pytest.mark.slow
@needs_sshd
def test_ssh_deploy_verify_bench_and_resend_only_changes(
    exported: RunDir, trusted: dict[str, Any], tmp_path: Path
) -> None:
    remote = tmp_path / NASTY / "pi"  # sshd runs as us on this machine: remote == local disk
    first = deploy_pi(exported, quantize="float32", remote_dir=str(remote), **trusted)
    assert first.venv == "installed" and not first.emulated
    assert [a.rel for a in first.artifacts] == ["exports/base/tflite-float32"]
    sent = set(first.sync.sent)
    assert {"requirements.txt", "edgeship-bundle.json", "edge_runtime/timing.py",
            "artifacts/base/tflite-float32/model.tflite"} <= sent
    assert first.verified_files == len(sent)
    model = remote / "bundle/artifacts/base/tflite-float32/model.tflite"
    assert model.read_bytes() == (exported.path / "exports/base/tflite-float32/model.tflite").read_bytes()
    assert json.loads((remote / "venv/edgeship-venv.json").read_text())["requirements"]
    first_pair = _pair(remote)
    assert first.switch == "switched" and first_pair[0].startswith("bundle-")
    assert os.readlink(remote / "venv") == "bundle/venv"  # the bundle's own venv, through its link

    # Adding the int8 artifact sends it, its golden answers and the bundle's index, nothing else;
    # the venv stays.
    second = deploy_pi(exported, quantize="float32,int8", remote_dir=str(remote),
                       bench=BenchSettings(threads=(1,), runs=20, warmup=2), **trusted)
    assert sorted(second.sync.sent) == ["artifacts/base/tflite-int8/artifact.json",
                                        "artifacts/base/tflite-int8/model.tflite",
                                        "edgeship-bundle.json", "golden.json"]  # the test split is unchanged
    assert second.venv == "reused" and second.sync.deleted == []
    # A new bundle beside the first, switched to with the same venv; the first bundle is gone.
    assert _pair(remote)[0] != first_pair[0] and _pair(remote)[1] == first_pair[1]
    assert _folders(remote) == sorted(_pair(remote))
    assert len(second.results) == 2
    for r in second.results:
        assert validate_result(r) == []
        assert r["on"] == "pi" and r["device"]["emulated"] is False
        assert r["device"]["name"] == f"{trusted['host']}:{trusted['port']}"
        assert r["artifact"] in ("exports/base/tflite-float32", "exports/base/tflite-int8")
        assert r["accuracy_source"] == "device" and r["evaluation"]["samples"] > 0
    from edgeship.benchmarks.store import load_results

    stored = {Path(r["file"]).name for r in load_results(exported, strict=True)}
    assert {p.name for p in second.bench_files} <= stored
    did = second.results[0]["device_id"]
    assert did.startswith("pi-") and {r["device_id"] for r in second.results} == {did}
    assert {p.name for p in second.bench_files} == {f"{did}-base-tflite-float32-t1.json",
                                                    f"{did}-base-tflite-int8-t1.json"}
    assert exported.last_stage("bench")["params"]["label"].startswith("pi ")

    # Running there wrote no bytecode into the bundle: the same deploy sends nothing.
    third = deploy_pi(exported, quantize="float32,int8", remote_dir=str(remote), **trusted)
    assert third.sync.sent == [] and third.sync.deleted == [] and third.venv == "reused"
    assert third.switch == "unchanged" and _folders(remote) == sorted(_pair(remote))  # nothing left over
    assert _deploy_stages(exported) >= 3
    _no_pwned(tmp_path)


class _Tampering:
    """An SshTarget whose copy gets damaged on the device right after it arrives."""

    def __init__(self, inner: SshTarget, victim: str):
        self._inner, self._victim = inner, victim  # relative to the folder synced to

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def sync(self, local_dir: Path, remote_dir: str, *, delete: bool = True) -> SyncResult:
        result = self._inner.sync(local_dir, remote_dir, delete=delete)
        with open(Path(remote_dir) / self._victim, "ab") as f:
            f.write(b"\0")
        return result


@pytest.mark.slow
@needs_sshd
def test_damaged_copy_is_a_sha256_mismatch_before_anything_runs(
    exported: RunDir, trusted: dict[str, Any], tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    target = SshTarget(trusted["host"], port=trusted["port"], identity=trusted["identity"],
                       known_hosts=trusted["known_hosts"], ssh_config=trusted["ssh_config"])
    device = _Tampering(target, "artifacts/base/tflite-int8/model.tflite")
    before = _deploy_stages(exported)
    with pytest.raises(VerifyError) as e:
        deploy(exported, device, formats="tflite-int8", remote_dir=str(remote))  # type: ignore[arg-type]
    msg = str(e.value)
    assert "sha256 mismatch" in msg and "tflite-int8/model.tflite" in msg and "\n" not in msg
    assert not (remote / "venv").exists()  # verified before installing or running anything
    assert _folders(remote) == []  # and the damaged new bundle is removed
    assert _deploy_stages(exported) == before


def _pair(remote: Path) -> tuple[str, str]:
    """The bundle folder ``remote/bundle`` points at and the venv folder that bundle runs with."""
    bundle = os.readlink(remote / "bundle")
    return bundle, posixpath.basename(os.readlink(remote / bundle / "venv"))


def _folders(remote: Path) -> list[str]:
    """The bundle-* and venv-* folders on the device (in use, or left behind)."""
    return sorted(p.name for p in remote.iterdir() if p.name.startswith(("bundle-", "venv-")))


def _predict_there(trusted: dict[str, Any], remote: Path, artifact: str, x_file: Path) -> list[int]:
    """What the device's installed pair answers: ``../venv/bin/python -m edge_runtime predict``."""
    device = SshTarget(trusted["host"], port=trusted["port"], identity=trusted["identity"],
                       known_hosts=trusted["known_hosts"], ssh_config=trusted["ssh_config"])
    done = device.run(["../venv/bin/python", "-m", "edge_runtime", "predict", "--json", artifact,
                       str(x_file)], cwd=str(remote / "bundle"), timeout=300)
    return [int(p["index"]) for p in json.loads(done.stdout.strip().splitlines()[-1])["predictions"]]


def _host_top1(run: RunDir, artifact: str, x: np.ndarray) -> list[int]:
    from edge_runtime import EdgeModel

    return [int(i) for i in EdgeModel.load(run.path / "exports/base" / artifact).predict(x).indices]


@pytest.mark.slow
@needs_sshd
def test_failed_redeploy_keeps_the_old_bundle_and_venv_answering(
    exported: RunDir, trusted: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip fails on the device while a redeploy brings other artifacts: the old bundle and the old
    venv stay in use together, and the old artifacts still answer through them."""
    remote = tmp_path / "remote"
    first = deploy_pi(exported, format="tflite-int8", remote_dir=str(remote), **trusted)
    assert first.venv == "installed" and (remote / "bundle").is_symlink()
    in_use = _pair(remote)
    assert _folders(remote) == sorted(in_use)
    # The device's runtime is out of date (as after a requirements change): the redeploy reinstalls,
    stamp = remote / "venv/edgeship-venv.json"
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "requirements": ["older==1"]}))
    # offline, with real wheels for another CPU: pip on the device finds nothing it can install.
    aarch64 = wheels.download_wheels(first.requirements, arch="aarch64", python="3.11")
    monkeypatch.setattr(wheels, "download_wheels", lambda *a, **k: aarch64)
    before = _deploy_stages(exported)
    with pytest.raises(PipInstallError) as e:
        deploy_pi(exported, format="tflite-float32", remote_dir=str(remote), offline=True, **trusted)
    msg = str(e.value)
    assert "pip install on" in msg and "ai-edge-litert" in msg and "\n" not in msg
    assert _deploy_stages(exported) == before
    # The pair in use is the old one, and nothing of the new one is left (its bundle and venv).
    assert _pair(remote) == in_use and _folders(remote) == sorted(in_use)
    bundle = remote / "bundle"
    assert (bundle / "artifacts/base/tflite-int8/model.tflite").is_file()
    assert not (bundle / "artifacts/base/tflite-float32").exists()
    assert not (bundle / "wheels").exists()  # the new bundle's wheels went with it
    # The old artifacts still answer, through the old venv, as they did here.
    x = np.load(exported.path / "data/test_raw.npz")["x"][:5]
    np.save(remote / "digits.npy", x)
    got = _predict_there(trusted, remote, "artifacts/base/tflite-int8", remote / "digits.npy")
    assert got == _host_top1(exported, "tflite-int8", x)


@pytest.mark.slow
@needs_sshd
def test_new_artifacts_that_fail_their_golden_check_are_never_switched_to(
    exported: RunDir, trusted: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new bundle arrives and its venv imports, but an artifact does not give its recorded
    answers on the device: no switch, the new bundle is removed, the old pair still answers."""
    from edgeship.devices import bundle as bundle_mod
    from edgeship.devices.errors import GoldenCheckError

    remote = tmp_path / "remote"
    deploy_pi(exported, format="tflite-int8", remote_dir=str(remote), **trusted)
    in_use = _pair(remote)
    real = bundle_mod.golden_answers

    def wrong_answers(*args: Any) -> dict[str, Any]:  # recorded answers this artifact never gives
        golden = real(*args)
        for entry in golden["artifacts"].values():
            entry["top1"] = [(i + 1) % 10 for i in entry["top1"]]
        return golden

    monkeypatch.setattr(bundle_mod, "golden_answers", wrong_answers)
    with pytest.raises(GoldenCheckError) as e:
        deploy_pi(exported, format="tflite-float32", remote_dir=str(remote), **trusted)
    msg = str(e.value)
    assert "artifacts/base/tflite-float32 gives the recorded answer" in msg and "\n" not in msg
    assert "0 of 32 golden inputs" in msg and "previous bundle and runtime are kept" in msg
    assert _pair(remote) == in_use and _folders(remote) == sorted(in_use)
    monkeypatch.setattr(bundle_mod, "golden_answers", real)
    x = np.load(exported.path / "data/test_raw.npz")["x"][:5]
    np.save(remote / "digits.npy", x)
    got = _predict_there(trusted, remote, "artifacts/base/tflite-int8", remote / "digits.npy")
    assert got == _host_top1(exported, "tflite-int8", x)
    # The same deploy with the true answers passes the check and switches.
    dep = deploy_pi(exported, format="tflite-float32", remote_dir=str(remote), **trusted)
    assert dep.switch == "switched" and _pair(remote)[0] != in_use[0]
    assert _folders(remote) == sorted(_pair(remote))
    got = _predict_there(trusted, remote, "artifacts/base/tflite-float32", remote / "digits.npy")
    assert got == _host_top1(exported, "tflite-float32", x)


@pytest.mark.slow
@needs_sshd
@pytest.mark.parametrize("method", ["rsync", "manifest"])
def test_a_transfer_past_its_deadline_is_one_line(
    trusted: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Every transfer has a deadline from its size: here one so short that any copy misses it."""
    from edgeship.devices.pi import RemoteCommandError, ssh

    local = tmp_path / "bundle"
    local.mkdir()
    (local / "model.tflite").write_bytes(os.urandom(1 << 20))
    monkeypatch.setattr(ssh, "TRANSFER_BASE_S", 0.0)
    monkeypatch.setattr(ssh, "TRANSFER_MIN_RATE", 1 << 40)  # about 1 us for the whole MiB
    target = SshTarget(trusted["host"], port=trusted["port"], identity=trusted["identity"],
                       known_hosts=trusted["known_hosts"], ssh_config=trusted["ssh_config"])
    with pytest.raises(RemoteCommandError, match="did not finish within") as e:
        target.sync(local, str(tmp_path / "remote"), method=method)  # type: ignore[arg-type]
    assert "\n" not in str(e.value)


class _ChattySshd(sshd.SshServer):
    """A device whose login shell prints a banner before every command (as a noisy ~/.bashrc)."""

    def _write_config(self) -> None:
        super()._write_config()
        with open(self.config, "a", encoding="utf-8") as f:
            f.write('ForceCommand echo "Welcome to the Pi"; eval "$SSH_ORIGINAL_COMMAND"\n')


@pytest.mark.slow
@needs_sshd
def test_a_login_banner_does_not_break_the_deploy(exported: RunDir, tmp_path: Path) -> None:
    """JSON answers are read tolerantly and rsync, which a chatty shell breaks, falls back to tar."""
    (tmp_path / "sshd").mkdir()
    server = _ChattySshd(tmp_path / "sshd").start()
    try:
        kh = tmp_path / "known_hosts"
        kh.write_text(server.known_hosts_line())
        remote = tmp_path / "remote"
        target = SshTarget(server.host, port=server.port, identity=server.client_key, known_hosts=kh,
                           ssh_config=Path(os.devnull))
        assert "Welcome to the Pi" in target.run(["true"], timeout=60).stdout  # the banner is there
        dep = deploy(exported, target, formats="tflite-int8", remote_dir=str(remote))
        fetched = target.fetch(str(remote / "bundle/edgeship-bundle.json"), tmp_path / "fetched.json")
    finally:
        server.stop()
    assert fetched.read_bytes() == (remote / "bundle/edgeship-bundle.json").read_bytes()
    assert dep.sync.method == "manifest" and dep.verified_files == len(dep.sync.sent)
    assert (remote / "bundle/artifacts/base/tflite-int8/model.tflite").read_bytes() == (
        exported.path / "exports/base/tflite-int8/model.tflite").read_bytes()


@pytest.mark.slow
@needs_sshd
def test_unknown_and_changed_host_keys_are_refused(exported: RunDir, tmp_path: Path) -> None:
    before = _deploy_stages(exported)
    with sshd.running_sshd(tmp_path / "sshd") as server:
        kh = tmp_path / "known_hosts"
        with pytest.raises(UnknownHostKeyError, match="--accept-new-host-key"):
            deploy_pi(exported, remote_dir=str(tmp_path / "r"), **_ssh(server, kh))
        kh.write_text(server.known_hosts_line())
        server.rotate_host_key()
        for accept in (False, True):
            with pytest.raises(ChangedHostKeyError, match=r"CHANGED.*ssh-keygen .*-R"):
                deploy_pi(exported, remote_dir=str(tmp_path / "r"), accept_new_host_key=accept,
                          **_ssh(server, kh))
    assert not (tmp_path / "r").exists()
    assert _deploy_stages(exported) == before


@pytest.mark.slow
def test_cli_unreachable_host_and_bad_flags_are_one_line(exported: RunDir) -> None:
    runs = exported.path.parent
    result = invoke(runs, "deploy", "pi", exported.id, "--host", "root@127.0.0.1",
                    "--port", str(sshd.free_port()))
    assert_one_line_error(result, "cannot reach", "connect timeout 10 s")
    result = invoke(runs, "deploy", "pi", exported.id, "--emulated", "--host", "pi@pi")
    assert_one_line_error(result, "--emulated")
    result = invoke(runs, "deploy", "pi", exported.id)
    assert_one_line_error(result, "--host USER@HOST", "--emulated")
    result = invoke(runs, "deploy", "pi", exported.id, "--host", "pi@pi", "--format", "onnx-int8")
    assert_one_line_error(result, "onnx-int8")  # refused before any connection


# -- the emulated Pi: aarch64 Debian 12 with aarch64 wheels --------------------------------


@pytest.fixture(scope="module")
def emulated(exported: RunDir, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One emulated deploy of every Pi artifact (one offline venv), shared by the tests below."""
    base = tmp_path_factory.mktemp("emulated")
    pi = emulator.EmulatedPi(home=base / "home")
    remote = str(base / "pi dir; $(touch PWNED)")
    fmts = "tflite,tvm" if _has_tvm_rpi4(exported) else "tflite"
    dep = deploy(exported, pi, formats=fmts, remote_dir=remote)
    return {"pi": pi, "dep": dep, "remote": remote, "base": base}


PARITY = """
import json, os, sys
sys.path.insert(0, os.getcwd())  # the bundle: edge_runtime as shipped
import numpy as np
from edge_runtime import EdgeModel
x = np.load(sys.argv[1])["x"]
print(json.dumps({a: EdgeModel.load(a).predict(x).indices.tolist() for a in sys.argv[2:]}))
"""


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first emulated deploy: pip and the golden check under QEMU
@needs_emulation
def test_emulated_pi_gives_the_hosts_top1_on_the_test_split(
    exported: RunDir, emulated: dict[str, Any], tmp_path: Path
) -> None:
    from edge_runtime import EdgeModel

    pi, dep = emulated["pi"], emulated["dep"]
    assert dep.emulated and dep.offline and dep.venv == "installed"
    assert dep.device_info.machine == "aarch64" and dep.device_info.python.startswith("3.11")
    names = [posixpath.basename(a.remote) for a in dep.artifacts]
    assert {"tflite-float32", "tflite-int8"} <= set(names)
    assert ("tvm-rpi4" in names) == _has_tvm_rpi4(exported)
    # Shipping a TVM library is said plainly: it is native code.
    assert any("tvm-rpi4" in n and "native code" in n for n in dep.notes) == _has_tvm_rpi4(exported)
    script = tmp_path / "parity.py"
    script.write_text(PARITY)
    test = exported.path / "data/test_raw.npz"
    done = pi.run([dep.python, str(script), str(test), *(a.remote for a in dep.artifacts)],
                  cwd=dep.bundle_dir, env={"PYTHONDONTWRITEBYTECODE": "1"}, timeout=1200)
    on_pi = json.loads(done.stdout.strip().splitlines()[-1])
    raw = np.load(test)
    host = {n: EdgeModel.load(exported.path / "exports/base" / n).predict(raw["x"]).indices
            for n in ("tflite-float32", "tflite-int8")}
    for art in dep.artifacts:
        name = posixpath.basename(art.remote)
        got = np.asarray(on_pi[art.remote])
        # The aarch64 TVM library cannot run here: its reference is the same float model in TFLite.
        want = host.get(name, host["tflite-float32"])
        assert got.shape == (len(raw["y"]),)
        assert (got == want).all(), f"{name}: {(got != want).sum()} of {len(got)} top-1 differ"
    _no_pwned(emulated["base"])


@pytest.mark.slow
@needs_emulation
def test_cli_emulated_setup_then_deploy_and_bench(exported: RunDir, emulated: dict[str, Any]) -> None:
    runs = exported.path.parent
    setup = invoke_json(runs, "pi", "emulator", "setup")
    assert setup["reused"] is True and setup["machine"] == "aarch64"
    out = invoke_json(runs, "deploy", "pi", "latest", "--emulated", "--bench", "--format", "tflite",
                      "--quantize", "int8", "--runs", "10", "--warmup", "2",
                      "--remote-dir", emulated["remote"])
    assert out["emulated"] is True and out["venv"] == "reused"  # the shared venv holds TFLite
    # A new bundle index, requirements and golden answers; the model and the TFLite wheels are
    # there already.
    assert {p for p in out["sync"]["sent"] if not p.startswith("wheels/")} == {
        "edgeship-bundle.json", "requirements.txt", "golden.json"}
    assert out["switch"] == "switched"
    assert "artifacts/base/tflite-float32/model.tflite" in out["sync"]["deleted"]
    (r,) = out["results"]
    assert validate_result(r) == []
    assert r["on"] == "pi" and r["device"]["emulated"] is True and r["device"]["arch"] == "aarch64"
    assert any("not Raspberry Pi latency" in n for n in r["notes"])
    # Accuracy measured there, on the whole test split, through the runtime that was timed.
    n_test = len(np.load(exported.path / "data/test_raw.npz")["y"])
    assert r["accuracy_source"] == "device" and r["evaluation"]["samples"] == n_test
    assert r["top1_agreement"] is not None and r["top1_agreement"] >= 0.95
    assert r["rounds"] == 5 and r["p50_ci_ms"] is not None
    (path,) = out["bench_files"]
    assert r["device_id"].startswith("pi-emulated-")
    assert Path(path).name == f"{r['device_id']}-base-tflite-int8-t1.json"
    stored = json.loads(Path(path).read_text())
    assert stored["device"]["emulated"] is True and stored["label"] == "pi emulated"
    shown = invoke(runs, "deploy", "pi", "latest", "--emulated", "--format", "tflite-int8",
                   "--remote-dir", emulated["remote"])
    assert shown.exit_code == 0, shown.stderr
    assert "sent 0 file(s)" in shown.stdout and "emulated" in shown.stdout
