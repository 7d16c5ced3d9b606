"""Exporting one variant: build each of its artifacts, validate it, place it as passed or failed.

Kept apart from the stage (which plans, opens the run's stage and records the outcome) so the
life of one artifact reads in one place: scratch folder, exporter, artifact.json, validation
through ``edge_runtime`` (or the exporter's static checks for a build for another machine),
then ``exports/<variant>/<fmt>/`` or ``<fmt>.failed/``. Keras-built formats go first, so the
ONNX-built ones reuse the float32 ONNX file and the web bundle its ONNX export. A converter
that cannot express the model (an ``ExportError``: an op TFLite or ONNX lacks) fails that one
artifact, recorded under ``<fmt>.failed/`` with its one-line reason; the other formats go on.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.artifact import ARTIFACT_FILE, SCHEMA_VERSION
from edgeship.core import __version__
from edgeship.core.errors import RunError
from edgeship.core.fsutil import read_json, sha256_file
from edgeship.core.runstore import RunDir, now_iso
from edgeship.export import PORTABLE_TARGET, ExportedModel, ExportError, ExportRequest
from edgeship.export.artifact import build_artifact, write_artifact
from edgeship.export.float_fallback import MAX_FLOAT_SHARE, candidates, float_layers, requantize
from edgeship.export.inputs import (
    REFERENCE_FILE,
    check_input_shape,
    is_qat,
    load_keras,
    load_raw_test,
    model_path,
    onnx_export_file,
    source_record,
    write_reference,
)
from edgeship.export.plan import FAILED_SUFFIX, Job
from edgeship.export.quant_debug import Int8Debug, debug_int8, describe_layers, top2_margin, worst_of
from edgeship.export.validate import ValidationConfig, static_validation, validate_artifact
from edgeship.training.calibration import Calibration

QAT_FLOAT_WARNING = ("float32 of a QAT variant keeps its fake-quant ops and runs several times slower "
                     "than its int8 form; ship the int8 one")


@dataclass
class ExportResult:
    """One artifact as built: where it is and how it validated."""

    dir: Path
    format: str
    variant: str
    target: dict[str, Any]
    quantize: str
    io: str | None
    bytes: int
    sha256: str
    validation: dict[str, Any]
    artifact: dict[str, Any] = field(repr=False)

    @property
    def passed(self) -> bool:
        return bool(self.validation.get("passed"))

    def summary(self) -> dict[str, Any]:
        """The ``--json`` entry (fixed keys, read by scripts)."""
        v = self.validation
        return {
            "dir": str(self.dir),
            "format": self.format,
            "variant": self.variant,
            "target": self.target,
            "quantize": self.quantize,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "validation": {k: v.get(k) for k in ("top1_agreement", "accuracy", "max_abs_diff", "passed")},
        }


@dataclass(frozen=True)
class Session:
    """What every artifact of one export request shares (set up by ``export_run``)."""

    run: RunDir
    manifest: dict[str, Any]
    output: Callable[[str], Path]  # the stage context's output(rel): a path inside its staging
    scratch: Path
    data: dict[str, np.ndarray]
    cal: Calibration | None
    labels: list[str]
    preprocessing: dict[str, Any] | None
    model_name: str | None
    trials: int | None
    time_budget_s: float | None
    cache_dir: Path | None
    validation: ValidationConfig
    say: Callable[[str], None]
    web_runtime: str = "both"
    tune_on: dict[str, Any] | None = None  # tvm builds for other machines: tune on a tracker's devices
    int8_fallback: bool = True  # a refused post-training int8 TFLite: retry with some layers in float


@dataclass
class _Variant:
    """One variant's loaded model and the ONNX files made from it so far."""

    name: str
    model: Any
    path: Path
    qat: bool
    reference: np.ndarray
    source: dict[str, Any]
    onnx_source: Path | None = None  # the float32 ONNX file ONNX-built formats (TVM) start from
    onnx_built: dict[str, Path | None] = field(default_factory=dict)  # ONNX exports made here (None: failed)


def export_variant(s: Session, variant: str, jobs: list[Job]) -> list[ExportResult]:
    """Build, validate and place ``jobs`` (all of ``variant``); writes its reference.json."""
    path = model_path(s.run, s.manifest, variant)
    s.say(f"{variant}: loading {path.relative_to(s.run.path)}")
    model = load_keras(path)
    qat = is_qat(model)
    check_input_shape(model, s.data["x_test"], path)
    reference = np.asarray(model.predict(s.data["x_test"], batch_size=256, verbose=0), dtype=np.float32)
    write_reference(s.output(f"exports/{variant}/{REFERENCE_FILE}"), reference, path, s.run)
    v = _Variant(variant, model, path, qat, reference, source_record(s.run, path, s.manifest))
    results = []
    # Keras-built formats first: ONNX-built ones (TVM) reuse the float32 ONNX file.
    for job in sorted(jobs, key=lambda j: j.fmt.source != "keras"):
        result = _export_job(s, v, job)
        if result is not None:
            results.append(result)
    return results


def _export_job(s: Session, v: _Variant, job: Job) -> ExportResult | None:
    """One artifact: export into scratch, describe, validate, place. None: skipped (its ONNX
    source failed validation in this request)."""
    work = s.scratch / v.name / job.dirname
    work.mkdir(parents=True)
    try:
        onnx_path = _onnx_input(s, v, job)
    except ExportError as e:
        return _conversion_failed(s, v, job, work, f"its ONNX source could not be made: {e}")
    if job.fmt.source == "onnx-export" and onnx_path is None and s.web_runtime == "ort":
        s.say(f"{v.name}: skipping {job.dirname}: its ONNX source failed validation")
        shutil.rmtree(work)
        return None
    s.say(f"{v.name}: exporting {job.dirname}")
    try:
        exported = job.fmt.load()(_request(s, v, job, work, onnx_path))
    except ExportError as e:
        return _conversion_failed(s, v, job, work, str(e))
    if exported.inputs is None or exported.outputs is None:
        if v.onnx_source is None:
            raise RunError(f"the {job.fmt.name} exporter did not describe its inputs and outputs")
        ins, outs = _onnx_io(v.onnx_source)
        exported.inputs = exported.inputs or ins
        exported.outputs = exported.outputs or outs
    _drop_strays(work, Path(exported.file).name)
    meta = build_artifact(
        exported, fmt=job.fmt.name, quantize=job.quantize, io=job.io, run_id=s.run.id,
        variant=v.name, model_name=s.model_name, labels=s.labels, preprocessing=s.preprocessing,
        source=v.source,
    )
    if job.quantize == "int8":
        meta["calibration"] = calibration_record(job, v.qat, s.cal, onnx_path)
    write_artifact(work, meta)
    meta["validation"] = _check(s, v, job, work, meta, exported)
    write_artifact(work, meta)
    return _place(s, v, job, work, meta, exported)


def _conversion_failed(s: Session, v: _Variant, job: Job, work: Path, reason: str) -> ExportResult:
    """An artifact whose converter gave up: ``<fmt>.failed/`` holds only an artifact.json with
    the one-line reason (no model file), so the request goes on to its other formats."""
    shutil.rmtree(work)
    work.mkdir(parents=True)
    check = {
        "ran": False, "samples": 0, "criterion": "conversion", "tolerance": None,
        "reference_accuracy": None, "top1_agreement": None, "accuracy": None, "accuracy_drop": None,
        "max_abs_diff": None, "passed": False, "failures": [f"conversion failed: {reason}"],
        "warnings": [],
    }
    target = dict(PORTABLE_TARGET) if not job.fmt.targets else {"name": job.target or "host"}
    meta = {
        "schema_version": SCHEMA_VERSION, "format": job.fmt.name, "file": None, "sha256": None,
        "bytes": 0, "run_id": s.run.id, "variant": v.name, "model": s.model_name,
        "quantize": job.quantize, "io": job.io, "target": target, "inputs": None, "outputs": None,
        "labels": [str(label) for label in s.labels], "preprocessing": s.preprocessing,
        "runtime": None, "validation": check, "source": v.source, "created": now_iso(),
        "edgeship_version": __version__,
    }
    write_artifact(work, meta)
    final = s.output(job.rel + FAILED_SUFFIX)
    os.replace(work, final)
    if job.fmt.name == "onnx":
        v.onnx_built[job.quantize] = None
    s.say(f"{v.name}/{job.dirname}: FAILED: {check['failures'][0]}")
    return ExportResult(
        dir=s.run.path / (job.rel + FAILED_SUFFIX), format=job.fmt.name, variant=v.name, target=target,
        quantize=job.quantize, io=job.io, bytes=0, sha256="", validation=check, artifact=meta,
    )


def _onnx_input(s: Session, v: _Variant, job: Job) -> Path | None:
    """The ONNX file ``job`` is built from: the variant's float32 ONNX (made on first need) for
    ``source="onnx"``, its ONNX export of the same quantization for ``"onnx-export"``."""
    if job.fmt.source == "onnx":
        if v.onnx_source is None:
            v.onnx_source = _onnx_float(v.model, s.scratch / v.name / ".onnx-source", s.say)
        return v.onnx_source
    if job.fmt.source == "onnx-export":
        return v.onnx_built.get(job.quantize, onnx_export_file(s.run, v.name, job.quantize))
    return None


def _request(s: Session, v: _Variant, job: Job, work: Path, onnx_path: Path | None) -> ExportRequest:
    return ExportRequest(
        out_dir=work, quantize=job.quantize, io=job.io or "int8", keras_model=v.model,
        keras_path=v.path, onnx_path=onnx_path,
        representative=s.cal.rows if s.cal is not None else None, qat=v.qat, target=job.target,
        trials=s.trials, time_budget_s=s.time_budget_s, cache_dir=s.cache_dir, log=s.say,
        labels=tuple(s.labels), preprocessing=s.preprocessing,
        examples=functools.partial(load_raw_test, s.run), metadata={
            "run_id": s.run.id, "variant": v.name, "model": s.model_name,
            "dataset": (s.manifest.get("data") or {}).get("dataset"),
        }, web_runtime=s.web_runtime, validate=functools.partial(_validate_model, s, v, job),
        tune_on=s.tune_on,
    )


def _validate_model(s: Session, v: _Variant, job: Job, file: Path, fmt: str,
                    inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """A second model an exporter made (a web bundle's TFLite file) validated as ``fmt`` through
    edge_runtime against the Keras reference, the same checks as an artifact's."""
    view = s.scratch / f".model-{v.name}-{job.dirname}-{fmt}"
    if view.exists():
        shutil.rmtree(view)
    view.mkdir(parents=True)
    try:
        shutil.copyfile(file, view / file.name)
        exported = ExportedModel(file=view / file.name, runtime={}, inputs=inputs, outputs=outputs)
        meta = build_artifact(
            exported, fmt=fmt, quantize=job.quantize, io=None, run_id=s.run.id, variant=v.name,
            model_name=s.model_name, labels=s.labels, preprocessing=s.preprocessing, source=v.source,
        )
        write_artifact(view, meta)
        exact = job.quantize == "float32" and not v.qat
        check, _ = validate_artifact(view, s.data["x_test"], s.data["y_test"], v.reference,
                                     exact=exact, config=s.validation)
        return check
    finally:
        shutil.rmtree(view, ignore_errors=True)


def _check(s: Session, v: _Variant, job: Job, work: Path, meta: dict[str, Any],
           exported: ExportedModel) -> dict[str, Any]:
    """The artifact's validation: run through edge_runtime against the Keras reference, or
    (a build for another machine) the exporter's static checks."""
    if exported.runnable_here:
        view = work
        validate_as = exported.extra.pop("validate_as", None) or job.fmt.validate_as
        meta.pop("validate_as", None)
        if validate_as:  # e.g. a web bundle's model, run by native onnxruntime (or LiteRT)
            view = validation_view(work, meta, validate_as, s.scratch / f".view-{v.name}")
        exact = job.quantize == "float32" and not v.qat
        check, _ = validate_artifact(view, s.data["x_test"], s.data["y_test"], v.reference,
                                     exact=exact, config=s.validation)
        if view is not work:
            check["validated_as"] = validate_as
            shutil.rmtree(view, ignore_errors=True)
    else:
        arch = meta["target"].get("arch", "another machine")
        check = static_validation(exported.checks, f"built for {arch}: runs on the device")
    if v.qat and job.quantize != "int8":  # asked for with qat_float
        check["warnings"].append(QAT_FLOAT_WARNING)
    if not check["passed"] and check.get("ran") and job.fmt.name == "tflite" and job.quantize == "int8" \
            and not v.qat and s.cal is not None:
        because = check["failures"][0]
        debug = _name_the_layer(s, v, job, check)
        if debug is not None and s.int8_fallback:
            check = _keep_in_float(s, v, job, work, meta, debug, check, because)
    return check


def _name_the_layer(s: Session, v: _Variant, job: Job, check: dict[str, Any]) -> Int8Debug | None:
    """A refused post-training int8 TFLite: its reason names the layer int8 loses most."""
    s.say(f"{v.name}/{job.dirname}: finding the layer int8 loses most (TFLite's quantization debugger)")
    try:
        debug = debug_int8(v.model, s.cal.rows, s.data["x_test"])
    except Exception as e:  # a diagnosis that cannot run must not hide the refusal itself
        check["warnings"].append(f"the int8 layer diagnosis could not run ({type(e).__name__})")
        return None
    layers = worst_of(debug.errors)
    if layers:
        check["int8_layers"] = layers
        check["failures"][0] = f"{check['failures'][0]}; {describe_layers(layers, top2_margin(v.reference))}"
    return debug


def _keep_in_float(s: Session, v: _Variant, job: Job, work: Path, meta: dict[str, Any],
                   debug: Int8Debug, refused: dict[str, Any], because: str) -> dict[str, Any]:
    """The refused int8 model re-quantized with its first and worst layers in float
    (``float_fallback``): the first candidate that validates replaces it, saying so in a
    warning and in artifact.json's ``int8_float_layers``; if none does, the refusal stands
    with the full-int8 model beside it, and says what was tried."""
    from edgeship.export.tflite import describe

    path = work / str(meta["file"])
    original, tried = path.read_bytes(), 0
    for tensors in candidates(debug.errors):
        tried += 1
        layers = float_layers(debug.errors, tensors)
        s.say(f"{v.name}/{job.dirname}: retrying with {len(layers)} layer(s) in float")
        try:
            path.write_bytes(requantize(debug.calibrated, tensors, job.io or "int8"))
        except Exception as e:  # the quantizer's errors live in private TF modules
            refused["warnings"].append(f"keeping layers in float could not be converted ({type(e).__name__})")
            break
        inputs, outputs = describe(path)
        meta.update(sha256=sha256_file(path), bytes=path.stat().st_size, inputs=inputs, outputs=outputs,
                    int8_float_layers=layers)
        write_artifact(work, meta)
        check, _ = validate_artifact(work, s.data["x_test"], s.data["y_test"], v.reference, exact=False,
                                     config=s.validation)
        if check["passed"]:
            check["warnings"].insert(0, (
                f"full int8 was refused ({because}); shipped with {len(layers)} of "
                f"{len({e['layer'] for e in debug.errors})} layers in float "
                f"({_names(layers)}), top-1 agreement {check['top1_agreement']:.4f}; "
                "`--strict-int8` refuses instead"))
            check["int8_layers"] = refused.get("int8_layers", [])
            return check
    path.write_bytes(original)
    meta.pop("int8_float_layers", None)
    meta.update(sha256=sha256_file(path), bytes=path.stat().st_size)
    meta["inputs"], meta["outputs"] = describe(path)
    if tried:
        refused["failures"][0] += (f"; keeping up to {MAX_FLOAT_SHARE:.0%} of its ops in float did not "
                                   f"pass either ({tried} tried)")
    return refused


def _names(layers: list[str], shown: int = 4) -> str:
    more = f" and {len(layers) - shown} more" if len(layers) > shown else ""
    return ", ".join(f"'{name}'" for name in layers[:shown]) + more


def _place(s: Session, v: _Variant, job: Job, work: Path, meta: dict[str, Any],
           exported: ExportedModel) -> ExportResult:
    """Move the artifact to its folder (``.failed`` if it failed), note its ONNX file for the
    formats built from it, and say its warnings and failures."""
    check = meta["validation"]
    rel = job.rel if check["passed"] else job.rel + FAILED_SUFFIX
    final = s.output(rel)
    os.replace(work, final)
    if job.fmt.name == "onnx" and job.quantize == "float32" and check["passed"]:
        v.onnx_source = final / exported.file.name
    if job.fmt.name == "onnx":
        v.onnx_built[job.quantize] = final / exported.file.name if check["passed"] else None
    for w in check["warnings"]:
        s.say(f"{v.name}/{job.dirname}: warning: {w}")
    for f in check["failures"]:
        s.say(f"{v.name}/{job.dirname}: FAILED: {f}")
    return ExportResult(
        dir=s.run.path / rel, format=job.fmt.name, variant=v.name, target=meta["target"],
        quantize=job.quantize, io=job.io, bytes=meta["bytes"], sha256=meta["sha256"],
        validation=check, artifact=meta,
    )


def calibration_record(job: Job, qat: bool, cal: Calibration | None, onnx_path: Path | None) -> dict | None:
    """artifact.json's ``calibration`` of an int8 artifact: which train rows set its ranges.

    None for a QAT model (its ranges were learned in training); a format built from the ONNX
    export (web) has the calibration of that export.
    """
    if qat:
        return None
    if job.fmt.source == "onnx-export" and onnx_path is not None:
        try:
            recorded = read_json(onnx_path.parent / ARTIFACT_FILE).get("calibration")
        except (OSError, ValueError):
            recorded = None
        if recorded is not None:
            return recorded
    return cal.describe() if cal is not None else None


def validation_view(folder: Path, meta: dict[str, Any], fmt: str, dst: Path) -> Path:
    """A folder edge_runtime can load: ``folder``'s model file (hard-linked) under an artifact.json
    saying ``format: fmt``. For formats whose model another runtime also runs natively (a web
    bundle's ONNX model, run by onnxruntime)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    name = str(meta["file"])
    try:
        os.link(folder / name, dst / name)
    except OSError:
        shutil.copyfile(folder / name, dst / name)
    write_artifact(dst, {**meta, "format": fmt})
    return dst


def _onnx_float(model: Any, folder: Path, say: Callable[[str], None]) -> Path:
    from edgeship.export.onnx import MODEL_FILE, check, convert_keras

    folder.mkdir(parents=True, exist_ok=True)
    say("converting to ONNX float32 as the source of ONNX-built formats")
    path = convert_keras(model, folder / MODEL_FILE)
    check(path)
    return path


def _onnx_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import onnx

    from edgeship.export.onnx import _io

    proto = onnx.load(str(path), load_external_data=False)
    return [_io(v) for v in proto.graph.input], [_io(v) for v in proto.graph.output]


def _drop_strays(folder: Path, keep: str) -> None:
    """An artifact folder holds the model file and artifact.json; exporters' leftovers go."""
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name != keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
