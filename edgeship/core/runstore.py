"""The run directory: the contract between stages.

A run is ``<root>/<run-id>/`` with a ``manifest.json``. Stages write into a private staging
folder and commit at the end; an exception or Ctrl-C inside a stage removes the staging folder,
so the run is exactly as it was before the stage began. A new run is built under a hidden name
(``.pending-*``) and only appears under its id once its first stage has committed.

Writing is safe against other writers and against being killed at any point:

* **One writer at a time.** A stage holds the run's lock (``<run>/.lock``, an ``fcntl.flock``;
  the file names the holder's pid and command line) from before its staging folder exists until
  its commit or rollback is done. A second writer says whom it waits for and waits, or, with
  ``wait=False`` (``edgeship --no-wait``), fails at once; a stage that works before it commits
  (compress, bench) checks that at its start (``RunDir.begin``), and its wall time counts from
  there. The kernel drops a killed holder's lock.
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

The lock lives in ``runlock``, the journaled commit and the clean-up in ``runcommit``; this
module holds the run's API and the manifest's merge rules.
"""

from __future__ import annotations

import copy
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeship.core.errors import RunError
from edgeship.core.fsutil import fsync_dir, make_temp_dir, read_json, sha256_file, write_json_atomic
from edgeship.core.lineage import environment
from edgeship.core.runcommit import (
    JOURNAL,
    MANIFEST,
    PENDING_PREFIX,
    STAGE_PREFIX,
    StageSaved,
    commit_outputs,
    exists,
    outermost,
    remove_stale_pending,
    remove_stale_staging,
    settle,
)
from edgeship.core.runlock import HELD, LOCK, Held, acquire, dir_key, release, try_lock

SCHEMA_VERSION = 1
DEFAULT_ROOT = "runs"
ENV_ROOT = "EDGESHIP_RUNS_DIR"

# Per run folder, the manifest this process first read (or last committed): see merge_section.
_BASES: dict[tuple[int, int], dict[str, Any]] = {}


def default_root() -> Path:
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class StageStart:
    """When a stage's work began (``RunDir.begin``): its wall time runs from here, not from its commit."""

    started: str  # ISO-8601 UTC
    t0: float  # time.perf_counter()


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
        key = dir_key(self.path)
        held = HELD.get(key)
        if held is not None:
            held.depth += 1
            try:
                yield
            finally:
                held.depth -= 1
            return
        lock = acquire(self.path, wait=self.wait)
        HELD[key] = Held(lock)
        try:
            settle(self.path)
            remove_stale_staging(self.path)
            remove_stale_pending(self.path.parent)
            yield
        finally:
            del HELD[key]
            release(lock, self.path)

    def begin(self) -> StageStart:
        """Mark the start of a stage that works in memory before ``stage`` commits it.

        Compress and bench train, convert or measure for minutes and take the lock only to
        commit, so two of them can work on one run at once. Their wall time counts from here,
        and with ``wait=False`` a run another process is writing fails here, before the work,
        not after it (a writer that starts during the work still makes the commit wait, or fail).
        """
        if not self.wait:
            with self.writing():  # raises RunError naming the holder
                pass
        return StageStart(now_iso(), time.perf_counter())

    @contextmanager
    def stage(self, name: str, params: dict[str, Any] | None = None, *,
              start: StageStart | None = None) -> Iterator[StageContext]:
        """Run a stage transactionally under the run's lock; see the module docstring.

        ``start`` (from ``begin``) is when the stage's work began, if before this block.
        """
        with self.writing():
            staging = make_temp_dir(f"{STAGE_PREFIX}{name}-", self.path)
            ctx = StageContext(run=self, name=name, params=dict(params or {}), staging=staging)
            start = start or StageStart(now_iso(), time.perf_counter())
            try:
                yield ctx
                wall = time.perf_counter() - start.t0
                self._commit(ctx, start.started, wall)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def _commit(self, ctx: StageContext, started: str, wall: float) -> None:
        staging = ctx.staging
        present = outermost([rel for rel in ctx._outputs if exists(staging / rel)])
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
        base = _BASES.get(dir_key(self.path), {})
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
        commit_outputs(self.path, staging, present)
        _BASES[dir_key(self.path)] = copy.deepcopy(manifest)

    def _settle_if_interrupted(self) -> None:
        """For readers: finish an interrupted commit if no live writer holds the run."""
        if not (self.path / JOURNAL).exists():
            return
        try:
            lock = try_lock(self.path / LOCK)
            if lock is None:  # the writer is alive and finishing it
                return
            try:
                settle(self.path)
            finally:
                release(lock, self.path)
        except OSError:
            pass  # a read-only store: the reader still sees a whole manifest





def _note_base(path: Path, manifest: dict[str, Any]) -> None:
    try:
        key = dir_key(path)
    except OSError:
        return
    base = _BASES.get(key)
    if base is None or base.get("run_id") != manifest.get("run_id"):
        _BASES[key] = copy.deepcopy(manifest)


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
        if len(matches) > 1:
            names = [r.path.name for r in reversed(matches)]  # newest first
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise RunError(f"run id prefix '{ref_s}' matches {len(names)} runs: {shown}; "
                           "give more characters of the run id")
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
