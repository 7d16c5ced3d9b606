"""Build and find the emulated Pi's root filesystem: a Debian 12 arm64 userland with Python 3.11.

Raspberry Pi OS Bookworm is Debian 12 with Python 3.11, so a ``debootstrap`` of bookworm/arm64
runs the same aarch64 wheels a Pi would. The machine may lack binfmt_misc and root-level
chroots, so nothing here relies on them: the first debootstrap stage downloads the packages,
``dpkg -x`` unpacks them, and ``edgeship.devices.pi.qemu`` runs the result. It lives in the Pi
cache (``edgeship.devices.cache``), built in a temp folder, stamped with the recipe, and renamed
into place only when complete: on first use (``require_rootfs``, about 30 s; as a user under
``fakeroot``) or by ``edgeship pi emulator setup``.
"""

from __future__ import annotations

import compileall
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeship.core import console
from edgeship.core.console import Progress, ProgressFactory
from edgeship.core.errors import EdgeshipError, MissingDependencyError
from edgeship.core.fsutil import read_json, replace_tree, write_json_atomic
from edgeship.devices.cache import cache_dir, cache_lock
from edgeship.devices.pi.qemu import check_qemu, qemu_version, run_in

ENV_MIRROR = "EDGESHIP_PI_MIRROR"
SUITE = "bookworm"  # Debian 12 = Raspberry Pi OS Bookworm
ARCH = "arm64"
PACKAGES = ("python3", "python3-venv")
RECIPE_VERSION = 1
STAMP = "edgeship-rootfs.json"
PYTHON = "/usr/bin/python3.11"

# Where debootstrap lives when a user's PATH has no sbin folders (Debian's default for users).
SBIN_DIRS = ("/usr/sbin", "/sbin")
# The build's progress steps: download, unpack, compile the stdlib, check python3.
ROOTFS_STEPS = 4
FIRST_USE = "setting up the emulated Pi (first use, about 30 s)"


class EmulatorError(EdgeshipError):
    """The emulated Pi cannot be built or started; the message names the fix."""


def rootfs_dir() -> Path:
    """Where the root filesystem lives in the Pi cache."""
    return cache_dir() / f"debian-{SUITE}-{ARCH}"


def apt_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """A Debian mirror URL: ``$EDGESHIP_PI_MIRROR``, else the one this machine's apt uses.

    Read from the apt sources (``apt_dir``: /etc/apt) so no host name is written into the project.
    """
    if os.environ.get(ENV_MIRROR):
        return os.environ[ENV_MIRROR]
    found: list[tuple[str, list[str]]] = []
    d = apt_dir / "sources.list.d"
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
    lists = [apt_dir / "sources.list", *(sorted(d.glob("*.list")) if d.is_dir() else [])]
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
    with cache_lock("rootfs"):
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
    probe = run_in(
        root,
        ["python3", "-c", "import json, platform, sys, venv; print(json.dumps("
         "[platform.machine(), platform.python_version()]))"],
        timeout=300,
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

    lib = root / "usr/lib/python3.11"
    compileall.compile_dir(lib, quiet=2, workers=0,
                           rx=re.compile(r"/(test|tests|idlelib|lib2to3/tests)/"))

