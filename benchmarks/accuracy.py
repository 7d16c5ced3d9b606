"""Accuracy measured where the model runs: the test split that travels to each device, and the
top-1 agreement of what the device predicted with the model before export.

Every driver ships the run's raw test split (``write_run_testset``) with the artifacts; the
device runs it through the same loaded runtime it times (``edge_runtime.rounds``) and returns
its predictions. ``finish_evaluation`` then compares them with the Keras model's top-1, which
export recorded per variant, and drops the raw predictions from the stored result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.fsutil import read_json
from edgeship.core.runstore import RunDir
from edgeship.export.inputs import REFERENCE_FILE

TESTSET_STEM = "testset"


def write_run_testset(run: RunDir, folder: Path) -> Path | None:
    """The run's raw test split as a device-readable file in ``folder``; None if the run has none."""
    from edge_runtime.testset import write_testset
    from edgeship.export.stage import load_raw_test

    test = load_raw_test(run)
    if test is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return write_testset(folder / TESTSET_STEM, test["x"], test["y"], test["source"])


def reference_top1(run: RunDir, variant: str) -> np.ndarray | None:
    """The Keras model's top-1 on the test split for ``variant``, as export recorded it."""
    path = run.path / "exports" / variant / REFERENCE_FILE
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    top1 = data.get("top1") if isinstance(data, dict) else None
    return None if top1 is None else np.asarray(top1, dtype=np.int64)


def finish_evaluation(run: RunDir, result: dict[str, Any]) -> dict[str, Any]:
    """Set ``top1_agreement`` from the device's predictions; keep the stored result small."""
    evaluation = result.get("evaluation")
    if not isinstance(evaluation, dict):
        result.setdefault("top1_agreement", None)
        return result
    evaluation = dict(evaluation)  # configurations of one artifact may share one evaluation
    predictions = evaluation.pop("predictions", None)
    result["evaluation"] = evaluation
    reference = reference_top1(run, str(result.get("variant") or "base"))
    agreement = None
    if predictions is not None and reference is not None and len(reference) == len(predictions):
        agree = np.asarray(predictions, dtype=np.int64) == reference
        agreement = float(agree.mean()) if len(agree) else None
        evaluation["reference"] = "the Keras model before export (exports/<variant>/reference.json)"
    result["top1_agreement"] = agreement
    return result


def export_accuracy(meta: dict[str, Any]) -> float | None:
    """The export validation's host accuracy: the fallback when a device has no test split."""
    return (meta.get("validation") or {}).get("accuracy")
