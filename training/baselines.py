"""The simplest models first: does the network earn its keep?"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeship.training.evaluation import accuracy


def run_baselines(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray, n_classes: int, seed: int, *,
                  x_val: np.ndarray | None = None,
                  y_val: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Zero-rule and logistic regression on the same split and the same preprocessing.

    Test accuracy and macro F1 per baseline; with a validation split also ``val_accuracy``,
    which training compares its model with (the test split stays unseen by any decision).
    """
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
        probs = _probs(clf, xte, n_classes)
        pred = probs.argmax(axis=1)
        results[name] = {
            "accuracy": accuracy(probs, y_test),
            "macro_f1": float(f1_score(y_test, pred, average="macro", zero_division=0)),
        }
        if x_val is not None and y_val is not None and len(y_val):
            val_probs = _probs(clf, x_val.reshape(len(x_val), -1), n_classes)
            results[name]["val_accuracy"] = accuracy(val_probs, y_val)
    return results


def _probs(clf: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    probs = np.zeros((len(x), n_classes))
    probs[:, clf.classes_] = clf.predict_proba(x)
    return probs


BASELINE_NAMES = {"zero_rule": "zero-rule", "logistic_regression": "logistic-regression"}


def baseline_verdict(val_accuracy: float, baselines: dict[str, dict[str, Any]],
                     val_rows: int) -> tuple[dict[str, bool], list[str]]:
    """Whether the model beats each baseline on validation, and one warning line if it does not.

    The zero-rule is beaten only by a strictly higher accuracy: tying it is predicting no better
    than always guessing the commonest class. Logistic regression is beaten unless the model is
    less accurate: a tie (both perfect on a small split, say) is no sign of a failed network.
    Recorded in metrics.json and the manifest so compression, export and the report can see a
    model that did not learn.
    """
    beats = {name: (val_accuracy > b["val_accuracy"] if name == "zero_rule"
                    else val_accuracy >= b["val_accuracy"])
             for name, b in baselines.items() if "val_accuracy" in b}
    lost = [name for name, ok in beats.items() if not ok]
    if not lost:
        return beats, []
    versus = ", ".join(f"{BASELINE_NAMES.get(n, n)} {baselines[n]['val_accuracy']:.3f}" for n in lost)
    fix = ("it learned nothing usable: check the labels and the data, or train longer"
           if not beats.get("zero_rule", True) else
           "a linear model does better: train longer or use a smaller model")
    return beats, [f"the model does not beat the baselines on validation ({val_rows} rows): "
                   f"accuracy {val_accuracy:.3f} vs {versus}; {fix}"]
