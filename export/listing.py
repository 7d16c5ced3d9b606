"""Reading exports back: the artifact.json of every export a run holds, for show, bench and deploy.

Kept apart from the stage because readers (the benchmarks, deploy, ``edgeship show``) need only
this, not the machinery that builds artifacts.
"""

from __future__ import annotations

from typing import Any

from edge_runtime.artifact import ARTIFACT_FILE
from edgeship.core.fsutil import read_json
from edgeship.core.runstore import RunDir
from edgeship.export.plan import FAILED_SUFFIX


def list_artifacts(run: RunDir, include_failed: bool = True) -> list[dict[str, Any]]:
    """artifact.json of every export in a run (``dir`` added, relative to the run), for show/bench."""
    found = []
    for meta_path in sorted((run.path / "exports").glob(f"*/*/{ARTIFACT_FILE}")):
        folder = meta_path.parent
        failed = folder.name.endswith(FAILED_SUFFIX)
        if failed and not include_failed:
            continue
        meta = read_json(meta_path)
        meta["dir"] = str(folder.relative_to(run.path))
        meta["failed"] = failed
        found.append(meta)
    return found
