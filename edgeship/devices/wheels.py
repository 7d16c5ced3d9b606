"""Offline wheels for a device: downloaded once per CPU and Python, cached, and unpackable here.

An ``--offline`` deploy ships these to a real Pi or to the emulated one (``bundle/wheels``, and
``pip install --no-index --find-links``); the emulated Pi's tests also unpack them on this
machine as a ``PYTHONPATH`` entry (``ensure_site``), which takes about 2 s where pip under QEMU
takes about 30 s. Both live in the Pi cache (``edgeship.devices.cache``): ``wheels/KEY/``
with a ``wheels.json`` listing each file's sha256, and ``sites/KEY/``.

The sha256 recorded at download is the wheels' identity from then on: ``link_wheels`` checks
every cached file against it before a bundle ships it, and ``hashed_requirements`` writes them
as pip's hash-checking requirements (``wheels/requirements.lock``), which the device installs
with ``pip install --require-hashes``: a wheel changed anywhere between download and install
is refused by pip itself.
"""

from __future__ import annotations

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
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from edgeship.core import console
from edgeship.core.errors import EdgeshipError, InputError, MissingDependencyError
from edgeship.core.fsutil import read_json, replace_tree, sha256_file, write_json_atomic
from edgeship.devices.cache import cache_dir, cache_lock

# aarch64 CPython 3.11 wheels; Debian 12 has glibc 2.36, so manylinux up to 2_28 is fine.
WHEEL_PLATFORMS = (
    "manylinux_2_17_aarch64",
    "manylinux2014_aarch64",
    "manylinux_2_27_aarch64",
    "manylinux_2_28_aarch64",
)
# The short requirement set per runtime that the emulator's tests install. A deploy ships the
# full pins instead: edge_runtime/requirements-<format>.txt.
RUNTIME_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "tflite": ("ai-edge-litert==2.3.0", "numpy"),
    "onnx": ("onnxruntime", "numpy"),
    "tvm": ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post0", "numpy"),
}
INDEX = "wheels.json"
SITE_STAMP = "edgeship-site.json"
LOCK = "requirements.lock"  # in a bundle's wheels/: pinned, hashed, for pip --require-hashes


class WheelsError(EdgeshipError):
    """The device's wheels cannot be downloaded; the message names pip's reason."""


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
    with cache_lock("wheels"):
        if not refresh and _wheels_ok(target):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".dl-", dir=target.parent))
        try:
            start = time.monotonic()
            console.info(f"downloading {arch} {abi} wheels: {' '.join(requirements)}")
            _pip_download(work, requirements, platforms, python, f"{arch} {abi}")
            write_json_atomic(work / INDEX, {
                "requirements": list(requirements), "platforms": list(platforms),
                "python": abi, "files": {p.name: sha256_file(p) for p in sorted(work.glob("*.whl"))},
                "downloaded": datetime.now(UTC).isoformat(timespec="seconds"),
                "seconds": round(time.monotonic() - start, 1),
            })
            replace_tree(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _pip_download(dest: Path, requirements: Sequence[str], platforms: Sequence[str], python: str,
                  what: str) -> None:
    """``pip download`` binary wheels for another CPU and Python into ``dest``; one-line errors."""
    argv = [
        sys.executable, "-m", "pip", "download", "--only-binary=:all:",
        "--python-version", python, "--implementation", "cp",
        *(f"--platform={p}" for p in platforms),
        "--progress-bar", "off", "--disable-pip-version-check",
        "--dest", str(dest), *requirements,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return
    if "No module named pip" in proc.stderr:
        raise MissingDependencyError(f"pip is not installed for {sys.executable}: python -m ensurepip")
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
    reason = errors[-1] if errors else (proc.stderr.strip().splitlines() or ["?"])[-1]
    raise WheelsError(f"cannot download {what} wheels for {' '.join(requirements)}: {reason.strip()}")


def wheel_files(folder: Path) -> list[str]:
    """The wheel file names a downloaded folder holds, sorted (from its ``wheels.json``)."""
    return sorted(read_json(folder / INDEX)["files"])


def _wheels_ok(folder: Path) -> bool:
    try:
        files = wheel_files(folder)
    except (OSError, ValueError, KeyError):
        return False
    return all((folder / name).is_file() for name in files)


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
        write_json_atomic(work / SITE_STAMP, {"wheels": [w.name for w in files]})
        replace_tree(work, site_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return site_dir


def ensure_site(requirements: Sequence[str]) -> Path:
    """Downloaded and unpacked aarch64 wheels for ``requirements``: a ``PYTHONPATH`` entry."""
    wheels = download_wheels(requirements)
    site = cache_dir() / "sites" / wheels.name
    wanted = wheel_files(wheels)
    try:
        if sorted(read_json(site / SITE_STAMP)["wheels"]) == wanted:
            return site
    except (OSError, ValueError, KeyError):
        pass
    with cache_lock("sites"):
        return install_wheels([wheels / name for name in wanted], site)


def link_wheels(wheels: Path, dest: Path, requirements: Sequence[str] = ()) -> list[str]:
    """Put a downloaded folder's wheels into ``dest`` (hard links: they are large and immutable),
    each checked against the sha256 recorded at download, with ``LOCK`` for pip beside them.

    ``requirements`` must each be among the wheels, so a folder that lacks one is refused here
    rather than by pip on the device. Returns the wheel names (``LOCK`` not included).
    """
    recorded: dict[str, str] = read_json(wheels / INDEX)["files"]
    dest.mkdir()
    for name, digest in sorted(recorded.items()):
        try:
            os.link(wheels / name, dest / name)
        except OSError:
            shutil.copyfile(wheels / name, dest / name)
        if sha256_file(dest / name) != digest:
            raise WheelsError(
                f"the cached wheel {name} does not match the sha256 recorded when it was downloaded: "
                f"delete {wheels} and deploy again (it is downloaded anew)"
            )
    (dest / LOCK).write_text(hashed_requirements(recorded, requirements), encoding="utf-8")
    return sorted(recorded)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def hashed_requirements(files: dict[str, str], requirements: Sequence[str] = ()) -> str:
    """pip's hash-checking requirements for ``{wheel file: sha256}``: ``name==version --hash=...``.

    Every wheel is listed (dependencies too: hash-checking mode needs them all), several files
    of one release share a line. A name in ``requirements`` without a wheel is a WheelsError.
    """
    pins: dict[tuple[str, str], list[str]] = {}
    for name, digest in sorted(files.items()):
        parts = name.removesuffix(".whl").split("-")
        if len(parts) < 5:
            raise WheelsError(f"{name} is not a wheel file name (name-version-python-abi-platform.whl)")
        pins.setdefault((_canonical(parts[0]), parts[1]), []).append(digest)
    have = {dist for dist, _ in pins}
    for req in requirements:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if m and _canonical(m[1]) not in have:
            raise WheelsError(f"the downloaded wheels lack {m[1]} (for {req!r}): delete the wheel "
                              "cache folder and deploy again")
    lines = [f"{dist}=={version} " + " ".join(f"--hash=sha256:{d}" for d in digests)
             for (dist, version), digests in sorted(pins.items())]
    return "".join(line + "\n" for line in lines)
