"""``edgeship run``: the whole chain on the built-in default, one stage after another.

Each step is the same library call its own command makes; this module only orders them and
collects their summaries. A step that cannot run on this machine (no Chromium, say) is skipped
with one line that names what to install, and the rest still runs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

from edgeship.core.console import info, warn
from edgeship.core.runstore import RunDir, RunStore

ProgressFactory = Callable[[str, int | None], AbstractContextManager[Any]]


@dataclass(frozen=True)
class PipelineConfig:
    dataset: str = "digits"
    seed: int = 0
    epochs: int = 60
    recipe: str = "default"
    tvm_trials: int = 32  # small on purpose: `edgeship run` stays within minutes
    tvm_targets: tuple[str, ...] = ("host", "rpi4")  # the host build is tuned, Pi builds are not
    bench_runs: int = 200
    bench_warmup: int = 20
    bench_rounds: int = 5
    # Five rounds: the p50 interval's level is exact for the round count (edge_runtime.stats),
    # and five is the fewest that reach 90 % (93.75 %; three give 75 %). An emulated round is
    # ~50x slower, so the Pi measures fewer samples per round instead of fewer rounds.
    pi_rounds: int = 5
    pi_runs: int = 120
    threads: tuple[int, ...] = (1, 2)
    browser: bool = True
    pi: str | None = None  # None, "emulated" or USER@HOST


@dataclass
class PipelineResult:
    run: RunDir
    train: Any = None
    variants: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    bench: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    report: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # artifacts that failed validation (set aside)


def run_pipeline(store: RunStore, cfg: PipelineConfig, progress: ProgressFactory) -> PipelineResult:
    from edgeship.compression.recipes import recipe
    from edgeship.compression.stage import compress_run
    from edgeship.training.stage import TrainConfig, train

    skipped: list[str] = []
    if cfg.browser:
        from edgeship.devices.browser.chromium import browser_unavailable_reason

        missing = browser_unavailable_reason()
        if missing:  # the rest still runs; the line says what to install
            warn(f"the browser steps are skipped: {missing}")
            skipped.append(f"browser: {missing}")
            cfg = replace(cfg, browser=False)

    tcfg = TrainConfig(dataset=cfg.dataset, seed=cfg.seed, epochs=cfg.epochs)
    with progress("train", tcfg.epochs) as bar:
        trained = train(store, tcfg, progress=bar)
    result = PipelineResult(run=trained.run, train=trained, skipped=skipped)
    run = trained.run
    for ccfg in recipe(cfg.recipe):
        with progress(f"compress {ccfg.name}", ccfg.pass_count()) as bar:
            result.variants.append(compress_run(run, ccfg, progress=bar).summary)
    _export(run, cfg, result)
    _bench(run, cfg, result, progress)
    from edgeship.report import write_report

    result.report = {k: str(v) for k, v in write_report(run).items()}
    return result


def _export(run: RunDir, cfg: PipelineConfig, result: PipelineResult) -> None:
    """Every variant in every format. A QAT variant's float32 asks become its int8 forms (and
    its TVM builds are skipped): export_run's default, so nothing made here is unshippable."""
    from edgeship.export.stage import export_run

    batches: list[dict[str, Any]] = [
        {"variants": "all", "formats": ["tflite"], "quantize": ["float32", "int8"]},
        {"variants": "all", "formats": ["onnx"], "quantize": ["float32"]},
        # Tuning needs the device it tunes for: only the host build is tuned here.
        {"variants": "all", "formats": ["tvm"], "targets": ["host"], "trials": cfg.tvm_trials or None},
        {"variants": "all", "formats": ["tvm"], "targets": [t for t in cfg.tvm_targets if t != "host"]},
    ]
    if cfg.browser:
        batches.append({"variants": "all", "formats": ["web"], "quantize": ["float32"]})
    said: set[str] = set()

    def once(message: str) -> None:  # a QAT note would repeat for every batch
        if message not in said:
            said.add(message)
            info(message)

    for batch in batches:
        results = export_run(run, log=once, **batch)
        result.artifacts.extend(r.summary() for r in results)
        failed = [r for r in results if not r.passed]
        result.failed.extend(str(r.dir.relative_to(run.path)) for r in failed)
        if failed:
            warn(f"{len(failed)} export(s) failed validation and were set aside: "
                 + ", ".join(r.dir.name for r in failed))


def _bench(run: RunDir, cfg: PipelineConfig, result: PipelineResult, progress: ProgressFactory) -> None:
    """Host always; the browser when it is there; a Pi (or the emulated one) when asked."""
    from edgeship.devices.browser.session import plan_size as browser_plan
    from edgeship.devices.host import plan_size
    from edgeship.devices.registry import bench_run

    common = {"threads": cfg.threads, "runs": cfg.bench_runs, "warmup": cfg.bench_warmup,
              "rounds": cfg.bench_rounds, "log": info}
    with progress("bench host", plan_size(run, threads=cfg.threads, rounds=cfg.bench_rounds)) as bar:
        result.bench.extend(bench_run(run, "host", progress=bar, **common))
    if cfg.browser:
        total = browser_plan(run, threads=cfg.threads, rounds=cfg.bench_rounds)
        with progress("bench browser", total) as bar:
            result.bench.extend(bench_run(run, "browser", variants="all", progress=bar, **common))
    if cfg.pi:
        emulated = cfg.pi == "emulated"
        label = "pi emulated" if emulated else "pi"
        with progress(f"bench {label}", None) as bar:
            result.bench.extend(bench_run(
                run, "pi", label=label, host=None if emulated else cfg.pi, emulated=emulated,
                variant="all", format="tflite", progress=bar,
                **{**common, "threads": (1,), "rounds": cfg.pi_rounds,
                   "runs": min(cfg.bench_runs, cfg.pi_runs)}))
