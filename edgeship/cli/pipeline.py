"""``edgeship run``."""

from __future__ import annotations

from typing import Any

import click

from edgeship.cli.options import json_option, pass_app
from edgeship.console import emit_json, out, progress


@click.command()
@click.option("--dataset", default="digits", show_default=True, help="The dataset to train on.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, default=60, show_default=True)
@json_option
@pass_app
def run(app: Any, dataset: str, seed: int, epochs: int, as_json: bool) -> None:
    """Run the whole chain on the built-in default: train, then every later stage.

    \b
    Example:
      edgeship run
      edgeship --runs-dir /tmp/runs run --json
    """
    from edgeship.cli.train import print_train_summary, train_summary
    from edgeship.pipeline import run_pipeline
    from edgeship.runstore import RunDir

    result = run_pipeline(app.store, dataset=dataset, seed=seed, epochs=epochs,
                          progress_factory=progress)
    from training.stage import TrainResult

    summary = train_summary(TrainResult(RunDir(result.run_dir), result.steps["train"]))
    if as_json:
        emit_json({"run_id": result.run_id, "run_dir": result.run_dir, "train": summary})
        return
    print_train_summary(summary)
    out.print(f"\nnext: [bold]edgeship show {result.run_id}[/]")
