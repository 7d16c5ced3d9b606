"""The export stage: variants of a run -> validated artifacts under ``exports/<variant>/<fmt>/``.

One ``run.stage("export")`` for the whole request, so an error or Ctrl-C leaves the run as it
was. The request is checked in full (variants, formats, quantizations, data) before anything
is converted (``export.plan``). Each artifact is built in scratch space inside the stage,
validated through ``edge_runtime``, then placed at ``exports/<variant>/<fmt>/`` if it passed
or at ``exports/<variant>/<fmt>.failed/`` if it did not (``export.variant``): a failed export
is kept for inspection and reported, never used. What it reads from the run is in
``export.inputs``; reading exports back is ``export.listing``. Their public names are
re-exported here for callers of ``edgeship.export.stage``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.fsutil import make_temp_dir
from edgeship.core.runstore import STAGE_PREFIX, RunDir
from edgeship.export.inputs import BASE, REFERENCE_FILE, data_facts, load_raw_test, load_splits
from edgeship.export.listing import list_artifacts
from edgeship.export.plan import FAILED_SUFFIX, Job, plan, qat_forms, variant_is_qat
from edgeship.export.validate import ValidationConfig
from edgeship.export.variant import (
    QAT_FLOAT_WARNING,
    ExportResult,
    Session,
    export_variant,
    validation_view,
)
from edgeship.training.calibration import CALIBRATION_ROWS, MIN_CALIBRATION_ROWS, Calibration, calibration_set

MIN_REPRESENTATIVE = MIN_CALIBRATION_ROWS
REPRESENTATIVE_SAMPLES = CALIBRATION_ROWS  # the rows compress measured int8 on: see training.calibration

__all__ = [
    "BASE",
    "FAILED_SUFFIX",
    "MIN_REPRESENTATIVE",
    "QAT_FLOAT_WARNING",
    "REFERENCE_FILE",
    "REPRESENTATIVE_SAMPLES",
    "ExportConfig",
    "ExportResult",
    "Job",
    "export_run",
    "list_artifacts",
    "load_raw_test",
    "plan",
    "qat_forms",
    "validation_view",
    "variant_is_qat",
]


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how: the export stage's one typed request (``edgeship export``'s flags).

    ``variants``/``formats``/``quantize``/``targets`` take names, comma lists or "all";
    ``quantize=None`` means each format's defaults (tflite: float32+int8, onnx: float32).
    A QAT variant gets its int8 forms in place of float ones unless ``qat_float`` (see ``plan``).
    int8 calibrates on ``training.calibration``'s rows for the run's seed: the rows compress
    measured the variant's int8 form on. ``web_runtime`` (ort, litert, both): the browser
    runtimes a web bundle carries; one that carries onnxruntime-web builds its ONNX source too.
    ``tune_on`` (``{"tracker": "HOST:PORT", "key": KEY}``): TVM builds for another machine are
    tuned on that key's devices through TVM's RPC tracker (``export.tvm.remote``).
    ``int8_fallback``: a post-training int8 TFLite that fails validation is retried with its
    first and worst layers in float (``float_fallback``); False refuses it instead.
    """

    variants: Sequence[str] | str = (BASE,)
    formats: Sequence[str] | str = ("tflite", "onnx")
    quantize: Sequence[str] | str | None = None
    io: str = "int8"
    targets: Sequence[str] | str = ("host",)
    trials: int | None = None
    time_budget_s: float | None = None
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    representative_samples: int = REPRESENTATIVE_SAMPLES
    cache_dir: Path | None = None
    qat_float: bool = False
    web_runtime: str = "both"
    tune_on: dict[str, Any] | None = None
    int8_fallback: bool = True


def export_run(run: RunDir, cfg: ExportConfig | None = None, *,
               log: Callable[[str], None] | None = None) -> list[ExportResult]:
    """Export, validate and commit; see the module docstring. Returns one result per artifact."""
    cfg = cfg or ExportConfig()
    say = log or (lambda _msg: None)
    manifest = run.manifest
    jobs, skipped = plan(run, manifest, cfg.variants, cfg.formats, cfg.quantize, cfg.io, cfg.targets,
                         qat_float=cfg.qat_float, web_runtime=cfg.web_runtime)
    for note in skipped:
        say(note)
    data = load_splits(run)
    labels, preprocessing, model_name = data_facts(run, manifest)
    cal = _calibration(run, manifest, jobs, data, cfg.representative_samples)
    params = _stage_params(jobs, cal, io=cfg.io, trials=cfg.trials, time_budget_s=cfg.time_budget_s,
                           qat_float=cfg.qat_float, validation=cfg.validation)
    if any(j.fmt.name == "web" for j in jobs):
        params["web_runtime"] = cfg.web_runtime
    if cfg.tune_on:
        params["tune_on"] = cfg.tune_on
    if not cfg.int8_fallback:
        params["strict_int8"] = True
    results: list[ExportResult] = []
    with run.stage("export", params) as ctx:
        session = Session(
            run=run, manifest=manifest, output=ctx.output,
            scratch=Path(tempfile.mkdtemp(prefix="work-", dir=ctx.staging)), data=data, cal=cal,
            labels=labels, preprocessing=preprocessing, model_name=model_name, trials=cfg.trials,
            time_budget_s=cfg.time_budget_s, cache_dir=cfg.cache_dir, validation=cfg.validation, say=say,
            web_runtime=cfg.web_runtime, tune_on=cfg.tune_on, int8_fallback=cfg.int8_fallback,
        )
        for variant in dict.fromkeys(j.variant for j in jobs):
            results += export_variant(session, variant, [j for j in jobs if j.variant == variant])
        ctx.metrics = {
            "artifacts": len(results),
            "passed": sum(r.passed for r in results),
            "failed": [str(r.dir.relative_to(run.path)) for r in results if not r.passed],
        }
        ctx.set_section("exports", _exports_section(run, manifest, results))
    _remove_stale(run, results)
    return results


def _calibration(run: RunDir, manifest: dict[str, Any], jobs: list[Job], data: dict[str, np.ndarray],
                 samples: int) -> Calibration | None:
    """The train rows int8 calibrates on, when some job calibrates (int8 of a non-QAT variant)."""
    if not any(j.quantize == "int8" and not variant_is_qat(run, manifest, j.variant) for j in jobs):
        return None
    return calibration_set(data["x_train"], data.get("y_train"), int(manifest.get("seed", 0)), samples)


def _stage_params(
    jobs: list[Job], cal: Calibration | None, *, io: str, trials: int | None, time_budget_s: float | None,
    qat_float: bool, validation: ValidationConfig,
) -> dict[str, Any]:
    """The stage's recorded parameters: what was planned and asked for."""
    return {
        "variants": sorted({j.variant for j in jobs}),
        "formats": sorted({j.fmt.name for j in jobs}),
        "artifacts": [j.rel for j in jobs],
        "io": io,
        "targets": sorted({j.target for j in jobs if j.target}),
        "trials": trials,
        "time_budget_s": time_budget_s,
        "representative_samples": 0 if cal is None else len(cal.rows),
        "calibration": cal.describe() if cal is not None else None,
        "qat_float": qat_float,
        "validation": asdict(validation),
    }


def _exports_section(run: RunDir, manifest: dict[str, Any], results: list[ExportResult]) -> dict[str, Any]:
    """The manifest's ``exports`` with this request's artifacts, replacing their pass/fail twins."""
    exports = dict(manifest.get("exports") or {})
    for r in results:
        key = str(r.dir.relative_to(run.path))
        for stale in (key.removesuffix(FAILED_SUFFIX), key.removesuffix(FAILED_SUFFIX) + FAILED_SUFFIX):
            exports.pop(stale, None)
        exports[key] = {k: v for k, v in r.summary().items() if k != "dir"} | {"dir": key}
    return exports


def _remove_stale(run: RunDir, results: list[ExportResult]) -> None:
    """After a re-export, the opposite folder (an old pass or an old failure) no longer applies.

    Under the run's lock (``RunDir.writing``), and only a folder the manifest, read again under
    it, no longer lists: one that another writer committed after this stage is kept. Each goes
    by one rename into a ``.stage-*`` folder first (removed here, or on the next open after a
    kill), so ``exports/`` never holds half a folder.
    """
    with run.writing():
        listed = set(run.manifest.get("exports") or {})
        for r in results:
            base = str(r.dir.relative_to(run.path)).removesuffix(FAILED_SUFFIX)
            rel = base if not r.passed else base + FAILED_SUFFIX
            stale = run.path / rel
            if rel in listed or not stale.exists():
                continue
            trash = make_temp_dir(f"{STAGE_PREFIX}stale-", run.path)
            os.replace(stale, trash / stale.name)
            shutil.rmtree(trash, ignore_errors=True)
