"""Image models that learn on small folders, or say they did not.

The folders are sklearn's digits rendered as PNGs (one sub-folder per class), the way a user
brings photos. MobileNetV2 from keras.applications used to train to 99 % and predict one
constant output at inference: its batch-norm moving averages (momentum 0.999) never left their
start in a few hundred steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from clihelp import invoke

from edgeship.core.runstore import RunDir


def render_digits(root: Path, size: int, per_class: int) -> Path:
    """The first ``per_class`` digits of each class as ``size`` x ``size`` greyscale PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(10):
        folder = root / str(label)
        folder.mkdir(parents=True)
        for i in np.flatnonzero(digits.target == label)[:per_class]:
            pixels = (digits.images[i] / 16.0 * 255).astype(np.uint8)
            Image.fromarray(pixels, "L").resize((size, size), Image.BILINEAR).save(folder / f"{i}.png")
    return root


def test_batch_norm_statistics_are_recomputed_from_the_data() -> None:
    """After ``recompute_statistics`` the moving averages are the data's, nested layers included."""
    from edgeship.training.batchnorm import batch_norm_layers, recompute_statistics
    from edgeship.training.keras_env import keras

    k = keras()
    inner = k.Sequential([k.layers.BatchNormalization(momentum=0.999, name="bn")], name="inner")
    model = k.Sequential([k.Input((3,)), inner])
    x = np.random.default_rng(0).normal(loc=[5.0, -2.0, 0.0], scale=[1.0, 3.0, 0.5],
                                        size=(500, 3)).astype(np.float32)
    (bn,) = batch_norm_layers(model)
    assert recompute_statistics(model, x, batch_size=100) == 1
    np.testing.assert_allclose(bn.moving_mean.numpy(), x.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), x.var(axis=0), rtol=0.02)
    assert bn.momentum == 0.999  # restored


@pytest.mark.slow
def test_mobilenetv2_learns_on_a_small_image_folder(tmp_path: Path) -> None:
    """Old code: 0.1 test accuracy (one constant prediction), whatever train accuracy said.

    Augmentation is off: it pays over the longer runs of the benchmark (96 px, all 1,797 digits),
    and slows the first ten epochs on 210 images; this test is about the batch-norm statistics.
    """
    folder = render_digits(tmp_path / "digits", 32, 30)
    result = invoke(tmp_path / "runs", "train", "--dataset", str(folder), "--model", "mobilenetv2",
                    "--image-size", "32", "--epochs", "10", "--patience", "10", "--augment", "off",
                    "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["test_accuracy"] >= 0.4, out  # 10 classes: chance is 0.1
    assert out["val_accuracy"] > 0.4 and out["beats_baselines"]["zero_rule"] is True
    metrics = json.loads((Path(out["run_dir"]) / "model/metrics.json").read_text())
    assert metrics["batch_norm"]["momentum"] == 0.9 and metrics["batch_norm"]["layers"] == 52
    assert metrics["augmentation"] is None


@pytest.mark.slow
def test_a_model_at_chance_level_is_warned_about_and_recorded(tmp_path: Path) -> None:
    """Every image is the same picture: nothing to learn, so nothing may claim it learned."""
    from PIL import Image

    picture = Image.fromarray((np.arange(32 * 32) % 251).astype(np.uint8).reshape(32, 32), "L")
    for label in ("a", "b", "c"):
        (tmp_path / "same" / label).mkdir(parents=True)
        for i in range(20):  # 60 rows: validation holds 3 of each class
            picture.save(tmp_path / "same" / label / f"{i}.png")
    result = invoke(tmp_path / "runs", "train", "--dataset", str(tmp_path / "same"), "--model",
                    "mobilenetv2", "--image-size", "32", "--epochs", "1", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    warning = [ln for ln in result.stderr.splitlines() if "does not beat the baselines" in ln]
    assert len(warning) == 1 and "zero-rule" in warning[0], result.stderr
    assert out["beats_baselines"]["zero_rule"] is False and out["warnings"]
    run = RunDir(Path(out["run_dir"]))
    metrics = json.loads((run.path / "model/metrics.json").read_text())
    assert metrics["beats_baselines"]["zero_rule"] is False
    assert metrics["warnings"] == out["warnings"]
    stage = run.last_stage("train")["metrics"]
    assert stage["beats_baselines"]["zero_rule"] is False and stage["warnings"] == out["warnings"]
