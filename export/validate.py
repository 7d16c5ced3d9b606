"""Every export validates itself: the artifact, run by ``edge_runtime`` (the very code a device
runs), against the Keras model over the whole test split.

Float32 exports must match the Keras outputs within ``float_tolerance`` (max abs difference of
the probabilities); that also bounds top-1 agreement, since a row's top class can only change
where the Keras model's top two probabilities are within twice the difference. 1e-3, not less:
each runtime sums in its own order, and a trained MobileNetV3Small (1.5 M parameters, 60
layers deep) differs by 1.3e-4 on TFLite's XNNPACK; a conversion error moves them far more.

Quantised ones (float16, dynamic, int8, and anything from a QAT model) are judged on two things,
because accuracy alone can bless a broken artifact (a chance-level model's int8 export that
agrees with it on no row loses no accuracy):

- accuracy: the test accuracy may fall by at most ``max(max_accuracy_drop, min_tolerance_rows /
  n)`` for a test split of n rows. Accuracy moves in steps of one row, and one row of an 18-row
  split is 5.6 points: a tolerance below one row would fail an artifact for a single flip. A
  drop above ``warn_accuracy_drop`` passes with a warning.
- top-1 agreement with the Keras model must be at least ``min(min_top1_agreement, 1 - 1/n)``
  (n >= 2): one disagreeing row never fails on its own, and agreement 0.0 always fails unless
  ``min_top1_agreement`` is 0.

The validation record keeps the tolerances used and the rule that gave them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import EdgeModel, EdgeRuntimeError
from edgeship.export import captured_stderr

_ROUNDING = 1e-9  # fractions of rows compared as floats


@dataclass(frozen=True)
class ValidationConfig:
    float_tolerance: float = 1e-3
    max_accuracy_drop: float = 0.02
    warn_accuracy_drop: float = 0.01
    min_top1_agreement: float = 0.9
    min_tolerance_rows: int = 1  # the accuracy tolerance is never below this many test rows


@dataclass(frozen=True)
class Tolerances:
    """The limits one artifact is judged by, for a test split of ``samples`` rows, and why."""

    accuracy_drop: float
    accuracy_rule: str
    top1_agreement: float
    agreement_rule: str


def tolerances(config: ValidationConfig, samples: int) -> Tolerances:
    """The accuracy-drop and agreement limits for a test split of ``samples`` rows (see module)."""
    n = max(samples, 1)
    row = config.min_tolerance_rows / n
    drop = max(config.max_accuracy_drop, row) if row > 0 else config.max_accuracy_drop
    pts = f"{config.max_accuracy_drop * 100:g} points"
    if row > 0 and row > config.max_accuracy_drop:
        rows = f"{config.min_tolerance_rows} row{'s' if config.min_tolerance_rows != 1 else ''}"
        accuracy_rule = (f"{rows} of the {samples}-row test split ({row * 100:.2f} points), more "
                         f"than the configured {pts}")
    else:
        accuracy_rule = f"the configured {pts} ({samples} rows: one row is {100 / n:.2f} points)"
    agree = config.min_top1_agreement if samples < 2 else min(config.min_top1_agreement, 1 - 1 / n)
    if agree < config.min_top1_agreement:
        agreement_rule = (f"all but one of the {samples} rows ({agree:.4f}), below the configured "
                          f"{config.min_top1_agreement:g}")
    else:
        agreement_rule = f"the configured {config.min_top1_agreement:g}"
    return Tolerances(drop, accuracy_rule, agree, agreement_rule)


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
    limits = tolerances(config, len(y))
    result: dict[str, Any] = {
        "ran": True,
        "samples": len(y),
        "criterion": "max_abs_diff" if exact else "accuracy_drop",
        "tolerance": config.float_tolerance if exact else limits.accuracy_drop,
        "tolerance_rule": ("the configured max abs difference (top-1 agreement follows from it)"
                           if exact else limits.accuracy_rule),
        "min_top1_agreement": None if exact else limits.top1_agreement,
        "agreement_rule": None if exact else limits.agreement_rule,
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
    agreement = float((pred == ref_pred).mean()) if len(y) else 1.0
    result.update({
        "top1_agreement": agreement,
        "accuracy": acc,
        "accuracy_drop": drop,
        "max_abs_diff": diff,
    })
    failures, warnings = _judge(exact, config, limits, diff, drop, ref_acc, acc, agreement, len(y))
    result["failures"] += failures
    result["warnings"] += warnings
    result["passed"] = not result["failures"]
    return result, probs


def _judge(exact: bool, config: ValidationConfig, limits: Tolerances, diff: float, drop: float,
           ref_acc: float, acc: float, agreement: float, rows: int) -> tuple[list[str], list[str]]:
    """The failures and warnings of one artifact by its criterion (float32: exact; else accuracy
    and top-1 agreement). A drop names its rows and the disagreements beside it: two rows lost of
    90 where the models disagree on six is a different story from twenty of 540."""
    if exact:
        if not diff <= config.float_tolerance:  # also catches NaN
            return [f"max abs output difference {diff:.3g} exceeds {config.float_tolerance:g}"], []
        return [], []
    failures, warnings = [], []
    lost, differ = round(drop * rows), round((1 - agreement) * rows)
    fell = (f"accuracy fell {drop * 100:.2f} points ({ref_acc:.4f} -> {acc:.4f}: "
            f"{lost} row{'' if lost == 1 else 's'} of {rows}, top-1 differs on {differ})")
    if not drop <= limits.accuracy_drop + _ROUNDING:  # k/n - j/n can land a hair above
        failures.append(f"{fell}, more than {limits.accuracy_drop * 100:.3g} "
                        f"({limits.accuracy_rule})")
    elif drop > config.warn_accuracy_drop:
        warnings.append(fell)
    if not agreement >= limits.top1_agreement - _ROUNDING:
        failures.append(f"top-1 agreement with the Keras model is {agreement:.4f}, below "
                        f"{limits.top1_agreement:.4g} ({limits.agreement_rule})")
    return failures, warnings


def static_validation(checks: dict[str, bool], reason: str) -> dict[str, Any]:
    """The validation of an artifact that cannot run on this machine: the exporter's checks."""
    failures = [f"check failed: {name}" for name, ok in checks.items() if not ok]
    if not checks:
        failures.append("a build for another machine must come with checks (none were given)")
    return {
        "samples": 0, "criterion": "static checks", "ran": False, "reason": reason,
        "checks": dict(checks), "tolerance": None, "tolerance_rule": None,
        "min_top1_agreement": None, "agreement_rule": None, "reference_accuracy": None,
        "top1_agreement": None, "accuracy": None, "accuracy_drop": None, "max_abs_diff": None,
        "passed": not failures, "failures": failures, "warnings": [],
    }
