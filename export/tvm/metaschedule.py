"""The tuning child's MetaSchedule session: tasks heaviest first, in groups, within a budget.

``python -m edgeship.export.tvm --tune JOB`` runs ``child_main`` (``export.tvm.tuning`` starts
it). It runs MetaSchedule on the tasks ``relax.pipeline.static_shape_tuning_pipeline``
extracts, and the parent then applies the database with that pipeline (``total_trials=0``).
It drives MetaSchedule itself rather than through the pipeline's tuning pass because, on a
busy 2-core machine, the pass tunes nothing: its builder starts fresh workers for every batch
and each imports every tensor intrinsic (CUDA, ROCm, Hexagon...; ~25 s of CPU), so every
build hits the 30 s timeout. Here builder workers live for the whole session and skip that
import; tasks are tuned heaviest first (FLOPs x weight) in groups of four, so a short budget
goes to the kernels that matter, the time budget is checked between batches and groups, and
progress is reported after each batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeship.core.errors import EdgeshipError
from edgeship.export.tvm.frontend import import_onnx, load_onnx
from edgeship.export.tvm.remote import describe, free_devices, measured_on, rpc_runner
from edgeship.export.tvm.targets import TargetSpec, resolve_target
from edgeship.export.tvm.tuning import Progress

GROUP = 4  # tasks tuned together; the time budget is checked between groups
XGB_WARMUP = 100  # measured samples before MetaSchedule's XGBoost model is trusted


def child_main(argv: list[str]) -> int:
    """The tuning child: reads the job, tunes, writes JSON lines on the original stdout."""
    if len(argv) != 2 or argv[0] != "--tune":
        print("usage: python -m edgeship.export.tvm --tune JOB_JSON (internal: build_tvm runs it)",
              file=sys.stderr)
        return 2
    job = json.loads(argv[1])
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed (TVM's own logs) goes to stderr, not into the channel
    sys.stdout = sys.stderr

    def report(done: int, total: int, status: str) -> None:
        channel.write(json.dumps({"progress": [done, total, status]}) + "\n")

    spec = replace(resolve_target(job["target"]), name=job["name"])
    mod, _, _ = import_onnx(load_onnx(Path(job["onnx"])))
    try:
        outcome = run_tuning(mod, spec, Path(job["folder"]), job["trials"], job["deadline"], report,
                             tune_on=job.get("tune_on"))
    except EdgeshipError as e:  # one line for the parent (no free device, no tracker)
        channel.write(json.dumps({"error": str(e)}) + "\n")
        return 1
    channel.write(json.dumps({"outcome": outcome}) + "\n")
    channel.close()
    return 0


class _Budget:
    """Shared by the builder wrapper and the measure callback: trials, batches, deadline
    (wall-clock seconds since the epoch, so it can be set in one process and kept in another)."""

    def __init__(self, total: int, deadline: float | None, report: Progress):
        self.total, self.report = total, report
        self.start = time.time()
        self.deadline = deadline
        self.built = self.joined = self.trials = 0
        self.stopped = False
        self.setup_s: float | None = None  # until the first build: MetaSchedule's imports, search

    def expired(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline


def run_tuning(
    mod: Any, spec: TargetSpec, folder: Path, trials: int, deadline: float | None, report: Progress,
    tune_on: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """MetaSchedule on the tasks ``static_shape_tuning_pipeline`` would tune, heaviest first.

    Tasks go in groups of ``GROUP`` by estimated FLOPs x weight, sharing one cost model,
    database, builder and runner, so a short budget goes to the kernels that dominate and a
    deadline is noticed between groups rather than after a round over every task. With
    ``tune_on`` (``{"tracker", "key"}``) candidates are measured on that key's devices
    (``export.tvm.remote``); the outcome then says on which.
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    extracted = _extract_tasks(mod, tvm.target.Target(spec.tvm))
    n_tasks = len(extracted)
    batch, cap, strategy = _search_sizes(ms, trials, n_tasks)
    budget = _Budget(trials, deadline, report)
    report(0, trials, f"{n_tasks} tasks, up to {cap} trials each")
    if budget.expired():  # before MetaSchedule's slow first import
        report(0, trials, "stopped: time budget")
        return {"trials_run": 0, "stopped_early": True, "tasks": n_tasks, "max_trials_per_task": cap,
                "setup_s": None}
    _sweep_stale()
    work = Path(tempfile.mkdtemp(prefix="edgeship-ms-"))  # candidates and the device log, removed after
    try:
        with _quiet_meta_schedule(), _measuring_threads(spec.num_cores):
            _tune_groups(extracted, folder, strategy, batch, cap, budget, _Where(spec, work, tune_on))
        remote = None if tune_on is None else describe(tune_on, measured_on(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    done = min(budget.trials, trials)
    stopped = budget.expired() and done < trials
    report(done, trials, "stopped: time budget" if stopped else "done")
    return {"trials_run": done, "stopped_early": stopped, "tasks": n_tasks, "max_trials_per_task": cap,
            "setup_s": budget.setup_s, "remote": remote}


def _sweep_stale(age_s: float = 86400) -> None:
    """Remove this user's candidate folders a killed tuning left (``edgeship-ms-*``, a day old)."""
    now = time.time()
    for old in Path(tempfile.gettempdir()).glob("edgeship-ms-*"):
        with contextlib.suppress(OSError):
            st = old.stat()
            if old.is_dir() and st.st_uid == os.getuid() and now - st.st_mtime > age_s:
                shutil.rmtree(old, ignore_errors=True)


class _Where:
    """Where candidates are built (``work``, linked for ``spec``'s arch) and measured (here, or on
    the devices of ``tune_on``)."""

    def __init__(self, spec: TargetSpec, work: Path, tune_on: dict[str, Any] | None):
        self.cross, self.work, self.tune_on = spec.cross_compiler, work, tune_on

    def runner(self) -> Any:
        if self.tune_on is None:
            from tvm.s_tir.meta_schedule.runner import LocalRunner

            return LocalRunner(timeout_sec=60)
        workers = free_devices(self.tune_on["tracker"], self.tune_on["key"])
        return rpc_runner(self.tune_on, self.work, workers)


def _extract_tasks(mod: Any, tvm_target: Any) -> list[Any]:
    """The tasks ``static_shape_tuning_pipeline`` would tune, heaviest (FLOPs x weight) first."""
    import tvm
    from tvm import relax
    from tvm.relax import transform
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    with tvm_target:  # the same preparation as static_shape_tuning_pipeline
        prepared = tvm.transform.Sequential([
            transform.DecomposeOpsForInference(), transform.CanonicalizeBindings(),
            relax.pipeline.zero_pipeline()])(mod)
    extracted = ms.relax_integration.extract_tasks(prepared, tvm_target)
    extracted.sort(key=lambda t: -estimate_tir_flops(t.dispatched[0]) * t.weight)
    return extracted


def _search_sizes(ms: Any, trials: int, n_tasks: int) -> tuple[int, int, Any]:
    """(trials per batch, trials cap per task, search strategy) for ``trials`` over ``n_tasks``."""
    average = max(1, math.ceil(trials / max(1, n_tasks)))
    # One batch per task, two once there are enough trials (the second guided by a cost model
    # that has seen the first); each batch costs a search, so tiny budgets get one. A task may
    # take up to twice the average so the scheduler can give trials to tasks still improving.
    batch = average if average < 16 else min(64, math.ceil(average / 2))
    cap = min(trials, 2 * average)
    # The search costs about population x iterations cost-model calls per batch whatever the
    # batch size: shrink it for small batches so tiny budgets are not all search overhead.
    population = min(512, max(128, 8 * batch))
    strategy = ms.search_strategy.EvolutionarySearch(
        population_size=population, genetic_num_iters=4 if population >= 512 else 2)
    return batch, cap, strategy


@contextlib.contextmanager
def _quiet_meta_schedule() -> Iterator[None]:
    """MetaSchedule's logger at WARNING, and handlers it did not make set aside meanwhile."""
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_logger.setLevel(logging.WARNING)  # its console handler prints INFO tables on stdout
    # MetaSchedule re-configures this logger by handler name: one it did not make (pytest's
    # capture handler, say) would break a second tuning in the process. Set them aside.
    foreign = [h for h in ms_logger.handlers if not (h.get_name() or "").startswith(ms_logger.name)]
    for h in foreign:
        ms_logger.removeHandler(h)
    try:
        yield
    finally:
        ms_logger.setLevel(logging.WARNING)
        for h in foreign:
            ms_logger.addHandler(h)


@contextlib.contextmanager
def _measuring_threads(cores: int | None) -> Iterator[None]:
    """The measuring worker runs kernels with the artifact's thread count ($TVM_NUM_THREADS)."""
    saved_env = os.environ.get("TVM_NUM_THREADS")
    if cores:
        os.environ["TVM_NUM_THREADS"] = str(cores)
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = saved_env


def _tune_groups(extracted: list[Any], folder: Path, strategy: Any, batch: int, cap: int,
                 budget: _Budget, where: _Where) -> None:
    """Tune the tasks ``GROUP`` at a time with one builder, runner, database and cost model,
    each group's share of the trials left, until the trials or the time run out."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.support.popen_pool import PopenPoolExecutor

    trials = budget.total
    runner = pool = None
    try:
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted, str(folder), strategy=strategy, seed=0)
        runner = where.runner()
        pool = PopenPoolExecutor(max_workers=max(1, os.cpu_count() or 1), timeout=120)
        shared = {
            "builder": _budget_builder(pool, budget, _make_build_worker(where.cross, str(where.work))),
            "runner": runner,
            "database": ms.Database.create("json", work_dir=str(folder)),
            "cost_model": _cost_model(trials, contexts[0].num_threads),
            "measure_callbacks": [*ms.MeasureCallback.create("default"), _joined_callback(budget)],
        }
        for i in range(0, len(contexts), GROUP):
            left = trials - budget.trials
            if left <= 0 or budget.expired():
                break
            group = contexts[i:i + GROUP]
            share = min(left, math.ceil(left * len(group) / (len(contexts) - i)))
            try:
                ms.tune_tasks(tasks=group, task_weights=weights[i:i + GROUP], work_dir=str(folder),
                              max_trials_global=share, max_trials_per_task=cap,
                              num_trials_per_iter=batch, **shared)
            except RuntimeError:
                if not budget.stopped:
                    raise
                break
    finally:
        if runner is not None:
            runner.pool.shutdown()
        if pool is not None:
            pool.shutdown()


def _cost_model(trials: int, cores: int) -> Any:
    """XGBoost, trained with early stopping after 15 flat rounds rather than 50 (it converged
    by round ~20 here, and each round costs ~0.1 s of Python on a small machine). Budgets under
    its 100 warm-up samples never consult it, so they get the random model instead of paying
    for training."""
    from tvm.s_tir import meta_schedule as ms

    if trials < XGB_WARMUP:
        return ms.CostModel.create("random", seed=0)
    return ms.CostModel.create("xgb", num_tuning_cores=cores, num_warmup_samples=XGB_WARMUP,
                               early_stopping_rounds=15)


def _make_build_worker(cross: str | None, root: str) -> Callable[[Any, Any], str]:
    """Builds one candidate in a worker: TVM's default build minus its import of every tensor
    intrinsic (see the module docstring), linked to a .so there (in parallel) rather than in
    the single measuring worker, by ``cross`` (the aarch64 g++) for another arch. Candidates go
    under ``root``, which the session removes. Nested so the worker receives it by value."""

    def build(mod: Any, target: Any) -> str:
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
        from tvm.support import cc

        lib = tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)
        path = os.path.join(tempfile.mkdtemp(prefix="candidate-", dir=root), "candidate.so")
        lib.export_library(path, fcompile=cc.cross_compiler(cross) if cross else None)
        return path

    return build


def _budget_builder(pool: Any, budget: _Budget, worker: Callable[[Any, Any], str]) -> Any:
    """The candidate builder: workers kept for the whole session (TVM's LocalBuilder starts
    fresh ones, each importing TVM, for every batch); reports progress; skips builds once the
    budget is spent and stops tuning (by raising) as soon as every measured batch is saved."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.support.popen_pool import StatusKind

    @derived_object
    class BudgetBuilder(PyBuilder):
        def build(self, build_inputs: list[Any]) -> list[Any]:
            if budget.setup_s is None:
                budget.setup_s = round(time.time() - budget.start, 1)
            if budget.expired():
                if budget.joined == budget.built:
                    budget.stopped = True
                    raise RuntimeError("edgeship: tuning time budget reached")
                budget.built += 1
                return [BuilderResult(None, "edgeship: tuning time budget reached") for _ in build_inputs]
            results = []
            jobs = [(b.mod, b.target) for b in build_inputs]
            for r in pool.map_with_error_catching(lambda job: worker(*job), jobs):
                if r.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(r.value, None))
                else:
                    results.append(BuilderResult(None, f"edgeship builder: {r.status.name}: {r.value}"))
            budget.built += 1
            if build_inputs:
                budget.trials += len(build_inputs)
                budget.report(min(budget.trials, budget.total), budget.total,
                              f"{time.time() - budget.start:.0f} s")
            return results

    return BudgetBuilder()


def _joined_callback(budget: _Budget) -> Any:
    """Counts batches whose results reached the database (the scheduler joins them late)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Joined(PyMeasureCallback):
        def apply(self, *_args: Any) -> None:
            budget.joined += 1

    return Joined()
