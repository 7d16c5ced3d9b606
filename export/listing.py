"""Reading exports back: the artifact.json of every export a run holds, for show, bench and deploy.

Kept apart from the stage because readers (the benchmarks, deploy, ``edgeship show``) need only
this, not the machinery that builds artifacts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_runtime.artifact import ARTIFACT_FILE
from edgeship.core.errors import RunError
from edgeship.core.fsutil import read_json, sha256_file
from edgeship.core.names import split_names
from edgeship.core.runstore import RunDir
from edgeship.export.inputs import model_path
from edgeship.export.plan import FAILED_SUFFIX


def list_artifacts(run: RunDir, include_failed: bool = True) -> list[dict[str, Any]]:
    """artifact.json of every export in a run, for show/bench/deploy: ``dir`` added (relative to
    the run), ``failed``, and ``stale`` (why it no longer matches its variant's model, or None)."""
    found = []
    models: ModelHashes | None = None  # the manifest is read only if there are exports
    for meta_path in sorted((run.path / "exports").glob(f"*/*/{ARTIFACT_FILE}")):
        folder = meta_path.parent
        failed = folder.name.endswith(FAILED_SUFFIX)
        if failed and not include_failed:
            continue
        meta = read_json(meta_path)
        meta["dir"] = str(folder.relative_to(run.path))
        meta["failed"] = failed
        models = models or ModelHashes(run)
        meta["stale"] = models.stale_reason(meta)
        found.append(meta)
    return found


class ModelHashes:
    """The sha256 of each variant's Keras model as it is now, read once: what an artifact
    (``source.sha256``) or a benchmark result (``source_sha256``) must match to be current.

    Compressing again under a variant's name (``compress --force``) replaces its model; an
    export or a measurement made from the old one describes a model that no longer exists.
    """

    def __init__(self, run: RunDir, manifest: dict[str, Any] | None = None):
        self.run = run
        self.manifest = manifest if manifest is not None else run.manifest
        self._hashes: dict[str, str | None] = {}

    def current(self, variant: str) -> str | None:
        """The variant's model sha256, or None if the run no longer has that variant."""
        if variant not in self._hashes:
            try:
                self._hashes[variant] = sha256_file(model_path(self.run, self.manifest, variant))
            except RunError:
                self._hashes[variant] = None
        return self._hashes[variant]

    def check(self, variant: str, sha256: str | None, what: str) -> str | None:
        """Why ``what`` (made from ``variant``'s model with ``sha256``) is stale, or None if it is
        current or carries no hash to compare."""
        if not sha256:
            return None
        now = self.current(variant)
        if now is None:
            return f"{what} was made from variant {variant}, which run {self.run.id} no longer has"
        if now != sha256:
            return (f"{what} was made from an older model of variant {variant} (sha256 {sha256[:12]}, "
                    f"now {now[:12]})")
        return None

    def stale_reason(self, meta: dict[str, Any]) -> str | None:
        """Why an export (its artifact.json with ``dir``) is stale, or None."""
        variant = str(meta.get("variant") or Path(meta["dir"]).parent.name)
        return self.check(variant, (meta.get("source") or {}).get("sha256"), meta["dir"])


def stale_exports(run: RunDir, variants: Sequence[str] | str = "all") -> list[str]:
    """One line per stale export of ``variants`` (names, comma list or ``all``), with the fix."""
    wanted = set(split_names(variants) or ["all"])
    lines = []
    for meta in list_artifacts(run):
        variant = str(meta.get("variant") or Path(meta["dir"]).parent.name)
        if meta["stale"] and ("all" in wanted or variant in wanted):
            lines.append(f"{meta['stale']}; re-export it: `edgeship export {run.id} --variant {variant}`")
    return lines
