"""Export validation that cannot bless a failure: top-1 agreement is judged as well as accuracy,
and the accuracy tolerance is never finer than one row of the test split.

The artifact is a real int8 TFLite export of a tiny model, run by edge_runtime; only the Keras
reference it is compared with is chosen, so each case has a known agreement and accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _models import hand_run, tiny_mlp

from edgeship.export.validate import ValidationConfig, tolerances, validate_artifact


def test_tolerance_never_finer_than_one_row_of_the_test_split() -> None:
    cfg = ValidationConfig()
    small, large = tolerances(cfg, 18), tolerances(cfg, 270)
    assert small.accuracy_drop == pytest.approx(1 / 18)  # 5.6 points, not the configured 2
    assert "18-row" in small.accuracy_rule and "5.56 points" in small.accuracy_rule
    assert large.accuracy_drop == pytest.approx(0.02) and "configured 2 points" in large.accuracy_rule
    assert small.top1_agreement == large.top1_agreement == pytest.approx(0.9)
    # five rows: one disagreeing row (0.8) must not fail on its own, two must
    assert tolerances(cfg, 5).top1_agreement == pytest.approx(0.8)
    assert "all but one" in tolerances(cfg, 5).agreement_rule


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A validated int8 export of a tiny 3-class model, its test inputs and its own outputs."""
    from edge_runtime import EdgeModel
    from edgeship.export.stage import ExportConfig, export_run

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 138)
    x = (rng.normal(size=(138, 6)) + y[:, None] * 1.5).astype(np.float32)
    model = tiny_mlp(6, 3)
    model.fit(x[:120], y[:120], epochs=3, verbose=0)
    run = hand_run(tmp_path_factory.mktemp("val"), model, x[:120], y[:120], x[120:], y[120:],
                   ["a", "b", "c"])
    (res,) = export_run(run, ExportConfig(formats="tflite", quantize="int8"))
    assert res.passed, res.validation["failures"]
    x_test = x[120:]  # 18 rows, as in the issue
    probs = EdgeModel.load(res.dir).infer(x_test)
    return res.dir, x_test, probs


@pytest.mark.slow
def test_agreement_zero_fails_even_when_accuracy_holds(int8_artifact: tuple) -> None:
    folder, x, probs = int8_artifact
    pred = probs.argmax(axis=1)
    reference = np.roll(probs, 1, axis=1)  # the Keras model's top class differs on every row
    ref_pred = reference.argmax(axis=1)
    assert (ref_pred != pred).all()
    y = np.where(np.arange(len(x)) % 2 == 0, pred, ref_pred)  # both right on half the rows
    v, _ = validate_artifact(folder, x, y, reference, exact=False)
    assert v["accuracy_drop"] == pytest.approx(0.0) and v["top1_agreement"] == 0.0
    assert not v["passed"]
    assert any("top-1 agreement with the Keras model is 0.0000" in f for f in v["failures"])
    assert v["min_top1_agreement"] == pytest.approx(0.9) and v["agreement_rule"]


@pytest.mark.slow
def test_one_row_of_a_tiny_split_is_within_tolerance_two_are_not(int8_artifact: tuple) -> None:
    folder, x, probs = int8_artifact
    flipped = probs.copy()
    flipped[0] = np.roll(flipped[0], 1)  # the reference disagrees on row 0 only
    y = flipped.argmax(axis=1)  # the reference is right everywhere: one row lost = 5.6 points
    v, _ = validate_artifact(folder, x, y, flipped, exact=False)
    assert v["accuracy_drop"] == pytest.approx(1 / 18) and v["top1_agreement"] == pytest.approx(17 / 18)
    assert v["passed"], v["failures"]
    assert v["tolerance"] == pytest.approx(1 / 18) and "18-row test split" in v["tolerance_rule"]
    assert v["warnings"] and "accuracy fell 5.56 points" in v["warnings"][0]
    assert "1 row of 18, top-1 differs on 1)" in v["warnings"][0]  # the evidence, in rows

    flipped[1] = np.roll(flipped[1], 1)
    y = flipped.argmax(axis=1)
    v, _ = validate_artifact(folder, x, y, flipped, exact=False)
    assert not v["passed"] and v["accuracy_drop"] == pytest.approx(2 / 18)
    assert any("more than 5.56" in f for f in v["failures"])
    assert any("top-1 agreement" in f for f in v["failures"])  # 16/18 = 0.889 < 0.9
