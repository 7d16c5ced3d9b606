"""The run directory: the contract between stages.

A run is ``<root>/<run-id>/`` with a ``manifest.json``. Stages write into a private staging
folder and commit at the end: outputs are moved into place, then the manifest is replaced
atomically. An exception or Ctrl-C inside a stage removes the staging folder, so the run is
exactly as it was before the stage began. A new run is built under a hidden name and only
appears under its id once its first stage has committed.
"""

from __future__ import annotations

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
from edgeship.core.fsutil import (
    make_temp_dir,
    read_json,
    replace_tree,
    sha256_file,
    write_json_atomic,
)
from edgeship.core.lineage import environment

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
DEFAULT_ROOT = "runs"
ENV_ROOT = "EDGESHIP_RUNS_DIR"


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
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"stage outputs must be relative to the run: {relpath}")
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
        """Set a top-level manifest key (``data``, ``model``, ``variants`` ...) on commit."""
        self.sections[key] = value


class RunDir:
    """One run on disk and its manifest."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def id(self) -> str:
        return self.manifest.get("run_id", self.path.name)

    @property
    def manifest(self) -> dict[str, Any]:
        try:
            return read_json(self.manifest_path)
        except FileNotFoundError as e:
            raise RunError(
                f"{self.path} is not an edgeship run (no {MANIFEST}); "
                "list runs with `edgeship runs`"
            ) from e
        except ValueError as e:
            raise RunError(f"{self.manifest_path} is not valid JSON ({e}); the run is damaged") from e

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
    def stage(self, name: str, params: dict[str, Any] | None = None) -> Iterator[StageContext]:
        """Run a stage transactionally; see the module docstring."""
        staging = make_temp_dir(f".stage-{name}-", self.path)
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
        manifest = self.manifest
        outputs = []
        for rel in ctx._outputs:
            src = ctx.staging / rel
            if not src.exists():
                continue
            files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
            for f in files:
                outputs.append({
                    "path": str(Path(rel) / f.relative_to(src)) if src.is_dir() else rel,
                    "sha256": sha256_file(f),
                    "bytes": f.stat().st_size,
                })
        for rel in ctx._outputs:
            src = ctx.staging / rel
            if src.exists():
                replace_tree(src, self.path / rel)
        manifest.update(ctx.sections)
        manifest.setdefault("stages", []).append({
            "name": ctx.name,
            "started": started,
            "wall_time_s": round(wall, 3),
            "params": ctx.params,
            "outputs": outputs,
            "metrics": ctx.metrics,
        })
        self.write_manifest(manifest)


class RunStore:
    """The folder that holds runs (``./runs``, ``--runs-dir`` or ``$EDGESHIP_RUNS_DIR``)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()

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
        pending = make_temp_dir(f".pending-{run_id}-", self.root)
        run = RunDir(pending)
        run.write_manifest({
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "created": now_iso(),
            "seed": seed,
            "environment": environment(),
            "stages": [],
        })
        try:
            yield run
            final = self.root / run_id
            os.replace(pending, final)
            run.path = final
        finally:
            if pending.exists():
                shutil.rmtree(pending, ignore_errors=True)

    def list(self) -> list[RunDir]:
        """Committed runs, oldest first."""
        if not self.root.is_dir():
            return []
        runs = [
            RunDir(p) for p in self.root.iterdir()
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
            return runs[-1]
        candidates = [Path(ref_s), self.root / ref_s]
        for cand in candidates:
            if (cand / MANIFEST).is_file():
                return RunDir(cand)
        matches = [r for r in self.list() if r.path.name.startswith(ref_s)]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(r.path.name for r in self.list()[-5:]) or "none yet"
        raise RunError(
            f"no run '{ref_s}' (a path, a run id or 'latest') in {self.root}; recent runs: {known}"
        )


def _created_key(run: RunDir) -> tuple[str, str]:
    try:
        return (run.manifest.get("created", ""), run.path.name)
    except RunError:
        return ("", run.path.name)


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return "-".join(filter(None, keep.split("-")))[:32] or "run"
