"""TVM export with the real compiler, runtime and tuner on a tiny CNN (8x8x1).

The host build must match onnxruntime within 1e-4; a tuned build with a few trials must run
and match; the rpi4 build must be an AArch64 ELF; a second tuned export must reuse the
tuning database; every bad input is a one-line error. Trial budgets stay tiny (2 shared cores).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeship.core.errors import EdgeshipError, InputError, MissingDependencyError
from edgeship.core.names import host_arch
from edgeship.export import FORMATS, UnsupportedOperatorError
from edgeship.export.tvm import build_tvm, elf_machine, resolve_target

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tf_keras CNN on 8x8x1 inputs, converted by tf2onnx (opset 17, free batch)."""
    import tf2onnx

    from edgeship.training.keras_env import keras, tf

    k, t = keras(), tf()
    k.utils.set_random_seed(0)
    model = k.Sequential([
        k.Input((8, 8, 1), name="input"),
        k.layers.Conv2D(4, 3, activation="relu"),
        k.layers.MaxPooling2D(),
        k.layers.Flatten(),
        k.layers.Dense(10, activation="softmax"),
    ])
    path = tmp_path_factory.mktemp("tvm-model") / "model.onnx"
    spec = (t.TensorSpec((None, 8, 8, 1), t.float32, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))
    return path


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((6, 1, 8, 8, 1)).astype(np.float32)


def reference(onnx_path: Path, xs: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return [sess.run(None, {"input": x})[0] for x in xs]


def run_library(path: Path, xs: np.ndarray) -> list[np.ndarray]:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    return [vm["main"](tvm.runtime.tensor(x)).numpy() for x in xs]


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- builds


@pytest.mark.slow
def test_host_build_matches_onnxruntime(tiny_onnx: Path, samples: np.ndarray, tmp_path: Path) -> None:
    r = build_tvm(tiny_onnx, tmp_path / "host", "host")
    assert r.file == tmp_path / "host" / "model.so" and r.file.stat().st_size == r.bytes
    assert sorted(p.name for p in r.file.parent.iterdir()) == ["model.so"]  # no temp files left
    assert r.elf_machine == {"x86_64": 62, "aarch64": 183}[host_arch()]
    assert max_diff(run_library(r.file, samples), reference(tiny_onnx, samples)) <= TOL
    assert r.inputs == [{"name": "input", "shape": [1, 8, 8, 1], "dtype": "float32", "quantization": None}]
    assert r.outputs[0]["shape"] == [1, 10] and r.outputs[0]["dtype"] == "float32"
    assert r.target.name == "host" and r.target.mcpu and r.target.num_cores >= 1
    assert r.untuned_ms is not None and r.untuned_ms > 0 and r.tuning is None
    assert "apache-tvm-ffi==0.1.14.post0" in r.runtime["requirements"]
    assert any(req.startswith("apache-tvm==0.27") for req in r.runtime["requirements"])
    json.dumps(r.to_dict())  # everything recorded is JSON


@pytest.mark.slow
def test_rpi4_build_is_an_aarch64_elf(tiny_onnx: Path, tmp_path: Path) -> None:
    r = build_tvm(tiny_onnx, tmp_path / "rpi4", "rpi4")
    head = r.file.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2  # 64-bit
    assert int.from_bytes(head[18:20], "little") == 183 == r.elf_machine  # EM_AARCH64
    assert r.target.arch == "aarch64" and r.target.mcpu == "cortex-a72"
    assert r.target.triple == "aarch64-linux-gnu" and "+neon" in r.target.tvm["mattr"]
    assert r.untuned_ms is None  # not runnable on this machine, so not timed
    if host_arch() != "aarch64":
        assert not r.runs_here


@pytest.mark.slow
def test_tuned_build_matches_and_the_cache_is_reused(tiny_onnx: Path, samples: np.ndarray,
                                                     tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    seen: list[tuple[int, int, str]] = []
    first = build_tvm(tiny_onnx, tmp_path / "a", "host", trials=8, cache_dir=cache,
                      progress=lambda d, n, s: seen.append((d, n, s)), ship="tuned")
    t = first.tuning
    assert t is not None and not t["cache_hit"] and 0 < t["trials_run"] <= 8
    assert t["shipped"] == "tuned" and t["tuned_ms"] > 0 and t["untuned_ms"] > 0
    assert t["tuned_max_abs_diff"] <= TOL
    assert max_diff(run_library(first.file, samples), reference(tiny_onnx, samples)) <= TOL
    assert seen and seen[-1][1] == 8 and any(d > 0 for d, _, _ in seen)
    folder = Path(t["cache_dir"])
    assert folder.parent == cache and (folder / "database_tuning_record.json").stat().st_size > 0
    records = (folder / "database_tuning_record.json").read_bytes()

    seen.clear()
    again = build_tvm(tiny_onnx, tmp_path / "b", "host", trials=8, cache_dir=cache,
                      progress=lambda d, n, s: seen.append((d, n, s)))
    t2 = again.tuning
    assert t2 is not None and t2["cache_hit"] and t2["trials_run"] == 0
    assert t2["cache_dir"] == t["cache_dir"]
    assert (folder / "database_tuning_record.json").read_bytes() == records  # nothing re-tuned
    assert t2["tune_s"] < max(2.0, t["tune_s"] / 4)
    assert seen == [(8, 8, "cache hit: reusing the tuning database")]
    assert max_diff(run_library(again.file, samples), reference(tiny_onnx, samples)) <= TOL


@pytest.mark.slow
def test_time_budget_stops_tuning_early(tiny_onnx: Path, tmp_path: Path) -> None:
    r = build_tvm(tiny_onnx, tmp_path / "out", "host", trials=48, time_budget_s=0.5,
                  cache_dir=tmp_path / "cache", progress=lambda *_: None)
    t = r.tuning
    assert t is not None and t["stopped_early"] and t["trials_run"] < 48
    assert "time budget" in t["note"]
    meta = json.loads((Path(t["cache_dir"]) / "edgeship-tuning.json").read_text())
    assert meta["trials"] == t["trials_run"]  # a re-export tunes the rest


@pytest.mark.slow
def test_the_registry_entry_exports_validates_and_reuses_tuning(tabular_run: Any, tmp_path: Path) -> None:
    """Through the export stage: a tuned host and an rpi4 artifact, validated by edge_runtime;
    a re-export (a fresh ONNX conversion, other node names) hits the tuning cache."""
    from _models import copy_run, read_artifact

    from edgeship.export.stage import ExportConfig, export_run

    assert FORMATS["tvm"].load() is not None
    run, cache, lines = copy_run(tabular_run, tmp_path), tmp_path / "cache", []
    host, pi = export_run(run, ExportConfig(formats="tvm", targets="host,rpi4", trials=4, cache_dir=cache),
                          log=lines.append)
    assert host.passed and host.validation["max_abs_diff"] <= TOL, host.validation
    assert pi.passed and pi.validation["ran"] is False
    assert pi.validation["checks"] == {"elf machine is AArch64": True}
    meta = read_artifact(host.dir)
    assert meta["inputs"][0]["shape"][0] == 1 and meta["target"]["name"] == "host"
    assert meta["runtime"]["name"] == "apache-tvm" and meta["tvm"]["static_batch"] == 1
    assert meta["tuning"]["trials_requested"] == 4 and not meta["tuning"]["cache_hit"]
    assert any(line.startswith("tvm tuning: 4/4 trials") for line in lines)
    assert read_artifact(pi.dir)["target"]["arch"] == "aarch64"
    (again,) = export_run(run, ExportConfig(formats="tvm", targets="host", trials=4, cache_dir=cache))
    assert again.passed and read_artifact(again.dir)["tuning"]["cache_hit"]


# ---------------------------------------------------------------- bad input


def test_unknown_target_lists_the_valid_ones() -> None:
    with pytest.raises(InputError, match=r"unknown TVM target 'rpi3'; choose host, rpi4, rpi5"):
        resolve_target("rpi3")


@pytest.mark.parametrize(("target", "message"), [
    ('{"kind": "llvm", "mcpu": ', "not valid JSON"),
    ('["llvm"]', "must be an object"),
    ('{"kind": "cuda"}', "kind 'cuda' is not supported"),
    ('{"kind": "llvm", "bogus": 1}', "Unknown config option 'bogus'"),
    ('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-z9"}', "mcpu 'cortex-z9'"),
    ('{"kind": "llvm", "mtriple": "riscv64-linux-gnu"}', "not riscv64"),
])
def test_bad_json_targets_say_what_is_wrong(target: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as e:
        resolve_target(target)
    assert "\n" not in str(e.value)


def test_a_json_target_is_custom() -> None:
    spec = resolve_target('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a53"}')
    assert (spec.name, spec.arch, spec.mcpu) == ("custom", "aarch64", "cortex-a53")


@pytest.mark.allowed_skip(reason="on an aarch64 host the Pi targets can be tuned")
def test_tuning_for_a_pi_needs_the_device(tmp_path: Path) -> None:
    if host_arch() == "aarch64":
        pytest.skip("on an aarch64 host the Pi targets can be tuned")
    with pytest.raises(InputError, match="tuning measures on the device"):
        build_tvm(tmp_path / "missing.onnx", tmp_path, "rpi4", trials=8)


@pytest.mark.allowed_skip(reason="an aarch64 host needs no cross compiler")
def test_missing_cross_compiler_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import edgeship.export.tvm.build as tvm_build

    if host_arch() == "aarch64":
        pytest.skip("no cross compiler needed on an aarch64 host")
    monkeypatch.setattr(tvm_build.shutil, "which", lambda _name: None)
    with pytest.raises(MissingDependencyError, match="apt-get install g\\+\\+-aarch64-linux-gnu"):
        build_tvm(tmp_path / "missing.onnx", tmp_path, "rpi5")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"trials": -1}, "trials must be 0 or more"),
    ({"trials": 4, "time_budget_s": 0}, "time budget must be positive"),
    ({"ship": "best"}, "ship must be"),
    ({}, "does not exist; export ONNX first"),
])
def test_bad_arguments(kwargs: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=message):
        build_tvm(tmp_path / "missing.onnx", tmp_path / "out", "host", **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00\x01 definitely not protobuf \xff" * 8)
    with pytest.raises(InputError, match="not a readable ONNX model"):
        build_tvm(bad, tmp_path / "out", "host")


def test_an_unsupported_operator_is_named(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Celu", ["input"], ["output"], name="model/celu")
    graph = helper.make_graph(
        [node], "celu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])])
    path = tmp_path / "celu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UnsupportedOperatorError,
                       match=r"Relax ONNX frontend .* does not support Celu \(node 'model/celu'\)"):
        build_tvm(path, tmp_path / "out", "host")
    assert not (tmp_path / "out" / "model.so").exists()


def test_elf_machine_rejects_a_non_elf_file(tmp_path: Path) -> None:
    p = tmp_path / "model.so"
    p.write_bytes(b"MZ" + b"\x00" * 30)
    with pytest.raises(EdgeshipError, match="is not an ELF file"):
        elf_machine(p)
