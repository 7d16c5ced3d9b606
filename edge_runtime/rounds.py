"""The measuring session a device runs: every artifact and thread count, in interleaved rounds.

Method, the same on every device (the browser's page follows it step by step):

1. load every (artifact, thread count) once; time the load and the first inference;
2. measure the test split's accuracy through the loaded model (untimed), where a test set is given;
3. measure the clock step, and per configuration choose k, the back-to-back calls per sample, so a
   sample spans >= 100 clock steps (``edge_runtime.sampling``), from the call time of a warm
   runtime (warm-up calls first, then the lower quartile of 11 batches of back-to-back calls);
4. for each of ``rounds`` rounds, every configuration once, in an order that changes each round
   (``round_order``): warm-up calls, then ``runs`` samples of
   k calls (and, when k > 1, ``runs`` single-call samples for the tail);
5. re-check each configuration's call time the same way; a result whose call time moved more
   than 2x from its calibration says so (``calibration.drifted`` and a note): its k may be off;
6. summarise with ``edge_runtime.stats``: median of round p50s, its order-statistic interval and
   that interval's level (``ci_level``), the tail.

Configurations share one process, so switching between them costs nothing and a round takes
seconds, not minutes of process start-up; a short pause between configurations lets one
runtime's spinning worker threads go idle before the next is timed. TVM fixes its thread pool
size when the pool starts: a session switches it with TVM's own ``runtime.config_threadpool``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgeRuntimeError, InputError
from edge_runtime.result import DRIFT_LIMIT, SCHEMA_VERSION, device_id
from edge_runtime.sampling import (
    CALIBRATION_WARMUP,
    calls_per_sample,
    clock_step_ns,
    drift_ratio,
    estimate_call_ns,
    sample_calls,
)
from edge_runtime.stats import summarize_rounds
from edge_runtime.timing import PERCENTILE_METHOD, device_facts, device_kind, peak_rss_mb, summarize_ms

SETTLE_S = 0.05  # pause between configurations: spinning thread pools go idle
Progress = Callable[[int, int, str], None]  # (done, total, status)


@dataclass
class Config:
    """One (artifact, thread count) loaded and bound, with what its rounds measured."""

    artifact: Path
    threads: int | None
    model: Any
    invoke: Callable[[], Any]
    raw: Any
    init_ms: float
    first_ms: float
    k: int = 1
    call_ns: float = 0.0  # the call time k was chosen from (warm)
    calibration_calls: int = 0
    end_call_ns: float | None = None  # the same estimate at the end of the session
    rounds: list[list[float]] = field(default_factory=list)
    single: list[float] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.artifact.name} t{self.threads or 'auto'}"


def bench_session(
    artifacts: Sequence[str | Path],
    threads: Sequence[int | None] = (None,),
    *,
    rounds: int = 5,
    runs: int = 200,
    warmup: int = 20,
    on: str | None = None,
    test: dict[str, Any] | None = None,
    end_to_end: bool = True,
    keep_samples: bool = True,
    progress: Progress | None = None,
    on_error: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure every artifact at every thread count in ``rounds`` interleaved rounds.

    ``test`` is ``{"x": raw inputs, "y": class indices, "source": str}`` (see
    ``edge_runtime.testset``): each artifact's accuracy is measured on it here, through the
    runtime that is timed. Returns one schema result per configuration, in input order. An
    artifact that cannot be loaded is reported through ``on_error`` and left out; when none
    loads, the first error is raised.
    """
    _check_counts(rounds, runs, warmup)
    kind = device_kind(on)
    configs = _load_all(artifacts, threads or (None,), on_error)
    _evaluate(configs, test)
    for c in configs:
        _bind(c)
    step = clock_step_ns()
    cal_warmup = max(warmup, CALIBRATION_WARMUP)
    for c in configs:
        _activate(c)
        c.call_ns, c.calibration_calls = estimate_call_ns(c.invoke, warmup=cal_warmup)
        c.k = calls_per_sample(step, c.call_ns)
    total = rounds * len(configs)
    done = 0
    for r in range(rounds):
        for c in round_order(configs, r):
            _activate(c)
            time.sleep(SETTLE_S)
            c.rounds.append(sample_calls(c.invoke, runs, c.k, warmup))
            if c.k > 1:
                c.single.extend(sample_calls(c.invoke, runs, 1, 0))
            done += 1
            if progress is not None:
                progress(done, total, f"round {r + 1}/{rounds} {c.label}")
    for c in configs:  # did the call time that set k hold for the whole session?
        _activate(c)
        c.end_call_ns, _ = estimate_call_ns(c.invoke, warmup=cal_warmup)
    facts = device_facts()
    return [_result(c, kind, facts, step, warmup, end_to_end, keep_samples) for c in configs]


def calibration_record(call_ms: float, end_call_ms: float | None, warmup: int, calls: int,
                       k: int) -> tuple[dict[str, Any], str | None]:
    """The result's ``calibration`` object and, when the call time drifted more than
    ``DRIFT_LIMIT`` x between calibration and the end of the session, the note that says so."""
    drift = None if end_call_ms is None else drift_ratio(call_ms, end_call_ms)
    drifted = drift is not None and drift > DRIFT_LIMIT
    record = {"warmup": warmup, "calls": calls, "call_ms": round(call_ms, 6),
              "end_call_ms": None if end_call_ms is None else round(end_call_ms, 6),
              "drift": None if drift is None else round(drift, 3), "drifted": drifted}
    note = None
    if drifted:
        note = (f"call time drifted {drift:.1f}x during the session ({call_ms:.4g} ms at calibration, "
                f"{end_call_ms:.4g} ms at the end): k = {k} may be off")
    return record, note


def _check_counts(rounds: int, runs: int, warmup: int) -> None:
    if rounds < 1:
        raise InputError(f"rounds must be at least 1, got {rounds}")
    if runs < 1:
        raise InputError(f"runs must be at least 1, got {runs}")
    if warmup < 0:
        raise InputError(f"warmup must be 0 or more, got {warmup}")


def _load_all(
    artifacts: Sequence[str | Path], threads: Sequence[int | None], on_error: Callable[[str], None] | None
) -> list[Config]:
    """Every configuration that loads; the others reported, or the first error if none loads."""
    configs: list[Config] = []
    errors: list[tuple[str, EdgeRuntimeError]] = []
    for a in artifacts:
        for t in threads:
            try:
                configs.append(_load(Path(a), t))
            except EdgeRuntimeError as e:
                errors.append((f"{a} (threads {t or 'auto'})", e))
    if not configs:
        raise errors[0][1] if errors else InputError("no artifacts to measure")
    for where, e in errors:
        if on_error is not None:
            on_error(f"{where}: {e}")
    return configs


def _load(artifact: Path, threads: int | None) -> Config:
    from edge_runtime.model import EdgeModel

    t0 = time.perf_counter_ns()
    model = EdgeModel.load(artifact, threads=threads)
    init_ms = (time.perf_counter_ns() - t0) / 1e6
    batch = model.input_shape[0] if model.input_shape[0] > 0 else 1
    cfg = Config(artifact=model.path, threads=threads, model=model, invoke=lambda: None,
                 raw=model.example_raw(batch), init_ms=init_ms, first_ms=0.0)
    _bind(cfg)
    _activate(cfg)
    t1 = time.perf_counter_ns()
    cfg.invoke()
    cfg.first_ms = (time.perf_counter_ns() - t1) / 1e6
    return cfg


def _bind(cfg: Config) -> None:
    """Bind the timing input to the runtime (again after an evaluation resized its tensors)."""
    model = cfg.model
    cfg.invoke = model.backend.invoker(model.prepare(model.preprocess(cfg.raw)))


def round_order(configs: Sequence[Any], r: int) -> list[Any]:
    """Round ``r``'s order: each round starts with the next configuration, and odd rounds run
    backwards, so none is always first and none always follows the same neighbour (whose
    threads may still be winding down)."""
    items = list(configs)
    if not items:
        return items
    if r % 2 == 0:
        shift = r % len(items)
        return items[shift:] + items[:shift]
    shift = (r + 1) % len(items)  # reversed, this starts with items[r]
    return (items[shift:] + items[:shift])[::-1]


def _activate(cfg: Config) -> None:
    """Make this configuration's thread count the one in force (TVM's pool is per process)."""
    activate = getattr(cfg.model.backend, "activate", None)
    if activate is not None:
        activate(cfg.threads)


def _evaluate(configs: list[Config], test: dict[str, Any] | None) -> None:
    """Accuracy of each artifact on the test split, through its first loaded configuration."""
    if test is None:
        return
    import numpy as np

    y = np.asarray(test["y"], dtype=np.int64)
    seen: dict[Path, dict[str, Any]] = {}
    for c in configs:
        if c.artifact not in seen:
            _activate(c)
            pred = c.model.predict(test["x"])
            indices = np.asarray(pred.indices, dtype=np.int64)
            seen[c.artifact] = {
                "samples": len(y),
                "source": test.get("source"),
                "accuracy": float((indices == y).mean()) if len(y) else None,
                "threads": c.threads,
                "predictions": [int(i) for i in indices],
            }
        c.evaluation = seen[c.artifact]


def _result(
    c: Config, kind: str, facts: dict[str, Any], step: int | None, warmup: int, end_to_end: bool,
    keep_samples: bool,
) -> dict[str, Any]:
    model = c.model
    single = c.single if c.k > 1 else [v for r in c.rounds for v in r]
    timing = summarize_rounds(c.rounds, single, calls_per_sample=c.k, clock_step_ns=step,
                              keep_samples=keep_samples)
    evaluation = c.evaluation
    accuracy = None if evaluation is None else evaluation["accuracy"]
    notes = []
    if step is None:
        notes.append("the clock step could not be measured: one call per sample")
    calibration, drift_note = calibration_record(
        c.call_ns / 1e6, None if c.end_call_ns is None else c.end_call_ns / 1e6,
        max(warmup, CALIBRATION_WARMUP), c.calibration_calls, c.k)
    if drift_note:
        notes.append(drift_note)
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "on": kind,
        "device_id": device_id(kind, facts),
        "artifact": str(model.path),
        "run_id": model.artifact.get("run_id"),
        "model": model.artifact.get("model"),
        "variant": model.artifact.get("variant"),
        "format": model.format,
        "quantize": model.quantize,
        "target": model.artifact.get("target"),
        "backend": model.backend.name,
        "backend_version": model.backend.version,
        "threads": c.threads,
        "batch": int(model.input_shape[0]) if model.input_shape[0] > 0 else 1,
        "warmup": warmup,
        **timing,
        "calibration": calibration,
        "end_to_end_ms": None,
        "init_ms": round(c.init_ms, 3),
        "first_ms": round(c.first_ms, 3),
        "peak_rss_mb": None,
        "bytes": model.artifact.get("bytes"),
        "accuracy": accuracy,
        "accuracy_source": "device" if evaluation is not None else None,
        "evaluation": evaluation,
        "device": facts,
        "percentile_method": PERCENTILE_METHOD,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "notes": notes,
    }
    if end_to_end:
        _activate(c)
        e2e = sample_calls(lambda: model.predict(c.raw), timing["runs"], 1, warmup)
        result["end_to_end_ms"] = summarize_ms(e2e)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def threads_env_for(threads: Sequence[int | None]) -> dict[str, str]:
    """Environment for a session process: TVM's pool starts at the largest thread count asked for.

    ``runtime.config_threadpool`` can shrink and regrow the pool later, but the first size is read
    from ``TVM_NUM_THREADS`` when the pool starts.
    """
    counts = [t for t in threads if t]
    return {"TVM_NUM_THREADS": str(max(counts))} if counts else {}


def apply_threads_env(threads: Sequence[int | None]) -> None:
    """Set ``threads_env_for`` in this process, before any runtime is imported."""
    os.environ.update(threads_env_for(threads))

def benchmark(
    artifact: str | Path,
    runs: int = 200,
    warmup: int = 20,
    threads: int | None = None,
    raw: Any = None,
    end_to_end: bool = True,
    on: str | None = None,
    keep_samples: bool = True,
    rounds: int = 1,
) -> dict[str, Any]:
    """One artifact at one thread count: ``edge_runtime.rounds.bench_session`` for a single config.

    ``raw`` is accepted for compatibility and ignored: inputs are synthesised from the spec.
    """
    del raw
    return bench_session([artifact], [threads], rounds=rounds, runs=runs, warmup=warmup, on=on,
                         end_to_end=end_to_end, keep_samples=keep_samples)[0]
