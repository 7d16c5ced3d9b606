"""TFLite and ONNX export with real converters and runtimes, each artifact validated.

The digits CNN and the wine MLP come from conftest (``edgeship train``); exports go into a
private copy of each run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _models import copy_run, exported_copy, hand_run, odd_layer_class, read_artifact, tiny_mlp
from clihelp import assert_one_line_error, invoke

from edgeship.core.errors import DataError, InputError, RunError
from edgeship.core.runstore import RunDir
from edgeship.export import FORMATS, ExportFormat, get_format
from edgeship.export.stage import ExportConfig, export_run, list_artifacts
from edgeship.export.validate import ValidationConfig

pytestmark = pytest.mark.slow

EXPECTED = ["tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8", "onnx-float32",
            "onnx-int8", "tflite-int8-fio"]


@pytest.fixture(scope="session")
def digits_exports(digits_run: RunDir, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, dict]:
    return exported_copy(digits_run, tmp_path_factory)


@pytest.fixture(scope="session")
def wine_exports(tabular_run: RunDir, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, dict]:
    return exported_copy(tabular_run, tmp_path_factory)


@pytest.fixture(params=["digits", "wine"])
def exported(request: pytest.FixtureRequest) -> tuple[RunDir, dict]:
    return request.getfixturevalue(f"{request.param}_exports")


# ---------------------------------------------------------------- every format x quantization


@pytest.mark.parametrize("name", EXPECTED)
def test_each_export_validates_against_keras(exported: tuple[RunDir, dict], name: str) -> None:
    run, results = exported
    r = results[name]
    v = r.validation
    assert r.passed, v["failures"]
    assert r.dir == run.path / "exports" / "base" / name and r.dir.is_dir()
    assert v["samples"] == len(np.load(run.path / "data/splits.npz")["y_test"])
    if r.quantize == "float32":
        assert v["criterion"] == "max_abs_diff" and v["max_abs_diff"] <= 1e-4
        assert v["top1_agreement"] == 1.0
    else:
        assert v["criterion"] == "accuracy_drop" and v["accuracy_drop"] <= 0.02
        assert v["top1_agreement"] >= 0.95


@pytest.mark.parametrize("name", EXPECTED)
def test_artifact_json_is_everything_a_device_needs(exported: tuple[RunDir, dict], name: str) -> None:
    from edgeship.core.fsutil import sha256_file

    run, results = exported
    meta = read_artifact(results[name].dir)
    model_file = results[name].dir / meta["file"]
    assert sorted(p.name for p in results[name].dir.iterdir()) == sorted(["artifact.json", meta["file"]])
    assert meta["sha256"] == sha256_file(model_file) == results[name].sha256
    assert meta["bytes"] == model_file.stat().st_size
    data = run.manifest["data"]
    assert meta["labels"] == data["labels"] and meta["preprocessing"] == data["preprocessing"]
    assert meta["run_id"] == run.id and meta["variant"] == "base" and meta["model"]
    assert meta["format"] == name.split("-")[0] and meta["quantize"] == results[name].quantize
    assert meta["inputs"][0]["shape"] == [-1, *data["input"]["shape"]]
    assert meta["outputs"][0]["shape"] == [-1, len(data["labels"])]
    assert meta["runtime"]["requirements"] and meta["validation"]["passed"] is True
    assert meta["source"]["path"] == "model/model.keras"
    integer_io = name == "tflite-int8"
    for spec in meta["inputs"] + meta["outputs"]:
        assert spec["dtype"] == ("int8" if integer_io else "float32")
        assert (spec["quantization"] is not None) == integer_io


def test_sizes_shrink_with_quantization(digits_exports: tuple[RunDir, dict]) -> None:
    _, r = digits_exports
    size = {k: v.bytes for k, v in r.items()}
    assert size["tflite-int8"] < size["tflite-float16"] < size["tflite-float32"]
    assert size["tflite-dynamic"] < size["tflite-float16"]
    assert size["onnx-int8"] < size["onnx-float32"] / 2


def test_onnx_passes_the_full_checker_and_int8_is_qdq(exported: tuple[RunDir, dict]) -> None:
    import onnx

    _, r = exported
    for name in ("onnx-float32", "onnx-int8"):
        path = r[name].dir / "model.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(path))
        assert any(op.domain in ("", "ai.onnx") and op.version == 17 for op in proto.opset_import)
        ops = {n.op_type for n in proto.graph.node}
        assert ("QuantizeLinear" in ops and "DequantizeLinear" in ops) == (name == "onnx-int8")
        assert proto.graph.input[0].name == "input"


def test_edge_runtime_reproduces_the_recorded_validation(exported: tuple[RunDir, dict]) -> None:
    from edge_runtime import EdgeModel

    run, r = exported
    splits = np.load(run.path / "data/splits.npz")
    for name in ("tflite-int8", "onnx-int8", "tflite-float32"):
        probs = EdgeModel.load(r[name].dir).infer(splits["x_test"])
        acc = float((probs.argmax(1) == splits["y_test"]).mean())
        assert acc == r[name].validation["accuracy"]


def test_stage_is_recorded_in_the_manifest(digits_exports: tuple[RunDir, dict]) -> None:
    run, _ = digits_exports
    stages = run.stages("export")
    assert len(stages) == 2
    outputs = {o["path"] for o in stages[0]["outputs"]}
    assert "exports/base/tflite-int8/model.tflite" in outputs
    assert stages[0]["metrics"]["failed"] == [] and stages[0]["params"]["representative_samples"] > 0
    exports = run.manifest["exports"]
    assert set(exports) == {f"exports/base/{n}" for n in EXPECTED}
    listed = {a["dir"] for a in list_artifacts(run)}
    assert listed == set(exports)
    assert not list(run.path.glob(".stage-*"))


# ---------------------------------------------------------------- the CLI


@pytest.fixture()
def cli_with_export(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeship import cli

    monkeypatch.setitem(cli.COMMANDS, "export", ("edgeship.cli.export:export", "Export."))


def test_cli_json_prints_one_object(cli_with_export: None, tabular_run: RunDir, tmp_path: Path) -> None:
    run = copy_run(tabular_run, tmp_path)
    result = invoke(tmp_path, "export", run.id, "--format", "onnx", "--quantize", "int8", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    (art,) = doc["artifacts"]
    assert set(art) == {"dir", "format", "variant", "target", "quantize", "bytes", "sha256", "validation"}
    assert set(art["validation"]) == {"top1_agreement", "accuracy", "max_abs_diff", "passed"}
    assert art["format"] == "onnx" and art["quantize"] == "int8" and art["validation"]["passed"]
    assert Path(art["dir"]).is_dir()


@pytest.mark.parametrize(("args", "needles"), [
    (["--variant", "pruned"], ["unknown variant 'pruned'", "base"]),
    (["--format", "coreml"], ["unknown export format 'coreml'", "tflite"]),
    (["--quantize", "int4"], ["unknown quantization 'int4'"]),
    (["--format", "onnx", "--quantize", "float16"], ["onnx cannot export float16"]),
    (["--io", "uint8"], ["--io"]),
])
def test_cli_bad_input_is_one_line(cli_with_export: None, tabular_run: RunDir, tmp_path: Path,
                                   args: list[str], needles: list[str]) -> None:
    run = copy_run(tabular_run, tmp_path)
    before = (run.path / "manifest.json").read_text()
    result = invoke(tmp_path, "export", run.id, *args)
    assert_one_line_error(result, *needles)
    assert (run.path / "manifest.json").read_text() == before
    assert not (run.path / "exports").exists()


# ---------------------------------------------------------------- bad runs and failures


def _blobs(n: int = 120, features: int = 6, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, features)).astype(np.float32) + y[:, None] * 1.5
    return x[:90], y[:90], x[90:], y[90:]


def test_run_without_a_trained_model(tmp_path: Path) -> None:
    xt, yt, xs, ys = _blobs()
    run = hand_run(tmp_path, None, xt, yt, xs, ys, ["a", "b", "c"])
    with pytest.raises(RunError, match=r"no trained model \(model/model.keras\).*edgeship train"):
        export_run(run, ExportConfig(formats="tflite"))


def test_int8_needs_a_representative_set(tmp_path: Path) -> None:
    xt, yt, xs, ys = _blobs()
    model = tiny_mlp(6, 3)
    run = hand_run(tmp_path, model, xt[:5], yt[:5], xs, ys, ["a", "b", "c"])
    with pytest.raises(DataError, match="representative set of at least 10 train samples; this run has 5"):
        export_run(run, ExportConfig(formats="tflite", quantize="int8"))
    assert export_run(run, ExportConfig(formats="tflite", quantize="float32"))[0].passed  # float still works


@pytest.mark.parametrize(("fmt", "converter"), [("tflite", "TFLite converter"), ("onnx", "tf2onnx")])
def test_unsupported_operator_names_layer_and_converter(tmp_path: Path, fmt: str, converter: str) -> None:
    xt, yt, xs, ys = _blobs()
    model = tiny_mlp(6, 3, middle=odd_layer_class()(name="bessel"))
    run = hand_run(tmp_path, model, xt, yt, xs, ys, ["a", "b", "c"])
    # recorded as failed: the others go on
    (result,) = export_run(run, ExportConfig(formats=fmt, quantize="float32"))
    (msg,) = result.validation["failures"]
    assert converter in msg and "BesselI0e" in msg and "'bessel' (BesselLayer)" in msg
    assert "\n" not in msg and not result.passed
    assert result.dir.name == f"{fmt}-float32.failed"
    assert sorted(p.name for p in result.dir.iterdir()) == ["artifact.json"]


def test_failed_validation_is_kept_aside_and_replaces_a_stale_pass(tmp_path: Path) -> None:
    xt, yt, xs, ys = _blobs()
    model = tiny_mlp(6, 3)
    model.fit(xt, yt, epochs=3, verbose=0)
    run = hand_run(tmp_path, model, xt, yt, xs, ys, ["a", "b", "c"])
    (ok,) = export_run(run, ExportConfig(formats="tflite", quantize="int8"))
    assert ok.passed and ok.dir.name == "tflite-int8"
    impossible = ValidationConfig(max_accuracy_drop=-1.0, min_tolerance_rows=0)
    (bad,) = export_run(run, ExportConfig(formats="tflite", quantize="int8", validation=impossible))
    assert not bad.passed and bad.dir.name == "tflite-int8.failed"
    assert "accuracy fell" in bad.validation["failures"][0]
    # and the one line says where int8 loses the model (TFLite's quantization debugger)
    assert "int8 loses it most at layer 'hidden'" in bad.validation["failures"][0]
    assert read_artifact(bad.dir)["validation"]["passed"] is False
    assert not ok.dir.exists()  # the old pass no longer describes what export produces
    assert run.last_stage("export")["metrics"]["failed"] == ["exports/base/tflite-int8.failed"]
    (again,) = export_run(run, ExportConfig(formats="tflite", quantize="int8"))
    assert again.passed and not bad.dir.exists()


def test_variants_export_from_their_own_folder(tmp_path: Path) -> None:
    xt, yt, xs, ys = _blobs()
    run = hand_run(tmp_path, tiny_mlp(6, 3, seed=0), xt, yt, xs, ys, ["a", "b", "c"])
    with run.stage("compress", {}) as st:
        tiny_mlp(6, 3, seed=1).save(st.output_dir("variants/small") / "model.keras")
        st.set_section("variants", {"small": {"dir": "variants/small", "parent": "base"}})
    results = export_run(run, ExportConfig(variants="all", formats="onnx"))
    assert [(r.variant, r.dir.name, r.passed) for r in results] == [
        ("base", "onnx-float32", True), ("small", "onnx-float32", True)]
    small = read_artifact(results[1].dir)
    assert small["variant"] == "small" and small["source"]["path"] == "variants/small/model.keras"
    assert small["sha256"] != read_artifact(results[0].dir)["sha256"]


def test_qat_variant_converts_to_int8_directly(tmp_path: Path) -> None:
    """A QAT variant (saved as .h5, as compression does) exports to int8 with its own ranges."""
    import tensorflow_model_optimization as tfmot

    xt, yt, xs, ys = _blobs()
    run = hand_run(tmp_path, tiny_mlp(6, 3), xt, yt, xs, ys, ["a", "b", "c"])
    qat = tfmot.quantization.keras.quantize_model(tiny_mlp(6, 3))
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(xt, yt, epochs=3, verbose=0)
    with run.stage("compress", {}) as st:
        qat.save(st.output_dir("variants/qat") / "model.h5")
        st.set_section("variants", {"qat": {"dir": "variants/qat", "model_file": "model.h5"}})
    results = export_run(run, ExportConfig(variants="qat", formats="tflite,onnx", quantize="int8"))
    assert [r.dir.name for r in results] == ["tflite-int8", "onnx-int8"]
    for r in results:
        meta = read_artifact(r.dir)
        assert r.passed, r.validation
        assert meta["qat"] is True and meta["validation"]["criterion"] == "accuracy_drop"
    assert read_artifact(results[0].dir)["inputs"][0]["dtype"] == "int8"
    assert read_artifact(results[1].dir)["quantization"]["method"].startswith("qat")


# ---------------------------------------------------------------- the registry


def test_registry_names_and_folders() -> None:
    assert {"tflite", "onnx", "tvm"} <= set(FORMATS)
    assert FORMATS["tvm"].source == "onnx" and FORMATS["tvm"].targets
    assert FORMATS["tflite"].dirname("int8", "float32") == "tflite-int8-fio"
    assert FORMATS["onnx"].dirname("int8", "float32") == "onnx-int8"
    assert FORMATS["tvm"].dirname("float32", target="rpi4") == "tvm-rpi4"
    assert FORMATS["tvm"].dirname("float32", target='{"kind": "llvm"}') == "tvm-custom"
    with pytest.raises(InputError, match="unknown export format 'x'"):
        get_format("x")


def test_a_format_built_from_onnx_plugs_in_by_name(monkeypatch: pytest.MonkeyPatch,
                                                   tabular_run: RunDir, tmp_path: Path) -> None:
    """The TVM slot, filled with a stand-in exporter: ONNX source, static batch, validation."""
    fake = ExportFormat(name="tvm", entry="_models:fake_tvm_export", quantize=("float32",),
                        default_quantize=("float32",), summary="test", source="onnx", targets=True)
    monkeypatch.setitem(FORMATS, "tvm", fake)
    run = copy_run(tabular_run, tmp_path)
    r, cross = export_run(run, ExportConfig(formats="tvm", targets="host,rpi4"))
    assert r.passed, r.validation
    assert cross.dir.name == "tvm-rpi4" and cross.passed and cross.validation["ran"] is False
    assert cross.validation["checks"] == {"elf machine is AArch64": True}
    assert read_artifact(cross.dir)["inputs"][0]["shape"] == [-1, 13]  # copied from the ONNX source
    assert r.dir.name == "tvm-host" and r.validation["max_abs_diff"] <= 1e-4
    meta = read_artifact(r.dir)
    assert meta["format"] == "tvm" and meta["inputs"][0]["shape"][0] == 1
    assert meta["target"]["name"] == "host" and meta["tuning"] is None
    assert not (run.path / "exports/base/onnx-float32").exists()  # its ONNX source stayed in staging
