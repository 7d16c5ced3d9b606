"""``edgeship run``."""

from __future__ import annotations

from typing import Any

import click

from edgeship.benchmarks.harness import BenchSettings
from edgeship.cli.compress import print_variants
from edgeship.cli.options import COUNT, SEED, Number, json_option, pass_app
from edgeship.cli.report import print_report
from edgeship.cli.train import print_train_summary, train_summary
from edgeship.core.console import emit_json, escape, out, progress
from edgeship.core.errors import InputError
from edgeship.devices.pi.ssh import SshTarget
from edgeship.pipeline import PipelineConfig, run_pipeline
from edgeship.report import build_report, print_ship_lines, recommendations, zero_rule_accuracy


@click.command()
@click.option("--dataset", default="digits", show_default=True, help="The dataset to train on.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--epochs", type=COUNT, default=60, show_default=True, help="Training epochs (upper bound).")
@click.option("--tvm-trials", type=Number(int, min=0), default=32, show_default=True,
              help="MetaSchedule trials for the host TVM build (0: untuned).")
@click.option("--runs", type=COUNT, default=BenchSettings.runs, show_default=True,
              help="Timed runs per benchmark.")
@click.option("--browser/--no-browser", default=True, show_default=True,
              help="Export the web bundle and benchmark it in headless Chromium.")
@click.option("--pi", callback=lambda _ctx, _param, value: _check_pi(value),
              help="Also deploy to and benchmark on a Pi: USER@HOST, or 'emulated'.")
@json_option
@pass_app
def run(app: Any, dataset: str, seed: int, epochs: int, tvm_trials: int, runs: int, browser: bool,
        pi: str | None, as_json: bool) -> None:
    """Run the whole chain: train, compress, export, benchmark, report.

    \b
    Example:
      edgeship run
      edgeship run --pi emulated          # adds an emulated aarch64 Pi (labelled as emulated)
      edgeship run --pi pi@raspberrypi.local
      edgeship --runs-dir /tmp/runs run --json
    """
    cfg = PipelineConfig(dataset=dataset, seed=seed, epochs=epochs, tvm_trials=tvm_trials,
                         bench=BenchSettings(runs=runs), browser=browser, pi=pi)
    result = run_pipeline(app.store, cfg, progress)
    trained = train_summary(result.train)

    # "Ship this" per device, from this run's results (default accuracy budget, as in report.md;
    # nothing at or below the run's zero-rule baseline).
    recs = recommendations(result.bench, zero_rule=zero_rule_accuracy(result.run)) if result.bench else []
    if as_json:
        emit_json({"run_id": result.run.id, "run_dir": str(result.run.path), "train": trained,
                   "variants": result.variants, "artifacts": result.artifacts,
                   "bench": result.bench, "recommendations": recs, "report": result.report,
                   "skipped": result.skipped, "failed": result.failed})
        _exit_if_failed(result.failed)
        return
    print_train_summary(trained)
    print_variants(result.run, result.variants, None)

    print_report(build_report(result.run), result.report)
    for line in result.skipped:
        out.print(f"[yellow]skipped:[/] {escape(line)}")
    print_ship_lines(recs, out)
    out.print(f"next: edgeship show {result.run.id}   |   edgeship demo {result.run.id}", markup=False)
    _exit_if_failed(result.failed)


def _check_pi(value: str | None) -> str | None:
    """A malformed ``--pi`` host fails here, not after training, compressing and exporting."""
    if value and value != "emulated":
        try:
            SshTarget(value)  # checks the host's form only; nothing connects yet
        except InputError as e:
            raise click.BadParameter(str(e)) from None
    return value


def _exit_if_failed(failed: list[str]) -> None:
    """Exit 1, as `edgeship export` does, once everything else has run and been reported."""
    if failed:
        click.echo(f"error: {len(failed)} artifact(s) failed validation and were set aside: "
                   f"{', '.join(failed)}", err=True)
        raise SystemExit(1)
