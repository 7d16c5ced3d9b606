"""The export stage: variants of a run -> validated artifacts under ``exports/<variant>/<fmt>/``.

One ``run.stage("export")`` for the whole request, so an error or Ctrl-C leaves the run as it
was. The request is checked in full (variants, formats, quantizations, data) before anything
is converted. Each artifact is built in scratch space inside the stage, validated through
``edge_runtime``, then placed at ``exports/<variant>/<fmt>/`` if it passed or at
``exports/<variant>/<fmt>.failed/`` if it did not: a failed export is kept for inspection and
reported, never used.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.artifact import ARTIFACT_FILE
from edgeship.core.errors import DataError, InputError, MissingDependencyError, RunError
from edgeship.core.fsutil import read_json
from edgeship.core.names import split_names
from edgeship.core.runstore import RunDir
from edgeship.export import (
    FORMATS,
    IO_CHOICES,
    QUANTIZE_CHOICES,
    ExportFormat,
    ExportRequest,
    get_format,
)
from edgeship.export.artifact import build_artifact, write_artifact
from edgeship.export.validate import ValidationConfig, static_validation, validate_artifact
from edgeship.training.calibration import CALIBRATION_ROWS, MIN_CALIBRATION_ROWS, Calibration, calibration_set

BASE = "base"
MIN_REPRESENTATIVE = MIN_CALIBRATION_ROWS
REPRESENTATIVE_SAMPLES = CALIBRATION_ROWS  # the rows compress measured int8 on: see training.calibration
FAILED_SUFFIX = ".failed"
QAT_FLOAT_WARNING = ("float32 of a QAT variant keeps its fake-quant ops and runs several times slower "
                     "than its int8 form; ship the int8 one")
REFERENCE_FILE = "reference.json"  # exports/<variant>/: the Keras top-1, for on-device agreement


@dataclass(frozen=True)
class Job:
    """One artifact to build."""

    variant: str
    fmt: ExportFormat
    quantize: str
    io: str | None
    target: str | None

    @property
    def dirname(self) -> str:
        return self.fmt.dirname(self.quantize, self.io or "int8", self.target)

    @property
    def rel(self) -> str:
        return f"exports/{self.variant}/{self.dirname}"


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


def export_run(
    run: RunDir,
    variants: Sequence[str] | str = (BASE,),
    formats: Sequence[str] | str = ("tflite", "onnx"),
    quantize: Sequence[str] | str | None = None,
    *,
    io: str = "int8",
    targets: Sequence[str] | str = ("host",),
    trials: int | None = None,
    time_budget_s: float | None = None,
    validation: ValidationConfig = ValidationConfig(),  # noqa: B008 (frozen)
    representative_samples: int = REPRESENTATIVE_SAMPLES,
    cache_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
    qat_float: bool = False,
) -> list[ExportResult]:
    """Export, validate and commit; see the module docstring. Returns one result per artifact.

    ``variants``/``formats``/``quantize``/``targets`` take names, comma lists or "all";
    ``quantize=None`` means each format's defaults (tflite: float32+int8, onnx: float32).
    A QAT variant gets its int8 forms in place of float ones unless ``qat_float`` (see ``plan``).
    int8 calibrates on ``training.calibration``'s rows for the run's seed: the rows compress
    measured the variant's int8 form on.
    """
    say = log or (lambda _msg: None)
    manifest = run.manifest
    jobs, skipped = plan(run, manifest, variants, formats, quantize, io, targets, qat_float=qat_float)
    for note in skipped:
        say(note)
    data = _load_splits(run)
    labels, preprocessing, model_name = _data_facts(run, manifest)
    calibrated = any(j.quantize == "int8" and not variant_is_qat(run, manifest, j.variant) for j in jobs)
    cal = calibration_set(data["x_train"], data.get("y_train"), int(manifest.get("seed", 0)),
                          representative_samples) if calibrated else None
    rep = cal.rows if cal is not None else None
    params = {
        "variants": sorted({j.variant for j in jobs}),
        "formats": sorted({j.fmt.name for j in jobs}),
        "artifacts": [j.rel for j in jobs],
        "io": io,
        "targets": sorted({j.target for j in jobs if j.target}),
        "trials": trials,
        "time_budget_s": time_budget_s,
        "representative_samples": 0 if rep is None else len(rep),
        "calibration": cal.describe() if cal is not None else None,
        "qat_float": qat_float,
        "validation": asdict(validation),
    }
    results: list[ExportResult] = []
    with run.stage("export", params) as ctx:
        scratch = Path(tempfile.mkdtemp(prefix="work-", dir=ctx.staging))
        for variant in dict.fromkeys(j.variant for j in jobs):
            vjobs = [j for j in jobs if j.variant == variant]
            model_path = _model_path(run, manifest, variant)
            say(f"{variant}: loading {model_path.relative_to(run.path)}")
            model = _load_keras(model_path)
            qat = _is_qat(model)
            _check_input_shape(model, data["x_test"], model_path)
            reference = np.asarray(model.predict(data["x_test"], batch_size=256, verbose=0), dtype=np.float32)
            _write_reference(ctx.output(f"exports/{variant}/{REFERENCE_FILE}"), reference, model_path, run)
            onnx_source: Path | None = None
            onnx_built: dict[str, Path | None] = {}  # ONNX exports made here (None: failed)
            # Keras-built formats first: ONNX-built ones (TVM) reuse the float32 ONNX file.
            for job in sorted(vjobs, key=lambda j: j.fmt.source != "keras"):
                work = scratch / variant / job.dirname
                work.mkdir(parents=True)
                if job.fmt.source == "onnx" and onnx_source is None:
                    onnx_source = _onnx_float(model, scratch / variant / ".onnx-source", say)
                onnx_path = onnx_source if job.fmt.source == "onnx" else None
                if job.fmt.source == "onnx-export":
                    onnx_path = onnx_built.get(job.quantize, _onnx_export_file(run, variant, job.quantize))
                    if onnx_path is None:
                        say(f"{variant}: skipping {job.dirname}: its ONNX source failed validation")
                        shutil.rmtree(work)
                        continue
                req = ExportRequest(
                    out_dir=work, quantize=job.quantize, io=job.io or "int8", keras_model=model,
                    keras_path=model_path, onnx_path=onnx_path,
                    representative=rep, qat=qat, target=job.target, trials=trials,
                    time_budget_s=time_budget_s, cache_dir=cache_dir, log=say,
                    labels=tuple(labels), preprocessing=preprocessing,
                    examples=functools.partial(load_raw_test, run), metadata={
                        "run_id": run.id, "variant": variant, "model": model_name,
                        "dataset": (manifest.get("data") or {}).get("dataset"),
                    },
                )
                say(f"{variant}: exporting {job.dirname}")
                exported = job.fmt.load()(req)
                if exported.inputs is None or exported.outputs is None:
                    if onnx_source is None:
                        raise RunError(f"the {job.fmt.name} exporter did not describe its inputs and outputs")
                    ins, outs = _onnx_io(onnx_source)
                    exported.inputs = exported.inputs or ins
                    exported.outputs = exported.outputs or outs
                _drop_strays(work, Path(exported.file).name)
                meta = build_artifact(
                    exported, fmt=job.fmt.name, quantize=job.quantize, io=job.io, run_id=run.id,
                    variant=variant, model_name=model_name, labels=labels, preprocessing=preprocessing,
                    source=_source(run, model_path, manifest, variant),
                )
                if job.quantize == "int8":
                    meta["calibration"] = _calibration_record(job, qat, cal, onnx_path)
                write_artifact(work, meta)
                exact = job.quantize == "float32" and not qat
                if exported.runnable_here:
                    view = work
                    if job.fmt.validate_as:  # e.g. a web bundle's model, run by native onnxruntime
                        view = validation_view(work, meta, job.fmt.validate_as, scratch / f".view-{variant}")
                    check, _ = validate_artifact(view, data["x_test"], data["y_test"], reference,
                                                 exact=exact, config=validation)
                    if view is not work:
                        check["validated_as"] = job.fmt.validate_as
                        shutil.rmtree(view, ignore_errors=True)
                else:
                    arch = meta["target"].get("arch", "another machine")
                    check = static_validation(exported.checks, f"built for {arch}: runs on the device")
                if qat and job.quantize != "int8":  # asked for with qat_float
                    check["warnings"].append(QAT_FLOAT_WARNING)
                meta["validation"] = check
                write_artifact(work, meta)
                rel = job.rel if check["passed"] else job.rel + FAILED_SUFFIX
                final = ctx.output(rel)
                os.replace(work, final)
                if job.fmt.name == "onnx" and job.quantize == "float32" and check["passed"]:
                    onnx_source = final / exported.file.name
                if job.fmt.name == "onnx":
                    onnx_built[job.quantize] = final / exported.file.name if check["passed"] else None
                for w in check["warnings"]:
                    say(f"{variant}/{job.dirname}: warning: {w}")
                for f in check["failures"]:
                    say(f"{variant}/{job.dirname}: FAILED: {f}")
                results.append(ExportResult(
                    dir=run.path / rel, format=job.fmt.name, variant=variant, target=meta["target"],
                    quantize=job.quantize, io=job.io, bytes=meta["bytes"], sha256=meta["sha256"],
                    validation=check, artifact=meta,
                ))
        ctx.metrics = {
            "artifacts": len(results),
            "passed": sum(r.passed for r in results),
            "failed": [str(r.dir.relative_to(run.path)) for r in results if not r.passed],
        }
        exports = dict(manifest.get("exports") or {})
        for r in results:
            key = str(r.dir.relative_to(run.path))
            for stale in (key.removesuffix(FAILED_SUFFIX), key.removesuffix(FAILED_SUFFIX) + FAILED_SUFFIX):
                exports.pop(stale, None)
            exports[key] = {k: v for k, v in r.summary().items() if k != "dir"} | {"dir": key}
        ctx.set_section("exports", exports)
    _remove_stale(run, results)
    return results


# ---------------------------------------------------------------- planning


def variantsplit_names(manifest: dict[str, Any]) -> list[str]:
    return [BASE, *[v for v in (manifest.get("variants") or {}) if v != BASE]]


def plan(
    run: RunDir,
    manifest: dict[str, Any],
    variants: Sequence[str] | str,
    formats: Sequence[str] | str,
    quantize: Sequence[str] | str | None,
    io: str,
    targets: Sequence[str] | str,
    qat_float: bool = False,
) -> tuple[list[Job], list[str]]:
    """Every (variant, format, quantization, target) to build, or a one-line error; plus notes
    on combinations skipped under ``all``.

    A QAT variant (fake-quant graph) gets only its int8 forms: each float quantization asked
    for becomes int8 in formats that have it (see ``qat_forms``), with one note per variant.
    ``qat_float`` keeps float32 (the artifact then carries a warning).
    """
    known = variantsplit_names(manifest)
    wanted_variants = split_names(variants) or [BASE]
    if "all" in wanted_variants:
        wanted_variants = known
    for v in wanted_variants:
        if v not in known:
            raise InputError(f"unknown variant '{v}'; this run has: {', '.join(known)} (or all)")
    for v in wanted_variants:
        _model_path(run, manifest, v)  # raises if the model file is missing

    notes: list[str] = []
    fmt_names = split_names(formats) or ["all"]
    explicit = "all" not in fmt_names
    if not explicit:
        fmt_names = list(FORMATS)
    fmts = [get_format(n) for n in dict.fromkeys(fmt_names)]
    if not explicit:
        missing = [f for f in fmts if not f.available()]
        for f in missing:
            notes.append(f"skipping {f.name}: its exporter is not installed here")
        fmts = [f for f in fmts if f.available()]
    for f in list(fmts):
        reason = f.unavailable_reason()
        if reason and explicit:
            raise MissingDependencyError(f"cannot export {f.name}: {reason}")
        if reason:
            notes.append(f"skipping {f.name}: {reason}")
            fmts.remove(f)

    wanted_q = split_names(quantize)
    for q in wanted_q:
        if q not in QUANTIZE_CHOICES:
            raise InputError(f"unknown quantization '{q}'; choose from {', '.join(QUANTIZE_CHOICES)}")
    if io not in IO_CHOICES:
        raise InputError(f"unknown --io '{io}'; choose int8 or float32")
    target_list = split_names(targets) or ["host"]

    qat = {v for v in wanted_variants if variant_is_qat(run, manifest, v)}
    jobs: list[Job] = []
    for fmt in fmts:
        qs = [q for q in wanted_q if q in fmt.quantize] if wanted_q else list(fmt.default_quantize)
        unsupported = [q for q in wanted_q if q not in fmt.quantize]
        if unsupported:
            msg = (f"{fmt.name} cannot export {', '.join(unsupported)} "
                   f"(it supports {', '.join(fmt.quantize)})")
            if explicit and not qs:
                raise InputError(msg)
            notes.append(f"skipping: {msg}")
        for variant in wanted_variants:
            vqs = qs
            if variant in qat:
                vqs, note = qat_forms(variant, fmt, qs, qat_float)
                notes.extend([note] if note else [])
            for q in vqs:
                for t in (target_list if fmt.targets else [None]):
                    io_for = io if (q == "int8" and fmt.name == "tflite") else None
                    jobs.append(Job(variant, fmt, q, io_for, t))
    notes = list(dict.fromkeys(notes))
    if not jobs and qat:
        raise InputError(f"nothing to export: QAT variant {', '.join(sorted(qat))} exports int8 only; "
                         "ask for tflite, onnx or web, or pass --qat-float")
    if not jobs:
        raise InputError("nothing to export: no format supports the quantizations asked for")
    seen: dict[str, Job] = {}
    for j in jobs:
        if j.rel in seen:
            raise InputError(f"two exports would share {j.rel}; ask for one target per name")
        seen[j.rel] = j
    onnx = get_format("onnx")
    for j in jobs:
        if j.fmt.source != "onnx-export":
            continue
        source_rel = f"exports/{j.variant}/{onnx.dirname(j.quantize)}"
        if source_rel in seen or _onnx_export_file(run, j.variant, j.quantize) is not None:
            continue
        flags = "".join([f" --variant {j.variant}" if j.variant != BASE else "",
                         f" --quantize {j.quantize}" if j.quantize != "float32" else ""])
        raise RunError(
            f"{j.fmt.name} is built from the ONNX export {source_rel}/, which run {run.id} does not have "
            f"(or it failed validation); make it with `edgeship export {run.id} --format onnx{flags}` "
            f"(or ask for --format onnx,{j.fmt.name})"
        )
    return jobs, notes


def qat_forms(variant: str, fmt: ExportFormat, qs: list[str],
              qat_float: bool) -> tuple[list[str], str | None]:
    """The quantizations of ``fmt`` a QAT variant gets for ``qs``, and a note if that differs.

    A QAT graph converted without int8 keeps its fake-quant ops: in float32 it runs several
    times slower than its int8 form (TFLite and onnxruntime), while float16 and dynamic convert
    it to int8 anyway. So float forms become int8, and float32 stays only with ``qat_float``.
    TVM (float32 only) compiles the QAT ONNX graph's QuantizeLinear/DequantizeLinear into
    float arithmetic (Relax has no int8 kernels for QDQ), a build no smaller or faster than
    the float model's: it is skipped unless ``qat_float``, like any float32 form.
    """
    kept = [q for q in qs if q == "int8" or (q == "float32" and qat_float)]
    swapped = [q for q in qs if q not in kept]
    if not swapped:
        return qs, None
    if "int8" in fmt.quantize:
        kept = list(dict.fromkeys([*kept, "int8"]))
        if "float32" in swapped:
            return kept, f"{variant}: QAT variant, exporting int8 only; pass --qat-float for float32"
        return kept, f"{variant}: QAT variant: {', '.join(swapped)} of a QAT graph is int8, exporting int8"
    return kept, (f"{variant}: QAT variant, skipping {fmt.name}: it builds float32 only, which keeps the "
                  "fake-quant ops; pass --qat-float to build it")


def variant_is_qat(run: RunDir, manifest: dict[str, Any], variant: str) -> bool:
    """Whether ``variant`` is quantisation-aware: its manifest entry's ``qat`` (compress records
    it), else whether its saved Keras config has tfmot's Quantize layers (hand-made runs)."""
    entry = (manifest.get("variants") or {}).get(variant) or {}
    if "qat" in entry:
        return bool(entry["qat"])
    return _config_is_qat(_model_path(run, manifest, variant))


def _config_is_qat(path: Path) -> bool:
    """Read the model's config without TensorFlow: .h5 ``model_config``, .keras ``config.json``."""
    try:
        if path.suffix == ".h5":
            import h5py

            with h5py.File(path, "r") as f:
                text = f.attrs.get("model_config")
        else:
            with zipfile.ZipFile(path) as z:
                text = z.read("config.json")
        config = json.loads(text) if text is not None else {}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    layers = (config.get("config") or {}).get("layers") or []
    return any(str(layer.get("class_name", "")).startswith("Quantize") for layer in layers)


def _onnx_export_file(run: RunDir, variant: str, quantize: str) -> Path | None:
    """The model file of the variant's passing ONNX export of ``quantize``, or None."""
    folder = run.path / "exports" / variant / get_format("onnx").dirname(quantize)
    meta_path = folder / ARTIFACT_FILE
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError):
        return None
    model = folder / str(meta.get("file", ""))
    passed = bool((meta.get("validation") or {}).get("passed"))
    return model if passed and model.is_file() and meta.get("format") == "onnx" else None


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


def _model_path(run: RunDir, manifest: dict[str, Any], variant: str) -> Path:
    if variant == BASE:
        path = run.path / "model" / "model.keras"
        if not path.is_file():
            raise RunError(
                f"run {run.id} has no trained model (model/model.keras); train one with `edgeship train`"
            )
        return path
    entry = (manifest.get("variants") or {}).get(variant) or {}
    folder = entry.get("dir") or f"variants/{variant}"
    # QAT variants are saved as .h5: tf_keras cannot reload them from the native format.
    for name in dict.fromkeys([entry.get("model_file") or "model.keras", "model.keras", "model.h5"]):
        if (run.path / folder / name).is_file():
            return run.path / folder / name
    raise RunError(f"variant '{variant}' of run {run.id} has no model file in {folder}/; recreate it")


# ---------------------------------------------------------------- data and models


def _load_splits(run: RunDir) -> dict[str, np.ndarray]:
    path = run.path / "data" / "splits.npz"
    if not path.is_file():
        raise RunError(f"run {run.id} has no data/splits.npz; it was not trained by `edgeship train`")
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in ("x_train", "x_test", "y_test") if k not in npz.files]
        if missing:
            raise RunError(f"{path} lacks {', '.join(missing)}; retrain the run")
        data = {k: npz[k] for k in ("x_train", "x_test", "y_test")}
        if "y_train" in npz.files:  # stratifies the calibration rows
            data["y_train"] = npz["y_train"]
    data["x_train"] = data["x_train"].astype(np.float32, copy=False)
    data["x_test"] = data["x_test"].astype(np.float32, copy=False)
    if len(data["x_test"]) == 0:
        raise DataError(f"{path} has an empty test split; nothing to validate exports on")
    return data


def load_raw_test(run: RunDir) -> dict[str, Any] | None:
    """The test split before preprocessing (data/test_raw.npz or .csv), as the page takes it.

    ``{"x": images (N, H, W, C) float32 | rows (lists in preprocessing column order, numbers as
    float or None, categories as str), "y": int64 class indices, "source": relative path}``;
    None if the run has neither file.
    """
    data = run.manifest.get("data") or {}
    labels = [str(v) for v in data.get("labels") or []]
    npz = run.path / "data" / "test_raw.npz"
    if npz.is_file():
        with np.load(npz, allow_pickle=False) as f:
            return {"x": f["x"].astype(np.float32, copy=False), "y": f["y"].astype(np.int64),
                    "source": "data/test_raw.npz"}
    path = run.path / "data" / "test_raw.csv"
    if not path.is_file():
        return None
    columns = (data.get("preprocessing") or {}).get("columns") or []
    index = {label: i for i, label in enumerate(labels)}
    xs: list[list[Any]] = []
    ys: list[int] = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            values: list[Any] = []
            for col in columns:
                v = row.get(col["name"])
                if v is None or v == "":
                    values.append(None)
                elif col.get("type") == "numeric":
                    try:
                        values.append(float(v))
                    except ValueError:
                        values.append(None)
                else:
                    values.append(v)
            xs.append(values)
            label = row.get("__label__")
            if label not in index:
                raise RunError(f"{path} has label {label!r}, not one of the run's labels; retrain the run")
            ys.append(index[label])
    return {"x": xs, "y": np.asarray(ys, dtype=np.int64), "source": "data/test_raw.csv"}


def _data_facts(run: RunDir, manifest: dict[str, Any]) -> tuple[list[str], dict[str, Any] | None, str | None]:
    data = manifest.get("data")
    if not data or "labels" not in data:
        raise RunError(f"run {run.id} records no data.labels in its manifest; retrain it")
    return list(data["labels"]), data.get("preprocessing"), (manifest.get("model") or {}).get("name")


def _calibration_record(job: Job, qat: bool, cal: Calibration | None, onnx_path: Path | None) -> dict | None:
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


def _load_keras(path: Path) -> Any:
    """A tf_keras model; quantisation-aware models need tfmot's scope to deserialise."""
    from edgeship.training.keras_env import keras

    k = keras()
    try:
        return k.models.load_model(path, compile=False)
    except (TypeError, ValueError) as first:
        try:
            import tensorflow_model_optimization as tfmot
        except ImportError:
            tfmot = None
        if tfmot is not None:
            try:
                with tfmot.quantization.keras.quantize_scope():
                    return k.models.load_model(path, compile=False)
            except (TypeError, ValueError):
                pass
        reason = (str(first).splitlines() or [type(first).__name__])[0]
        raise RunError(f"{path} cannot be loaded as a tf_keras model ({reason})") from first


def _is_qat(model: Any) -> bool:
    return any(type(layer).__name__.startswith("Quantize") for layer in getattr(model, "layers", []))


def _check_input_shape(model: Any, x_test: np.ndarray, path: Path) -> None:
    want = tuple(model.inputs[0].shape[1:])
    have = tuple(x_test.shape[1:])
    if want != have:
        raise RunError(f"{path} takes inputs {want} but data/splits.npz holds {have}; retrain or recreate it")


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


def _source(run: RunDir, model_path: Path, manifest: dict[str, Any], variant: str) -> dict[str, Any]:
    from edgeship.core.fsutil import sha256_file

    return {"path": str(model_path.relative_to(run.path)), "sha256": sha256_file(model_path),
            "data_sha256": (manifest.get("data") or {}).get("sha256")}


def _write_reference(path: Path, reference: np.ndarray, model_path: Path, run: RunDir) -> None:
    """The Keras model's top-1 on the test split: devices report their top-1 agreement with it."""
    from edgeship.core.fsutil import write_json_atomic

    write_json_atomic(path, {
        "top1": [int(i) for i in reference.argmax(axis=1)],
        "model": str(model_path.relative_to(run.path)),
        "test": "data/splits.npz x_test, in order (the rows of data/test_raw.*)",
    })


def _remove_stale(run: RunDir, results: list[ExportResult]) -> None:
    """After a re-export, the opposite folder (an old pass or an old failure) no longer applies."""
    for r in results:
        rel = str(r.dir.relative_to(run.path))
        base = rel.removesuffix(FAILED_SUFFIX)
        stale = run.path / (base if not r.passed else base + FAILED_SUFFIX)
        if stale.exists():
            shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------- reading back


def list_artifacts(run: RunDir, include_failed: bool = True) -> list[dict[str, Any]]:
    """artifact.json of every export in a run (``dir`` added, relative to the run), for show/bench."""
    found = []
    for meta_path in sorted((run.path / "exports").glob(f"*/*/{ARTIFACT_FILE}")):
        folder = meta_path.parent
        failed = folder.name.endswith(FAILED_SUFFIX)
        if failed and not include_failed:
            continue
        meta = read_json(meta_path)
        meta["dir"] = str(folder.relative_to(run.path))
        meta["failed"] = failed
        found.append(meta)
    return found

