"""The reference a device's traffic is compared with, rebuilt from the run that made the model.

- features: the train split's raw values (tabular: the standardisation undone, one-hot columns
  read back as their category; images: the per-image mean, std and intensity histogram that
  ``edge_runtime.serve.requestlog`` logs on the device, computed the same way);
- predictions: the monitored artifact itself (found in ``exports/`` by its sha256) run with
  ``edge_runtime`` on the test split: its prediction mix, mean confidence and accuracy;
- int8 clipping: the fraction of the calibration rows' values outside the artifact's input
  quantisation range (what the calibration saw, against what the device sees).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.artifact import ARTIFACT_FILE
from edge_runtime.serve.requestlog import OTHER, clipped_fraction, image_stats
from edgeship.core.errors import RunError
from edgeship.core.fsutil import read_json
from edgeship.core.runstore import RunDir
from edgeship.devices.monitoring.drift import quantile_edges


@dataclass
class Reference:
    """What a window is compared with; numeric and image values are per train row."""

    run_id: str
    kind: str
    labels: list[str]
    spec: dict[str, Any]
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    categorical: dict[str, dict[str, int]] = field(default_factory=dict)  # column -> value -> count
    image_hist: np.ndarray | None = None  # mean intensity histogram over the train images
    prediction_counts: np.ndarray | None = None  # the test split's predicted classes
    mean_confidence: float | None = None
    test_accuracy: float | None = None
    clipped: float | None = None  # calibration rows' clipped fraction (int8 inputs)
    artifact: str | None = None  # exports/<variant>/<fmt>, relative to the run

    def edges(self, name: str) -> list[float]:
        """Train deciles of a numeric feature (or image statistic)."""
        return quantile_edges(self.numeric[name])

    def summary(self) -> dict[str, Any]:
        """What the monitor result records of its reference."""
        counts = self.prediction_counts
        return {
            "run_id": self.run_id, "kind": self.kind, "artifact": self.artifact,
            "train_rows": int(next(iter(self.numeric.values())).size) if self.numeric else None,
            "prediction_mix": (None if counts is None else
                               {lab: round(float(c) / max(float(counts.sum()), 1.0), 4)
                                for lab, c in zip(self.labels, counts, strict=True)}),
            "mean_confidence": self.mean_confidence, "test_accuracy": self.test_accuracy,
            "clipped": self.clipped,
        }


def _splits(run: RunDir) -> dict[str, np.ndarray]:
    path = run.path / "data" / "splits.npz"
    if not path.is_file():
        raise RunError(f"run {run.id} has no data/splits.npz; monitor a run made by `edgeship train`")
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def train_features(spec: dict[str, Any], x_train: np.ndarray) -> tuple[dict[str, np.ndarray],
                                                                         dict[str, dict[str, int]]]:
    """Raw train values per numeric column and category counts per categorical one."""
    numeric: dict[str, np.ndarray] = {}
    categorical: dict[str, dict[str, int]] = {}
    j = 0
    for col in spec.get("columns", []):
        name = str(col["name"])
        if col.get("type") == "categorical":
            vocab = [str(v) for v in col.get("vocabulary") or []]
            block = x_train[:, j:j + len(vocab)]
            hot = block.max(axis=1) > 0.5
            idx = block.argmax(axis=1)
            counts = {v: int(((idx == k) & hot).sum()) for k, v in enumerate(vocab)}
            counts[OTHER] = int((~hot).sum())
            categorical[name] = counts
            j += len(vocab)
        else:
            std = float(col.get("std", 1.0)) or 1.0
            numeric[name] = x_train[:, j].astype(np.float64) * std + float(col.get("mean", 0.0))
            j += 1
    return numeric, categorical


def image_features(spec: dict[str, Any], x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-image mean and std (``image.mean``, ``image.std``) and the mean intensity histogram."""
    rows = [image_stats(spec, img) for img in x]
    values = {"image.mean": np.array([r["mean"] for r in rows]),
              "image.std": np.array([r["std"] for r in rows])}
    return values, np.mean([r["hist"] for r in rows], axis=0)


def find_artifact(run: RunDir, sha256: str) -> Path | None:
    """The export folder of ``run`` whose model file has this sha256."""
    exports = run.path / "exports"
    if not sha256 or not exports.is_dir():
        return None
    for meta_path in sorted(exports.glob(f"*/*/{ARTIFACT_FILE}")):
        try:
            if read_json(meta_path).get("sha256") == sha256:
                return meta_path.parent
        except (OSError, ValueError):
            continue
    return None


def build_reference(run: RunDir, sha256: str) -> Reference:
    """The reference for the model version ``sha256`` of ``run`` (an export of it)."""
    manifest = run.manifest
    data = manifest.get("data") or {}
    spec = dict(data.get("preprocessing") or {})
    kind = str(data.get("kind") or spec.get("kind") or "")
    splits = _splits(run)
    ref = Reference(run.id, kind, [str(x) for x in data.get("labels") or []], spec)
    x_train = splits["x_train"].astype(np.float32, copy=False)
    if kind == "image":
        ref.numeric, ref.image_hist = image_features(spec, x_train)
    else:
        ref.numeric, ref.categorical = train_features(spec, x_train)
    folder = find_artifact(run, sha256)
    if folder is None:
        known = sorted(str(p.parent.relative_to(run.path))
                       for p in (run.path / "exports").glob(f"*/*/{ARTIFACT_FILE}"))
        raise RunError(f"model version {sha256[:12] or '(no sha256 in the log)'} is not an export of run "
                       f"{run.id} (exports: {', '.join(known) or 'none'}); monitor the run the device's "
                       "model came from")
    from edge_runtime.model import EdgeModel

    model = EdgeModel.load(folder)
    ref.artifact = str(folder.relative_to(run.path))
    probs = model.infer(splits["x_test"].astype(np.float32))
    pred = probs.argmax(axis=1)
    ref.prediction_counts = np.bincount(pred, minlength=probs.shape[1]).astype(np.float64)
    ref.mean_confidence = round(float(probs.max(axis=1).mean()), 6)
    if "y_test" in splits and len(splits["y_test"]):
        ref.test_accuracy = round(float((pred == splits["y_test"]).mean()), 6)
    spec_in = model.artifact["inputs"][0]
    if spec_in.get("quantization"):
        from edgeship.training.calibration import calibration_set

        y_train = splits.get("y_train")
        cal = calibration_set(x_train, y_train, int(manifest.get("seed", 0)))
        ref.clipped = clipped_fraction(cal.rows, spec_in["quantization"], str(spec_in["dtype"]))
    return ref


def summary_bins(run: RunDir) -> dict[str, list[float]]:
    """The train split's deciles per numeric column: the bin edges a device's ``summary`` log uses
    (pass them to ``RequestLog(bins=...)`` or record them as the artifact's ``monitoring.bins``)."""
    data = run.manifest.get("data") or {}
    spec = dict(data.get("preprocessing") or {})
    if spec.get("kind") != "tabular":
        return {}
    numeric, _ = train_features(spec, _splits(run)["x_train"])
    return {name: quantile_edges(values) for name, values in numeric.items()}
