"""Install on the device: space check, sha256 verify, the venv, the golden check, the switch.

A deploy installs a *pair*, a bundle and the venv it runs with, and never touches the pair in
use until the new one has proved itself::

    DIR/bundle -> bundle-XXXX/          the one link a deploy switches (one rename)
    DIR/bundle-XXXX/venv -> ../venv-YYYY   the venv this bundle was checked with
    DIR/venv -> bundle/venv             fixed: ``../venv/bin/python`` from the bundle is its pair's

``prepare_bundle`` makes ``bundle-<random>`` beside the one in use, seeded with hard links to its
files (rsync and the emulated copy replace a file by rename, tar unlinks first: the old bundle's
files are never written through), so the sync sends only what changed. The venv is reused while
its stamp lists the requirements; otherwise ``build_venv`` makes ``venv-<random>``: pip installs
there (offline: only the shipped wheels, each checked by pip against its sha256 in
``wheels/requirements.lock``, ``--require-hashes``), the runtime's modules must import and the
stamp ``edgeship-venv.json`` is written. Then ``check_golden`` runs the new pair: every artifact
must load and answer the golden inputs (``golden.json``, written by the pack) as recorded. Only
then does ``switch_pair`` rename ``DIR/bundle`` to the new bundle and remove the old pair. A
failure at any step before it removes the new folders and leaves the old bundle and the old venv
running together. A venv never moves once built (its scripts name their interpreter by path).

The fleet's runtime (no artifacts) keeps the simpler ``install_venv``: ``DIR/venv`` is a link to
the venv folder, switched the same way after the imports check.
"""

from __future__ import annotations

import contextlib
import errno
import json
import posixpath
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edgeship.core.errors import EdgeshipError
from edgeship.devices.errors import (
    DeployError,
    DevicePythonError,
    GoldenCheckError,
    NoSpaceError,
    PipInstallError,
    VerifyError,
)
from edgeship.devices.pi import Device, RemoteCommandError, command_failed, json_lines, last_line, remote_path
from edgeship.devices.probe import VENV_STAMP, DeviceInfo
from edgeship.devices.wheels import LOCK

VENV = "venv"  # the symbolic link a device runs through (``../venv/bin/python`` in bundle/)
VENV_PREFIX = "venv-"  # the folders it points at
BUNDLE = "bundle"  # the link a deploy switches: DIR/bundle -> bundle-XXXX
BUNDLE_PREFIX = "bundle-"
GOLDEN_FILE = "golden.json"  # in the bundle: the inputs and answers the new pair must give

INSTALL_TIMEOUT_S = 1800.0
# Rough installed size of each runtime with numpy, for the free-space check before pip runs.
VENV_MB = {"tflite": 150, "onnx": 150, "tvm": 350}
WHEEL_UNPACK_FACTOR = 3.5  # installed size / wheel size, measured for LiteRT + TVM + numpy
_RUNTIME_DIST = {"tflite": "ai-edge-litert", "onnx": "onnxruntime", "tvm": "apache-tvm"}
# The module a requirement installs, when it is not the name with "-" as "_".
_MODULE = {"ai-edge-litert": "ai_edge_litert", "apache-tvm": "tvm", "apache-tvm-ffi": "tvm_ffi",
           "pillow": "PIL"}

_IMPORTS_PY = """\
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
"""

# Switch DIR/venv to the new folder with one rename, then remove every other venv-* folder
# (and a pre-symlink venv/ folder, moved aside first). Run with DIR as the working directory.
_SWITCH_PY = """\
import os, shutil, sys
new, link = sys.argv[1], sys.argv[2]
if os.path.isdir(link) and not os.path.islink(link):
    shutil.rmtree(link + ".old", ignore_errors=True)
    os.replace(link, link + ".old")
tmp = link + ".switch"
if os.path.lexists(tmp):
    os.remove(tmp)
os.symlink(new, tmp)
os.replace(tmp, link)
fd = os.open(".", os.O_RDONLY)
os.fsync(fd)
os.close(fd)
for name in os.listdir("."):
    if name != new and (name.startswith(sys.argv[3]) or name == link + ".old"):
        shutil.rmtree(name, ignore_errors=True)
"""

_STAMP_PY = """\
import os, sys
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    f.write(sys.argv[2])
os.replace(tmp, sys.argv[1])
"""


# Make DIR/<new> beside the bundle in use, seeded with hard links to its files (not the venv link
# inside), and say which venv-* folder the pair in use runs with (None: an older layout, or none).
# Run with DIR as the working directory.
_PREPARE_PY = """\
import json, os, sys
new, link, venv, prefix = sys.argv[1:5]
os.mkdir(new)
if os.path.isdir(link):
    cur = os.path.realpath(link)
    for d, dirs, files in os.walk(cur):  # links to folders (the venv) are listed, not entered
        rel = os.path.relpath(d, cur)
        for name in dirs:
            if not os.path.islink(os.path.join(d, name)):
                os.mkdir(os.path.join(new, rel, name))
        for name in files:
            src = os.path.join(d, name)
            if not os.path.islink(src):
                os.link(src, os.path.join(new, rel, name))
in_use = os.path.realpath(venv)
ok = os.path.dirname(in_use) == os.path.realpath(".") and os.path.basename(in_use).startswith(prefix)
print(json.dumps({"venv": os.path.basename(in_use) if ok and os.path.isdir(in_use) else None}))
"""

# The switch: DIR/bundle -> the new bundle in one rename (an older layout's real bundle/ folder
# is moved aside first), DIR/venv -> bundle/venv once, then every other bundle-*/venv-* goes.
_SWITCH_PAIR_PY = """\
import os, shutil, sys
new, link, venv = sys.argv[1:4]
def relink(name, target):
    if os.path.isdir(name) and not os.path.islink(name):
        shutil.rmtree(name + ".old", ignore_errors=True)
        os.replace(name, name + ".old")
    tmp = name + ".switch"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, name)
relink(link, new)
through = os.path.join(link, venv)
if not (os.path.islink(venv) and os.readlink(venv) == through):
    relink(venv, through)
fd = os.open(".", os.O_RDONLY)
os.fsync(fd)
os.close(fd)
keep = {new, os.path.basename(os.readlink(os.path.join(new, venv)))}
old = (link + ".old", venv + ".old")
for name in os.listdir("."):
    if name not in keep and (name.startswith((link + "-", venv + "-")) or name in old):
        shutil.rmtree(name, ignore_errors=True)
"""

# Run by the new pair's python in the new bundle: every artifact loads and answers the golden
# inputs as recorded. Prints one JSON line: {"failures": [...]}.
_GOLDEN_PY = """\
import json, os, sys
sys.path.insert(0, os.getcwd())  # the bundle's own edge_runtime
import numpy as np
from edge_runtime import EdgeModel
from edge_runtime.testset import read_testset
with open(sys.argv[1]) as f:
    golden = json.load(f)
x = read_testset(golden["testset"])["x"][: golden["rows"]] if golden.get("testset") else None
bad = []
for rel, want in sorted(golden["artifacts"].items()):
    try:
        model = EdgeModel.load(rel)
        if x is None or want.get("top1") is None:
            continue
        got = np.asarray(model.predict(x).indices)
        agree = float((got == np.asarray(want["top1"])).mean())
        if agree < want["min_agreement"]:
            bad.append("%s gives the recorded answer (%s) on %d of %d golden inputs, %.0f%% needed" % (
                rel, want["source"], int(round(agree * len(got))), len(got), 100 * want["min_agreement"]))
    except Exception as e:  # the device's report: any failure of the new pair is a line, never a crash
        bad.append("%s does not run: %s" % (rel, (str(e).strip().splitlines() or [type(e).__name__])[-1]))
print(json.dumps({"failures": bad}))
"""


def venv_reusable(info: DeviceInfo, requirements: Sequence[str]) -> bool:
    """Whether the device's venv (its stamp, read by the probe) already holds ``requirements``.

    A venv survives Python patch releases (3.11.2 -> 3.11.4), not minor ones.
    """
    stamp = info.venv_stamp or {}
    return (str(stamp.get("python", "")).split(".")[:2] == info.python.split(".")[:2]
            and set(requirements) <= set(stamp.get("requirements") or ()))


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


@contextlib.contextmanager
def no_space(where: str, rdir: str) -> Iterator[None]:
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
    """The fleet's runtime: ``build_venv`` from ``DIR/bundle``, then ``DIR/venv`` switches to it.

    Until the switch, a failure removes the new folder and leaves the working install as it was.
    """
    rdir = remote_path(remote_dir)
    new = build_venv(device, rdir, requirements, python=python, offline=offline, machine=machine)
    # The switch: one rename on the device; the old install goes after it.
    device.run(["python3", "-c", _SWITCH_PY, new, VENV, VENV_PREFIX], cwd=rdir, timeout=600)


def build_venv(
    device: Device, remote_dir: str, requirements: Sequence[str], *, python: str, offline: bool,
    machine: str = "aarch64", bundle: str = BUNDLE,
) -> str:
    """Build ``DIR/venv-<random>`` from ``DIR/<bundle>``, check it imports; returns its name.

    A failure at any step (pip, the imports, a timeout, Ctrl-C) removes the new folder: nothing
    in use is touched. Real device: ``python3 -m venv`` (with pip) and ``VENV/bin/python -m pip
    install``. Emulated: ``--without-pip``, Debian's pip wheel in-process, ``--no-compile``, then
    .pyc files written by this machine's Python; the device's protocol members say which.
    """
    rdir = remote_path(remote_dir)
    new = f"{VENV_PREFIX}{secrets.token_hex(4)}"
    env = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    try:
        _make_venv(device, rdir, new)
        argv = [*device.pip_argv(f"{new}/bin/python"), "install", "--progress-bar", "off",
                *device.install_flags]
        if offline:  # the shipped wheels alone, each as hashed in the lock; no pip.conf index
            env["PIP_CONFIG_FILE"] = "/dev/null"
            argv += ["--no-index", "--find-links", f"{bundle}/wheels", "--require-hashes",
                     "-r", f"{bundle}/wheels/{LOCK}"]
        else:
            argv += ["-r", f"{bundle}/requirements.txt"]
        done = device.run(argv, cwd=rdir, env=env, check=False, timeout=INSTALL_TIMEOUT_S)
        if done.returncode != 0:
            raise pip_error(done, device.name, offline, machine=machine)
        device.after_install(posixpath.join(rdir, new))
        _check_imports(device, rdir, new, requirements)
        stamp = {"python": python, "requirements": list(requirements), "offline": offline,
                 "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        device.run([f"{new}/bin/python", "-c", _STAMP_PY, f"{new}/{VENV_STAMP}", json.dumps(stamp)],
                   cwd=rdir, timeout=300)
    except BaseException:
        discard(device, rdir, new)
        raise
    return new


def discard(device: Device, remote_dir: str, *names: str) -> None:
    """Remove folders of a deploy that did not finish (best effort: the error in flight wins)."""
    if names:
        with contextlib.suppress(EdgeshipError, OSError):
            device.run(["rm", "-rf", "--", *names], cwd=remote_path(remote_dir), check=False, timeout=600)


def prepare_bundle(device: Device, remote_dir: str) -> tuple[str, str | None]:
    """Make ``DIR/bundle-<random>``, seeded from the bundle in use so the sync sends only changes.

    Returns its name and the ``venv-*`` folder the pair in use runs with (None if there is none,
    or it is an older layout's real ``venv/`` folder, which cannot be shared).
    """
    rdir = remote_path(remote_dir)
    new = f"{BUNDLE_PREFIX}{secrets.token_hex(4)}"
    try:
        done = device.run(["python3", "-c", _PREPARE_PY, new, BUNDLE, VENV, VENV_PREFIX], cwd=rdir,
                          timeout=600)
        found = json_lines(done.stdout)
        if not found:
            raise DeployError(f"preparing the new bundle on {device.name} printed no answer "
                              f"({last_line(done.stderr) or 'no output'}): deploy again")
    except BaseException:
        discard(device, rdir, new)
        raise
    return new, found[-1].get("venv")


def pair(device: Device, remote_dir: str, bundle: str, venv: str) -> None:
    """``DIR/<bundle>/venv -> ../<venv>``: the venv this bundle is checked and run with."""
    device.run(["ln", "-s", "--", posixpath.join("..", venv), posixpath.join(bundle, VENV)],
               cwd=remote_path(remote_dir), timeout=120)


def check_golden(device: Device, remote_dir: str, bundle: str) -> None:
    """The new pair (``DIR/<bundle>`` with its venv) must load every artifact and answer its
    golden inputs as recorded, before the device switches to it."""
    cwd = posixpath.join(remote_path(remote_dir), bundle)
    done = device.run([f"{VENV}/bin/python", "-c", _GOLDEN_PY, GOLDEN_FILE], cwd=cwd,
                      env={"PYTHONDONTWRITEBYTECODE": "1"}, check=False, timeout=INSTALL_TIMEOUT_S)
    found = json_lines(done.stdout)
    if done.returncode != 0 or not found:
        why = last_line(done.stderr) or f"exit {done.returncode}"
        failures = [f"the golden check did not finish ({why})"]
    else:
        failures = list(found[-1].get("failures") or [])
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise GoldenCheckError(f"the new bundle failed its check on {device.name}: {failures[0]}{more}; "
                               "the previous bundle and runtime are kept and still run: export again, "
                               "or deploy the artifacts that passed")


def switch_pair(device: Device, remote_dir: str, bundle: str) -> None:
    """One rename makes ``DIR/bundle`` the new bundle (with its venv); the old pair goes after."""
    device.run(["python3", "-c", _SWITCH_PAIR_PY, bundle, BUNDLE, VENV], cwd=remote_path(remote_dir),
               timeout=600)


def runtime_modules(requirements: Sequence[str]) -> list[str]:
    """The modules ``requirements`` install, by import name (``ai-edge-litert``: ``ai_edge_litert``)."""
    names = []
    for req in requirements:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if m:
            dist = re.sub(r"[-_.]+", "-", m[1]).lower()
            names.append(_MODULE.get(dist, dist.replace("-", "_")))
    return list(dict.fromkeys(names))


def _check_imports(device: Device, rdir: str, venv: str, requirements: Sequence[str]) -> None:
    """The new venv must import what it was built for before the device switches to it."""
    modules = runtime_modules(requirements)
    done = device.run([f"{venv}/bin/python", "-c", _IMPORTS_PY, *modules], cwd=rdir, check=False,
                      timeout=600)
    if done.returncode != 0:
        why = last_line(done.stderr) or f"exit {done.returncode}"
        raise DeployError(f"the new runtime on {device.name} does not import ({why}); the previous "
                          "install is kept: deploy again, or with --offline")


def _make_venv(device: Device, rdir: str, name: str = VENV) -> None:
    """``python3 -m venv [device.venv_args] NAME`` in ``rdir``; no ensurepip is one clear error."""
    argv = ["python3", "-m", "venv", *device.venv_args, name]
    done = device.run(argv, cwd=rdir, check=False, timeout=600)
    if done.returncode == 0:
        return
    text = done.stdout + done.stderr
    if "ensurepip" in text or "python3-venv" in text:
        raise DevicePythonError(
            f"`python3 -m venv` failed on {device.name} (ensurepip is not available): "
            "install it there with `sudo apt install python3-venv`"
        )
    raise command_failed(argv, done, device.name)


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
