"""Atomic writes and hashing: no reader ever sees a half-written file."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) entries; a run should read like any other folder.
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


def make_temp_dir(prefix: str, parent: Path) -> Path:
    """A fresh folder under ``parent`` with normal permissions, for building things atomically."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, DIR_MODE)
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, FILE_MODE)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync_file(tmp_path)  # the bytes reach the disk before the name points at them
        os.replace(tmp_path, path)
        fsync_dir(path.parent)  # and the rename itself survives a power cut
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def fsync_file(path: str | Path) -> None:
    """Flush one file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (creations, renames, removals) to disk; a no-op where the
    platform cannot open folders."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the data fsyncs above still count
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """``fsync_file`` every file under ``path`` (or ``path`` itself) and ``fsync_dir`` every folder."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        if path.is_file() and not path.is_symlink():
            fsync_file(path)
        return
    for folder, _dirs, files in os.walk(path):
        for name in files:
            f = Path(folder) / name
            if not f.is_symlink():
                fsync_file(f)
        fsync_dir(folder)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(obj: Any) -> Any:
    """numpy scalars and arrays, Paths: the values stages commonly record."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """``dst`` as a hard link to ``src`` where the filesystem allows, else a copy.

    For large read-only files that many artifacts share (a browser runtime's 9 MB WebAssembly
    builds, copied into every bundle): a link costs no space. Whoever replaces ``src`` later
    (``npm ci`` writes new files) leaves ``dst`` with the old content, as a copy would.
    """
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def replace_tree(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing whatever is there, with the swap as short as possible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


@contextmanager
def locked(lock_file: str | Path) -> Iterator[None]:
    """An exclusive advisory lock held while the block runs: two processes building the same
    cache entry (two terminals, parallel tests) wait for each other instead of interleaving."""
    path = Path(lock_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
