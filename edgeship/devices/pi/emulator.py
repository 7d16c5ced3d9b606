"""An emulated Raspberry Pi: an aarch64 Debian 12 userland run with QEMU user-mode emulation.

Raspberry Pi OS Bookworm is Debian 12 with Python 3.11, so a ``debootstrap`` of bookworm/arm64
runs the same aarch64 wheels a Pi would. The machine may lack binfmt_misc and root-level
chroots, so nothing here relies on them: the first debootstrap stage downloads the packages,
``dpkg -x`` unpacks them, and every command is started as
``qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3.11 ...``.

QEMU 10 (Debian bookworm-backports) is required: Debian 12's QEMU 7.2 runs TVM modules but
segfaults inside LiteRT's ``Interpreter(...)``. Programs run with ``-cpu cortex-a72`` (a Pi 4's
CPU; ``$EDGESHIP_PI_CPU=cortex-a76`` for a Pi 5), not QEMU's default "max" CPU whose SVE and
fp16 no Pi has.

What emulation does not do: a process started *by* an emulated program runs natively on the
host (without binfmt_misc the kernel cannot hand it to QEMU, and QEMU's ``-L`` leaves execve
alone). So ``python3 -m venv`` must get ``--without-pip`` (ensurepip runs pip in a child) and
pip runs in-process from Debian's wheel (``venv/bin/python PIP_WHEEL/pip install ...``).
Also, with ``-L`` a path missing from the root filesystem falls back to the host's, so the
guest gets a clean environment (no host ``PIP_*`` or ``PYTHONPATH``) and ``PIP_CONFIG_FILE``
pointing nowhere.

Timings measured under emulation are not Pi timings; callers must label them emulated.

Everything is cached outside git under ``$EDGESHIP_PI_CACHE`` (default
``~/.cache/edgeship/pi-rootfs``): the root filesystem, downloaded wheels, unpacked wheel sets
and the emulated device's home folder. Each is built in a temp folder, stamped with what was
built, and renamed into place only when complete. The root filesystem is built on first use
(``require_rootfs``, about 30 s; as a user under ``fakeroot``) or by ``edgeship pi emulator setup``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

from edgeship.core import console
from edgeship.core.errors import EdgeshipError, InputError, MissingDependencyError
from edgeship.core.fsutil import atomic_path, locked, read_json, replace_tree, write_json_atomic
from edgeship.devices.pi import (
    RemoteCommandError,
    SyncResult,
    command_failed,
    diff_manifests,
    local_manifest,
    remote_path,
    short_command,
)

ENV_CACHE = "EDGESHIP_PI_CACHE"
ENV_MIRROR = "EDGESHIP_PI_MIRROR"

SUITE = "bookworm"  # Debian 12 = Raspberry Pi OS Bookworm
ARCH = "arm64"
PACKAGES = ("python3", "python3-venv")
RECIPE_VERSION = 1
STAMP = "edgeship-rootfs.json"
PYTHON = "/usr/bin/python3.11"

QEMU = "qemu-aarch64-static"
QEMU_MIN = (10, 0)
QEMU_FIX = "apt-get install -t bookworm-backports qemu-user-static"
# The emulated CPU. QEMU's default ("max") has SVE, fp16 and dotprod, which no Pi has: LiteRT's
# XNNPACK then picks kernels QEMU runs 6x slower (digits float32, test split: 46 s vs 8 s), and a
# build for a Pi 5 would run where a Pi 4 raises SIGILL. A Pi 4's Cortex-A72 avoids both.
ENV_CPU = "EDGESHIP_PI_CPU"
DEFAULT_CPU = "cortex-a72"
PI_BOARDS = {"cortex-a72": "Raspberry Pi 4", "cortex-a76": "Raspberry Pi 5"}

DEFAULT_TIMEOUT_S = 1800.0

# Where debootstrap lives when a user's PATH has no sbin folders (Debian's default for users).
SBIN_DIRS = ("/usr/sbin", "/sbin")
# The build's progress steps: download, unpack, compile the stdlib, check python3.
ROOTFS_STEPS = 4
FIRST_USE = "setting up the emulated Pi (first use, about 30 s)"

# aarch64 CPython 3.11 wheels; Debian 12 has glibc 2.36, so manylinux up to 2_28 is fine.
WHEEL_PLATFORMS = (
    "manylinux_2_17_aarch64",
    "manylinux2014_aarch64",
    "manylinux_2_27_aarch64",
    "manylinux_2_28_aarch64",
)
# What each runtime needs on the device, with the pins from PLATFORM.md.
RUNTIME_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "tflite": ("ai-edge-litert==2.3.0", "numpy"),
    "onnx": ("onnxruntime", "numpy"),
    "tvm": ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post0", "numpy"),
}


class EmulatorError(EdgeshipError):
    """The emulated Pi cannot be built or started; the message names the fix."""


class Progress(Protocol):
    """What a build reports to: ``update(0, doing)`` first, then ``update(1, doing next)``."""

    def update(self, advance: int = 1, status: str = "") -> None: ...


# ``edgeship.core.console.progress`` is one: (description, total) -> context yielding a Progress.
ProgressFactory = Callable[[str, int | None], AbstractContextManager[Progress]]


# -- where things live ---------------------------------------------------------------------


def cache_dir() -> Path:
    """The Pi cache: ``$EDGESHIP_PI_CACHE`` or ``~/.cache/edgeship/pi-rootfs``."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeship" / "pi-rootfs"


def rootfs_dir() -> Path:
    return cache_dir() / f"debian-{SUITE}-{ARCH}"


@contextmanager
def _locked(name: str) -> Any:
    """Serialise builds of one cache entry across processes (parallel tests, two terminals)."""
    return locked(cache_dir() / f".{name}.lock")


# -- QEMU ----------------------------------------------------------------------------------


@functools.cache
def check_qemu() -> str:
    """Path of a ``qemu-aarch64-static`` new enough for LiteRT, or a one-line error."""
    path = shutil.which(QEMU)
    if path is None:
        raise MissingDependencyError(f"{QEMU} not found: {QEMU_FIX}")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    if m is None:
        raise MissingDependencyError(f"cannot read the version of {path}: {QEMU_FIX}")
    if (int(m[1]), int(m[2])) < QEMU_MIN:
        raise MissingDependencyError(
            f"{QEMU} is {m[1]}.{m[2]}, LiteRT needs >= {QEMU_MIN[0]} under emulation: {QEMU_FIX}"
        )
    return path


def qemu_version() -> str:
    out = subprocess.run([check_qemu(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\S+)", out)
    return m[1] if m else "unknown"


def emulated_cpu() -> str:
    """The QEMU ``-cpu`` model: ``$EDGESHIP_PI_CPU`` (cortex-a76 for a Pi 5) or cortex-a72 (Pi 4)."""
    cpu = os.environ.get(ENV_CPU) or DEFAULT_CPU
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", cpu):
        raise InputError(f"bad {ENV_CPU} {cpu!r}: give a QEMU CPU model such as cortex-a72")
    return cpu


# -- the root filesystem -------------------------------------------------------------------


def apt_mirror() -> str:
    """A Debian mirror URL: ``$EDGESHIP_PI_MIRROR``, else the one this machine's apt uses.

    Read from the apt sources so no host name is written into the project.
    """
    if os.environ.get(ENV_MIRROR):
        return os.environ[ENV_MIRROR]
    found: list[tuple[str, list[str]]] = []
    d = Path("/etc/apt/sources.list.d")
    for path in sorted(d.glob("*.sources")) if d.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#") and not line[0].isspace():
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                suites = fields.get("suites", "").split()
                found += [(uri, suites) for uri in fields.get("uris", "").split()]
    lists = [Path("/etc/apt/sources.list"), *(sorted(d.glob("*.list")) if d.is_dir() else [])]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb":
                found.append((words[1], [words[2]]))
    for uri, suites in found:
        if SUITE in suites and uri.startswith(("http://", "https://")):
            return uri
    raise EmulatorError(
        f"no Debian {SUITE} mirror in /etc/apt/sources.list*: set {ENV_MIRROR} to a Debian "
        "mirror URL (the folder holding dists/)"
    )


def rootfs_info(rootfs: Path | None = None) -> dict[str, Any] | None:
    """The stamp of a complete root filesystem, or None if there is none (or an old recipe)."""
    root = rootfs or rootfs_dir()
    try:
        info = read_json(root / STAMP)
    except (OSError, ValueError):
        return None
    if info.get("recipe") != _recipe() or not (root / PYTHON.lstrip("/")).exists():
        return None
    return info


def _recipe() -> dict[str, Any]:
    return {"version": RECIPE_VERSION, "suite": SUITE, "arch": ARCH, "variant": "minbase",
            "packages": list(PACKAGES)}


def require_rootfs(progress: ProgressFactory | None = None) -> Path:
    """The root filesystem, set up on first use: commands need no separate setup step.

    A fresh machine builds it here (about 30 s, shown on ``progress``; default: a bar on
    stderr) when QEMU >= 10 and debootstrap (and fakeroot, for a user) are there, and otherwise
    stops with one line naming what to install, before anything is downloaded.
    """
    root = rootfs_dir()
    if rootfs_info(root) is not None:
        return root
    build_command()  # what to install, before the first-use message promises a build
    console.info(FIRST_USE)
    with (progress or console.progress)("emulated Pi setup", ROOTFS_STEPS) as bar:
        return ensure_rootfs(progress=bar)


def build_command() -> list[str]:
    """The debootstrap command for this user, or a one-line error naming what to install.

    debootstrap refuses to run without root; under ``fakeroot`` it runs as any user (the
    files then belong to that user, which is all QEMU's ``-L`` needs), so a first use needs
    no sudo.
    """
    check_qemu()
    if shutil.which("dpkg") is None:
        raise MissingDependencyError("dpkg not found: build the emulated Pi on Debian or Ubuntu")
    sbin = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    debootstrap = shutil.which("debootstrap", path=sbin)
    fakeroot = None if os.geteuid() == 0 else shutil.which("fakeroot")
    missing = [] if debootstrap else ["debootstrap"]
    if os.geteuid() != 0 and fakeroot is None:
        missing.append("fakeroot")
    if debootstrap is None or missing:
        raise MissingDependencyError(
            f"setting up the emulated Pi needs {' and '.join(missing)}: "
            f"apt-get install {' '.join(missing)}"
        )
    return [fakeroot, debootstrap] if fakeroot else [debootstrap]


def ensure_rootfs(*, force: bool = False, progress: Progress | None = None) -> Path:
    """Build (once) and return the aarch64 Debian 12 root filesystem with Python 3.11.

    Idempotent: a complete build is recognised by its stamp and returned at once. The build
    happens in a temp folder beside the cache and is renamed into place only when it works,
    so an interrupted build never leaves a half root filesystem behind. The lock keeps two
    commands' first uses from building it twice: the second waits and takes the first's.
    ``progress`` gets ``ROOTFS_STEPS`` steps; without it each step is an info line.
    """
    target = rootfs_dir()
    if not force and rootfs_info(target) is not None:
        return target
    debootstrap = build_command()
    mirror = apt_mirror()
    with _locked("rootfs"):
        if not force and rootfs_info(target) is not None:
            return target  # another process finished it while we waited
        cache = cache_dir()
        for stale in cache.glob(".build-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        try:
            _build(work / "rootfs", debootstrap, mirror, progress or _InfoProgress())
            replace_tree(work / "rootfs", target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


class _InfoProgress:
    """Build steps as info lines, for library callers that give no progress bar."""

    def update(self, advance: int = 1, status: str = "") -> None:
        if status:
            console.info(f"emulated Pi: {status}")


def _build(root: Path, debootstrap: list[str], mirror: str, progress: Progress) -> None:
    start = time.monotonic()
    progress.update(0, f"downloading Debian {SUITE} {ARCH} (debootstrap)")
    _debootstrap(root, debootstrap, mirror)
    _drop_fake_devices(root)
    debs = sorted((root / "var/cache/apt/archives").glob("*.deb"))
    progress.update(1, f"unpacking {len(debs)} packages (dpkg -x)")
    for deb in debs:
        done = subprocess.run(["dpkg", "-x", str(deb), str(root)], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise EmulatorError(f"dpkg -x {deb.name} failed: {done.stderr.strip()[-200:]}")
    packages = [deb.name.removesuffix(f"_{ARCH}.deb").removesuffix("_all.deb") for deb in debs]
    for deb in debs:
        deb.unlink()  # about 40 MB nobody needs again
    progress.update(1, "compiling the standard library")
    _precompile_stdlib(root)

    progress.update(1, "checking python3 under QEMU")
    probe = run(
        ["python3", "-c", "import json, platform, sys, venv; print(json.dumps("
         "[platform.machine(), platform.python_version()]))"],
        rootfs=root, timeout=300,
    )
    machine, version = json.loads(probe.stdout)
    if machine != "aarch64" or not version.startswith("3.11."):
        raise EmulatorError(f"the emulated Pi reports {machine} Python {version}, expected "
                            f"aarch64 Python 3.11: delete {root} and rebuild")
    pip_wheels = sorted((root / "usr/share/python-wheels").glob("pip-*.whl"))
    write_json_atomic(root / STAMP, {
        "recipe": _recipe(),
        "machine": machine,
        "python": version,
        "pip_wheel": "/" + pip_wheels[-1].relative_to(root).as_posix() if pip_wheels else None,
        "packages": packages,
        "mirror": mirror,
        "qemu": qemu_version(),
        "built": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.monotonic() - start, 1),
    })
    progress.update(1, f"Debian {SUITE} aarch64, Python {version}, built in "
                       f"{time.monotonic() - start:.0f} s")


def _debootstrap(root: Path, debootstrap: list[str], mirror: str) -> None:
    """debootstrap's first stage: download the packages (we unpack them, no chroot needed)."""
    log = root.parent / "debootstrap.log"
    argv = [
        *debootstrap, "--foreign", f"--arch={ARCH}", "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
    ]  # fmt: skip
    keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    if keyring.is_file():
        argv.append(f"--keyring={keyring}")
    argv += [SUITE, str(root), mirror]
    with open(log, "wb") as f:
        proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        raise EmulatorError(
            f"debootstrap failed ({tail[0] if tail else proc.returncode}): check that {mirror} "
            f"is reachable, or set {ENV_MIRROR}"
        )


def _drop_fake_devices(root: Path) -> None:
    """Remove the plain files ``fakeroot`` leaves where /dev/null, /dev/urandom... would be.

    QEMU's ``-L`` prefers a path in the root filesystem to the host's, so an empty regular
    ``ROOTFS/dev/urandom`` would be read instead of the host's device. Without it the guest
    falls back to the host's /dev; real device nodes (a root build) stay.
    """
    dev = root / "dev"
    for path in dev.iterdir() if dev.is_dir() else []:
        if path.is_file() and not path.is_symlink():
            path.unlink()


def _precompile_stdlib(root: Path) -> None:
    """Byte-compile the guest's stdlib with the host's Python when both are 3.11.

    dpkg's postinst would have done it; without it every emulated start compiles the
    modules it imports. The .pyc format depends on the Python version, not the CPU.
    """
    if sys.version_info[:2] != (3, 11):
        return
    import compileall

    lib = root / "usr/lib/python3.11"
    compileall.compile_dir(lib, quiet=2, workers=0,
                           rx=re.compile(r"/(test|tests|idlelib|lib2to3/tests)/"))


# -- wheels --------------------------------------------------------------------------------


def _key(requirements: Sequence[str], platforms: Sequence[str] = WHEEL_PLATFORMS,
         abi: str = "cp311") -> str:
    blob = json.dumps([sorted(requirements), list(platforms), abi]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def wheel_platforms(arch: str = "aarch64") -> tuple[str, ...]:
    """The manylinux tags a Debian 12 (glibc 2.36) device of ``arch`` installs."""
    if not re.fullmatch(r"[a-z0-9_]+", arch):
        raise InputError(f"bad CPU architecture {arch!r}")
    return tuple(p.replace("aarch64", arch) for p in WHEEL_PLATFORMS)


def download_wheels(
    requirements: Sequence[str], *, refresh: bool = False, arch: str = "aarch64",
    python: str = "3.11",
) -> Path:
    """A folder with ``arch`` CPython ``python`` wheels for ``requirements`` and their dependencies.

    Downloaded once with the host's pip (binary wheels only, no build on the host) and
    reused offline afterwards; ``wheels.json`` records the requirements and each file's
    sha256. This folder is what an ``--offline`` deploy ships to a Pi (aarch64, 3.11 by
    default: Raspberry Pi OS Bookworm).
    """
    if not requirements:
        raise InputError("no requirements to download wheels for")
    if not re.fullmatch(r"3\.\d+", python):
        raise InputError(f"bad Python version {python!r}: give MAJOR.MINOR, e.g. 3.11")
    platforms = wheel_platforms(arch)
    abi = "cp" + python.replace(".", "")
    target = cache_dir() / "wheels" / _key(requirements, platforms, abi)
    if not refresh and _wheels_ok(target):
        return target
    with _locked("wheels"):
        if not refresh and _wheels_ok(target):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".dl-", dir=target.parent))
        try:
            start = time.monotonic()
            console.info(f"downloading {arch} {abi} wheels: {' '.join(requirements)}")
            argv = [
                sys.executable, "-m", "pip", "download", "--only-binary=:all:",
                "--python-version", python, "--implementation", "cp",
                *(f"--platform={p}" for p in platforms),
                "--progress-bar", "off", "--disable-pip-version-check",
                "--dest", str(work), *requirements,
            ]  # fmt: skip
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
                reason = errors[-1] if errors else (proc.stderr.strip().splitlines() or ["?"])[-1]
                if "No module named pip" in proc.stderr:
                    raise MissingDependencyError(
                        f"pip is not installed for {sys.executable}: python -m ensurepip"
                    )
                raise EmulatorError(
                    f"cannot download {arch} {abi} wheels for {' '.join(requirements)}: "
                    f"{reason.strip()}"
                )
            files = {p.name: _sha256(p) for p in sorted(work.glob("*.whl"))}
            write_json_atomic(work / "wheels.json", {
                "requirements": list(requirements), "platforms": list(platforms),
                "python": abi, "files": files,
                "downloaded": datetime.now(UTC).isoformat(timespec="seconds"),
                "seconds": round(time.monotonic() - start, 1),
            })
            replace_tree(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _wheels_ok(folder: Path) -> bool:
    try:
        files = read_json(folder / "wheels.json")["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all((folder / name).is_file() for name in files)


def _sha256(path: Path) -> str:
    from edgeship.core.fsutil import sha256_file

    return sha256_file(path)


def install_wheels(wheels: Path | Sequence[Path], site_dir: Path) -> Path:
    """Unpack wheels into ``site_dir`` (for ``PYTHONPATH``), replacing what was there.

    A wheel is a zip laid out for site-packages, so unpacking on the host takes about 2 s
    where pip under QEMU takes about 30 s for LiteRT + numpy. Good enough for binary wheels
    without install scripts, which is all a device runtime needs.
    """
    files = sorted(Path(wheels).glob("*.whl")) if isinstance(wheels, Path) else list(wheels)
    if not files:
        raise InputError(f"no wheels to install from {wheels}")
    site_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{site_dir.name}-", dir=site_dir.parent))
    try:
        for whl in files:
            with zipfile.ZipFile(whl) as z:
                z.extractall(work)
        for data in work.glob("*.data"):  # purelib/platlib go to the top, the rest is unused
            for sub in ("purelib", "platlib"):
                for item in (data / sub).glob("*") if (data / sub).is_dir() else []:
                    os.replace(item, work / item.name)
            shutil.rmtree(data)
        write_json_atomic(work / "edgeship-site.json", {"wheels": [w.name for w in files]})
        replace_tree(work, site_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return site_dir


def ensure_site(requirements: Sequence[str]) -> Path:
    """Downloaded and unpacked aarch64 wheels for ``requirements``: a ``PYTHONPATH`` entry."""
    wheels = download_wheels(requirements)
    site = cache_dir() / "sites" / wheels.name
    stamp = site / "edgeship-site.json"
    wanted = sorted(read_json(wheels / "wheels.json")["files"])
    try:
        if sorted(read_json(stamp)["wheels"]) == wanted:
            return site
    except (OSError, ValueError, KeyError):
        pass
    with _locked("sites"):
        return install_wheels([wheels / name for name in wanted], site)


# -- running -------------------------------------------------------------------------------

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def guest_env(
    env: Mapping[str, str] | None = None, pythonpath: Sequence[Path | str] = ()
) -> dict[str, str]:
    """A clean environment for the guest: nothing from the host's PIP_*, PYTHON*, QEMU_*."""
    out = {
        "PATH": GUEST_PATH,
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "PIP_CONFIG_FILE": os.devnull,  # else -L falls back to the host's /etc/pip.conf
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    }
    if pythonpath:
        out["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    out.update(env or {})
    return out


def _program(name: str, root: Path, cwd: Path | None) -> str:
    """Where QEMU finds ``name``: a bare name on the guest PATH, else a path (guest first)."""
    if "/" not in name:
        for d in GUEST_PATH.split(":"):
            if (root / d.lstrip("/") / name).exists():
                return str(root / d.lstrip("/") / name)
        raise RemoteCommandError(f"`{name}` not found in the emulated Pi", 127)
    if name.startswith("/") and (root / name.lstrip("/")).exists():
        return str(root / name.lstrip("/"))
    if not (Path(cwd or ".") / name).exists():
        raise RemoteCommandError(f"`{name}` not found in the emulated Pi", 127)
    return name


def run(
    argv: Sequence[str],
    *,
    rootfs: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    pythonpath: Sequence[Path | str] = (),
    timeout: float | None = DEFAULT_TIMEOUT_S,
    check: bool = True,
    input: str | None = None,
    cpu: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run an aarch64 program of the emulated Pi (``python3``, a venv's ``bin/python``, ...).

    Paths in ``argv`` are host paths (the guest sees the host's files wherever the root
    filesystem has none). ``check`` raises RemoteCommandError with the program's last line.
    ``cpu`` is QEMU's CPU model (default ``emulated_cpu()``).
    """
    if not argv:
        raise InputError("empty command for the emulated Pi")
    root = rootfs or require_rootfs()
    argv = [str(a) for a in argv]
    cmd = [check_qemu(), "-cpu", cpu or emulated_cpu(), "-L", str(root),
           _program(argv[0], root, cwd), *argv[1:]]
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=guest_env(env, pythonpath),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise RemoteCommandError(
            f"`{short_command(argv)}` under emulation did not finish within {timeout:g} s: "
            "raise the timeout (emulation is 10-50x slower than native)"
        ) from e
    done = subprocess.CompletedProcess(argv, proc.returncode, proc.stdout, proc.stderr)
    if check and done.returncode != 0:
        raise command_failed(argv, done, "the emulated Pi")
    return done


class EmulatedPi:
    """The emulated Pi as a deploy target: the same interface as ``ssh.SshTarget``.

    Its "remote" file system is a home folder on this machine (default: ``home/`` in the
    Pi cache); relative remote paths resolve there, and commands run under QEMU with that
    folder as the working directory, so a deploy issues the same commands to both.
    """

    emulated: ClassVar[bool] = True
    name = "emulated-aarch64"

    def __init__(self, home: Path | None = None, *, rootfs: Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, cpu: str | None = None,
                 progress: ProgressFactory | None = None):
        """Open the emulated Pi, setting it up on first use (``require_rootfs(progress)``)."""
        self.rootfs = rootfs or require_rootfs(progress)
        self.home = Path(home) if home is not None else cache_dir() / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.cpu = cpu or emulated_cpu()

    @property
    def board(self) -> str:
        """What the emulated CPU stands for, e.g. ``Raspberry Pi 4 (emulated, QEMU cortex-a72)``.

        A Pi's /proc/device-tree/model names the board; QEMU user mode has none, so the deploy
        reads this instead (it keeps a TVM build for the other Pi model off this one).
        """
        return f"{PI_BOARDS.get(self.cpu, 'aarch64 board')} (emulated, QEMU {self.cpu})"

    @property
    def pip_wheel(self) -> str:
        """Guest path of Debian's pip wheel: run pip in-process as ``python PIP_WHEEL/pip``."""
        info = rootfs_info(self.rootfs) or {}
        if not info.get("pip_wheel"):
            raise EmulatorError("no pip wheel in the emulated Pi: rebuild it with --force")
        return str(info["pip_wheel"])

    def path(self, remote: str) -> Path:
        """The host path behind a remote path."""
        return self.home / remote_path(remote)  # an absolute path stays absolute

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run(argv, rootfs=self.rootfs, cwd=self.path(cwd) if cwd else self.home,
                   env={"HOME": str(self.home), **(env or {})},
                   timeout=timeout or self.timeout, check=check, input=input, cpu=self.cpu)

    def sync(self, local_dir: Path, remote_dir: str, *, delete: bool = True) -> SyncResult:
        """Copy changed files (by sha256) into the device folder, each file atomically."""
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise InputError(f"nothing to deploy: {local_dir} is not a folder")
        dest = self.path(remote_dir)
        local = local_manifest(local_dir)
        send, extra = diff_manifests(local, local_manifest(dest))
        result = SyncResult(method="copy", sent=send, unchanged=len(local) - len(send))
        for rel in send:
            with atomic_path(dest / rel) as tmp:
                shutil.copy2(local_dir / rel, tmp)
            result.bytes_sent += (local_dir / rel).stat().st_size
        if delete:
            for rel in extra:
                (dest / rel).unlink()
            result.deleted = extra
        return result

    def sha256_manifest(self, remote_dir: str) -> dict[str, str]:
        return local_manifest(self.path(remote_dir))

    def fetch(self, remote_path: str, local_path: Path) -> Path:
        src = self.path(remote_path)
        if not src.is_file():
            raise RemoteCommandError(f"cannot fetch {remote_path} from the emulated Pi: no file")
        with atomic_path(local_path) as tmp:
            shutil.copy2(src, tmp)
        return Path(local_path)

    def precompile(self, remote_dir: str) -> bool:
        """Byte-compile a device folder (a venv) with this machine's Python, if it is 3.11 too.

        pip under QEMU runs with ``--no-compile`` (compiling there is slow), and without .pyc
        files every emulated start compiles what it imports: ``import tvm`` took 30 s, 18 s
        after this (about 3 s of native work for LiteRT + TVM). The .pyc format depends on
        the Python version only. Returns False when the versions differ (nothing done); a
        file that does not compile (a stray Python 2 test) is skipped, as pip would.
        """
        if sys.version_info[:2] != (3, 11):
            return False
        import compileall

        compileall.compile_dir(self.path(remote_dir), quiet=2, workers=0)
        return True
