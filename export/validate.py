"""Every export validates itself: the artifact, run by ``edge_runtime`` (the very code a device
runs), against the Keras model over the whole test split.

Float32 exports must match the Keras outputs within ``float_tolerance`` (max abs difference of
the probabilities). Quantised ones (float16, dynamic, int8, and anything from a QAT model) must
keep test accuracy within ``max_accuracy_drop`` of the Keras model's; a drop above
``warn_accuracy_drop`` passes with a warning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import EdgeModel, EdgeRuntimeError
from edgeship.export import captured_stderr


@dataclass(frozen=True)
class ValidationConfig:
    float_tolerance: float = 1e-4
    max_accuracy_drop: float = 0.02
    warn_accuracy_drop: float = 0.01


def validate_artifact(
    folder: Path,
    x_test: np.ndarray,
    y_test: np.ndarray,
    reference: np.ndarray,
    *,
    exact: bool,
    config: ValidationConfig = ValidationConfig(),
    threads: int | None = None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Compare the artifact in ``folder`` with the Keras ``reference`` probabilities.

    ``exact`` selects the float32 criterion (max abs diff), else the accuracy-drop criterion.
    Returns the ``validation`` section of artifact.json and the artifact's probabilities
    (None if edge_runtime could not run it, which is itself a failed validation).
    """
    y = np.asarray(y_test).astype(np.int64)
    ref_pred = reference.argmax(axis=1)
    ref_acc = float((ref_pred == y).mean()) if len(y) else 0.0
    result: dict[str, Any] = {
        "ran": True,
        "samples": len(y),
        "criterion": "max_abs_diff" if exact else "accuracy_drop",
        "tolerance": config.float_tolerance if exact else config.max_accuracy_drop,
        "reference_accuracy": ref_acc,
        "top1_agreement": None,
        "accuracy": None,
        "accuracy_drop": None,
        "max_abs_diff": None,
        "passed": False,
        "failures": [],
        "warnings": [],
        "config": asdict(config),
    }
    try:
        with captured_stderr():  # LiteRT's "Created XNNPACK delegate" banner
            model = EdgeModel.load(folder, threads=threads)
            probs = model.infer(x_test)
    except EdgeRuntimeError as e:
        result["failures"].append(f"edge_runtime could not run the artifact: {e}")
        return result, None
    pred = probs.argmax(axis=1)
    acc = float((pred == y).mean()) if len(y) else 0.0
    drop = ref_acc - acc
    diff = float(np.abs(probs - reference).max()) if probs.size else 0.0
    result.update({
        "top1_agreement": float((pred == ref_pred).mean()) if len(y) else 1.0,
        "accuracy": acc,
        "accuracy_drop": drop,
        "max_abs_diff": diff,
    })
    failures, warnings = _judge(exact, config, diff, drop, ref_acc, acc)
    result["failures"] += failures
    result["warnings"] += warnings
    result["passed"] = not result["failures"]
    return result, probs


def _judge(exact: bool, config: ValidationConfig, diff: float, drop: float, ref_acc: float,
           acc: float) -> tuple[list[str], list[str]]:
    """The failures and warnings of one artifact by its criterion (float32: exact; else accuracy)."""
    if exact:
        if not diff <= config.float_tolerance:  # also catches NaN
            return [f"max abs output difference {diff:.3g} exceeds {config.float_tolerance:g}"], []
        return [], []
    fell = f"accuracy fell {drop * 100:.2f} points ({ref_acc:.4f} -> {acc:.4f})"
    if drop > config.max_accuracy_drop:
        return [f"{fell}, more than {config.max_accuracy_drop * 100:g}"], []
    if drop > config.warn_accuracy_drop:
        return [], [fell]
    return [], []


def static_validation(checks: dict[str, bool], reason: str) -> dict[str, Any]:
    """The validation of an artifact that cannot run on this machine: the exporter's checks."""
    failures = [f"check failed: {name}" for name, ok in checks.items() if not ok]
    if not checks:
        failures.append("a build for another machine must come with checks (none were given)")
    return {
        "samples": 0, "criterion": "static checks", "ran": False, "reason": reason,
        "checks": dict(checks), "tolerance": None, "reference_accuracy": None,
        "top1_agreement": None, "accuracy": None, "accuracy_drop": None, "max_abs_diff": None,
        "passed": not failures, "failures": failures, "warnings": [],
    }
