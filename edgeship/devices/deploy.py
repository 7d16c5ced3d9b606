"""Deploy exported models to a Raspberry Pi (or the emulated one), and benchmark them there.

One code path for both kinds of device (``edgeship.devices.pi.Device``: ``SshTarget`` or ``EmulatedPi``):

1. probe: one ``python3`` call on the device reports its CPU, Python, venv support, free space
   and the remote folder's state (created and marked on first use; a foreign non-empty folder
   is refused, so a typo in ``--remote-dir`` never deletes anyone's files);
2. pack: a local bundle -- the artifact folders, the ``edge_runtime`` sources, a
   ``requirements.txt`` for the formats (pins from PLATFORM.md) and, offline, the wheels for the
   device's CPU and Python. Identical inputs give byte-identical files, so a re-deploy sends
   only what changed;
3. sync: ``device.sync(bundle, DIR/bundle)`` (rsync --checksum, or sha256 manifests + tar);
4. verify: the sha256 of every bundle file, computed on the device, against the local ones;
5. install: a venv in ``DIR/venv``, reused while its stamp says it holds the requirements,
   else rebuilt; the stamp is written last and the venv is removed if any step fails, so a
   half-installed venv is never used;
6. bench (optional): ``venv/bin/python -m edge_runtime bench ART --json --on pi``, one fresh
   process per artifact and thread count (as the host driver does), results stored with
   ``benchmarks.store.save_results``. The emulated Pi's results carry ``device.emulated: true``
   and a note: QEMU timings are not Pi latency.

Remote layout (``DIR`` defaults to ``~/edgeship``)::

    DIR/.edgeship-deploy    marker: edgeship manages this folder
    DIR/bundle/             what the last deploy sent (files not in the bundle are deleted)
    DIR/venv/               the runtime; venv/edgeship-venv.json marks a complete install

Every remote argument is a separate, quoted word (``SshTarget.run``); the remote folder may
hold spaces or shell metacharacters.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgeship.core.errors import EdgeshipError, InputError, RunError
from edgeship.core.fsutil import read_json
from edgeship.core.names import split_names
from edgeship.core.runstore import RunDir
from edgeship.devices.pi import (
    Device,
    RemoteCommandError,
    SyncResult,
    command_failed,
    last_line,
    local_manifest,
    remote_path,
)

DEFAULT_REMOTE_DIR = "edgeship"
MARKER = ".edgeship-deploy"
VENV_STAMP = "edgeship-venv.json"
BUNDLE_INFO = "edgeship-bundle.json"
PI_FORMATS = ("tflite", "onnx", "tvm")
MIN_PYTHON = (3, 10)  # edge_runtime uses X | Y in isinstance
PROBE_TIMEOUT_S = 180.0
INSTALL_TIMEOUT_S = 1800.0
BENCH_TIMEOUT_S = 1200.0  # `import tvm` alone takes 20-60 s under QEMU
BENCH_CONFIG_TIMEOUT_S = 120.0  # and each (artifact, threads) per round, emulated
# Rough installed size of each runtime with numpy, for the free-space check before pip runs.
VENV_MB = {"tflite": 150, "onnx": 150, "tvm": 350}
WHEEL_UNPACK_FACTOR = 3.5  # installed size / wheel size, measured for LiteRT + TVM + numpy
EMULATED_NOTE = ("emulated: aarch64 Debian 12 under QEMU user-mode emulation on another CPU; "
                 "not Raspberry Pi latency")

Log = Callable[[str], None]


class DeployError(EdgeshipError):
    """A deploy step failed on the device; the message says what to do."""


class DevicePythonError(DeployError):
    """The device has no usable python3 or no venv support."""


class NoSpaceError(DeployError):
    """The device's disk is too full for the bundle or the venv."""


class PipInstallError(DeployError):
    """pip could not install the runtime's requirements on the device."""


class VerifyError(DeployError):
    """A bundle file on the device does not have the sha256 that was sent."""


class Progress(Protocol):
    """What deploy reports to (``edgeship.core.console.progress`` yields one)."""

    def update(self, advance: int = 1, status: str = "") -> None: ...


# -- what the device is --------------------------------------------------------------------

# Runs with the device's python3, standard library only. Creates and marks the remote folder
# when it is new, empty or already ours; never touches a foreign one.
_PROBE_PY = r"""
import json, os, platform, shutil, sys
d = sys.argv[1]
out = {"machine": platform.machine(), "python": platform.python_version(),
       "executable": sys.executable, "board": None, "error": None, "free_bytes": None,
       "venv_stamp": None}
try:
    import ensurepip  # Debian ships it in python3-venv
    out["ensurepip"] = True
except ImportError:
    out["ensurepip"] = False
try:
    with open("/proc/device-tree/model", "rb") as f:
        out["board"] = f.read().decode(errors="replace").strip("\0\n ")
except OSError:
    pass
marker = os.path.join(d, sys.argv[2])
if os.path.isdir(d):
    state = "ours" if os.path.exists(marker) else ("foreign" if os.listdir(d) else "empty")
else:
    state = "file" if os.path.lexists(d) else "new"
out["dir_state"] = state
if state in ("new", "empty", "ours"):
    try:
        os.makedirs(d, exist_ok=True)
        with open(marker, "w") as f:
            f.write("Managed by edgeship deploy: bundle/ is replaced by each deploy, "
                    "venv/ is rebuilt when the requirements change.\n")
    except OSError as e:
        out["error"] = "%s: %s" % (e.strerror or e, e.filename or d)
if os.path.isdir(d):
    out["free_bytes"] = shutil.disk_usage(d).free
    stamp = os.path.join(d, "venv", sys.argv[3])
    if os.path.exists(os.path.join(d, "venv", "bin", "python")):
        try:
            with open(stamp) as f:
                out["venv_stamp"] = json.load(f)
        except (OSError, ValueError):
            pass
print(json.dumps(out))
"""

_STAMP_PY = """\
import os, sys
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    f.write(sys.argv[2])
os.replace(tmp, sys.argv[1])
"""


@dataclass(frozen=True)
class DeviceInfo:
    """What the probe found on the device."""

    machine: str
    python: str
    ensurepip: bool
    board: str | None
    dir_state: str  # new | empty | ours | foreign | file
    free_bytes: int | None
    venv_stamp: dict[str, Any] | None

    @property
    def python_minor(self) -> str:
        return ".".join(self.python.split(".")[:2])

    @property
    def pi_model(self) -> str | None:
        """``rpi4`` / ``rpi5`` from the board name (Pi 400 and CM4 count as rpi4), else None."""
        m = re.search(r"raspberry pi (?:compute module )?(\d)", (self.board or "").lower())
        return {"4": "rpi4", "5": "rpi5"}.get(m[1]) if m else None


def probe(device: Device, remote_dir: str) -> DeviceInfo:
    """Check the device can take a deploy into ``remote_dir`` (created and marked if new)."""
    rdir = remote_path(remote_dir)
    argv = ["python3", "-c", _PROBE_PY, rdir, MARKER, VENV_STAMP]
    try:
        done = device.run(argv, check=False, timeout=PROBE_TIMEOUT_S)
    except RemoteCommandError as e:
        if e.returncode != 127:
            raise
        done = None
    if done is None or done.returncode == 127:
        raise DevicePythonError(
            f"no python3 on {device.name}: install it there with "
            "`sudo apt install python3 python3-venv`"
        )
    if done.returncode != 0:
        raise command_failed(["python3", "-c", "<probe>"], done, device.name)
    data = _json_line(done.stdout, f"the probe on {device.name}")
    # QEMU user mode has no device tree: the emulated Pi says which Pi its CPU stands for.
    board = data.get("board") or getattr(device, "board", None)
    info = DeviceInfo(
        machine=data["machine"], python=data["python"], ensurepip=bool(data["ensurepip"]),
        board=board, dir_state=data["dir_state"], free_bytes=data.get("free_bytes"),
        venv_stamp=data.get("venv_stamp"),
    )
    version = tuple(int(p) for p in info.python.split(".")[:2])
    if version < MIN_PYTHON:
        raise DevicePythonError(
            f"{device.name} has Python {info.python}; edge_runtime needs "
            f"{'.'.join(map(str, MIN_PYTHON))}+ (Raspberry Pi OS Bookworm has 3.11): upgrade the OS"
        )
    if not info.ensurepip and not device.emulated:
        raise DevicePythonError(
            f"no venv support on {device.name} (Python's ensurepip is missing): install it there "
            "with `sudo apt install python3-venv`"
        )
    if info.dir_state == "foreign":
        raise DeployError(
            f"{device.name}:{rdir} exists, is not empty and was not made by edgeship: pass "
            "another --remote-dir (edgeship deletes files it did not send in its own folder)"
        )
    if info.dir_state == "file":
        raise DeployError(f"{device.name}:{rdir} is a file: pass another --remote-dir")
    if data.get("error"):
        if "No space left" in data["error"]:
            raise NoSpaceError(f"no space left on {device.name} to create {rdir}: free some space there")
        raise DeployError(f"cannot create {rdir} on {device.name} ({data['error']}): "
                          "pass another --remote-dir")
    return info


# -- choosing what to ship -----------------------------------------------------------------


@dataclass(frozen=True)
class DeployedArtifact:
    """One artifact in the bundle: ``rel`` in the run, ``remote`` relative to the bundle."""

    rel: str  # exports/<variant>/<name>
    remote: str  # artifacts/<variant>/<name>
    variant: str
    format: str
    quantize: str | None
    target: str | None


def select_artifacts(
    run: RunDir,
    variants: str | Sequence[str] = "base",
    formats: str | Sequence[str] = "tflite",
    quantize: str | Sequence[str] | None = None,
    *,
    log: Log | None = None,
) -> list[Any]:
    """Passing exports of ``run`` a Pi can run, by variant, format (or folder) and quantization.

    The CPU check comes later (``for_device``): only the device says what it is.
    """
    from edgeship.benchmarks.harness import select_artifacts as select

    found = select(run, variants, formats, runnable_here=False, allowed_formats=PI_FORMATS, log=log)
    wanted = split_names(quantize)
    if not wanted:
        return found
    kept = [a for a in found if str(a.meta.get("quantize")) in wanted]
    if not kept:
        have = sorted({str(a.meta.get("quantize")) for a in found})
        raise InputError(f"no selected export is quantized {', '.join(wanted)}; "
                         f"these are: {', '.join(have)}")
    return kept


def for_device(
    artifacts: Sequence[Any], info: DeviceInfo, device_name: str, run_id: str, *, log: Log | None = None
) -> list[Any]:
    """Drop builds for another CPU (x86 TVM) or another Pi (an rpi5 TVM build on a Pi 4)."""
    say = log or (lambda _m: None)
    kept = []
    for art in artifacts:
        target = art.meta.get("target") or {}
        arch = target.get("arch")
        if arch not in (None, "any", info.machine):
            say(f"skipping {art.rel}: built for {arch}, {device_name} is {info.machine}")
            continue
        name = target.get("name")
        if info.pi_model and name in ("rpi4", "rpi5") and name != info.pi_model:
            say(f"skipping {art.rel}: built for {name}, {device_name} is a {info.board}")
            continue
        kept.append(art)
    if not kept:
        hint = "rpi5" if info.pi_model == "rpi5" else "rpi4"
        raise RunError(
            f"none of the selected exports runs on {device_name} ({info.machine}): deploy TFLite, "
            f"or build TVM for it with `edgeship export {run_id} --format tvm --target {hint}`"
        )
    return kept


def requirements_for(formats: Sequence[str]) -> list[str]:
    """The device requirements for these formats: ``edge_runtime/requirements-<fmt>.txt``, merged."""
    import edge_runtime

    folder = Path(edge_runtime.__file__).parent
    out: list[str] = []
    for fmt in dict.fromkeys(formats):
        path = folder / f"requirements-{fmt}.txt"
        if not path.is_file():
            raise InputError(f"no device requirements for format {fmt!r} ({path} is missing)")
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line and line not in out:
                out.append(line)
    return out


# -- the bundle ----------------------------------------------------------------------------


def pack_bundle(
    run: RunDir,
    artifacts: Sequence[Any],
    dest: Path,
    *,
    requirements: Sequence[str],
    wheels: Path | None = None,
) -> list[DeployedArtifact]:
    """Write the bundle folder ``dest`` (see the module docstring); returns what it holds.

    No timestamps anywhere: the same run, artifacts and wheels give the same bytes.
    """
    import edge_runtime

    dest.mkdir(parents=True, exist_ok=False)
    src = Path(edge_runtime.__file__).parent
    (dest / "edge_runtime").mkdir()
    for f in sorted(src.iterdir()):
        if f.is_file() and (f.suffix == ".py" or re.fullmatch(r"requirements-\w+\.txt", f.name)):
            shutil.copyfile(f, dest / "edge_runtime" / f.name)
    shipped: list[DeployedArtifact] = []
    for art in artifacts:
        remote = f"artifacts/{art.variant}/{art.dir.name}"
        for f in sorted(art.dir.rglob("*")):
            if f.is_file():
                target = dest / remote / f.relative_to(art.dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
        target_name = (art.meta.get("target") or {}).get("name")
        shipped.append(DeployedArtifact(rel=art.rel, remote=remote, variant=art.variant,
                                        format=art.format, quantize=art.meta.get("quantize"),
                                        target=target_name))
    from edgeship.benchmarks.evaluation import write_run_testset

    testset = write_run_testset(run, dest)  # accuracy is measured on the device, on this split
    header = f"# edge_runtime on the device: {', '.join(sorted({a.format for a in shipped}))}\n"
    (dest / "requirements.txt").write_text(header + "\n".join(requirements) + "\n", encoding="utf-8")
    wheel_names: list[str] = []
    if wheels is not None:
        (dest / "wheels").mkdir()
        wheel_names = sorted(read_json(wheels / "wheels.json")["files"])
        for name in wheel_names:
            _link_or_copy(wheels / name, dest / "wheels" / name)
    info = {
        "schema_version": 1,
        "run_id": run.id,
        "artifacts": [asdict(a) for a in shipped],
        "requirements": list(requirements),
        "wheels": wheel_names,
        "testset": None if testset is None else testset.name,
        "edge_runtime_version": getattr(edge_runtime, "__version__", None),
        "run": ("cd bundle && PYTHONDONTWRITEBYTECODE=1 ../venv/bin/python -m edge_runtime "
                "bench ARTIFACT"),
    }
    (dest / BUNDLE_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return shipped


def _link_or_copy(src: Path, dst: Path) -> None:
    """Wheels are large and immutable in the cache: a hard link costs nothing."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# -- the deploy ----------------------------------------------------------------------------


@dataclass
class Deployment:
    """What a deploy did, and where things are on the device."""

    run_id: str
    device: str
    emulated: bool
    remote_dir: str
    artifacts: list[DeployedArtifact]
    requirements: list[str]
    offline: bool
    sync: SyncResult
    verified_files: int
    venv: str  # "installed" | "reused"
    device_info: DeviceInfo
    seconds: dict[str, float]
    results: list[dict[str, Any]] = field(default_factory=list)
    bench_files: list[Path] = field(default_factory=list)
    testset: str | None = None  # the test split's file in the bundle, for on-device accuracy

    @property
    def bundle_dir(self) -> str:
        return posixpath.join(self.remote_dir, "bundle")

    @property
    def python(self) -> str:
        """The venv's interpreter, relative to ``bundle_dir`` (where commands run)."""
        return "../venv/bin/python"

    def summary(self) -> dict[str, Any]:
        """The ``--json`` object (fixed keys, read by scripts)."""
        return {
            "run_id": self.run_id,
            "device": self.device,
            "emulated": self.emulated,
            "remote_dir": self.remote_dir,
            "bundle_dir": self.bundle_dir,
            "artifacts": [asdict(a) for a in self.artifacts],
            "requirements": self.requirements,
            "offline": self.offline,
            "sync": asdict(self.sync),
            "verified_files": self.verified_files,
            "venv": self.venv,
            "device_info": {k: v for k, v in asdict(self.device_info).items() if k != "venv_stamp"},
            "seconds": self.seconds,
            "results": self.results,
            "bench_files": [str(p) for p in self.bench_files],
        }


def deploy(
    run: RunDir,
    device: Device,
    *,
    variants: str | Sequence[str] = "base",
    formats: str | Sequence[str] = "tflite",
    quantize: str | Sequence[str] | None = None,
    remote_dir: str = DEFAULT_REMOTE_DIR,
    offline: bool = False,
    progress: Progress | None = None,
    log: Log | None = None,
) -> Deployment:
    """Probe, pack, sync, verify and install (see the module docstring); records a ``deploy`` stage.

    The emulated Pi always installs from shipped wheels (``offline``): pip under QEMU is slow
    enough without the network.
    """
    from edgeship.devices.pi.emulator import cache_dir, download_wheels

    say = log or (lambda _m: None)
    step = _Steps(progress)
    rdir = remote_path(remote_dir)
    chosen = select_artifacts(run, variants, formats, quantize, log=say)  # fails before any connection
    offline = offline or device.emulated
    params = {"device": device.name, "emulated": device.emulated, "remote_dir": rdir,
              "offline": offline, "selected": [a.rel for a in chosen]}
    with run.stage("deploy", params) as stage:
        with step("probe", f"connecting to {device.name}"):
            info = probe(device, rdir)
        chosen = for_device(chosen, info, device.name, run.id, log=say)
        requirements = requirements_for([a.format for a in chosen])
        wheels = None
        if offline:
            with step("wheels", f"{info.machine} cp{info.python_minor.replace('.', '')} wheels"):
                wheels = download_wheels(requirements, arch=info.machine, python=info.python_minor)
        stamp = info.venv_stamp or {}
        # A venv survives Python patch releases (3.11.2 -> 3.11.4), not minor ones.
        reuse = (str(stamp.get("python", "")).split(".")[:2] == info.python.split(".")[:2]
                 and set(requirements) <= set(stamp.get("requirements") or ()))
        bundles = cache_dir() / "bundles"
        bundles.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="bundle-", dir=bundles) as tmp:
            with step("pack", "packing the bundle"):
                bundle = Path(tmp) / "bundle"
                shipped = pack_bundle(run, chosen, bundle, requirements=requirements, wheels=wheels)
                testset = read_json(bundle / BUNDLE_INFO).get("testset")
                local = local_manifest(bundle)
            check_space(device.name, rdir, info, bundle, requirements, wheels, install=not reuse)
            bundle_dir = posixpath.join(rdir, "bundle")
            with step("sync", f"sending to {device.name}"), _no_space(device.name, rdir):
                sync = device.sync(bundle, bundle_dir, delete=True)
            say(f"sent {len(sync.sent)} file(s) ({sync.bytes_sent / 1024:.1f} KiB) by {sync.method}, "
                f"{sync.unchanged} unchanged, {len(sync.deleted)} deleted")
            with step("verify", "checking sha256 on the device"):
                verified = verify(device, bundle_dir, local)
        with step("install", "reusing the venv" if reuse else "installing the runtime"):
            if reuse:
                venv = "reused"
            else:
                with _no_space(device.name, rdir):
                    install_venv(device, rdir, requirements, python=info.python, offline=offline,
                                 machine=info.machine)
                venv = "installed"
        say(f"venv {venv}: {' '.join(requirements)}")
        seconds = step.seconds
        stage.metrics = {
            "artifacts": [a.rel for a in shipped], "files_sent": len(sync.sent),
            "bytes_sent": sync.bytes_sent, "files_unchanged": sync.unchanged,
            "files_deleted": len(sync.deleted), "verified_files": verified, "venv": venv,
            "device": {"machine": info.machine, "python": info.python, "board": info.board},
            "seconds": seconds,
        }
    return Deployment(
        run_id=run.id, device=device.name, emulated=device.emulated, remote_dir=rdir,
        artifacts=shipped, requirements=requirements, offline=offline, sync=sync,
        verified_files=verified, venv=venv, device_info=info, seconds=seconds, testset=testset,
    )


def check_space(
    device_name: str,
    rdir: str,
    info: DeviceInfo,
    bundle: Path,
    requirements: Sequence[str],
    wheels: Path | None,
    *,
    install: bool,
) -> None:
    """Refuse before sending anything when the device's disk clearly cannot take the deploy."""
    if info.free_bytes is None:
        return
    mb = 1024 * 1024
    need = 0 if info.dir_state == "ours" else sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    if install:
        if wheels is not None:
            need += int(WHEEL_UNPACK_FACTOR * sum(p.stat().st_size for p in wheels.glob("*.whl")))
        else:
            fmts = {f for f in VENV_MB if any(r.startswith(_RUNTIME_DIST[f]) for r in requirements)}
            need += sum(VENV_MB[f] for f in fmts) * mb
    need += 16 * mb
    if info.free_bytes < need:
        raise NoSpaceError(
            f"no space left on {device_name}: {info.free_bytes / mb:.0f} MB free for {rdir}, the "
            f"deploy needs about {need / mb:.0f} MB (bundle + venv): free space there "
            "(e.g. `sudo apt clean`), or pass --remote-dir on a bigger disk"
        )


_RUNTIME_DIST = {"tflite": "ai-edge-litert", "onnx": "onnxruntime", "tvm": "apache-tvm"}


def verify(device: Device, bundle_dir: str, local: dict[str, str]) -> int:
    """Compare the device's sha256 of every bundle file with ours; returns the file count."""
    remote = device.sha256_manifest(bundle_dir)
    bad = sorted(p for p, digest in local.items() if remote.get(p) != digest)
    if bad:
        shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise VerifyError(
            f"sha256 mismatch on {device.name}: {len(bad)} of {len(local)} bundle file(s) differ "
            f"from what was sent ({shown}): the copy was damaged or changed there; deploy again "
            "to resend them"
        )
    return len(local)


def install_venv(
    device: Device, remote_dir: str, requirements: Sequence[str], *, python: str, offline: bool,
    machine: str = "aarch64",
) -> None:
    """Build ``DIR/venv`` from ``DIR/bundle``; the stamp goes last, any failure removes the venv.

    Real device: ``python3 -m venv`` (with pip) and ``venv/bin/python -m pip install``. Emulated:
    child processes of an emulated program run natively (no binfmt_misc), so the venv is made
    ``--without-pip`` and pip runs in-process from Debian's pip wheel, ``--no-compile``; the
    .pyc files are then written by this machine's Python (``EmulatedPi.precompile``).
    """
    from edgeship.devices.pi.emulator import EmulatedPi

    rdir = remote_path(remote_dir)
    emulated = isinstance(device, EmulatedPi)
    env = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    try:
        device.run(["rm", "-rf", "--", "venv"], cwd=rdir, timeout=600)
        argv = ["python3", "-m", "venv", *(["--without-pip"] if emulated else []), "venv"]
        done = device.run(argv, cwd=rdir, check=False, timeout=600)
        if done.returncode != 0:
            text = done.stdout + done.stderr
            if "ensurepip" in text or "python3-venv" in text:
                raise DevicePythonError(
                    f"`python3 -m venv` failed on {device.name} (ensurepip is not available): "
                    "install it there with `sudo apt install python3-venv`"
                )
            raise command_failed(argv, done, device.name)
        if isinstance(device, EmulatedPi):
            pip = ["venv/bin/python", f"{device.pip_wheel}/pip"]
        else:
            pip = ["venv/bin/python", "-m", "pip"]
        argv = [*pip, "install", "--progress-bar", "off"]
        if offline:
            argv += ["--no-index", "--find-links", "bundle/wheels"]
        if emulated:
            argv.append("--no-compile")
        argv += ["-r", "bundle/requirements.txt"]
        done = device.run(argv, cwd=rdir, env=env, check=False, timeout=INSTALL_TIMEOUT_S)
        if done.returncode != 0:
            raise pip_error(done, device.name, offline, machine=machine)
        if isinstance(device, EmulatedPi):
            device.precompile(posixpath.join(rdir, "venv"))
        stamp = {"python": python, "requirements": list(requirements), "offline": offline,
                 "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        device.run(["venv/bin/python", "-c", _STAMP_PY, f"venv/{VENV_STAMP}", json.dumps(stamp)],
                   cwd=rdir, timeout=300)
    except BaseException:
        with contextlib.suppress(EdgeshipError, OSError):
            device.run(["rm", "-rf", "--", "venv"], cwd=rdir, check=False, timeout=600)
        raise


def pip_error(done: Any, where: str, offline: bool, *, machine: str = "aarch64") -> DeployError:
    """One line for a failed pip: its last ``ERROR:`` line (or last line) and what to try."""
    text = f"{done.stderr}\n{done.stdout}"
    if "No space left on device" in text:
        return NoSpaceError(f"no space left on {where} while pip installed the runtime: free some "
                            "space there, or pass --remote-dir on a bigger disk")
    errors = [ln.strip() for ln in done.stderr.splitlines() if ln.strip().startswith("ERROR:")]
    line = errors[-1] if errors else (last_line(done.stderr) or last_line(done.stdout)
                                      or f"exit {done.returncode}")
    if machine not in ("aarch64", "x86_64"):
        hint = (f"the device is {machine}: LiteRT and TVM publish aarch64 and x86_64 wheels only, "
                "install the 64-bit Raspberry Pi OS")
    elif offline:
        hint = "the shipped wheels do not satisfy requirements.txt for this device's CPU and Python"
    else:
        hint = "check that the device reaches PyPI, or deploy with --offline"
    return PipInstallError(f"pip install on {where} failed: {line} ({hint})")


@contextlib.contextmanager
def _no_space(where: str, rdir: str) -> Iterator[None]:
    """A full disk, on the device or (emulated) here, as one NoSpaceError."""
    try:
        yield
    except RemoteCommandError as e:
        if "No space left on device" in f"{e} {e.stderr}":
            raise NoSpaceError(f"no space left on {where} writing {rdir}: free some space there, "
                               "or pass --remote-dir on a bigger disk") from e
        raise
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise NoSpaceError(f"no space left on {where} writing {rdir} ({e.filename}): free some "
                               "space, or pass --remote-dir on a bigger disk") from e
        raise


class _Steps:
    """Times each step and reports it to the progress bar."""

    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, status: str) -> Iterator[None]:
        t0 = time.monotonic()
        yield
        self.seconds[name] = round(time.monotonic() - t0, 2)
        if self.progress is not None:
            self.progress.update(1, f"{status}: {self.seconds[name]:.1f} s")


# -- benchmarking on the device ------------------------------------------------------------


def bench_deployed(
    device: Device,
    deployment: Deployment,
    *,
    threads: Sequence[int] = (1,),
    runs: int = 200,
    warmup: int = 20,
    rounds: int = 5,
    progress: Progress | None = None,
    log: Log | None = None,
) -> list[dict[str, Any]]:
    """One ``python -m edge_runtime bench`` session on the device over every deployed artifact.

    The same session the host runs (``edge_runtime.rounds``): interleaved rounds, and accuracy
    measured there on the bundle's test split. An artifact the device cannot load is logged and
    left out. Results are schema-valid, not yet stored; ``artifact`` is the run-relative folder.
    """
    from edge_runtime.result import require_valid

    say = log or (lambda _m: None)
    env = {"PYTHONDONTWRITEBYTECODE": "1", "EDGESHIP_DEVICE": "pi"}
    if device.emulated:
        env["EDGESHIP_EMULATED"] = "1"
    argv = [deployment.python, "-m", "edge_runtime", "bench", *(a.remote for a in deployment.artifacts),
            "--json", "--on", "pi", "--rounds", str(rounds), "--runs", str(runs), "--warmup", str(warmup),
            "--threads", ",".join(map(str, threads))]
    if deployment.testset:
        argv += ["--test", deployment.testset]
    configs = len(deployment.artifacts) * len(threads)
    done = device.run(argv, cwd=deployment.bundle_dir, env=env, check=False,
                      timeout=BENCH_TIMEOUT_S + BENCH_CONFIG_TIMEOUT_S * configs * rounds)
    for line in done.stderr.splitlines():
        if line.startswith("warning: "):
            say(line.removeprefix("warning: "))
    rows = _json_lines(done.stdout)
    if done.returncode != 0 or not rows:
        raise command_failed(argv, done, device.name)
    by_remote = {a.remote: a for a in deployment.artifacts}
    results = []
    for r in rows:
        art = by_remote[_remote_key(r["artifact"], by_remote)]
        r["artifact"] = art.rel
        r["run_id"] = r.get("run_id") or deployment.run_id
        r["device"] = {**(r.get("device") or {}), "name": device.name}
        if device.emulated:
            r["device"]["emulated"] = True
            r["notes"] = [*r.get("notes", []), EMULATED_NOTE]
        results.append(r)
    if progress is not None:
        progress.update(len(results), f"{len(results)} measurement(s) on {device.name}")
    return [require_valid(r) for r in results]


def _remote_key(path: str, known: dict[str, Any]) -> str:
    """The bundle-relative artifact a device result names (the device reports an absolute path)."""
    norm = path.replace("\\", "/").rstrip("/")
    for remote in known:
        if norm == remote or norm.endswith("/" + remote):
            return remote
    raise DeployError(f"the device reported a result for {path}, which was not deployed")


def open_device(
    host: str | None = None,
    *,
    emulated: bool = False,
    port: int | None = None,
    identity: str | Path | None = None,
    accept_new_host_key: bool = False,
    setup_progress: Callable[[str, int | None], contextlib.AbstractContextManager[Progress]] | None = None,
    **ssh_options: Any,
) -> Device:
    """``SshTarget`` for ``host``, or the ``EmulatedPi``; ``ssh_options`` go to ``SshTarget``.

    The emulated Pi is set up on first use (about 30 s), shown on ``setup_progress`` (default:
    a bar on stderr), so no separate ``edgeship pi emulator setup`` is needed.
    """
    given = {"--port": port, "--identity": identity,
             "--accept-new-host-key": accept_new_host_key or None}
    if emulated:
        if host:
            raise InputError("--emulated runs on this machine: drop --host (or drop --emulated)")
        extra = [k for k, v in given.items() if v is not None]
        extra += [k for k, v in ssh_options.items() if v is not None]
        if extra:
            raise InputError(f"{extra[0]} goes with --host, not --emulated")
        from edgeship.devices.pi.emulator import EmulatedPi

        return EmulatedPi(progress=setup_progress)
    if not host:
        raise InputError("give --host USER@HOST (a Pi over SSH) or --emulated (the emulated Pi)")
    from edgeship.devices.pi.ssh import SshTarget

    return SshTarget(host, port=port, identity=Path(identity).expanduser() if identity else None,
                     accept_new_host_key=accept_new_host_key,
                     **{k: v for k, v in ssh_options.items() if v is not None})


def bench_label(device: Device) -> str:
    """The ``bench`` stage label, as ``edgeship bench --on pi`` writes it."""
    return "pi emulated" if device.emulated else f"pi {device.name}"


def deploy_pi(
    run: RunDir,
    *,
    host: str | None = None,
    emulated: bool = False,
    variant: str | Sequence[str] = "base",
    format: str | Sequence[str] = "tflite",
    quantize: str | Sequence[str] | None = None,
    remote_dir: str = DEFAULT_REMOTE_DIR,
    offline: bool = False,
    bench: bool = False,
    threads: str | Sequence[int] | int = (1,),
    runs: int = 200,
    warmup: int = 20,
    rounds: int = 5,
    progress: Progress | None = None,
    log: Log | None = None,
    **ssh_options: Any,
) -> Deployment:
    """``edgeship deploy pi``: deploy, and with ``bench`` measure there and store the results."""
    from edgeship.benchmarks.harness import check_counts, parse_threads

    thread_counts = parse_threads(threads)
    if bench:
        check_counts(runs, warmup, rounds)
    device = open_device(host, emulated=emulated, **ssh_options)
    dep = deploy(run, device, variants=variant, formats=format, quantize=quantize,
                 remote_dir=remote_dir, offline=offline, progress=progress, log=log)
    if bench:
        from edgeship.benchmarks.store import save_results

        dep.results = _finish(run, bench_deployed(device, dep, threads=thread_counts, runs=runs,
                                                  warmup=warmup, rounds=rounds, progress=progress, log=log))
        dep.bench_files = save_results(run, dep.results, label=bench_label(device))
    return dep


def bench_pi(
    run: RunDir,
    *,
    host: str | None = None,
    emulated: bool = False,
    variant: str | Sequence[str] = "all",
    format: str | Sequence[str] = "all",
    threads: str | Sequence[int] | int = (1,),
    runs: int = 200,
    warmup: int = 20,
    rounds: int = 5,
    progress: Progress | None = None,
    quantize: str | Sequence[str] | None = None,
    remote_dir: str = DEFAULT_REMOTE_DIR,
    offline: bool = False,
    log: Log | None = None,
    **ssh_options: Any,
) -> list[dict[str, Any]]:
    """The ``--on pi`` driver of ``edgeship bench``: deploy (incremental), then measure there.

    Returns schema results (``on: "pi"``; emulated ones say so); ``bench_run`` stores them.
    """
    from edgeship.benchmarks.harness import check_counts, parse_threads

    check_counts(runs, warmup, rounds)
    thread_counts = parse_threads(threads)
    device = open_device(host, emulated=emulated, **ssh_options)
    dep = deploy(run, device, variants=variant, formats=format, quantize=quantize,
                 remote_dir=remote_dir, offline=offline, progress=progress, log=log)
    return _finish(run, bench_deployed(device, dep, threads=thread_counts, runs=runs, warmup=warmup,
                                       rounds=rounds, progress=progress, log=log))


def _finish(run: RunDir, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Top-1 agreement with the Keras model; the export's accuracy where the device had no test split."""
    from edgeship.benchmarks.evaluation import export_accuracy, finish_evaluation
    from edgeship.export.stage import list_artifacts

    metas = {m["dir"]: m for m in list_artifacts(run, include_failed=False)}
    for r in results:
        if r.get("accuracy") is None:
            r["accuracy"] = export_accuracy(metas.get(r["artifact"], {}))
            r["accuracy_source"] = None if r["accuracy"] is None else "export validation"
        finish_evaluation(run, r)
    return results


# -- small helpers -------------------------------------------------------------------------




def _json_line(stdout: str, what: str) -> dict[str, Any]:
    """The last line of ``stdout`` that is a JSON object (native libraries may print before it)."""
    found = _json_lines(stdout)
    if not found:
        raise DeployError(f"{what} printed no JSON result (last line: {last_line(stdout) or 'none'!r})")
    return found[-1]


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    """Every line of ``stdout`` that is a JSON object (native libraries may print around them)."""
    found = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                found.append(data)
    return found
