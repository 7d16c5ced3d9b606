"""The simplest models first: does the network earn its keep?"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeship.training.evaluation import accuracy


def run_baselines(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray, n_classes: int, seed: int) -> dict[str, dict[str, Any]]:
    """Zero-rule and logistic regression on the same split and the same preprocessing."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    xtr = x_train.reshape(len(x_train), -1)
    xte = x_test.reshape(len(x_test), -1)
    results = {}
    for name, clf in (
        ("zero_rule", DummyClassifier(strategy="most_frequent")),
        ("logistic_regression", LogisticRegression(max_iter=2000, random_state=seed)),
    ):
        clf.fit(xtr, y_train)
        probs = np.zeros((len(xte), n_classes))
        probs[:, clf.classes_] = clf.predict_proba(xte)
        pred = probs.argmax(axis=1)
        results[name] = {
            "accuracy": accuracy(probs, y_test),
            "macro_f1": float(f1_score(y_test, pred, average="macro", zero_division=0)),
        }
    return results
