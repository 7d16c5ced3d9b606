"""The models a server holds: versions loaded beside each other, a golden check, an atomic switch.

A model name (``base``) points at its current version; a version is one artifact folder opened
once per worker (runtimes are not thread-safe per interpreter, so worker ``i`` always uses
interpreter ``i``). An update loads the new artifact beside the old one, runs its golden inputs
through it and swaps the pointer under a lock only if they agree; a worker resolves the version
when it starts a request, so requests in flight finish on the version they started on. The
previous version stays loaded, so a rollback is the same swap back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.artifact import ARTIFACT_FILE, artifact_dir
from edge_runtime.errors import EdgeRuntimeError, InputError

BUNDLE_INFO = "edgeship-bundle.json"
BUNDLE_GOLDEN = "golden.json"  # a bundle's golden answers per artifact (edgeship deploy writes it)
REFERENCE_FILE = "reference.json"  # exports/<variant>/ (and artifacts/<variant>/ in a bundle)
TESTSET_NAMES = ("testset.npz", "testset.json", "data/test_raw.npz")
# Top-1 answers on the golden inputs may differ from the export's own measurement by this much:
# a different CPU or runtime build flips near-ties, a broken or wrong model flips far more.
GOLDEN_SLACK = 0.01
GOLDEN_MAX_INPUTS = 512  # enough to see a wrong model; bounded so an update stays quick


class UpdateRefused(EdgeRuntimeError):
    """A new artifact that did not load or failed its golden check; the old one keeps serving."""


@dataclass
class ModelVersion:
    """One artifact opened once per worker."""

    name: str
    version: int
    path: Path
    models: list[Any]  # EdgeModel, one per worker
    loaded_at: float = field(default_factory=time.time)
    golden: dict[str, Any] | None = None

    @property
    def artifact(self) -> dict[str, Any]:
        return self.models[0].artifact

    @property
    def sha256(self) -> str:
        return str(self.artifact.get("sha256", ""))

    def describe(self, state: str) -> dict[str, Any]:
        m = self.models[0]
        return {"version": str(self.version), "state": state,
                "status": {"error_code": "OK", "error_message": ""},
                "path": str(self.path), "format": m.format, "quantize": m.quantize,
                "sha256": self.sha256, "loaded_at": self.loaded_at, "golden": self.golden}


def discover(source: str | Path, only: list[str] | None = None) -> dict[str, Path]:
    """``{model name: artifact folder}`` from an artifact folder, a bundle or a folder of exports.

    A name is the artifact's variant (its parent folder), or ``<variant>-<folder>`` when a variant
    has several artifacts; ``only`` keeps artifacts by ``<variant>/<folder>`` or by name.
    """
    root = Path(source)
    if not root.exists():
        raise InputError(f"{root} does not exist; pass a bundle, an export folder or a run's exports/")
    if (root / ARTIFACT_FILE).is_file():
        found = [artifact_dir(root)]
    else:
        base = root / "artifacts" if (root / BUNDLE_INFO).is_file() else root
        found = sorted(p.parent for p in base.glob(f"*/*/{ARTIFACT_FILE}"))
        if not found:
            raise InputError(f"{root} holds no artifact (no */*/{ARTIFACT_FILE} and no {ARTIFACT_FILE}): "
                             "pass a bundle, an export folder or a run's exports/")
    if only:
        kept: list[Path] = []
        for want in only:
            hits = [p for p in found if want in (f"{p.parent.name}/{p.name}", p.name, p.parent.name,
                                                 f"{p.parent.name}-{p.name}")]
            if not hits:
                have = ", ".join(f"{p.parent.name}/{p.name}" for p in found)
                raise InputError(f"{root} has no artifact {want!r}; it has: {have}")
            kept.extend(h for h in hits if h not in kept)
        found = kept
    by_variant: dict[str, list[Path]] = {}
    for p in found:
        by_variant.setdefault(p.parent.name, []).append(p)
    named: dict[str, Path] = {}
    for variant, paths in by_variant.items():
        for p in paths:
            named[variant if len(paths) == 1 else f"{variant}-{p.name}"] = p
    return named


def find_golden(path: Path) -> tuple[Path | None, Path | None]:
    """(test inputs, reference.json) for an artifact: the bundle's or the run's test split and
    the variant's reference.json, searched upwards from the artifact folder."""
    found = bundle_golden(path)
    if found is not None:  # golden_check reads the answers from golden.json itself
        return found[1], None
    reference = path.parent / REFERENCE_FILE
    testset = None
    for parent in list(path.parents)[:4]:
        for name in TESTSET_NAMES:
            if (parent / name).is_file():
                testset = parent / name
                break
        if testset:
            break
    return testset, reference if reference.is_file() else None


def bundle_golden(path: Path) -> tuple[dict[str, Any], Path] | None:
    """The deploy's answers for this artifact (a bundle's ``golden.json``: its first rows of the
    bundle's test split and the top-1 the artifact must give there), or None outside a bundle."""
    for parent in list(path.parents)[:4]:
        file = parent / BUNDLE_GOLDEN
        if not file.is_file():
            continue
        try:
            golden = json.loads(file.read_text(encoding="utf-8"))
            entry = golden["artifacts"].get(path.relative_to(parent).as_posix())
            testset = parent / str(golden["testset"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if entry and entry.get("top1") and testset.is_file():
            return entry, testset
        return None
    return None


def golden_check(model: Any, testset: Path | None, reference: Path | None,
                 current: Any | None = None) -> dict[str, Any]:
    """Run the golden inputs through ``model``; raise ``UpdateRefused`` if they disagree.

    In a deployed bundle, ``golden.json`` (written by ``edgeship deploy``) holds the answers and
    the bar (``min_agreement``). Else, with the variant's reference.json (the Keras model's top-1
    at export), top-1 agreement must reach the agreement the export itself measured
    (artifact.json ``validation``) less ``GOLDEN_SLACK``. Without either, the model must agree
    with the version now serving as well.
    """
    from edge_runtime.testset import read_testset

    if testset is None:
        raise UpdateRefused(f"{model.path} has no golden inputs (no {' / '.join(TESTSET_NAMES)} beside it): "
                            "pass \"golden\": PATH to a test split")
    data = read_testset(testset)
    n = min(len(data["y"]), GOLDEN_MAX_INPUTS)
    from_bundle = bundle_golden(model.path)
    if from_bundle is not None and from_bundle[1].resolve() != Path(testset).resolve():
        from_bundle = None  # other inputs were asked for: golden.json's answers are for its own
    if from_bundle is not None:
        n = min(n, len(from_bundle[0]["top1"]))
    x = data["x"][:n]
    top1 = _top1(model, x)
    validation = model.artifact.get("validation") or {}
    if from_bundle is not None:
        entry = from_bundle[0]
        ref = np.asarray(entry["top1"][:n], dtype=np.int64)
        against = str(entry.get("source") or "the deploy's golden answers (golden.json)")
        need = float(entry.get("min_agreement", 1.0 - GOLDEN_SLACK))  # the deploy's own bar
    elif reference is not None:
        ref = np.asarray(json.loads(reference.read_text(encoding="utf-8"))["top1"], dtype=np.int64)
        if len(ref) < n:
            raise UpdateRefused(f"{reference} has {len(ref)} answers for {n} golden inputs; re-export")
        against, expected = "the Keras model (reference.json)", validation.get("top1_agreement")
        need = (1.0 if expected is None else float(expected)) - GOLDEN_SLACK
        ref = ref[:n]
    elif current is not None:
        ref, against, need = _top1(current, x), "the version now serving", 1.0 - GOLDEN_SLACK
    else:
        raise UpdateRefused(f"no {REFERENCE_FILE} beside {model.path} and nothing serving to compare "
                            "with: re-export the variant (export writes reference.json)")
    agreement = float((top1 == ref).mean()) if n else 1.0
    result = {"inputs": n, "testset": str(testset), "against": against, "top1_agreement": agreement,
              "required": need, "passed": agreement >= need}
    if not result["passed"]:
        raise UpdateRefused(f"{model.path} failed its golden check: top-1 agreement with {against} "
                            f"{agreement:.3f} on {n} inputs, needs >= {need:.3f}")
    return result


def _top1(model: Any, x: Any) -> np.ndarray:
    try:
        return model.predict(x).indices
    except EdgeRuntimeError as e:
        raise UpdateRefused(f"{model.path} could not run its golden inputs: {e}") from e


class ModelStore:
    """Name -> (current, previous) versions; ``swap`` is the only writer of ``current``."""

    def __init__(self, workers: int, threads: int | None,
                 loader: Callable[[Path, int | None], Any] | None = None):
        from edge_runtime.model import EdgeModel

        self.workers, self.threads = workers, threads
        self._load_one = loader or (lambda p, t: EdgeModel.load(p, threads=t))
        self._lock = threading.Lock()
        self._update_lock = threading.Lock()  # one update at a time
        self._current: dict[str, ModelVersion] = {}
        self._previous: dict[str, ModelVersion] = {}
        self._next_version: dict[str, int] = {}

    def names(self) -> list[str]:
        return sorted(self._current)

    def get(self, name: str) -> ModelVersion | None:
        return self._current.get(name)  # a dict read is atomic: no lock on the request path

    def previous(self, name: str) -> ModelVersion | None:
        return self._previous.get(name)

    def open(self, name: str, path: Path) -> ModelVersion:
        """Load ``path`` once per worker as the next version of ``name`` (not yet serving)."""
        try:
            folder = artifact_dir(path)
            models = [self._load_one(folder, self.threads) for _ in range(self.workers)]
        except EdgeRuntimeError as e:
            raise UpdateRefused(f"{path} did not load: {e}") from e
        with self._lock:
            version = self._next_version.get(name, 1)
            self._next_version[name] = version + 1
        return ModelVersion(name, version, folder, models)

    def add(self, name: str, path: Path) -> ModelVersion:
        """The first version of ``name``, at start-up: loaded and served without a golden check
        (the export validated it; there is nothing older to protect)."""
        v = self.open(name, path)
        with self._lock:
            self._current[name] = v
        return v

    def update(self, name: str, path: Path, golden: Path | None = None) -> ModelVersion:
        """Load ``path`` beside the serving version, golden-check it, then switch atomically."""
        if name not in self._current:
            raise InputError(f"no model named {name!r}; serving: {', '.join(self.names()) or 'none'}")
        with self._update_lock:
            new = self.open(name, Path(path))
            testset, reference = find_golden(new.path)
            serving = self._current[name].models[0]
            new.golden = golden_check(new.models[0], golden or testset, reference, serving)
            with self._lock:
                self._previous[name] = self._current[name]
                self._current[name] = new
            return new

    def rollback(self, name: str) -> ModelVersion:
        """Serve the previous version again (it stayed loaded); the rolled-back one becomes previous."""
        with self._update_lock, self._lock:
            prev = self._previous.get(name)
            if prev is None:
                raise InputError(f"model {name!r} has no previous version to roll back to")
            self._previous[name], self._current[name] = self._current[name], prev
            return prev
