"""The bundle a deploy sends: which artifacts suit the device, their requirements, and packing.

A bundle is a local folder: ``artifacts/<variant>/<name>/`` (the export folders),
``edge_runtime/`` (its sources), ``requirements.txt`` (merged from
``edge_runtime/requirements-<format>.txt``), the run's test split for on-device accuracy,
``wheels/`` when offline (with ``wheels/requirements.lock``: every wheel pinned with its sha256,
for ``pip install --require-hashes``), ``golden.json`` (the answers each artifact must give on the
device before it is switched to: see ``golden_answers``) and ``edgeship-bundle.json`` saying what
it holds. No timestamps anywhere: identical inputs give byte-identical files, so a re-deploy sends
only what changed.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import edge_runtime
from edge_runtime import EdgeModel, EdgeRuntimeError
from edgeship.benchmarks.harness import select_artifacts as select
from edgeship.core.errors import InputError, RunError
from edgeship.core.names import host_arch, split_names
from edgeship.core.runstore import RunDir
from edgeship.devices.errors import DeployError
from edgeship.devices.probe import DeviceInfo
from edgeship.devices.wheels import link_wheels

BUNDLE_INFO = "edgeship-bundle.json"
GOLDEN_FILE = "golden.json"
PI_FORMATS = ("tflite", "onnx", "tvm")
GOLDEN_ROWS = 32  # few enough to run under emulation in seconds, enough that a broken model fails
# A near-tie may flip on another CPU; a model that does not work agrees on about 1/classes.
GOLDEN_MIN_AGREEMENT = 0.9

Log = Callable[[str], None]


@dataclass(frozen=True)
class DeployedArtifact:
    """One artifact in the bundle: ``rel`` in the run, ``remote`` relative to the bundle."""

    rel: str  # exports/<variant>/<name>
    remote: str  # artifacts/<variant>/<name>
    variant: str
    format: str
    quantize: str | None
    target: str | None


def select_artifacts(
    run: RunDir,
    variants: str | Sequence[str] = "base",
    formats: str | Sequence[str] = "tflite",
    quantize: str | Sequence[str] | None = None,
    *,
    log: Log | None = None,
) -> list[Any]:
    """Passing exports of ``run`` a Pi can run, by variant, format (or folder) and quantization.

    The CPU check comes later (``for_device``): only the device says what it is.
    """
    found = select(run, variants, formats, runnable_here=False, allowed_formats=PI_FORMATS, log=log)
    wanted = split_names(quantize)
    if not wanted:
        return found
    kept = [a for a in found if str(a.meta.get("quantize")) in wanted]
    if not kept:
        have = sorted({str(a.meta.get("quantize")) for a in found})
        raise InputError(f"no selected export is quantized {', '.join(wanted)}; "
                         f"these are: {', '.join(have)}")
    return kept


def for_device(
    artifacts: Sequence[Any], info: DeviceInfo, device_name: str, run_id: str, *, log: Log | None = None
) -> list[Any]:
    """Drop builds for another CPU (x86 TVM) or another Pi (an rpi5 TVM build on a Pi 4)."""
    say = log or (lambda _m: None)
    kept = []
    for art in artifacts:
        target = art.meta.get("target") or {}
        arch = target.get("arch")
        if arch not in (None, "any", info.machine):
            say(f"skipping {art.rel}: built for {arch}, {device_name} is {info.machine}")
            continue
        name = target.get("name")
        if info.pi_model and name in ("rpi4", "rpi5") and name != info.pi_model:
            say(f"skipping {art.rel}: built for {name}, {device_name} is a {info.board}")
            continue
        kept.append(art)
    if not kept:
        hint = "rpi5" if info.pi_model == "rpi5" else "rpi4"
        raise RunError(
            f"none of the selected exports runs on {device_name} ({info.machine}): deploy TFLite, "
            f"or build TVM for it with `edgeship export {run_id} --format tvm --target {hint}`"
        )
    return kept


def requirements_for(formats: Sequence[str]) -> list[str]:
    """The device requirements for these formats: ``edge_runtime/requirements-<fmt>.txt``, merged."""
    folder = Path(edge_runtime.__file__).parent
    out: list[str] = []
    for fmt in dict.fromkeys(formats):
        path = folder / f"requirements-{fmt}.txt"
        if not path.is_file():
            raise InputError(f"no device requirements for format {fmt!r} ({path} is missing)")
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line and line not in out:
                out.append(line)
    return out


# -- the bundle ----------------------------------------------------------------------------


def pack_bundle(
    run: RunDir,
    artifacts: Sequence[Any],
    dest: Path,
    *,
    requirements: Sequence[str],
    wheels: Path | None = None,
) -> list[DeployedArtifact]:
    """Write the bundle folder ``dest`` (see the module docstring); returns what it holds.

    No timestamps anywhere: the same run, artifacts and wheels give the same bytes.
    """
    from edgeship.benchmarks.accuracy import write_run_testset

    dest.mkdir(parents=True, exist_ok=False)
    _copy_runtime(dest / "edge_runtime")
    shipped = [_copy_artifact(art, dest) for art in artifacts]
    testset = write_run_testset(run, dest)  # accuracy is measured on the device, on this split
    golden = golden_answers(run, artifacts, shipped, testset)
    (dest / GOLDEN_FILE).write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    header = f"# edge_runtime on the device: {', '.join(sorted({a.format for a in shipped}))}\n"
    (dest / "requirements.txt").write_text(header + "\n".join(requirements) + "\n", encoding="utf-8")
    wheel_names = [] if wheels is None else link_wheels(wheels, dest / "wheels", requirements)
    info = {
        "schema_version": 1,
        "run_id": run.id,
        "artifacts": [asdict(a) for a in shipped],
        "requirements": list(requirements),
        "wheels": wheel_names,
        "testset": None if testset is None else testset.name,
        "golden": GOLDEN_FILE,
        "edge_runtime_version": getattr(edge_runtime, "__version__", None),
        "run": ("cd bundle && PYTHONDONTWRITEBYTECODE=1 ../venv/bin/python -m edge_runtime "
                "bench ARTIFACT"),
    }
    (dest / BUNDLE_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return shipped


def golden_answers(
    run: RunDir, artifacts: Sequence[Any], shipped: Sequence[DeployedArtifact], testset: Path | None
) -> dict[str, Any]:
    """What each artifact must answer on the device before the deploy switches to it.

    The inputs are the first ``GOLDEN_ROWS`` rows of the bundle's test split. The answers are the
    artifact's own top-1 there, run here by edge_runtime, when this machine runs it; a build for
    another CPU (TVM for a Pi) is held to the Keras model's top-1 that export recorded
    (``reference.json``). Without a test split, each artifact must only load.
    """
    from edge_runtime.testset import read_testset
    from edgeship.benchmarks.accuracy import reference_top1

    x = None
    if testset is not None:
        x = read_testset(testset)["x"][:GOLDEN_ROWS]
    out: dict[str, Any] = {}
    for art, sent in zip(artifacts, shipped, strict=True):
        entry: dict[str, Any] = {"top1": None, "source": None, "min_agreement": GOLDEN_MIN_AGREEMENT}
        if x is not None:
            arch = (art.meta.get("target") or {}).get("arch")
            if arch in (None, "any", host_arch()):
                try:
                    entry["top1"] = [int(i) for i in EdgeModel.load(art.dir).predict(x).indices]
                except EdgeRuntimeError as e:
                    raise DeployError(f"{art.rel} does not run here ({e}): export it again") from e
                entry["source"] = "the artifact's own answers when exported"
            else:
                ref = reference_top1(run, art.variant)
                if ref is not None:
                    entry["top1"] = [int(i) for i in ref[: len(x)]]
                    entry["source"] = "the Keras model's answers (reference.json)"
        out[sent.remote] = entry
    return {"schema_version": 1, "testset": None if testset is None else testset.name,
            "rows": 0 if x is None else len(x), "artifacts": out}


def _copy_runtime(dest: Path) -> None:
    """``edge_runtime``'s modules, its subpackages' (``serve/``) and its requirements files; the
    package's other files (caches) stay."""
    src = Path(edge_runtime.__file__).parent
    dest.mkdir()
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src)
        if "__pycache__" in rel.parts or not f.is_file():
            continue
        if f.suffix == ".py" or (len(rel.parts) == 1 and re.fullmatch(r"requirements-\w+\.txt", f.name)):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest / rel)


def _copy_artifact(art: Any, bundle: Path) -> DeployedArtifact:
    """One export folder into ``bundle/artifacts/<variant>/<name>``."""
    remote = f"artifacts/{art.variant}/{art.dir.name}"
    for f in sorted(art.dir.rglob("*")):
        if f.is_file():
            target = bundle / remote / f.relative_to(art.dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
    return DeployedArtifact(rel=art.rel, remote=remote, variant=art.variant, format=art.format,
                            quantize=art.meta.get("quantize"),
                            target=(art.meta.get("target") or {}).get("name"))
