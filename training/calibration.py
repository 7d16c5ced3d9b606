"""Which train rows calibrate int8: one routine for compress (what it measures) and export
(what it ships), so the int8 accuracy and size compress and search report belong to the very
model ``edgeship export`` writes.

Rows are drawn at random with the run's seed (not in file order, which may be sorted by class
or by time), stratified by class so every class's activations set the ranges in proportion
to its share of the train split. The same run, seed and count always give the same rows;
``Calibration.describe()`` records which ones (their count, the seed, and a hash of their
indices) in a variant's metrics and in each int8 artifact.json.

Only numpy and ``edgeship.core.errors`` are imported: export uses this without compression's
TensorFlow-heavy modules.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship.core.errors import DataError

# 256 rows: both converters calibrate the min/max of every activation (TFLite, and
# onnxruntime's default MinMax calibrator), which settle within a few hundred samples
# (TensorFlow's post-training quantization guide suggests ~100-500); more rows only slow the
# conversion (TFLite calibrates one row per step). 256 is also what compress used before, so
# its reported int8 numbers keep their scale.
CALIBRATION_ROWS = 256
# Fewer than this and the ranges come from a handful of rows: int8 is refused instead.
MIN_CALIBRATION_ROWS = 10


@dataclass(frozen=True)
class Calibration:
    """The calibration rows (float32, in train-split order) and where they came from."""

    rows: np.ndarray
    indices: np.ndarray  # positions in the train split, ascending
    seed: int
    stratified: bool

    def describe(self) -> dict[str, Any]:
        """What metrics.json and artifact.json record: enough to tell two calibrations apart."""
        return {
            "rows": len(self.indices),
            "seed": self.seed,
            "stratified": self.stratified,
            "indices_sha256": hashlib.sha256(self.indices.astype("<i8").tobytes()).hexdigest(),
        }


def calibration_set(
    x_train: np.ndarray,
    y_train: np.ndarray | None,
    seed: int,
    n: int = CALIBRATION_ROWS,
    fix: str = "export float32/float16/dynamic instead",
) -> Calibration:
    """Up to ``n`` train rows for int8 calibration, seeded, stratified when ``y_train`` holds
    class indices. ``fix`` ends the one-line DataError raised when the split cannot calibrate."""
    if len(x_train) < MIN_CALIBRATION_ROWS:
        raise DataError(
            f"int8 needs a representative set of at least {MIN_CALIBRATION_ROWS} train samples; "
            f"this run has {len(x_train)}: {fix}"
        )
    if not np.isfinite(x_train).all():
        raise DataError("the train split holds NaN or infinite values, so it cannot calibrate int8")
    labels = _class_labels(y_train, len(x_train))
    indices = pick_indices(len(x_train), labels, seed, n)
    rows = np.ascontiguousarray(x_train[indices], dtype=np.float32)
    return Calibration(rows=rows, indices=indices, seed=int(seed), stratified=labels is not None)


def pick_indices(total: int, labels: np.ndarray | None, seed: int, n: int) -> np.ndarray:
    """``min(n, total)`` distinct row positions, ascending; per class in proportion when
    ``labels`` is given (see ``class_quotas``)."""
    rng = np.random.default_rng(seed)
    n = max(0, min(int(n), total))
    if n == total:
        return np.arange(total, dtype=np.int64)
    if labels is None:
        return np.sort(rng.choice(total, size=n, replace=False)).astype(np.int64)
    counts = np.bincount(labels)
    picked = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False)
              for c, q in enumerate(class_quotas(counts, n)) if q]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def class_quotas(counts: np.ndarray, n: int) -> np.ndarray:
    """Rows per class summing to ``n``: proportional to ``counts`` (largest remainder), and at
    least one for every class present when ``n`` allows, so a rare class still sets ranges."""
    counts = np.asarray(counts, dtype=np.int64)
    exact = counts * n / counts.sum()
    quotas = np.floor(exact).astype(np.int64)
    remainder = exact - quotas
    order = np.argsort(-remainder, kind="stable")
    quotas[order[: n - int(quotas.sum())]] += 1
    for c in np.flatnonzero((counts > 0) & (quotas == 0)):
        donor = int(np.argmax(quotas))
        if quotas[donor] > 1:
            quotas[donor] -= 1
            quotas[c] += 1
    return np.minimum(quotas, counts)


def _class_labels(y: np.ndarray | None, rows: int) -> np.ndarray | None:
    """``y`` as non-negative class indices, or None when it is not a classification target."""
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != rows or y.dtype.kind not in "iub" or (len(y) and y.min() < 0):
        return None
    return y.astype(np.int64)
