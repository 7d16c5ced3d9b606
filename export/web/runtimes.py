"""The two browser runtimes a web bundle carries, their pinned files, and LiteRT.js's model.

onnxruntime-web runs the ONNX export; LiteRT.js (``@litertjs/core``) runs a TFLite file. Both
are pinned in ``web_demo/package.json`` + ``package-lock.json`` and copied into every bundle from
``web_demo/node_modules`` (never a CDN); a stale install (another version than the pin) is
refused, since it would silently ship other WebAssembly. LiteRT.js refuses a model whose input
has a free batch dimension, so its TFLite file is converted here with batch 1, validated through
native LiteRT like any artifact; a runtime whose model cannot be made or validated is marked
unavailable in bundle.json with the reason, and the bundle runs with the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeship.core.errors import EdgeshipError, MissingDependencyError

WEB_DEMO_DIR = Path(__file__).resolve().parents[2] / "web_demo"  # export/web/ -> the checkout
ORT = "onnxruntime-web"
LITERT = "litert.js"
ORT_PACKAGE = "onnxruntime-web"
LITERT_PACKAGE = "@litertjs/core"
LITERT_UTILS_PACKAGE = "@litertjs/wasm-utils"
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
# bundle name -> path under node_modules. The page's import map points @litertjs/wasm-utils at
# litert-wasm-utils.mjs; loadLiteRt('./') picks the threaded build (relaxed SIMD + isolation),
# the single-threaded one, or the compat one (no relaxed SIMD) by file name.
LITERT_FILES = {
    "litert.mjs": f"{LITERT_PACKAGE}/dist/index.js",
    "litert-wasm-utils.mjs": f"{LITERT_UTILS_PACKAGE}/dist/index.js",
    **{f"litert_wasm_{k}internal.{ext}": f"{LITERT_PACKAGE}/wasm/litert_wasm_{k}internal.{ext}"
       for k in ("", "threaded_", "compat_") for ext in ("js", "wasm")},
}
ONNX_MODEL = "model.onnx"
TFLITE_MODEL = "model.tflite"
NPM_HINT = "run `npm ci --prefix web_demo` in the edgeship checkout (needs node and npm)"
KEYS = {"ort": ORT, "litert": LITERT}  # --web-runtime names -> bundle.json runtime names


def wanted(web_runtime: str) -> tuple[str, ...]:
    """The runtime names ``--web-runtime`` (ort, litert, both) asks for."""
    return (ORT, LITERT) if web_runtime == "both" else (KEYS[web_runtime],)


def _installed(demo: Path, package: str) -> str:
    pkg = json.loads((demo / "node_modules" / package / "package.json").read_text(encoding="utf-8"))
    installed = str(pkg["version"])
    pinned_file = demo / "package.json"
    if pinned_file.is_file():
        pinned = json.loads(pinned_file.read_text(encoding="utf-8"))["dependencies"].get(package)
        if pinned is not None and pinned != installed:
            raise MissingDependencyError(
                f"{package} {installed} is installed but web_demo/package.json pins {pinned}; {NPM_HINT}")
    return installed


def ort_web_dist(web_demo_dir: str | Path | None = None) -> tuple[Path, str]:
    """onnxruntime-web's ``dist/`` folder and installed version, checked against the pin."""
    demo = Path(web_demo_dir) if web_demo_dir is not None else WEB_DEMO_DIR
    dist = demo / "node_modules" / ORT_PACKAGE / "dist"
    missing = [f for f in ORT_FILES if not (dist / f).is_file()]
    if missing:
        raise MissingDependencyError(
            f"{ORT_PACKAGE} is not installed in {demo / 'node_modules'} "
            f"(missing {', '.join(missing)}); {NPM_HINT}")
    return dist, _installed(demo, ORT_PACKAGE)


def litert_files(web_demo_dir: str | Path | None = None) -> tuple[dict[str, Path], str]:
    """LiteRT.js's files as {name in the bundle: source path} and its version, checked against the pin."""
    demo = Path(web_demo_dir) if web_demo_dir is not None else WEB_DEMO_DIR
    modules = demo / "node_modules"
    files = {name: modules / rel for name, rel in LITERT_FILES.items()}
    missing = sorted({LITERT_FILES[n].rsplit("/", 1)[-1] for n, p in files.items() if not p.is_file()})
    if missing:
        raise MissingDependencyError(
            f"{LITERT_PACKAGE} is not installed in {modules} (missing {', '.join(missing)}); {NPM_HINT}")
    return files, _installed(demo, LITERT_PACKAGE)


@dataclass
class RuntimeModel:
    """One runtime's model in a bundle, or why that runtime is unavailable for this model."""

    name: str  # ORT or LITERT
    path: Path | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, Any] | None = None
    reason: str | None = None  # set: unavailable

    @property
    def available(self) -> bool:
        return self.reason is None and self.path is not None


def litert_model(req: Any, work: Path) -> RuntimeModel:
    """The variant as a batch-1 TFLite file for LiteRT.js (int8: float32 I/O, like the ONNX
    QDQ model, so the page feeds both runtimes the same float input), validated natively."""
    from edgeship.export.tflite import convert

    path = work / TFLITE_MODEL
    try:
        exported = convert(replace(req, io="float32"), path, batch=1)
    except EdgeshipError as e:
        return RuntimeModel(LITERT, reason=f"the TFLite converter cannot build it: {e}")
    model = RuntimeModel(LITERT, path, list(exported.inputs or []), list(exported.outputs or []))
    if req.validate is not None:
        model.validation = req.validate(path, "tflite", model.inputs, model.outputs)
        if not model.validation.get("passed"):
            why = "; ".join(model.validation.get("failures") or []) or "validation failed"
            model.reason = f"its batch-1 TFLite model failed validation through native LiteRT: {why}"
    return model


def validation_summary(check: dict[str, Any] | None) -> dict[str, Any] | None:
    """The few validation facts bundle.json keeps per runtime."""
    if not check:
        return None
    keys = ("top1_agreement", "accuracy", "max_abs_diff", "samples", "passed")
    return {k: check.get(k) for k in keys}


__all__ = [
    "KEYS", "LITERT", "LITERT_FILES", "LITERT_PACKAGE", "ONNX_MODEL", "ORT", "ORT_FILES", "ORT_PACKAGE",
    "TFLITE_MODEL", "WEB_DEMO_DIR", "RuntimeModel", "litert_files", "litert_model", "ort_web_dist",
    "validation_summary", "wanted",
]
