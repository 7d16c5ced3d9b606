"""One writer per run: an ``fcntl.flock`` on ``<run>/.lock``, a file that names its holder.

The kernel drops a killed holder's lock, so a crash never leaves a run locked. The lock file is
removed (while still held) on release; a waiter that then holds an unlinked file notices and
locks the new one. Re-entrancy within a process is the run store's business (``HELD``).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from edgeship.core.errors import RunError

LOCK = ".lock"


@dataclass
class Held:
    """A lock this process holds, and how many nested writers share it."""

    file: IO[str]
    depth: int = 1


# Locks this process holds, by the run folder's (device, inode): survives renames and aliases.
HELD: dict[tuple[int, int], Held] = {}


def dir_key(path: Path) -> tuple[int, int]:
    """A folder's identity across renames (a pending run becomes its final name while locked)."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def _same_file(f: IO[str], path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def try_lock(lock_path: Path) -> IO[str] | None:
    """``lock_path`` opened and locked by this process, or None while another holds it."""
    while True:
        f = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held beyond this function
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        except BaseException:
            f.close()
            raise
        if _same_file(f, lock_path):
            return f
        f.close()  # its holder removed it while releasing: lock the one there now


def lock_blocking(lock_path: Path) -> IO[str]:
    """``lock_path`` locked by this process, waiting for as long as its holder keeps it."""
    while True:
        f = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held beyond this function
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except BaseException:
            f.close()
            raise
        if _same_file(f, lock_path):
            return f
        f.close()


def acquire(run_path: Path, *, wait: bool) -> IO[str]:
    """Lock ``run_path``: at once, or after saying whom we wait for; ``wait=False`` fails instead."""
    lock_path = run_path / LOCK
    lock = try_lock(lock_path)
    if lock is None:
        holder = _holder(lock_path)
        if not wait:
            raise RunError(f"run {run_path.name} is being written by {holder}; retry when it has "
                           "finished (without --no-wait, edgeship waits for it)")
        print(f"run {run_path.name} is being written by {holder}: waiting; "
              "pass --no-wait to fail instead", file=sys.stderr, flush=True)
        lock = sys.modules[__name__].lock_blocking(lock_path)  # looked up late: tests observe it
    lock.seek(0)
    lock.truncate()
    since = datetime.now(UTC).isoformat(timespec="seconds")
    lock.write(json.dumps({"pid": os.getpid(), "command": _command_line(), "since": since}) + "\n")
    lock.flush()
    return lock


def release(lock: IO[str], run_path: Path) -> None:
    """Remove the lock file (while still holding it, so a waiter re-checks) and unlock."""
    try:
        if _same_file(lock, run_path / LOCK):
            os.unlink(run_path / LOCK)
    except OSError:
        pass
    finally:
        lock.close()


def _holder(lock_path: Path) -> str:
    """Who holds the lock, as the lock file says ("pid 123 (edgeship compress ...)")."""
    for _ in range(10):  # the holder writes its name just after locking
        try:
            info = json.loads(lock_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict) and "pid" in info:
            command = info.get("command")
            return f"pid {info['pid']}" + (f" ({command})" if command else "")
        time.sleep(0.05)
    return "another process"


def _command_line(limit: int = 100) -> str:
    argv = list(sys.argv) or [""]
    prog = Path(argv[0]).name
    if prog == "__main__.py":  # python -m edgeship
        prog = Path(argv[0]).parent.name
    elif prog in ("", "-c"):
        prog = "python -c" if prog == "-c" else "python"
    text = " ".join(" ".join([prog, *argv[1:]]).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
