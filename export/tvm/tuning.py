"""TVM tuning's cache and driver: tune what the cache lacks in a child Python, then apply it.

Kept apart from the build because tuning is its own life cycle: a database kept across
exports, a lock, a budget, and a child process. The database lives in
``<cache>/<model hash>-<target name>-<hash of target + TVM>/``, the model hash being Relax's
structural hash of the imported graph and weights (tf2onnx names nodes with a per-process
counter, so the ONNX bytes of one model differ between conversions); the cache defaults to
``$XDG_CACHE_HOME/edgeship/tvm``, else ``~/.cache/edgeship/tvm``. Beside the database,
``edgeship-tuning.json`` counts the trials it covers: a re-export asking for no more reuses it
without tuning (``cache_hit``), one asking for more tunes only the difference. One tuner per
cache folder at a time (``edgeship.core.fsutil.locked``): two exports of one model wait
rather than interleave.

Tuning itself runs in ``python -m edgeship.export.tvm --tune`` (``export.tvm.metaschedule``);
see ``_tune_in_child`` for why a child.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import edgeship.core
from edgeship.core.console import progress as bar
from edgeship.core.errors import EdgeshipError
from edgeship.core.fsutil import locked, write_json_atomic
from edgeship.export import captured_stderr
from edgeship.export.tvm.targets import TargetSpec

TUNING_META = "edgeship-tuning.json"

Progress = Callable[[int, int, str], None]
"""``progress(trials_done, trials_total, status)``, called after each tuning batch."""


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "edgeship" / "tvm"


def cache_folder(cache_dir: str | Path | None, model_hash: str, spec: TargetSpec, key: str | None = None
                 ) -> Path:
    """The database folder of this model for this target and TVM version under ``cache_dir``;
    with ``key``, tuned on that device key's devices (a database of its own)."""
    import tvm

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    blob = json.dumps({"target": spec.tvm, "tvm": tvm.__version__}, sort_keys=True)
    where = f"-{''.join(c if c.isalnum() or c in '._' else '-' for c in key)}" if key else ""
    return root / f"{model_hash}-{spec.name}{where}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def _read_meta(folder: Path) -> dict[str, Any]:
    """The cache's trial count, or an empty record when the database files are gone."""
    meta_path = folder / TUNING_META
    db = [folder / "database_workload.json", folder / "database_tuning_record.json"]
    if not meta_path.is_file() or not all(p.is_file() and p.stat().st_size for p in db):
        return {"trials": 0, "sessions": []}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {"trials": 0, "sessions": []}
    return meta if isinstance(meta.get("trials"), int) else {"trials": 0, "sessions": []}


def tuned_module(
    mod: Any, onnx_path: Path, spec: TargetSpec, folder: Path, model_hash: str, trials: int,
    time_budget_s: float | None, progress: Progress | None, tune_on: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Any]:
    """Tune what the cache lacks, then apply the database; returns (tuning facts, module).

    ``tune_on`` (``{"tracker", "key"}``) measures the candidates on that key's devices."""
    import tvm
    from tvm import relax

    with locked(folder / ".lock"):
        meta = _read_meta(folder)
        need = max(0, trials - int(meta["trials"]))
        t0 = time.perf_counter()
        outcome: dict[str, Any] = {"trials_run": 0, "stopped_early": False, "tasks": None,
                                   "max_trials_per_task": None, "setup_s": None, "remote": None}
        if need:
            with _progress_sink(progress, need) as report:
                outcome = _tune_in_child(onnx_path, spec, folder, need, time_budget_s, report, tune_on)
            _record_session(folder, meta, model_hash, spec, need, outcome, time.perf_counter() - t0)
        elif progress is not None:
            progress(trials, trials, "cache hit: reusing the tuning database")
        tune_s = time.perf_counter() - t0
        with captured_stderr():  # "Creating JSONDatabase" on every load
            tuned = relax.pipeline.static_shape_tuning_pipeline(
                total_trials=0, target=tvm.target.Target(spec.tvm), work_dir=str(folder))(mod)
    note = None
    if outcome["stopped_early"]:
        note = (f"time budget {time_budget_s:g} s reached after {outcome['trials_run']} of {need} "
                "trials; a re-export with the same cache tunes the rest")
    return {
        "trials_requested": trials,
        "trials_run": outcome["trials_run"],
        "trials_in_cache": int(meta["trials"]),
        "tasks": outcome["tasks"],
        "max_trials_per_task": outcome["max_trials_per_task"],
        "setup_s": outcome["setup_s"],
        "cache_dir": str(folder),
        "cache_key": folder.name,
        "cache_hit": need == 0,
        "time_budget_s": time_budget_s,
        "stopped_early": outcome["stopped_early"],
        "tune_s": round(tune_s, 3),
        "note": note,
        "measured": _where_measured(outcome.get("remote"), tune_on, meta),
    }, tuned


def _where_measured(remote: dict[str, Any] | None, tune_on: dict[str, Any] | None,
                    meta: dict[str, Any]) -> dict[str, Any]:
    """Where this tuning's candidates were measured: here, or on which devices of a key."""
    if tune_on is None:
        return {"where": "host"}
    if remote is None:  # a cache hit: the devices of the sessions that filled it
        return {"where": "device", "tracker": tune_on["tracker"], "key": tune_on["key"],
                "candidates_measured": 0, "devices": {}, "cached_from": meta.get("devices")}
    return remote


def _record_session(folder: Path, meta: dict[str, Any], model_hash: str, spec: TargetSpec, need: int,
                    outcome: dict[str, Any], seconds: float) -> None:
    """Count a session's trials into ``edgeship-tuning.json`` (``meta`` is updated in place).

    A finished session covers the whole request even when tasks ran out of candidates first;
    one cut short by the budget covers only what it measured.
    """
    done = outcome["trials_run"] if outcome["stopped_early"] else need
    meta.update(model_hash=model_hash, target=spec.tvm, trials=int(meta["trials"]) + done)
    for device, n in ((outcome.get("remote") or {}).get("devices") or {}).items():
        meta.setdefault("devices", {})[device] = int(meta.get("devices", {}).get(device, 0)) + n
    meta.setdefault("sessions", []).append({
        "requested": need, "run": outcome["trials_run"], "stopped_early": outcome["stopped_early"],
        "seconds": round(seconds, 1)})
    write_json_atomic(folder / TUNING_META, meta)


@contextlib.contextmanager
def _progress_sink(progress: Progress | None, total: int) -> Iterator[Progress]:
    """The caller's callback, or a rich bar on stderr (one line per update off a terminal)."""
    if progress is not None:
        yield progress
        return

    with bar("tuning (TVM MetaSchedule)", total=total) as p:
        seen = [0]

        def report(done: int, _total: int, status: str) -> None:
            p.update(advance=max(0, done - seen[0]), status=status)
            seen[0] = max(seen[0], done)

        yield report


def _tune_in_child(
    onnx_path: Path, spec: TargetSpec, folder: Path, trials: int, time_budget_s: float | None,
    report: Progress, tune_on: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``run_tuning`` in a fresh Python (``python -m edgeship.export.tvm``), for two reasons:
    MetaSchedule's first use imports TVM's tensor intrinsics, whose TVMScript parsing calls
    ``inspect.getmodule`` ~34,000 times, each scanning ``sys.modules``: 23 s of CPU in a bare
    process, 71 s beside TensorFlow's 4,000 modules (any process that trained or converted);
    and a crash in tuning (apache-tvm-ffi 0.1.15 segfaults there) must not take the export
    with it. Progress comes back as JSON lines on the child's stdout."""
    job = {"onnx": str(onnx_path), "target": spec.tvm, "name": spec.name, "folder": str(folder),
           "trials": trials, "deadline": None if time_budget_s is None else time.time() + time_budget_s,
           "tune_on": tune_on}
    env = dict(os.environ)

    root = str(Path(edgeship.core.__file__).resolve().parents[2])  # the folder holding edgeship
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    outcome = error = None
    with subprocess.Popen([sys.executable, "-m", "edgeship.export.tvm", "--tune", json.dumps(job)],
                          stdout=subprocess.PIPE, env=env, text=True) as child:
        assert child.stdout is not None
        for line in child.stdout:
            msg = json.loads(line)
            if "progress" in msg:
                report(*msg["progress"])
            elif "error" in msg:
                error = msg["error"]
            else:
                outcome = msg.get("outcome")
        code = child.wait()
    if error is not None:
        raise EdgeshipError(error)
    if code != 0 or outcome is None:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise EdgeshipError(f"TVM tuning {how} (its messages are above); check apache-tvm-ffi is "
                            "0.1.14.post0 (0.1.15 segfaults in tuning), or export with trials 0")
    return outcome
