"""The web bundle: a static folder that runs an ONNX model in any browser, offline.

The page (``web_demo/``), the model, onnxruntime-web's three WebAssembly files and a
``bundle.json`` manifest are copied side by side, so any static host that sends the
cross-origin isolation headers (``edgeship.benchmarks.webserver``) can serve it and nothing is fetched
from a CDN. The manifest carries what the page needs to turn a raw input into the model's
input (the preprocessing spec of docs/architecture.md) plus the sha256 of every file, so a
damaged copy is detected in the page rather than mispredicting. The folder is built in a
temporary sibling and renamed into place: a reader never sees half a bundle.

``export_web`` is the export stage's entry for ``--format web``: it takes the variant's validated
ONNX export (float32 or int8 QDQ), applies the rewrites that help onnxruntime-web
(``prepare_web_model``), and bundles it with the raw test split as examples. The stage then
validates the bundle's model with native onnxruntime through ``edge_runtime``.
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
from edgeship.core.fsutil import replace_tree, sha256_file, write_text_atomic
from edgeship.export import ExportedModel, ExportError, ExportRequest, get_format
from edgeship.export.web_manifest import (
    MAX_IR_VERSION,
    OUTPUT_KINDS,
    SCHEMA_VERSION,
    check_json,
    checked_examples,
    model_interface,
    plain,
)

WEB_DEMO_DIR = Path(__file__).resolve().parents[1] / "web_demo"
PAGE_FILES = ("index.html", "app.js", "style.css")
ORT_PACKAGE = "onnxruntime-web"
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
MODEL_FILE = "model.onnx"
MANIFEST = "bundle.json"
NPM_HINT = "run `npm ci --prefix web_demo` in the edgeship checkout (needs node and npm)"
# Examples embedded in bundle.json: the whole test split of small datasets, a sample of big images.
MAX_EXAMPLES = 1000
MAX_EXAMPLE_VALUES = 300_000


def unavailable_reason(web_demo_dir: str | Path | None = None) -> str | None:
    """Why ``--format web`` cannot be built here (onnxruntime-web or onnx missing), or None."""
    try:
        ort_web_dist(web_demo_dir)
    except MissingDependencyError as e:
        return str(e)
    if importlib.util.find_spec("onnx") is None:
        return "the Python package onnx is missing; pip install onnx"
    return None


def export_web(req: ExportRequest) -> ExportedModel:
    """The variant's ONNX export (``req.onnx_path``), made browser-friendly and bundled in
    ``req.out_dir``; the stage writes artifact.json beside bundle.json and validates the model."""
    from edgeship.export.onnx import _io

    src = Path(req.onnx_path) if req.onnx_path is not None else None
    if src is None or not src.is_file():
        raise ExportError("the web bundle is built from the variant's ONNX export; none was found "
                          "(export --format onnx first)")
    if not req.preprocessing:
        raise ExportError("the web bundle needs the run's preprocessing spec (manifest data.preprocessing)")
    out = Path(req.out_dir)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-model-", dir=out.parent))
    try:
        import onnx

        model_path = work / MODEL_FILE
        notes = prepare_web_model(src, model_path)
        proto = onnx.load(str(model_path), load_external_data=False)
        inputs = [_io(v) for v in proto.graph.input]
        outputs = [_io(v) for v in proto.graph.output]
        raw = req.examples() if req.examples is not None else None
        examples, shown = _sample_examples(raw, req.preprocessing)
        metadata = {**req.metadata, "quantize": req.quantize,
                    "examples": shown, "web": notes}
        manifest = build_web_bundle(
            model_path, out, req.labels, req.preprocessing, inputs, examples, metadata=metadata
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    runtime = manifest["runtime"]
    return ExportedModel(
        file=out / MODEL_FILE,
        runtime={"name": runtime["name"], "version": runtime["version"], "backend": runtime["backend"],
                 "requirements": [], "npm": [f"{ORT_PACKAGE}@{runtime['version']}"]},
        inputs=inputs,
        outputs=outputs,
        extra={
            "bundle": {"manifest": MANIFEST, "files": manifest["files"],
                       "bytes": sum(f["bytes"] for f in manifest["files"].values())},
            "web": notes,
            "examples": shown,
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
    has_onnx = (exports / get_format("onnx").dirname(q) / "model.onnx").is_file()
    fmt = "web" if has_onnx else "onnx,web"
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


def ort_web_dist(web_demo_dir: str | Path | None = None) -> tuple[Path, str]:
    """onnxruntime-web's ``dist/`` folder and installed version, checked against the pin.

    Raises MissingDependencyError when node_modules is missing or holds another version than
    ``web_demo/package.json`` pins (a stale install would silently ship other WebAssembly).
    """
    demo = Path(web_demo_dir) if web_demo_dir is not None else WEB_DEMO_DIR
    pkg_dir = demo / "node_modules" / ORT_PACKAGE
    dist = pkg_dir / "dist"
    missing = [f for f in ORT_FILES if not (dist / f).is_file()]
    if missing:
        raise MissingDependencyError(
            f"{ORT_PACKAGE} is not installed in {demo / 'node_modules'} "
            f"(missing {', '.join(missing)}); {NPM_HINT}"
        )
    installed = json.loads((pkg_dir / "package.json").read_text(encoding="utf-8"))["version"]
    pinned_file = demo / "package.json"
    if pinned_file.is_file():
        pinned = json.loads(pinned_file.read_text(encoding="utf-8"))["dependencies"][ORT_PACKAGE]
        if pinned != installed:
            raise MissingDependencyError(
                f"{ORT_PACKAGE} {installed} is installed but web_demo/package.json pins {pinned}; "
                f"{NPM_HINT}"
            )
    return dist, installed


def build_web_bundle(
    onnx_path: str | Path,
    out_dir: str | Path,
    labels: Sequence[str],
    preprocessing: Mapping[str, Any],
    input_spec: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    examples: Mapping[str, Any] | None = None,
    *,
    output_kind: str = "probabilities",
    metadata: Mapping[str, Any] | None = None,
    web_demo_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Write a self-contained web bundle for ``onnx_path`` into ``out_dir``; return bundle.json.

    ``input_spec`` is ``{"name", "shape", "dtype"}`` (optionally ``layout`` NHWC/NCHW and
    ``quantization``) or artifact.json's ``inputs`` list. ``examples`` is ``{"x": raw inputs,
    "y": class indices or labels}`` (images: raw intensities H x W x C; tables: raw rows in
    ``preprocessing["columns"]`` order or dicts by column name); the page offers them to pick.
    ``metadata`` (run id, variant, quantize ...) is copied into the manifest as is.
    """
    onnx_path = Path(onnx_path)
    out = Path(out_dir)
    if not onnx_path.is_file():
        raise InputError(f"ONNX model {onnx_path} does not exist; export it first (--format onnx)")
    if output_kind not in OUTPUT_KINDS:
        raise InputError(f"output_kind {output_kind!r} is not one of {sorted(OUTPUT_KINDS)}")
    labels = [str(v) for v in labels]
    prep = plain(dict(preprocessing))
    spec, output = model_interface(input_spec, prep, onnx_path)
    demo = Path(web_demo_dir) if web_demo_dir is not None else WEB_DEMO_DIR
    dist, ort_version = ort_web_dist(demo)
    page_missing = [f for f in PAGE_FILES if not (demo / f).is_file()]
    if page_missing:
        raise MissingDependencyError(
            f"the demo page is incomplete: {', '.join(page_missing)} missing in {demo}"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        files = _copy_files(tmp, demo, dist, onnx_path)
        manifest = _manifest(files, labels, output_kind, prep, spec, output,
                             checked_examples(examples, prep, len(labels)), ort_version, metadata)
        check_json(manifest)
        # Compact: the examples are most of it, and indented they triple its size.
        write_text_atomic(tmp / MANIFEST, json.dumps(manifest, separators=(",", ":"), allow_nan=False) + "\n")
        tmp.chmod(0o755)
        replace_tree(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _copy_files(tmp: Path, demo: Path, dist: Path, onnx_path: Path) -> dict[str, dict[str, Any]]:
    """The page, onnxruntime-web's files and the model copied into ``tmp``: {name: sha256, bytes}."""
    for name in PAGE_FILES:
        shutil.copyfile(demo / name, tmp / name)
    for name in ORT_FILES:
        shutil.copyfile(dist / name, tmp / name)
    shutil.copyfile(onnx_path, tmp / MODEL_FILE)
    return {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(tmp.iterdir())
        if p.is_file()
    }


def _manifest(
    files: dict[str, dict[str, Any]], labels: list[str], output_kind: str, prep: dict[str, Any],
    spec: dict[str, Any], output: dict[str, Any] | None, examples: dict[str, Any] | None,
    ort_version: str, metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """bundle.json: what the page needs to turn a raw input into the model's, and every file's hash."""
    return {
        "schema_version": SCHEMA_VERSION,
        "format": "web",
        "model": {"file": MODEL_FILE, **files[MODEL_FILE]},
        "labels": labels,
        "output_kind": output_kind,
        "preprocessing": prep,
        "input": spec,
        "output": output,
        "examples": examples,
        "runtime": {
            "name": ORT_PACKAGE,
            "version": ort_version,
            "backend": "wasm",
            "files": list(ORT_FILES),
        },
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
    "build_web_bundle",
    "bundle_dir",
    "export_web",
    "ort_web_dist",
    "prepare_web_model",
    "unavailable_reason",
]
