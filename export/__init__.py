"""Export formats, registered by name and imported only when used.

Each format is an ``ExportFormat`` whose ``entry`` ("module:function") is imported on first
use, so ``edgeship --help`` never loads TensorFlow, tf2onnx or TVM. An exporter is a function
``(ExportRequest) -> ExportedModel``: it writes one model file into ``request.out_dir`` and
says what it wrote; the stage (``export.stage.export_run``) does everything else: it picks
the model and data from the run, writes artifact.json, validates the artifact through
``edge_runtime`` against the Keras model, and commits or sets it aside as failed.

Formats built from another export name it in ``source``: ``source="onnx"`` (TVM) gets the
variant's float32 ONNX file as ``request.onnx_path`` (converted on the fly if need be);
``source="onnx-export"`` (web) gets the variant's validated ONNX export of the same
quantization, which must exist or be built in the same request. A new format is one
``register_format`` call, and the tests parameterised over ``FORMATS`` then cover it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeship.core.errors import EdgeshipError, InputError, MissingDependencyError

QUANTIZE_CHOICES = ("float32", "float16", "dynamic", "int8")
IO_CHOICES = ("int8", "float32")
NAMED_TARGETS = ("host", "rpi4", "rpi5")
PORTABLE_TARGET = {"name": "any", "arch": "any"}


class ExportError(EdgeshipError):
    """A converter failed on this model; the message names the converter and the cause."""


class UnsupportedOperatorError(ExportError):
    """A layer uses an operator the converter cannot express; the message names both."""


@dataclass(frozen=True)
class ExportRequest:
    """Everything one exporter needs; it never reads the run directory itself."""

    out_dir: Path  # an empty folder to write the model file into
    quantize: str  # one of QUANTIZE_CHOICES
    io: str = "int8"  # int8 quantisation only: the dtype of the model's input and output
    keras_model: Any = None  # the loaded tf_keras model (source "keras")
    keras_path: Path | None = None
    onnx_path: Path | None = None  # the variant's float32 ONNX file (source "onnx")
    representative: Any = None  # float32 train-split samples (preprocessed) for calibration
    qat: bool = False  # the model was trained quantisation-aware: it carries its own ranges
    target: str | None = None  # formats with targets: "host", "rpi4", "rpi5" or a JSON dict
    trials: int | None = None  # tuning budget (formats that tune)
    time_budget_s: float | None = None
    cache_dir: Path | None = None  # a folder kept across exports (tuning databases)
    log: Callable[[str], None] | None = None  # progress lines for a person (stderr)
    # What a self-describing bundle (web) copies in; artifact.json gets the same from the stage.
    labels: tuple[str, ...] = ()
    preprocessing: dict[str, Any] | None = None
    examples: Callable[[], dict[str, Any] | None] | None = None  # raw test split, loaded on demand
    metadata: dict[str, Any] = field(default_factory=dict)  # run_id, variant, model, dataset
    web_runtime: str = "both"  # web: which browser runtimes the bundle carries (ort, litert, both)
    tune_on: dict[str, Any] | None = None  # tvm: {"tracker": "HOST:PORT", "key": K}, tune on those devices
    # A second model an exporter makes (web: the TFLite one), validated like the artifact:
    # (model file, format, inputs, outputs) -> the validation record. None: not offered.
    validate: Callable[[Path, str, list[dict[str, Any]], list[dict[str, Any]]], dict[str, Any]] | None = None


@dataclass
class ExportedModel:
    """What an exporter wrote. ``inputs``/``outputs`` follow artifact.json's I/O spec; None
    means "same as the ONNX source" (formats built from ONNX that keep its interface).

    A build for another machine (``runnable_here=False``, e.g. an aarch64 library on x86) is
    not run here: its validation is the exporter's ``checks`` ({name: passed}, e.g. the ELF
    machine), recorded with ``ran: false`` until the device runs it.
    """

    file: Path
    runtime: dict[str, Any]  # {"name", "version", "requirements": [pip pins]}
    inputs: list[dict[str, Any]] | None = None
    outputs: list[dict[str, Any]] | None = None
    target: dict[str, Any] = field(default_factory=lambda: dict(PORTABLE_TARGET))
    extra: dict[str, Any] = field(default_factory=dict)  # merged into artifact.json
    runnable_here: bool = True
    checks: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportFormat:
    name: str
    entry: str  # "module:function" taking an ExportRequest and returning an ExportedModel
    quantize: tuple[str, ...]  # what it can produce
    default_quantize: tuple[str, ...]  # what it produces when --quantize is not given
    summary: str
    source: str = "keras"  # "keras", "onnx" or "onnx-export" (see the module docstring)
    targets: bool = False  # takes --target; the artifact folder then names the target
    install_hint: str = ""
    float_suffix: bool = True  # False: float32 artifacts are plain "<name>/" (web), others "<name>-<q>/"
    validate_as: str | None = None  # run by edge_runtime as this format (web: its model is ONNX)
    probe: str = ""  # "module:function" -> None if it can be built here, else why not (one line)

    def unavailable_reason(self) -> str | None:
        """Why this format cannot be built on this machine (a missing non-Python piece), or None."""
        if not self.probe:
            return None
        module, attr = self.probe.split(":")
        return getattr(importlib.import_module(module), attr)()

    def available(self) -> bool:
        """Whether the exporter module is present (not whether its packages import)."""
        module = self.entry.split(":")[0]
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            return False

    def load(self) -> Callable[[ExportRequest], ExportedModel]:
        module, attr = self.entry.split(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                raise MissingDependencyError(
                    f"the {self.name} exporter ({module}) is not part of this installation"
                ) from e
            raise MissingDependencyError(
                f"the {self.name} exporter needs the Python package '{e.name}'; {self.install_hint}"
            ) from e
        fn = getattr(mod, attr, None)
        if fn is None:
            raise MissingDependencyError(
                f"the {self.name} exporter module {module} has no function {attr}; update edgeship"
            )
        return fn

    def dirname(self, quantize: str, io: str = "int8", target: str | None = None) -> str:
        """The artifact folder under exports/<variant>/ (see docs/architecture.md)."""
        if self.targets:
            name = f"{self.name}-{target_name(target)}"
            return name if quantize == "float32" else f"{name}-{quantize}"
        if not self.float_suffix:
            return self.name if quantize == "float32" else f"{self.name}-{quantize}"
        name = f"{self.name}-{quantize}"
        if quantize == "int8" and io == "float32" and self.name == "tflite":
            name += "-fio"
        return name


FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> None:
    for q in fmt.quantize:
        if q not in QUANTIZE_CHOICES:
            raise ValueError(f"{fmt.name}: unknown quantization {q!r}")
    FORMATS[fmt.name] = fmt


def get_format(name: str) -> ExportFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise InputError(
            f"unknown export format '{name}'; choose from {', '.join(FORMATS)} or all"
        ) from None


def target_name(target: Any) -> str:
    """host/rpi4/rpi5 keep their name; a JSON target dict is 'custom'."""
    if target is None:
        return "host"
    if isinstance(target, str) and target in NAMED_TARGETS:
        return target
    return "custom"


register_format(ExportFormat(
    name="tflite",
    entry="edgeship.export.tflite:export_tflite",
    quantize=("float32", "float16", "dynamic", "int8"),
    default_quantize=("float32", "int8"),
    summary="TensorFlow Lite flatbuffer, run by LiteRT (ai-edge-litert)",
    install_hint="pip install tensorflow-cpu==2.21.0 ai-edge-litert==2.3.0",
))
register_format(ExportFormat(
    name="onnx",
    entry="edgeship.export.onnx:export_onnx",
    quantize=("float32", "int8"),
    default_quantize=("float32",),
    summary="ONNX opset 17 via tf2onnx, run by onnxruntime; int8 is static QDQ",
    install_hint="pip install tf2onnx==1.17.0 onnx onnxruntime==1.32.0",
))
register_format(ExportFormat(
    name="tvm",
    entry="edgeship.export.tvm:export_artifact",
    quantize=("float32",),
    default_quantize=("float32",),
    summary="TVM Relax shared library compiled from the ONNX export",
    source="onnx",
    targets=True,
    install_hint="pip install apache-tvm[all]==0.27.0.post1 apache-tvm-ffi==0.1.14.post0",
))
register_format(ExportFormat(
    name="web",
    entry="edgeship.export.web:export_web",
    quantize=("float32", "int8"),
    default_quantize=("float32",),
    summary="static in-browser bundle: page + ONNX (onnxruntime-web) + batch-1 TFLite (LiteRT.js)",
    source="onnx-export",
    install_hint="npm ci --prefix web_demo (node and npm), pip install onnx",
    float_suffix=False,
    validate_as="onnx",
    probe="edgeship.export.web:unavailable_reason",
))


@contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Silence native stderr (MLIR dumps, absl logs) during a conversion; keep it for errors.

    TensorFlow's converter writes pages of MLIR to file descriptor 2, which Python's
    ``redirect_stderr`` cannot catch; the text is handed back so an error can quote it.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    captured: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", errors="replace"))
