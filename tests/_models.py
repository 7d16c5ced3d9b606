"""Helpers for the export and edge_runtime tests: hand-built runs and a stand-in TVM exporter.

Runs made by ``edgeship train`` come from conftest's session fixtures; the tests export into a
copy so other tests see those runs as training left them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.runstore import RunDir, RunStore
from edgeship.export import ExportedModel, ExportRequest

ALL_QUANTIZE = "float32,float16,dynamic,int8"
_EXPORTED: dict[Path, tuple[RunDir, dict[str, Any]]] = {}


def exported_copy(run: RunDir, root_factory: Any) -> tuple[RunDir, dict[str, Any]]:
    """A copy of ``run`` with every TFLite and ONNX export, made once per session for all test
    modules (conftest's fixtures are per-module when imported, this cache is not).

    Exports: tflite-{float32,float16,dynamic,int8}, tflite-int8-fio, onnx-{float32,int8}, in
    two export stages. Returns the copy and its ExportResults by folder name.
    """
    from edgeship.export.stage import ExportConfig, export_run

    if run.path not in _EXPORTED:
        copy = copy_run(run, root_factory.mktemp(f"exported-{run.path.name}"))
        results = export_run(copy, ExportConfig(formats="tflite,onnx", quantize=ALL_QUANTIZE))
        results += export_run(copy, ExportConfig(formats="tflite", quantize="int8", io="float32"))
        _EXPORTED[run.path] = (copy, {r.dir.name: r for r in results})
    return _EXPORTED[run.path]


def copy_run(run: RunDir, root: Path) -> RunDir:
    """A private copy of a run (same id, another folder)."""
    dst = Path(root) / run.path.name
    shutil.copytree(run.path, dst)
    return RunDir(dst)


def hand_run(
    root: Path,
    model: Any | None,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    labels: list[str],
    preprocessing: dict[str, Any] | None = None,
    label: str = "hand",
) -> RunDir:
    """A run laid out by hand as docs/architecture.md says (model None: a run with data only)."""
    store = RunStore(root)
    with store.new_run(label, seed=0) as run, run.stage("train", {"by": "hand"}) as st:
        data = st.output_dir("data")
        np.savez_compressed(
            data / "splits.npz",
            x_train=x_train.astype(np.float32), y_train=y_train.astype(np.int64),
            x_val=x_test[:0].astype(np.float32), y_val=y_test[:0].astype(np.int64),
            x_test=x_test.astype(np.float32), y_test=y_test.astype(np.int64),
        )
        if model is not None:
            model.save(st.output_dir("model") / "model.keras")
        st.set_section("data", {
            "dataset": label, "kind": (preprocessing or {}).get("kind", "tabular"),
            "labels": labels, "input": {"shape": list(x_train.shape[1:]), "dtype": "float32"},
            "preprocessing": preprocessing,
        })
        st.set_section("model", {"name": label, "params": 0})
    return run


def tiny_mlp(n_features: int, n_classes: int, seed: int = 0, middle: Any = None) -> Any:
    """A few-unit MLP; ``middle`` is an optional layer placed after the input."""
    from edgeship.training.keras_env import keras

    k = keras()
    k.utils.set_random_seed(seed)
    inputs = k.Input((n_features,), name="input")
    x = middle(inputs) if middle is not None else inputs
    x = k.layers.Dense(8, activation="relu", name="hidden")(x)
    out = k.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    model = k.Model(inputs, out, name="tiny")
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def odd_layer_class() -> type:
    """A layer using ``tf.math.special.bessel_i0e``: no TFLite builtin, no ONNX operator."""
    from edgeship.training.keras_env import keras, tf

    k, t = keras(), tf()

    @k.saving.register_keras_serializable("edgeship_tests")
    class BesselLayer(k.layers.Layer):
        def call(self, x: Any) -> Any:
            return t.math.special.bessel_i0e(x)

    return BesselLayer


def fake_tvm_export(req: ExportRequest) -> ExportedModel:
    """Stands in for export/tvm.py: the registry's contract, with an untuned host build.

    The build has a static batch of 1, so edge_runtime must run larger batches in chunks.
    """
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    proto = onnx.load(str(req.onnx_path))
    name = proto.graph.input[0].name
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1:]
    mod = from_onnx(proto, shape_dict={name: [1, *dims]}, keep_params_in_input=False)
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    path = Path(req.out_dir) / "model.so"
    ex.export_library(str(path))
    classes = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    if req.target == "rpi4":  # pretend: a cross build this machine cannot run, checked statically
        return ExportedModel(
            file=path, runtime={"name": "apache-tvm", "version": tvm.__version__, "requirements": []},
            target={"name": "rpi4", "arch": "aarch64"}, runnable_here=False,
            checks={"elf machine is AArch64": True},
        )
    return ExportedModel(
        file=path,
        runtime={"name": "apache-tvm", "version": tvm.__version__,
                 "requirements": [f"apache-tvm=={tvm.__version__}"]},
        inputs=[{"name": name, "shape": [1, *dims], "dtype": "float32", "quantization": None}],
        outputs=[{"name": "output", "shape": [1, classes], "dtype": "float32", "quantization": None}],
        target={"name": "host", "arch": "x86_64", "tvm": {"kind": "llvm"}},
        extra={"tuning": None},
    )


def read_artifact(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "artifact.json").read_text())
