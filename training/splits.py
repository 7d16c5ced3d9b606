"""Train / validation / test splits.

Stratified random by default (seeded). With a time column, the oldest rows train and the
newest test, the way a model meets data after it ships.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship.core.errors import DataError, InputError
from edgeship.training.datasets import RawDataset


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    method: str
    info: dict[str, Any]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_dataset(
    data: RawDataset, seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> Split:
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 0.9):
        raise InputError(
            f"--val-fraction {val_fraction} and --test-fraction {test_fraction} must each be in "
            "(0, 1) and leave at least 10% for training"
        )
    if data.time is not None:
        return _time_split(data, val_fraction, test_fraction)
    return _stratified_split(data, seed, val_fraction, test_fraction)


def _stratified_split(data: RawDataset, seed: int, val_f: float, test_f: float) -> Split:
    from sklearn.model_selection import train_test_split

    n, k = data.rows, len(data.labels)
    needed = _rows_needed(k, val_f, test_f)
    counts = np.bincount(data.y, minlength=k)
    if n < needed or counts.min() < 3:
        rare = data.labels[int(counts.argmin())]
        raise DataError(
            f"{n} rows are fewer than the split needs: with {k} classes and val/test fractions "
            f"{val_f}/{test_f}, give at least {needed} rows and 3 per class (class '{rare}' has "
            f"{int(counts.min())})"
        )
    idx = np.arange(n)
    try:
        rest, test = train_test_split(idx, test_size=test_f, stratify=data.y, random_state=seed)
        train, val = train_test_split(
            rest, test_size=val_f / (1 - test_f), stratify=data.y[rest], random_state=seed
        )
    except ValueError as e:
        raise DataError(
            f"{n} rows are fewer than a stratified split needs ({e}); add rows or lower "
            "--val-fraction/--test-fraction"
        ) from e
    info = {"seed": seed, "fractions": {"val": val_f, "test": test_f}, "stratified": True}
    return Split(np.sort(train), np.sort(val), np.sort(test), "stratified", info)


def _time_split(data: RawDataset, val_f: float, test_f: float) -> Split:
    n = data.rows
    if n < 10:
        raise DataError(f"{n} rows are fewer than a time split needs (at least 10)")
    order = np.argsort(data.time.to_numpy(), kind="stable")
    n_test = max(1, round(n * test_f))
    n_val = max(1, round(n * val_f))
    train = order[: n - n_test - n_val]
    val = order[n - n_test - n_val : n - n_test]
    test = order[n - n_test :]
    if len(np.unique(data.y[train])) < 2:
        raise DataError(
            "the oldest rows (the time split's train part) hold a single class; a time split "
            "cannot train on them: drop --time-column for a stratified split"
        )

    def span(part: np.ndarray) -> list[str]:
        t = data.time.iloc[part]
        return [str(t.min()), str(t.max())]

    info = {
        "time_column": data.time_column,
        "fractions": {"val": val_f, "test": test_f},
        "ranges": {"train": span(train), "val": span(val), "test": span(test)},
    }
    return Split(train, val, test, "time", info)


def _rows_needed(n_classes: int, val_f: float, test_f: float) -> int:
    """Each held-out split must be able to hold every class once."""
    return max(10, math.ceil(n_classes / min(val_f, test_f)))


def balanced_class_weight(y_train: np.ndarray, n_classes: int) -> dict[int, float]:
    """n / (k * count): the weighting scikit-learn calls 'balanced'."""
    counts = np.bincount(y_train, minlength=n_classes).astype(float)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = len(y_train) / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}
