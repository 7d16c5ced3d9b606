"""Moving a stage's staged outputs into its run so that a kill at any point leaves the run as it
was before the stage or as it is after, never a mix, and cleaning up after killed writers.

The order: everything staged (the new manifest included) is fsynced; a journal
(``.journal.json``: the staging folder and the outputs) is written; each output is renamed into
place, what it replaces moved into staging rather than deleted; the manifest is renamed over
the old one (the commit point); the journal is removed. ``settle`` replays a journal left by a
kill: with the new manifest still in staging the renames are undone, otherwise the commit was
complete and only leftovers remain. Call everything here with the run's lock held.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeship.core.fsutil import fsync_dir, fsync_tree, read_json, write_json_atomic
from edgeship.core.runlock import LOCK, try_lock

MANIFEST = "manifest.json"
JOURNAL = ".journal.json"
STAGE_PREFIX = ".stage-"
PENDING_PREFIX = ".pending-"
REPLACED = ".replaced"  # in staging: what the outputs replaced, until the commit is final
# A .pending-* run whose lock file never named a holder is only taken for stale after this long
# (its creator may be between making the folder and locking it).
STALE_UNCLAIMED_S = 60.0


class StageSaved(KeyboardInterrupt):
    """Ctrl-C that arrived while a stage's commit was being made final: the stage is saved."""

    stage_saved = True


def commit_outputs(run_path: Path, staging: Path, present: list[str]) -> None:
    """Make ``staging``'s outputs ``present`` and its ``manifest.json`` the run's, atomically."""
    for rel in present:
        fsync_tree(staging / rel)
        for parent in list(Path(rel).parents)[:-1]:
            fsync_dir(staging / parent)
    fsync_dir(staging)
    with sigint_held():  # from the journal on, the commit completes (or is undone) whole
        try:
            write_json_atomic(run_path / JOURNAL, {"staging": staging.name, "outputs": present})
            touched = {run_path}
            for rel in present:
                dst = run_path / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                if exists(dst):
                    old = staging / REPLACED / rel
                    old.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(dst, old)
                os.replace(staging / rel, dst)
                touched.update(p for p in dst.parents if p.is_relative_to(run_path))
            for folder in sorted(touched, key=lambda p: -len(p.parts)):
                fsync_dir(folder)
            os.replace(staging / MANIFEST, run_path / MANIFEST)  # the commit point
            fsync_dir(run_path)
        except BaseException:
            settle(run_path)  # roll back the renames made so far
            raise
        settle(run_path)  # complete: drop the journal and staging (with what was replaced)


def settle(run_path: Path) -> None:
    """Finish a commit that a kill or an error interrupted, per its journal (no-op without)."""
    journal_path = run_path / JOURNAL
    if not journal_path.exists():
        return
    try:
        journal = read_json(journal_path)
        staging = run_path / journal["staging"]
        rels = [str(r) for r in journal["outputs"]]
    except (ValueError, KeyError, TypeError):
        journal_path.unlink()  # written atomically, so never partial: not ours, ignore it
        return
    if not staging.name.startswith(STAGE_PREFIX) or staging.parent != run_path or any(
            Path(r).is_absolute() or ".." in Path(r).parts for r in rels):
        journal_path.unlink()
        return
    if (staging / MANIFEST).exists():  # the new manifest never moved in: undo the renames
        touched = {run_path, staging}
        for rel in reversed(rels):
            src, dst, old = staging / rel, run_path / rel, staging / REPLACED / rel
            if not exists(src) and exists(dst):  # the new output is in place: take it back
                src.parent.mkdir(parents=True, exist_ok=True)
                os.replace(dst, src)
            if exists(old):
                os.replace(old, dst)
            touched.update({dst.parent, src.parent})
        for folder in touched:
            fsync_dir(folder)
    # else the manifest is in, and every output moved before it: the commit is complete
    journal_path.unlink()
    fsync_dir(run_path)
    shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def sigint_held() -> Iterator[None]:
    """Hold Ctrl-C for the block; if it came, raise ``StageSaved`` after the block succeeded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        if previous is signal.default_int_handler:
            raise StageSaved("the stage had been saved when Ctrl-C arrived")
        signal.raise_signal(signal.SIGINT)


def exists(path: Path) -> bool:
    """A path or a dangling symlink: either occupies the name."""
    return path.exists() or path.is_symlink()


def outermost(rels: list[str]) -> list[str]:
    """Outputs with any output inside another one dropped: the outer one carries it."""
    paths = [Path(r) for r in rels]
    return [r for r, p in zip(rels, paths, strict=True)
            if not any(q != p and q in p.parents for q in paths)]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_staging(run_path: Path) -> None:
    """Staging folders and temp files of killed writers (call with the run's lock held)."""
    for entry in run_path.iterdir():
        name = entry.name
        if name.startswith(STAGE_PREFIX) or (
                name.startswith(".") and (name.endswith(".tmp") or ".old-" in name)):
            _remove(entry)


def remove_stale_pending(root: Path) -> None:
    """``.pending-*`` runs whose creator is gone: their lock is free and once named a holder."""
    try:
        entries = [p for p in root.iterdir() if p.name.startswith(PENDING_PREFIX) and p.is_dir()]
    except OSError:
        return
    for pending in entries:
        try:
            lock = try_lock(pending / LOCK)
        except OSError:
            continue
        if lock is None:
            continue  # its creator is alive
        try:
            lock.seek(0)
            claimed = bool(lock.read().strip())
            if claimed or time.time() - pending.stat().st_mtime > STALE_UNCLAIMED_S:
                shutil.rmtree(pending, ignore_errors=True)
        except OSError:
            pass
        finally:
            lock.close()
