"""One small class per runtime, registered by artifact format and imported only when used.

A backend runs arrays that already have the model's exact dtype and a batch size it accepts;
quantisation, batching and checks live in ``EdgeModel`` so every backend behaves the same.
Each exposes ``invoker(x)``: inputs bound once, returning a zero-argument call that does only the
runtime's invoke, so timings compare with ``benchmark_model`` and ``onnxruntime_perf_test``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import ArtifactError, MissingRuntimeError

# What to pip install when an artifact.json names no requirements (the pins in requirements-*.txt).
DEFAULT_REQUIREMENTS = {
    "tflite": ["ai-edge-litert==2.3.0"],
    "onnx": ["onnxruntime==1.32.0"],
    "tvm": ["apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post0"],
}


# Distribution name -> the module that carries ``__version__``.
_MODULES = {"ai-edge-litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime",
            "onnxruntime": "onnxruntime", "apache-tvm": "tvm", "tensorflow": "tensorflow"}


def _version(dist: str) -> str:
    """The module's own ``__version__`` when it has one: importlib.metadata costs a cold start
    about 60 modules and tens of milliseconds, which a device pays on every launch."""
    module = sys.modules.get(_MODULES.get(dist, ""))
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _install_hint(fmt: str, meta: dict[str, Any]) -> str:
    reqs = [r for r in (meta.get("runtime") or {}).get("requirements", []) if r != "numpy"]
    return "pip install " + " ".join(reqs or DEFAULT_REQUIREMENTS[fmt])


class TFLiteBackend:
    """LiteRT (ai-edge-litert), else tflite-runtime, else TensorFlow's own interpreter."""

    def __init__(self, model: Path, meta: dict[str, Any], threads: int | None):
        interpreter_cls, self.name = _tflite_interpreter(meta)
        self.version = _version(self.name)
        try:
            self._it = interpreter_cls(model_path=str(model), num_threads=threads)
        except SystemError as e:  # tflite-runtime 2.14 is built against NumPy 1.x
            raise MissingRuntimeError(
                f"{self.name} cannot run with numpy {np.__version__} ({e}); "
                f"{_install_hint('tflite', meta)}"
            ) from e
        except ValueError as e:
            raise ArtifactError(f"{model} is not a loadable TFLite model ({e}); re-export it") from e
        self._in = self._it.get_input_details()[0]
        self._out = self._it.get_output_details()[0]
        signature = self._in.get("shape_signature", self._in["shape"])
        self.dynamic_batch = int(signature[0]) == -1
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])
        self._batch: int | None = None

    def _bind(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if n != self._batch:
            if self.dynamic_batch:
                self._it.resize_tensor_input(self._in["index"], list(x.shape))
            self._it.allocate_tensors()
            self._batch = n
        self._it.set_tensor(self._in["index"], x)

    def run(self, x: np.ndarray) -> np.ndarray:
        self._bind(x)
        self._it.invoke()
        return self._it.get_tensor(self._out["index"]).copy()

    def invoker(self, x: np.ndarray) -> Callable[[], Any]:
        self._bind(x)
        return self._it.invoke


def _tflite_interpreter(meta: dict[str, Any]) -> tuple[Any, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError:
        pass
    try:  # the last resort: heavy and deprecated, but present wherever edgeship trains
        import tensorflow as tf

        return tf.lite.Interpreter, "tensorflow"
    except ImportError:
        pass
    raise MissingRuntimeError(f"no TFLite runtime is installed; {_install_hint('tflite', meta)}")


class OnnxBackend:
    """onnxruntime on the CPU execution provider."""

    name = "onnxruntime"

    def __init__(self, model: Path, meta: dict[str, Any], threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise MissingRuntimeError(
                f"onnxruntime is not installed; {_install_hint('onnx', meta)}"
            ) from e
        self.version = ort.__version__
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self._sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own unexported exception types
            if type(e).__module__.startswith("onnxruntime"):
                raise ArtifactError(f"{model} is not a loadable ONNX model ({e}); re-export it") from e
            raise
        inp = self._sess.get_inputs()[0]
        self._in_name = inp.name
        self._out_names = [self._sess.get_outputs()[0].name]
        self.dynamic_batch = not isinstance(inp.shape[0], int)
        self.input_dtype = np.dtype(_ORT_TYPES.get(inp.type, "float32"))
        self.output_dtype = np.dtype(_ORT_TYPES.get(self._sess.get_outputs()[0].type, "float32"))

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._sess.run(self._out_names, {self._in_name: x})[0]

    def invoker(self, x: np.ndarray) -> Callable[[], Any]:
        sess, names, feed = self._sess, self._out_names, {self._in_name: x}
        return lambda: sess.run(names, feed)


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
}


class TvmBackend:
    """A TVM Relax VM shared library (``tvm.runtime.load_module`` + ``relax.VirtualMachine``)."""

    name = "apache-tvm"

    def __init__(self, model: Path, meta: dict[str, Any], threads: int | None):
        if threads:  # read when TVM's thread pool starts: set before the first import
            os.environ.setdefault("TVM_NUM_THREADS", str(threads))
        try:
            import tvm
            from tvm import relax
        except ImportError as e:
            raise MissingRuntimeError(
                f"the TVM runtime is not installed; {_install_hint('tvm', meta)}"
            ) from e
        self._tvm = tvm
        self.version = getattr(tvm, "__version__", _version("apache-tvm"))
        try:
            lib = tvm.runtime.load_module(str(model))
            self._vm = relax.VirtualMachine(lib, tvm.cpu())
        except Exception as e:  # the FFI raises tvm's own error types
            if "tvm" in type(e).__module__:
                raise ArtifactError(
                    f"{model} cannot be loaded by TVM ({str(e).splitlines()[0] if str(e) else e}); "
                    "check it was built for this CPU architecture, or re-export"
                ) from e
            raise
        self._main = self._vm["main"]
        spec = meta["inputs"][0]
        self.dynamic_batch = int(spec["shape"][0]) == -1
        self.input_dtype = np.dtype(spec["dtype"])
        self.output_dtype = np.dtype(meta["outputs"][0]["dtype"])

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self._main(self._tvm.runtime.tensor(np.ascontiguousarray(x)))
        if not hasattr(out, "numpy"):  # a tuple of outputs
            out = out[0]
        return out.numpy()

    def invoker(self, x: np.ndarray) -> Callable[[], Any]:
        main, t = self._main, self._tvm.runtime.tensor(np.ascontiguousarray(x))
        return lambda: main(t)

    def activate(self, threads: int | None) -> None:
        """Resize TVM's per-process thread pool, so one session can time several thread counts."""
        if threads:
            configure = self._tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
            if configure is not None:
                configure(1, int(threads))  # 1: TVM's "big cores" affinity mode


BACKENDS: dict[str, type] = {"tflite": TFLiteBackend, "onnx": OnnxBackend, "tvm": TvmBackend}


def open_backend(fmt: str, model: Path, meta: dict[str, Any], threads: int | None) -> Any:
    return BACKENDS[fmt](model, meta, threads)
