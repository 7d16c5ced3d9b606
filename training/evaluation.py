"""Classification metrics shared by training and compression, so every number means the same."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Mean gap between confidence and accuracy over equal-width confidence bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(conf[mask].mean() - correct[mask].mean())
    return float(ece)


def classification_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str]) -> dict[str, Any]:
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    pred = probs.argmax(axis=1)
    k = len(labels)
    precision, recall, _, support = precision_recall_fscore_support(
        y, pred, labels=list(range(k)), zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=list(range(k)), average="macro",
                                   zero_division=0)),
        "per_class": {
            labels[i]: {"precision": float(precision[i]), "recall": float(recall[i]),
                        "support": int(support[i])}
            for i in range(k)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(k))).tolist(),
        "ece": expected_calibration_error(probs, y),
    }


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == y).mean())
