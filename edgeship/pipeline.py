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

from edgeship.benchmarks.harness import BenchSettings
from edgeship.core.console import info, warn
from edgeship.core.runstore import RunDir, RunStore
from edgeship.devices.browser.chromium import browser_unavailable_reason
from edgeship.devices.options import PI_THREADS, BrowserOptions, DeviceOptions, HostOptions, PiOptions
from edgeship.devices.registry import bench_run, plan_size
from edgeship.report import write_report

ProgressFactory = Callable[[str, int | None], AbstractContextManager[Any]]


@dataclass(frozen=True)
class PipelineConfig:
    dataset: str = "digits"
    seed: int = 0
    epochs: int = 60
    recipe: str = "default"
    tvm_trials: int = 32  # small on purpose: `edgeship run` stays within minutes
    tvm_targets: tuple[str, ...] = ("host", "rpi4")  # the host build is tuned, Pi builds are not
    bench: BenchSettings = field(default_factory=BenchSettings)  # every export, 1 and 2 threads, 5 rounds
    # Five rounds: the p50 interval's level is exact for the round count (edge_runtime.stats),
    # and five is the fewest that reach 90 % (93.75 %; three give 75 %). An emulated round is
    # ~50x slower, so the Pi measures fewer samples per round instead of fewer rounds.
    pi_runs: int = 120
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

    result.report = {k: str(v) for k, v in write_report(run).items()}
    return result


def _export(run: RunDir, cfg: PipelineConfig, result: PipelineResult) -> None:
    """Every variant in every format. A QAT variant's float32 asks become its int8 forms (and
    its TVM builds are skipped): export_run's default, so nothing made here is unshippable."""
    from edgeship.export.stage import ExportConfig, export_run

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
        results = export_run(run, ExportConfig(**batch), log=once)
        result.artifacts.extend(r.summary() for r in results)
        failed = [r for r in results if not r.passed]
        result.failed.extend(str(r.dir.relative_to(run.path)) for r in failed)
        if failed:
            warn(f"{len(failed)} export(s) failed validation and were set aside: "
                 + ", ".join(r.dir.name for r in failed))


def _bench(run: RunDir, cfg: PipelineConfig, result: PipelineResult, progress: ProgressFactory) -> None:
    """Host always; the browser when it is there; a Pi (or the emulated one) when asked: each
    through the one driver contract, the Pi with its TFLite exports, one thread, fewer samples."""
    devices: list[tuple[str, DeviceOptions, BenchSettings]] = [("host", HostOptions(), cfg.bench)]
    if cfg.browser:
        devices.append(("browser", BrowserOptions(), cfg.bench))
    if cfg.pi:
        emulated = cfg.pi == "emulated"
        devices.append(("pi", PiOptions(host=None if emulated else cfg.pi, emulated=emulated),
                        replace(cfg.bench, formats="tflite", threads=PI_THREADS,
                                runs=min(cfg.bench.runs, cfg.pi_runs))))
    for on, options, settings in devices:
        with progress(f"bench {options.label()}", plan_size(run, on, settings, options)) as bar:
            result.bench.extend(bench_run(run, on, settings, options, progress=bar, log=info))
