"""``edgeship compress`` from the command line: options, recipes, your own model, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from clihelp import assert_one_line_error, invoke, invoke_json

from edgeship.core.runstore import RunDir


@pytest.fixture()
def run(digits_run: RunDir, tmp_path: Path) -> RunDir:
    dst = tmp_path / "runs" / digits_run.path.name
    shutil.copytree(digits_run.path, dst)
    return RunDir(dst)


def _foreign_model(tmp_path: Path, suffix: str, with_lambda: bool = False, side: int = 8) -> Path:
    """A Keras model made the way a user would, without edgeship."""
    from sklearn.datasets import load_digits

    from edgeship.training.keras_env import keras

    k = keras()
    layers = [k.layers.Conv2D(8, 3, activation="relu", input_shape=(side, side, 1)), k.layers.Flatten()]
    if with_lambda:
        layers.append(k.layers.Lambda(lambda t: t * 2.0))
    layers += [k.layers.Dense(32, activation="relu"), k.layers.Dense(10, activation="softmax")]
    model = k.Sequential(layers)
    model.compile("adam", "sparse_categorical_crossentropy")
    if side == 8:
        digits = load_digits()
        model.fit(digits.data.reshape(-1, 8, 8, 1) / 16.0, digits.target, epochs=2, verbose=0)
    path = tmp_path / f"theirs{suffix}"
    model.save(path)
    return path


@pytest.mark.slow
def test_compress_json_reports_each_variant(run: RunDir) -> None:
    out = invoke_json(run.path.parent, "compress", run.id, "--prune", "0.5", "--epochs", "1",
                      "--name", "half")
    (v,) = out["variants"]
    assert v["name"] == "half" and 0 <= v["test_accuracy"] <= 1
    assert {"dir", "accuracy_delta", "sparsity", "tflite_bytes", "tflite_gzip_bytes"} <= set(v)
    assert abs(v["sparsity"] - 0.5) <= 0.01
    shown = invoke(run.path.parent, "show", run.id)
    assert "half" in shown.stdout


@pytest.mark.slow
def test_low_rank_and_tabular_from_the_cli(tabular_run: RunDir, tmp_path: Path) -> None:
    dst = tmp_path / "runs" / tabular_run.path.name
    shutil.copytree(tabular_run.path, dst)
    out = invoke_json(dst.parent, "compress", "latest", "--low-rank", "auto", "--quantize", "int8",
                      "--epochs", "2")
    (v,) = out["variants"]
    assert v["name"] == "lowrankauto-int8" and v["deploy_form"] == "int8"
    assert v["params"] < json.loads((dst / "model/metrics.json").read_text())["params"]


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_bring_your_own_model(tmp_path: Path, suffix: str) -> None:
    model = _foreign_model(tmp_path, suffix)
    out = invoke_json(tmp_path / "runs", "compress", "--model", str(model), "--dataset", "digits",
                      "--quantize", "int8")
    run = RunDir(out["run_dir"])
    assert run.manifest["model"]["origin"]["sha256"] and run.last_stage("import")
    assert out["variants"][0]["test_accuracy"] > 0.5


# Bad options: tests/test_bad_inputs.py (COMPRESS).


def test_run_without_a_trained_model(tmp_path: Path) -> None:
    from edgeship.core.runstore import RunStore

    store = RunStore(tmp_path / "runs")
    with store.new_run("empty", 0) as empty, empty.stage("nothing"):
        pass
    assert_one_line_error(invoke(store.root, "compress", "latest", "--prune", "0.5"),
                          "no trained model", "edgeship train")


def test_foreign_files_that_are_not_models_or_unsafe(tmp_path: Path) -> None:
    text = tmp_path / "notes.keras"
    text.write_text("hello")
    runs = tmp_path / "runs"
    assert_one_line_error(invoke(runs, "compress", "--model", str(text), "--dataset", "digits",
                                 "--prune", "0.5"), "not a Keras model")
    csv_file = tmp_path / "weights.csv"
    csv_file.write_text("a,b\n")
    assert_one_line_error(invoke(runs, "compress", "--model", str(csv_file), "--dataset", "digits",
                                 "--prune", "0.5"), "not a Keras model")
    unsafe = _foreign_model(tmp_path, ".keras", with_lambda=True)
    assert_one_line_error(invoke(runs, "compress", "--model", str(unsafe), "--dataset", "digits",
                                 "--prune", "0.5"), "refused", "Lambda")
    unsafe_h5 = _foreign_model(tmp_path, ".h5", with_lambda=True)
    assert_one_line_error(invoke(runs, "compress", "--model", str(unsafe_h5), "--dataset", "digits",
                                 "--prune", "0.5"), "refused", "Lambda")
    mismatched = _foreign_model(tmp_path / "..", ".keras", side=12)
    assert_one_line_error(invoke(runs, "compress", "--model", str(mismatched), "--dataset", "digits",
                                 "--prune", "0.5"), "expects inputs of shape (12, 12, 1)", "(8, 8, 1)")
    assert not runs.exists() or not any(runs.iterdir())


def test_durations_parse() -> None:
    from edgeship.cli.options import parse_duration

    assert parse_duration("10m") == 600 and parse_duration("90s") == 90 and parse_duration("2") == 2
    assert parse_duration("1h") == 3600 and np.isclose(parse_duration("0.5m"), 30)


@pytest.mark.slow
def test_recipe_honours_the_fine_tuning_flags_and_records_them(run: RunDir) -> None:
    out = invoke_json(run.path.parent, "compress", run.id, "--recipe", "default", "--epochs", "1",
                      "--distill-epochs", "1", "--learning-rate", "0.001", "--batch-size", "64")
    assert [v["name"] for v in out["variants"]] == ["prune75-pqat", "distill25"]
    stages = run.stages("compress")
    assert [s["params"]["name"] for s in stages] == ["prune75-pqat", "distill25"]
    for s in stages:
        p = s["params"]
        assert (p["epochs"], p["distill_epochs"], p["learning_rate"], p["batch_size"]) == (1, 1, 0.001, 64)
    variants = run.manifest["variants"]
    assert variants["prune75-pqat"]["config"]["epochs"] == 1
    assert variants["distill25"]["config"]["distill_epochs"] == 1
    metrics = json.loads((run.path / "variants/distill25/metrics.json").read_text())
    assert metrics["notes"]["distillation"]["epochs"] == 1
    assert variants["prune75-pqat"]["sparsity_reached"]["overall"] >= 0.73


def test_recipe_and_search_refuse_the_flags_they_fix(tmp_path: Path) -> None:
    runs = tmp_path / "runs"  # refused before any run is read
    assert_one_line_error(invoke(runs, "compress", "latest", "--recipe", "default", "--name", "mine"),
                          "--recipe default fixes", "--name")
    assert_one_line_error(invoke(runs, "compress", "latest", "--recipe", "default", "--prune", "0.5"),
                          "--prune")
    assert_one_line_error(invoke(runs, "compress", "latest", "--search", "--student-width", "0.5"),
                          "--student-width")


@pytest.mark.slow
def test_search_honours_the_fine_tuning_flags_and_the_name(run: RunDir,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeship.compression.search as search_mod
    from edgeship.compression.stage import CompressConfig

    monkeypatch.setattr(search_mod, "search_space", lambda: [CompressConfig(prune=0.5, quantize="int8")])
    out = invoke_json(run.path.parent, "compress", run.id, "--search", "--accuracy-budget", "100",
                      "--epochs", "1", "--learning-rate", "0.002", "--batch-size", "16", "--name", "best")
    assert [v["name"] for v in out["variants"]] == ["best"]
    (stage,) = run.stages("search")
    assert stage["params"]["tuning"] == {"epochs": 1, "distill_epochs": 20, "seed": 0, "learning_rate": 0.002,
                                         "batch_size": 16}
    entry = run.manifest["variants"]["best"]
    assert entry["config"]["epochs"] == 1 and entry["config"]["learning_rate"] == 0.002
    assert entry["config"]["batch_size"] == 16 and entry["search_try"] == "search-prune50-int8"
    # the same name again: refused before the tries, unless --force
    assert_one_line_error(invoke(run.path.parent, "compress", run.id, "--search", "--name", "best"),
                          "already has a variant 'best'", "--force")
