"""The web bundle: a static folder that runs the model in any browser, offline, with two runtimes.

The page (``web_demo/``), the models, the runtimes' files and a ``bundle.json`` manifest are
copied side by side, so any static host that sends the cross-origin isolation headers
(``edgeship.devices.browser.server``) can serve it and nothing is fetched from a CDN. Two runtimes
(``export.web_runtimes``): onnxruntime-web runs the variant's ONNX export, LiteRT.js a batch-1
TFLite file converted here. The manifest carries what the page needs to turn a raw input into
the model's input (the preprocessing spec of docs/architecture.md), per runtime its model, input,
version and whether it is available (and if not, why), plus the sha256 of every file, so a
damaged copy is detected in the page rather than mispredicting. The folder is built in a
temporary sibling and renamed into place: a reader never sees half a bundle.

``export_web`` is the export stage's entry for ``--format web``: it takes the variant's validated
ONNX export (float32 or int8 QDQ), applies the rewrites that help onnxruntime-web
(``prepare_web_model``), converts the TFLite model for LiteRT.js and validates it through the
stage's callback, and bundles both with the raw test split as examples. The stage then validates
the bundle's primary model (ONNX, or the TFLite one in a LiteRT.js-only bundle) natively.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeship.core import __version__
from edgeship.core.errors import InputError, MissingDependencyError, RunError
from edgeship.core.fsutil import link_or_copy, replace_tree, sha256_file, write_text_atomic
from edgeship.export import ExportedModel, ExportError, ExportRequest, get_format
from edgeship.export.web.manifest import (
    MAX_IR_VERSION,
    OUTPUT_KINDS,
    SCHEMA_VERSION,
    check_json,
    checked_examples,
    model_interface,
    plain,
    tflite_interface,
)
from edgeship.export.web.runtimes import (
    LITERT,
    LITERT_PACKAGE,
    ORT,
    ORT_FILES,
    ORT_PACKAGE,
    TFLITE_MODEL,
    WEB_DEMO_DIR,
    RuntimeModel,
    litert_files,
    litert_model,
    ort_web_dist,
    validation_summary,
    wanted,
)

PAGE_FILES = ("index.html", "app.js", "style.css", "load.js", "ui.js", "ui-image.js", "runtime-ort.js",
              "runtime-litert.js")
MODEL_FILE = "model.onnx"
MANIFEST = "bundle.json"
# Examples embedded in bundle.json: the whole test split of small datasets, a sample of big images.
MAX_EXAMPLES = 1000
MAX_EXAMPLE_VALUES = 300_000


def unavailable_reason(web_demo_dir: str | Path | None = None) -> str | None:
    """Why ``--format web`` cannot be built here (neither runtime installed, or onnx missing), or None."""
    reasons = []
    for probe in (ort_web_dist, litert_files):
        try:
            probe(web_demo_dir)
        except MissingDependencyError as e:
            reasons.append(str(e))
    if len(reasons) == 2:
        return reasons[0]
    if importlib.util.find_spec("onnx") is None:
        return "the Python package onnx is missing; pip install onnx"
    return None


def export_web(req: ExportRequest) -> ExportedModel:
    """The bundle in ``req.out_dir``: the ONNX export (``req.onnx_path``) for onnxruntime-web and
    a batch-1 TFLite model for LiteRT.js, as ``req.web_runtime`` asks; a runtime whose model is
    missing or fails is marked unavailable, and only both failing is an error."""
    if not req.preprocessing:
        raise ExportError("the web bundle needs the run's preprocessing spec (manifest data.preprocessing)")
    runtimes = wanted(req.web_runtime)
    src = Path(req.onnx_path) if req.onnx_path is not None else None
    ort_reason = None
    if ORT not in runtimes:
        ort_reason = "not asked for (--web-runtime litert)"
    elif src is None or not src.is_file():
        ort_reason = "the variant's ONNX export is missing or failed validation"
    out = Path(req.out_dir)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-model-", dir=out.parent))
    try:
        model_path, notes, inputs, outputs = None, {}, [], []
        if ort_reason is None:
            model_path, notes, inputs, outputs = _ort_model(src, work)  # type: ignore[arg-type]
        litert = litert_model(req, work) if LITERT in runtimes else None
        if model_path is None and (litert is None or not litert.available):
            why = litert.reason if litert is not None else "not asked for"
            raise ExportError(f"no browser runtime can run this model: onnxruntime-web: {ort_reason}; "
                              f"LiteRT.js: {why}")
        raw = req.examples() if req.examples is not None else None
        examples, shown = _sample_examples(raw, req.preprocessing)
        metadata = {**req.metadata, "quantize": req.quantize, "examples": shown, "web": notes}
        manifest = build_web_bundle(
            model_path, out, req.labels, req.preprocessing, inputs, examples, metadata=metadata,
            litert=litert, ort_reason=ort_reason,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _exported(out, manifest, inputs, outputs, litert, notes, shown)


def _ort_model(
    src: Path, work: Path
) -> tuple[Path, dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The ONNX export made browser-friendly in ``work``, with its I/O spec."""
    import onnx

    from edgeship.export.onnx import _io

    model_path = work / MODEL_FILE
    notes = prepare_web_model(src, model_path)
    proto = onnx.load(str(model_path), load_external_data=False)
    return model_path, notes, [_io(v) for v in proto.graph.input], [_io(v) for v in proto.graph.output]


def _exported(out: Path, manifest: dict[str, Any], inputs: list[dict[str, Any]],
              outputs: list[dict[str, Any]], litert: RuntimeModel | None, notes: dict[str, Any],
              shown: dict[str, Any] | None) -> ExportedModel:
    """What the stage records: the primary model (ONNX, else TFLite) and how to validate it."""
    rts = manifest["runtimes"]
    ort_ok = rts.get(ORT, {}).get("available", False)
    if not ort_ok and litert is not None:
        inputs, outputs = litert.inputs, litert.outputs
    runtime = manifest["runtime"]
    npm = [f"{ORT_PACKAGE}@{v['version']}" if k == ORT else f"{LITERT_PACKAGE}@{v['version']}"
           for k, v in rts.items() if v.get("available")]
    return ExportedModel(
        file=out / (MODEL_FILE if ort_ok else TFLITE_MODEL),
        runtime={"name": runtime["name"], "version": runtime["version"], "backend": runtime["backend"],
                 "requirements": [], "npm": npm},
        inputs=inputs,
        outputs=outputs,
        extra={
            "bundle": {"manifest": MANIFEST, "files": manifest["files"],
                       "bytes": sum(f["bytes"] for f in manifest["files"].values())},
            "web": notes,
            "web_runtimes": {k: {"available": v["available"], "model": v.get("model"),
                                 "version": v.get("version"), "reason": v.get("reason"),
                                 "validation": v.get("validation")} for k, v in rts.items()},
            "examples": shown,
            "validate_as": "onnx" if ort_ok else "tflite",
        },
    )


def bundle_dir(run: Any, variant: str = "base", quantize: str | None = None) -> Path:
    """The folder of a run's web bundle for ``variant``: ``exports/<variant>/web`` (float32),
    else ``web-int8``; ``quantize`` picks one. A missing bundle is an error naming the command
    that makes it (and the ONNX export it needs, when that is missing too)."""
    exports = Path(run.path) / "exports" / variant
    names = [_bundle_name(quantize)] if quantize else [_bundle_name("float32"), _bundle_name("int8")]
    for name in names:
        if (exports / name / "index.html").is_file() and (exports / name / MANIFEST).is_file():
            return exports / name
    known = ["base", *(run.manifest.get("variants") or {})]
    if variant not in known:
        raise InputError(f"run {run.id} has no variant '{variant}'; its variants: {', '.join(known)}")
    failed = [n for n in names if (exports / f"{n}.failed").is_dir()]
    q = quantize or "float32"
    flags = f" --variant {variant}" if variant != "base" else ""
    flags += f" --quantize {q}" if q != "float32" else ""
    fmt = "web"
    why = (f"its last web export failed validation (exports/{variant}/{failed[0]}.failed/)" if failed
           else f"it has no exports/{variant}/{names[0]}/")
    raise RunError(f"run {run.id} has no web bundle for variant '{variant}': {why}; "
                   f"make it with `edgeship export {run.id} --format {fmt}{flags}`")


def _bundle_name(quantize: str) -> str:
    return get_format("web").dirname(quantize)


def prepare_web_model(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Copy the ONNX model ``src`` to ``dst`` with the rewrites onnxruntime-web gains from.

    Only function-preserving rewrites (validated again afterwards): int8 activation Q/DQ pairs
    become uint8 ones on the same grid (``qdq_activations_to_uint8``: onnxruntime's x86 and
    WebAssembly builds run uint8-activation QDQ graphs faster), the NCHW->NHWC Transpose before a
    Flatten/MatMul is folded into the weights (``drop_flatten_transpose``), and the IR version is
    capped at what onnxruntime-web 1.30 reads. Returns what was done, for the record.
    """
    import onnx

    from edgeship.export.onnx import drop_flatten_transpose, qdq_activations_to_uint8

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    notes: dict[str, Any] = {"source_sha256": sha256_file(src), "rewrites": []}
    changed = qdq_activations_to_uint8(model)
    if changed:
        notes["rewrites"].append(f"qdq_activations_to_uint8: {changed} activation zero points int8 -> uint8")
    removed = drop_flatten_transpose(model)
    if removed:
        notes["rewrites"].append(f"drop_flatten_transpose: {removed} Transpose folded into MatMul weights")
    if model.ir_version > MAX_IR_VERSION:
        notes["rewrites"].append(f"ir_version {model.ir_version} -> {MAX_IR_VERSION}")
        model.ir_version = MAX_IR_VERSION
    notes["ir_version"] = int(model.ir_version)
    onnx.save(model, str(dst))
    return notes


def _sample_examples(
    raw: Mapping[str, Any] | None, prep: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The first examples of the raw test split that fit the budget, and what was kept."""
    if raw is None or raw.get("x") is None or len(raw["x"]) == 0:
        return None, None
    xs, ys = raw["x"], raw.get("y")
    per = 1
    if prep.get("kind") == "image":
        per = int(prep["height"]) * int(prep["width"]) * int(prep["channels"])
    n = min(len(xs), MAX_EXAMPLES, max(1, MAX_EXAMPLE_VALUES // per))
    x = xs[:n]
    dtype = getattr(x, "dtype", None)
    if dtype is not None and dtype.kind == "f":
        import numpy as np

        if np.array_equal(x, np.round(x)):  # integral intensities (digits 0..16): half the JSON
            x = x.astype(np.int64)
    y = ys[:n] if ys is not None else None
    return {"x": x, "y": y}, {"count": n, "of": len(xs), "source": raw.get("source")}


def build_web_bundle(
    onnx_path: str | Path | None,
    out_dir: str | Path,
    labels: Sequence[str],
    preprocessing: Mapping[str, Any],
    input_spec: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    examples: Mapping[str, Any] | None = None,
    *,
    output_kind: str = "probabilities",
    metadata: Mapping[str, Any] | None = None,
    web_demo_dir: str | Path | None = None,
    litert: RuntimeModel | None = None,
    ort_reason: str | None = None,
) -> dict[str, Any]:
    """Write a self-contained web bundle into ``out_dir``; return bundle.json.

    ``onnx_path`` is onnxruntime-web's model (None: that runtime is unavailable, ``ort_reason``
    says why); ``litert`` LiteRT.js's batch-1 TFLite model (or why it is unavailable; None: not
    carried). ``input_spec`` is the ONNX model's ``{"name", "shape", "dtype"}`` (optionally
    ``layout`` NHWC/NCHW and ``quantization``) or artifact.json's ``inputs`` list. ``examples``
    is ``{"x": raw inputs, "y": class indices or labels}`` (images: raw intensities H x W x C;
    tables: raw rows in ``preprocessing["columns"]`` order or dicts by column name); the page
    offers them to pick. ``metadata`` (run id, variant, quantize ...) is copied in as is.
    """
    out = Path(out_dir)
    if onnx_path is not None and not Path(onnx_path).is_file():
        raise InputError(f"ONNX model {onnx_path} does not exist; export it first (--format onnx)")
    if output_kind not in OUTPUT_KINDS:
        raise InputError(f"output_kind {output_kind!r} is not one of {sorted(OUTPUT_KINDS)}")
    labels = [str(v) for v in labels]
    prep = plain(dict(preprocessing))
    demo = Path(web_demo_dir) if web_demo_dir is not None else WEB_DEMO_DIR
    runtimes = _runtimes(onnx_path, input_spec, prep, demo, litert, ort_reason)
    page_missing = [f for f in PAGE_FILES if not (demo / f).is_file()]
    if page_missing:
        raise MissingDependencyError(
            f"the demo page is incomplete: {', '.join(page_missing)} missing in {demo}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        files = _copy_files(tmp, demo, runtimes)
        manifest = _manifest(files, labels, output_kind, prep, runtimes,
                             checked_examples(examples, prep, len(labels)), metadata)
        check_json(manifest)
        # Compact: the examples are most of it, and indented they triple its size.
        write_text_atomic(tmp / MANIFEST, json.dumps(manifest, separators=(",", ":"), allow_nan=False) + "\n")
        tmp.chmod(0o755)
        replace_tree(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _runtimes(onnx_path: str | Path | None, input_spec: Any, prep: dict[str, Any], demo: Path,
              litert: RuntimeModel | None, ort_reason: str | None) -> dict[str, dict[str, Any]]:
    """bundle.json's ``runtimes``: per runtime its model, I/O, version and files, or why not.

    A runtime not installed in ``web_demo/node_modules`` is unavailable when the other one can
    run the model, and an error (naming ``npm ci``) when neither can. Each entry also holds
    ``_sources`` ({bundle name: source path}), dropped before writing.
    """
    rts: dict[str, dict[str, Any]] = {
        ORT: {"available": False, "reason": ort_reason or "no ONNX model was given"}}
    missing: list[MissingDependencyError] = []
    if onnx_path is not None:
        spec, output = model_interface(input_spec, prep, Path(onnx_path))
        try:
            dist, version = ort_web_dist(demo)
            rts[ORT] = {"available": True, "model": MODEL_FILE, "version": version, "backend": "wasm",
                        "files": list(ORT_FILES), "input": spec, "output": output, "reason": None,
                        "_sources": {**{f: dist / f for f in ORT_FILES}, MODEL_FILE: Path(onnx_path)}}
        except MissingDependencyError as e:
            missing.append(e)
            rts[ORT] = {"available": False, "reason": str(e)}
    if litert is not None and litert.available:
        spec, output = tflite_interface(litert.inputs, litert.outputs, prep)
        try:
            files, version = litert_files(demo)
            rts[LITERT] = {"available": True, "model": TFLITE_MODEL, "version": version, "backend": "wasm",
                           "files": sorted(files), "input": spec, "output": output, "reason": None,
                           "validation": validation_summary(litert.validation),
                           "_sources": {**files, TFLITE_MODEL: litert.path}}
        except MissingDependencyError as e:
            missing.append(e)
            rts[LITERT] = {"available": False, "reason": str(e)}
    elif litert is not None:
        rts[LITERT] = {"available": False, "reason": litert.reason}
    if not any(rt["available"] for rt in rts.values()):
        if missing:
            raise missing[0]
        why = "; ".join(f"{k}: {v['reason']}" for k, v in rts.items())
        raise InputError(f"the bundle needs an ONNX model (onnxruntime-web) or a TFLite one (LiteRT.js); "
                         f"neither is usable: {why}")
    return rts


def _copy_files(tmp: Path, demo: Path, runtimes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The page, each available runtime's files and model copied into ``tmp``: {name: sha256, bytes}."""
    for name in PAGE_FILES:
        shutil.copyfile(demo / name, tmp / name)
    for rt in runtimes.values():
        for name, src in rt.pop("_sources", {}).items():
            link_or_copy(src, tmp / name)  # the runtimes' wasm files: ~40 MB per bundle otherwise
    return {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(tmp.iterdir())
        if p.is_file()
    }


def _manifest(
    files: dict[str, dict[str, Any]], labels: list[str], output_kind: str, prep: dict[str, Any],
    runtimes: dict[str, dict[str, Any]], examples: dict[str, Any] | None, metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """bundle.json: what the page needs to turn a raw input into the model's, per runtime, and
    every file's hash. ``model``/``input``/``output``/``runtime`` name the primary runtime
    (onnxruntime-web when available) for readers of schema 1."""
    primary = ORT if runtimes[ORT]["available"] else LITERT
    p = runtimes[primary]
    for rt in runtimes.values():
        if rt["available"]:
            rt["sha256"] = files[rt["model"]]["sha256"]
    return {
        "schema_version": SCHEMA_VERSION,
        "format": "web",
        "model": {"file": p["model"], **files[p["model"]]},
        "labels": labels,
        "output_kind": output_kind,
        "preprocessing": prep,
        "input": p["input"],
        "output": p["output"],
        "examples": examples,
        "runtime": {"name": ORT_PACKAGE if primary == ORT else LITERT_PACKAGE, "version": p["version"],
                    "backend": "wasm", "files": p["files"]},
        "runtimes": runtimes,
        "default_runtime": LITERT if runtimes.get(LITERT, {}).get("available") else ORT,
        "files": files,
        "metadata": plain(dict(metadata or {})),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "edgeship_version": __version__,
    }


__all__ = [
    "MANIFEST",
    "MAX_IR_VERSION",
    "MODEL_FILE",
    "ORT_FILES",
    "PAGE_FILES",
    "RuntimeModel",
    "build_web_bundle",
    "bundle_dir",
    "export_web",
    "ort_web_dist",
    "prepare_web_model",
    "unavailable_reason",
]
