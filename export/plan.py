"""Planning an export: a request's names -> every (variant, format, quantization, target) to build.

Kept apart from the stage so the request is checked in full (variants, formats,
quantizations, QAT rules, ONNX sources) before anything is converted, and so those rules read
in one place. A QAT variant gets its int8 forms in place of float ones (``qat_forms``).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.artifact import ARTIFACT_FILE
from edgeship.core.errors import InputError, MissingDependencyError, RunError
from edgeship.core.fsutil import read_json, sha256_file
from edgeship.core.names import split_names
from edgeship.core.runstore import RunDir
from edgeship.export import FORMATS, IO_CHOICES, QUANTIZE_CHOICES, ExportFormat, get_format
from edgeship.export.inputs import BASE, model_path, onnx_export_file

FAILED_SUFFIX = ".failed"  # exports/<variant>/<fmt>.failed/: an artifact that failed validation
WEB_RUNTIMES = ("both", "ort", "litert")  # --web-runtime: onnxruntime-web, LiteRT.js or both


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


def variant_names(manifest: dict[str, Any]) -> list[str]:
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
    web_runtime: str = "both",
) -> tuple[list[Job], list[str]]:
    """Every (variant, format, quantization, target) to build, or a one-line error; plus notes
    on combinations skipped under ``all``.

    A QAT variant (fake-quant graph) gets only its int8 forms: each float quantization asked
    for becomes int8 in formats that have it (see ``qat_forms``), with one note per variant.
    ``qat_float`` keeps float32 (the artifact then carries a warning). A web bundle that
    carries onnxruntime-web gets the ONNX export it is built from added when the run lacks it.
    """
    if web_runtime not in WEB_RUNTIMES:
        raise InputError(f"unknown --web-runtime '{web_runtime}'; choose {', '.join(WEB_RUNTIMES)}")
    wanted_variants = _variants(run, manifest, variants)
    notes: list[str] = []
    fmts, explicit = _formats(formats, notes)
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
    if web_runtime != "litert":
        jobs = _with_onnx_sources(run, jobs, notes)
    _check_jobs(run, jobs, qat, web_runtime)
    return jobs, list(dict.fromkeys(notes))


def _with_onnx_sources(run: RunDir, jobs: list[Job], notes: list[str]) -> list[Job]:
    """``jobs`` plus the ONNX export each ONNX-built job (web) needs and the run lacks, placed
    before it: ``--format web`` builds what it depends on instead of naming another command."""
    onnx = get_format("onnx")
    out: list[Job] = []
    have = {j.rel for j in jobs}
    for j in jobs:
        if j.fmt.source == "onnx-export" and j.quantize in onnx.quantize:
            src = Job(j.variant, onnx, j.quantize, None, None)
            if src.rel not in have and _current_onnx_export(run, j.variant, j.quantize) is None:
                notes.append(f"{j.rel} is built from {src.rel}/, which the run lacks: exporting it too")
                out.append(src)
                have.add(src.rel)
        out.append(j)
    return out


def _variants(run: RunDir, manifest: dict[str, Any], variants: Sequence[str] | str) -> list[str]:
    """The variants asked for (``all``: every one), each known and with its model file."""
    known = variant_names(manifest)
    wanted = split_names(variants) or [BASE]
    if "all" in wanted:
        wanted = known
    for v in wanted:
        if v not in known:
            raise InputError(f"unknown variant '{v}'; this run has: {', '.join(known)} (or all)")
    for v in wanted:
        model_path(run, manifest, v)  # raises if the model file is missing
    return wanted


def _formats(formats: Sequence[str] | str, notes: list[str]) -> tuple[list[ExportFormat], bool]:
    """The formats asked for and whether they were named (not ``all``). A named format that
    cannot be built here is an error; under ``all`` it is skipped with a note in ``notes``."""
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
    return fmts, explicit


def _check_jobs(run: RunDir, jobs: list[Job], qat: set[str], web_runtime: str = "both") -> None:
    """Something to build, no two jobs in one folder, and an ONNX export for every format built
    from one (in this request or already in the run), else an error naming the command."""
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
        if j.fmt.source != "onnx-export" or web_runtime == "litert":
            continue
        source_rel = f"exports/{j.variant}/{onnx.dirname(j.quantize)}"
        if source_rel in seen or _current_onnx_export(run, j.variant, j.quantize) is not None:
            continue
        flags = "".join([f" --variant {j.variant}" if j.variant != BASE else "",
                         f" --quantize {j.quantize}" if j.quantize != "float32" else ""])
        raise RunError(
            f"{j.fmt.name} is built from the ONNX export {source_rel}/, which run {run.id} does not have "
            f"(or it failed validation); make it with `edgeship export {run.id} --format onnx{flags}` "
            f"(or ask for --format onnx,{j.fmt.name})"
        )


def _current_onnx_export(run: RunDir, variant: str, quantize: str) -> Path | None:
    """The variant's passing ONNX export of ``quantize``, unless it was made from a model the
    variant no longer has (``compress --force``): then it is rebuilt, not built from."""
    path = onnx_export_file(run, variant, quantize)
    if path is None:
        return None
    try:
        made_from = (read_json(path.parent / ARTIFACT_FILE).get("source") or {}).get("sha256")
        current = sha256_file(model_path(run, run.manifest, variant))
    except (OSError, ValueError, RunError):
        return None
    return path if not made_from or made_from == current else None


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
    return _config_is_qat(model_path(run, manifest, variant))


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
