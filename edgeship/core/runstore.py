"""The run directory: the contract between stages.

A run is ``<root>/<run-id>/`` with a ``manifest.json``. Stages write into a private staging
folder and commit at the end; an exception or Ctrl-C inside a stage removes the staging folder,
so the run is exactly as it was before the stage began. A new run is built under a hidden name
(``.pending-*``) and only appears under its id once its first stage has committed.

Writing is safe against other writers and against being killed at any point:

* **One writer at a time.** A stage holds the run's lock (``<run>/.lock``, an ``fcntl.flock``;
  the file names the holder's pid and command line) from before its staging folder exists until
  its commit or rollback is done. A second writer says whom it waits for and waits, or, with
  ``wait=False`` (``edgeship --no-wait``), fails at once. The kernel drops a killed holder's lock.
  The lock is re-entrant within a process (a stage inside ``new_run`` or inside another stage).
* **Sections merge, they do not overwrite.** At commit the manifest is read again under the lock
  and the stage's sections are merged into it key by key (``merge_section``), so a stage never
  drops what another stage committed after this process first read the run.
* **The manifest moves last.** The new manifest is written into staging, everything staged is
  fsynced, a journal (``.journal.json``: the staging folder and the outputs) is written, each
  output is renamed into place (what it replaces is moved into staging, not deleted), the
  manifest is renamed over the old one, and the journal is removed. A Ctrl-C in that window is
  held until the commit is final and then raised as ``StageSaved``.
* **Recovery on open.** Taking the lock finishes an interrupted commit (with the new manifest
  still in staging the renames are undone, otherwise only leftovers remain) and removes stale
  ``.stage-*`` folders here and stale ``.pending-*`` runs beside it; resolving a run for reading
  does the journal part too, when no live writer holds the lock. Either way the run reads as
  its state before or after the interrupted stage, never a mix.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from edgeship.core.errors import RunError
from edgeship.core.fsutil import (
    fsync_dir,
    fsync_tree,
    make_temp_dir,
    read_json,
    sha256_file,
    write_json_atomic,
)
from edgeship.core.lineage import environment

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
DEFAULT_ROOT = "runs"
ENV_ROOT = "EDGESHIP_RUNS_DIR"
LOCK = ".lock"
JOURNAL = ".journal.json"
STAGE_PREFIX = ".stage-"
PENDING_PREFIX = ".pending-"
REPLACED = ".replaced"  # in staging: what the outputs replaced, until the commit is final
# A .pending-* run whose lock file never named a holder is only taken for stale after this long
# (its creator may be between making the folder and locking it).
STALE_UNCLAIMED_S = 60.0


def default_root() -> Path:
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class StageContext:
    """What one stage is writing; nothing reaches the run until the stage commits."""

    run: RunDir
    name: str
    params: dict[str, Any]
    staging: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    _outputs: list[str] = field(default_factory=list)

    def output(self, relpath: str) -> Path:
        """A folder or file path, relative to the run, that this stage produces.

        Returns its location in staging; on commit it replaces ``run/relpath`` whole.
        """
        rel = Path(relpath)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"stage outputs must be relative to the run: {relpath}")
        if rel.parts[0].startswith(".") or str(rel) == MANIFEST:
            raise ValueError(f"stage outputs cannot be hidden or the manifest: {relpath}")
        if str(rel) not in self._outputs:
            self._outputs.append(str(rel))
        target = self.staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def output_dir(self, relpath: str) -> Path:
        """Like ``output`` for a folder, created empty in staging."""
        path = self.output(relpath)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def set_section(self, key: str, value: Any) -> None:
        """Set a top-level manifest key (``data``, ``model``, ``variants`` ...) on commit.

        A dict value is merged key by key into the manifest as it is at commit (see
        ``merge_section``): pass the whole section as you want it, other stages' keys survive.
        """
        self.sections[key] = value


class RunDir:
    """One run on disk and its manifest."""

    def __init__(self, path: str | Path, *, wait: bool = True):
        self.path = Path(path)
        self.wait = wait  # False: a writer that finds the run locked fails instead of waiting

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def id(self) -> str:
        return self.manifest.get("run_id", self.path.name)

    @property
    def manifest(self) -> dict[str, Any]:
        try:
            manifest = read_json(self.manifest_path)
        except FileNotFoundError as e:
            raise RunError(
                f"{self.path} is not an edgeship run (no {MANIFEST}); "
                "list runs with `edgeship runs`"
            ) from e
        except ValueError as e:
            raise RunError(f"{self.manifest_path} is not valid JSON ({e}); the run is damaged") from e
        _note_base(self.path, manifest)
        return manifest

    def stages(self, name: str | None = None) -> list[dict[str, Any]]:
        stages = self.manifest.get("stages", [])
        return [s for s in stages if name is None or s["name"] == name]

    def last_stage(self, name: str) -> dict[str, Any] | None:
        found = self.stages(name)
        return found[-1] if found else None

    def model_path(self, variant: str = "base") -> Path:
        """Where a variant's Keras model lives; ``base`` is the trained (or imported) model.

        QAT variants are HDF5 (``model.h5``): tfmot's quantize layers do not round-trip the
        native format.
        """
        if variant == "base":
            path = self.path / "model" / "model.keras"
            if path.is_file():
                return path
            raise RunError(f"run {self.id} has no trained model; make one with `edgeship train`")
        for name in ("model.keras", "model.h5"):
            path = self.path / "variants" / variant / name
            if path.is_file():
                return path
        known = ", ".join(["base", *sorted(self.manifest.get("variants", {}))])
        raise RunError(f"run {self.id} has no variant '{variant}'; its variants: {known}")

    def variant_names(self) -> list[str]:
        return ["base", *self.manifest.get("variants", {})]

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.manifest_path, manifest)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold this run's lock for the block (re-entrant within a process).

        Taking it waits for another writer (saying so on stderr) or, with ``wait=False``, raises
        ``RunError`` at once; then finishes an interrupted commit and removes stale staging.
        """
        key = _dir_key(self.path)
        held = _HELD.get(key)
        if held is not None:
            held.depth += 1
            try:
                yield
            finally:
                held.depth -= 1
            return
        lock = _acquire(self.path, wait=self.wait)
        _HELD[key] = _Held(lock)
        try:
            self._settle()
            _remove_stale_staging(self.path)
            _remove_stale_pending(self.path.parent)
            yield
        finally:
            del _HELD[key]
            _release(lock, self.path)

    @contextmanager
    def stage(self, name: str, params: dict[str, Any] | None = None) -> Iterator[StageContext]:
        """Run a stage transactionally under the run's lock; see the module docstring."""
        with self.writing():
            staging = make_temp_dir(f"{STAGE_PREFIX}{name}-", self.path)
            ctx = StageContext(run=self, name=name, params=dict(params or {}), staging=staging)
            started = now_iso()
            t0 = time.perf_counter()
            try:
                yield ctx
                wall = time.perf_counter() - t0
                self._commit(ctx, started, wall)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def _commit(self, ctx: StageContext, started: str, wall: float) -> None:
        staging = ctx.staging
        present = _outermost([rel for rel in ctx._outputs if _exists(staging / rel)])
        outputs = []
        for rel in present:
            src = staging / rel
            files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
            for f in files:
                outputs.append({
                    "path": str(Path(rel) / f.relative_to(src)) if src.is_dir() else rel,
                    "sha256": sha256_file(f),
                    "bytes": f.stat().st_size,
                })
        manifest = self.manifest  # read again, under the lock: what other stages committed counts
        base = _BASES.get(_dir_key(self.path), {})
        for key, value in ctx.sections.items():
            manifest[key] = merge_section(manifest.get(key), value, base.get(key))
        manifest.setdefault("stages", []).append({
            "name": ctx.name,
            "started": started,
            "wall_time_s": round(wall, 3),
            "params": ctx.params,
            "outputs": outputs,
            "metrics": ctx.metrics,
        })
        write_json_atomic(staging / MANIFEST, manifest)
        for rel in present:
            fsync_tree(staging / rel)
            for parent in list(Path(rel).parents)[:-1]:
                fsync_dir(staging / parent)
        fsync_dir(staging)
        with _sigint_held():  # from the journal on, the commit completes (or is undone) whole
            try:
                write_json_atomic(self.path / JOURNAL, {"staging": staging.name, "outputs": present})
                touched = {self.path}
                for rel in present:
                    dst = self.path / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    if _exists(dst):
                        old = staging / REPLACED / rel
                        old.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(dst, old)
                    os.replace(staging / rel, dst)
                    touched.update(p for p in dst.parents if p.is_relative_to(self.path))
                for folder in sorted(touched, key=lambda p: -len(p.parts)):
                    fsync_dir(folder)
                os.replace(staging / MANIFEST, self.manifest_path)  # the commit point
                fsync_dir(self.path)
            except BaseException:
                self._settle()  # roll back the renames made so far
                raise
            self._settle()  # complete: drop the journal and staging (with what was replaced)
            _BASES[_dir_key(self.path)] = copy.deepcopy(manifest)

    def _settle(self) -> None:
        """Finish a commit that a kill or an error interrupted, per its journal (no-op without)."""
        journal_path = self.path / JOURNAL
        if not journal_path.exists():
            return
        try:
            journal = read_json(journal_path)
            staging = self.path / journal["staging"]
            rels = [str(r) for r in journal["outputs"]]
        except (ValueError, KeyError, TypeError):
            journal_path.unlink()  # written atomically, so never partial: not ours, ignore it
            return
        if not staging.name.startswith(STAGE_PREFIX) or staging.parent != self.path or any(
                Path(r).is_absolute() or ".." in Path(r).parts for r in rels):
            journal_path.unlink()
            return
        if (staging / MANIFEST).exists():  # the new manifest never moved in: undo the renames
            touched = {self.path, staging}
            for rel in reversed(rels):
                src, dst, old = staging / rel, self.path / rel, staging / REPLACED / rel
                if not _exists(src) and _exists(dst):  # the new output is in place: take it back
                    src.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(dst, src)
                if _exists(old):
                    os.replace(old, dst)
                touched.update({dst.parent, src.parent})
            for folder in touched:
                fsync_dir(folder)
        # else the manifest is in, and every output moved before it: the commit is complete
        journal_path.unlink()
        fsync_dir(self.path)
        shutil.rmtree(staging, ignore_errors=True)

    def _settle_if_interrupted(self) -> None:
        """For readers: finish an interrupted commit if no live writer holds the run."""
        if not (self.path / JOURNAL).exists():
            return
        try:
            lock = _try_lock(self.path / LOCK)
            if lock is None:  # the writer is alive and finishing it
                return
            try:
                self._settle()
            finally:
                _release(lock, self.path)
        except OSError:
            pass  # a read-only store: the reader still sees a whole manifest


class StageSaved(KeyboardInterrupt):
    """Ctrl-C that arrived while a stage's commit was being made final: the stage is saved."""

    stage_saved = True


def merge_section(current: Any, value: Any, base: Any) -> Any:
    """A stage's section ``value`` merged into the manifest's ``current`` one, at commit.

    Stages build a section from a manifest they read earlier (``base``: this process's first
    read of the run, or its last commit) plus their own change. For dicts on both sides the
    merge is per key: keys the stage added or changed relative to ``base`` are written, keys of
    ``base`` it dropped are removed (export drops a replaced pass/fail twin), and keys other
    writers committed meanwhile are kept. Anything else replaces ``current``.
    """
    if not (isinstance(value, dict) and isinstance(current, dict)):
        return value
    base = base if isinstance(base, dict) else {}
    merged = dict(current)
    for k, v in value.items():
        if k not in base or base[k] != v:
            merged[k] = v
    for k in base:
        if k not in value:
            merged.pop(k, None)
    return merged


# ---- the per-run lock ---------------------------------------------------------------------------


@dataclass
class _Held:
    file: IO[str]
    depth: int = 1


# Locks this process holds, by the run folder's (device, inode): survives renames and aliases.
_HELD: dict[tuple[int, int], _Held] = {}
# Per run folder, the manifest this process first read (or last committed): see merge_section.
_BASES: dict[tuple[int, int], dict[str, Any]] = {}


def _dir_key(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def _note_base(path: Path, manifest: dict[str, Any]) -> None:
    try:
        key = _dir_key(path)
    except OSError:
        return
    base = _BASES.get(key)
    if base is None or base.get("run_id") != manifest.get("run_id"):
        _BASES[key] = copy.deepcopy(manifest)


def _same_file(f: IO[str], path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _try_lock(lock_path: Path) -> IO[str] | None:
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


def _lock_blocking(lock_path: Path) -> IO[str]:
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


def _acquire(run_path: Path, *, wait: bool) -> IO[str]:
    lock_path = run_path / LOCK
    lock = _try_lock(lock_path)
    if lock is None:
        holder = _holder(lock_path)
        if not wait:
            raise RunError(f"run {run_path.name} is being written by {holder}; retry when it has "
                           "finished (without --no-wait, edgeship waits for it)")
        print(f"run {run_path.name} is being written by {holder}: waiting; "
              "pass --no-wait to fail instead", file=sys.stderr, flush=True)
        lock = _lock_blocking(lock_path)
    lock.seek(0)
    lock.truncate()
    lock.write(json.dumps({"pid": os.getpid(), "command": _command_line(), "since": now_iso()}) + "\n")
    lock.flush()
    return lock


def _release(lock: IO[str], run_path: Path) -> None:
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


@contextmanager
def _sigint_held() -> Iterator[None]:
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


# ---- leftovers of killed processes -------------------------------------------------------------


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _outermost(rels: list[str]) -> list[str]:
    """Outputs with any output inside another one dropped: the outer one carries it."""
    paths = [Path(r) for r in rels]
    return [r for r, p in zip(rels, paths, strict=True)
            if not any(q != p and q in p.parents for q in paths)]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_stale_staging(run_path: Path) -> None:
    """Staging folders and temp files of killed writers (call with the run's lock held)."""
    for entry in run_path.iterdir():
        name = entry.name
        if name.startswith(STAGE_PREFIX) or (
                name.startswith(".") and (name.endswith(".tmp") or ".old-" in name)):
            _remove(entry)


def _remove_stale_pending(root: Path) -> None:
    """``.pending-*`` runs whose creator is gone: their lock is free and once named a holder."""
    try:
        entries = [p for p in root.iterdir() if p.name.startswith(PENDING_PREFIX) and p.is_dir()]
    except OSError:
        return
    for pending in entries:
        try:
            lock = _try_lock(pending / LOCK)
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


class RunStore:
    """The folder that holds runs (``./runs``, ``--runs-dir`` or ``$EDGESHIP_RUNS_DIR``)."""

    def __init__(self, root: str | Path | None = None, *, wait: bool = True):
        self.root = Path(root) if root is not None else default_root()
        self.wait = wait  # False (``edgeship --no-wait``): writers fail instead of waiting for a lock

    def _ensure_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise RunError(
                f"runs directory {self.root} cannot be written ({e.strerror or e}); "
                f"pass a writable one with --runs-dir or {ENV_ROOT}"
            ) from e

    @contextmanager
    def new_run(self, label: str, seed: int) -> Iterator[RunDir]:
        """Create a run under a hidden name; it appears under its id only if the block succeeds."""
        self._ensure_writable()
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        run_id = f"{stamp}-{_slug(label)}-{secrets.token_hex(2)}"
        pending = make_temp_dir(f"{PENDING_PREFIX}{run_id}-", self.root)
        run = RunDir(pending, wait=self.wait)
        try:
            with run.writing():  # held until the run has its final name
                run.write_manifest({
                    "schema_version": SCHEMA_VERSION,
                    "run_id": run_id,
                    "created": now_iso(),
                    "seed": seed,
                    "environment": environment(),
                    "stages": [],
                })
                yield run
                final = self.root / run_id
                os.replace(pending, final)
                fsync_dir(self.root)
                run.path = final
        except StageSaved:
            raise KeyboardInterrupt from None  # saved into a run that is now discarded
        finally:
            if pending.exists():
                shutil.rmtree(pending, ignore_errors=True)

    def list(self) -> list[RunDir]:
        """Committed runs, oldest first."""
        if not self.root.is_dir():
            return []
        runs = [
            RunDir(p, wait=self.wait) for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
        ]
        return sorted(runs, key=_created_key)

    def resolve(self, ref: str | Path) -> RunDir:
        """A run from a path, a run id, or ``latest``."""
        ref_s = str(ref)
        if ref_s == "latest":
            runs = self.list()
            if not runs:
                raise RunError(
                    f"no runs in {self.root}; make one with `edgeship train` or `edgeship run`"
                )
            return _opened(runs[-1])
        candidates = [Path(ref_s), self.root / ref_s]
        for cand in candidates:
            if (cand / MANIFEST).is_file():
                return _opened(RunDir(cand, wait=self.wait))
        matches = [r for r in self.list() if r.path.name.startswith(ref_s)]
        if len(matches) == 1:
            return _opened(matches[0])
        known = ", ".join(r.path.name for r in self.list()[-5:]) or "none yet"
        raise RunError(
            f"no run '{ref_s}' (a path, a run id or 'latest') in {self.root}; recent runs: {known}"
        )


def _opened(run: RunDir) -> RunDir:
    run._settle_if_interrupted()
    return run


def _created_key(run: RunDir) -> tuple[str, str]:
    try:
        return (run.manifest.get("created", ""), run.path.name)
    except RunError:
        return ("", run.path.name)


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return "-".join(filter(None, keep.split("-")))[:32] or "run"
