"""The TVM format: the registry's ``export_artifact`` (``python -m edgeship.export.tvm`` is the tuning child).

``export.FORMATS["tvm"]`` names ``edgeship.export.tvm:export_artifact``, and tuning runs in
``python -m edgeship.export.tvm --tune JOB`` (see ``export.tvm.tuning``). The work is done by
one module per job, whose public names are re-exported here::

    export.tvm.targets       resolve_target(target, num_threads=None) -> TargetSpec  # host|rpi4|rpi5|JSON
    export.tvm.frontend      the ONNX export -> Relax, static batch 1
    export.tvm.build         build_tvm(onnx_path, out_dir, target="host", trials=0, time_budget_s=None,
                                       cache_dir=None, progress=None, num_threads=None,
                                       timing_runs=50, ship="faster") -> TVMBuildResult
                             elf_machine(path) -> int; median_call_ms(fn, runs=50, warmup=5) -> float
    export.tvm.tuning        the tuning cache (default_cache_dir()), its lock, the child process
    export.tvm.metaschedule  the MetaSchedule session the child runs
    export.tvm.remote        its RPCRunner on a tracker's devices (``ExportRequest.tune_on``)

Tuning (``trials > 0``) measures candidates: targets this machine can run are tuned here, others
only with ``tune_on`` (``export --tracker HOST:PORT --key KEY``), on that key's devices.
"""

from __future__ import annotations

import math
import time
from typing import Any

from edgeship.export import ExportedModel, ExportError
from edgeship.export.tvm.build import (
    ELF_MACHINES,
    MODEL_FILE,
    RUNTIME_PACKAGES,
    TVMBuildResult,
    build_tvm,
    elf_checks,
    elf_machine,
    median_call_ms,
    runtime_requirement,
)
from edgeship.export.tvm.targets import (
    CROSS_COMPILERS,
    PI_TARGETS,
    TARGET_NAMES,
    TargetSpec,
    host_cpu,
    resolve_target,
)
from edgeship.export.tvm.tuning import TUNING_META, Progress, default_cache_dir

__all__ = [
    "CROSS_COMPILERS",
    "ELF_MACHINES",
    "MODEL_FILE",
    "PI_TARGETS",
    "RUNTIME_PACKAGES",
    "TARGET_NAMES",
    "TUNING_META",
    "Progress",
    "TVMBuildResult",
    "TargetSpec",
    "build_tvm",
    "default_cache_dir",
    "elf_machine",
    "export_artifact",
    "host_cpu",
    "median_call_ms",
    "resolve_target",
    "runtime_requirement",
]


def export_artifact(req: Any) -> Any:
    """``export.FORMATS["tvm"]``: an ``ExportRequest`` with the ONNX source -> ``ExportedModel``.

    ``req.cache_dir`` (when given) is the root of the tuning caches; progress goes to
    ``req.log`` one line per tuning batch.
    """
    if req.quantize != "float32":
        raise ExportError(f"TVM exports float32 only (from the float32 ONNX), not {req.quantize}")
    if req.onnx_path is None:
        raise ExportError("the TVM exporter needs the variant's ONNX export as its source")
    trials = req.trials or 0
    spec = resolve_target(req.target or "host")
    skipped = None
    tune_on = getattr(req, "tune_on", None)
    if trials and not spec.runs_here and not tune_on:
        # One --trials serves every target of an export (host,rpi4): build the Pi one untuned
        # and say so, rather than failing the whole export after the host one has tuned.
        skipped = (f"not tuned: {spec.name} is not this machine and tuning measures on the device "
                   "(tune there: --tracker HOST:PORT --key KEY, see `edgeship fleet`)")
        if req.log is not None:
            req.log(f"tvm {spec.name}: {skipped}")
        trials = 0
    res = build_tvm(req.onnx_path, req.out_dir, target=req.target or "host", trials=trials,
                    time_budget_s=req.time_budget_s, cache_dir=req.cache_dir,
                    progress=_log_progress(req.log), tune_on=None if spec.runs_here else tune_on)
    tuning = res.tuning if skipped is None else {"trials_requested": req.trials, "note": skipped}
    return ExportedModel(
        file=res.file, runtime=res.runtime, inputs=res.inputs, outputs=res.outputs,
        target=res.target.to_dict(),
        extra={"tuning": tuning,
               "tvm": {"elf_machine": res.elf_machine, "untuned_ms": res.untuned_ms,
                       "tuned_ms": res.tuned_ms, "wall_s": res.wall_s,
                       "static_batch": 1}},
        runnable_here=res.runs_here, checks=elf_checks(res.target.arch, res.elf_machine),
    )


def _log_progress(log: Any) -> Progress | None:
    """Tuning progress as ``log`` lines: the first, the last, and one per 15 s between."""
    if log is None:
        return None
    last = [-math.inf]

    def progress(done: int, total: int, status: str) -> None:
        now = time.monotonic()
        if done in (0, total) or now - last[0] >= 15:  # a line per 15 s, not per batch
            last[0] = now
            log(f"tvm tuning: {done}/{total} trials ({status})")

    return progress
