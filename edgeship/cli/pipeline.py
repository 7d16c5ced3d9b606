"""``edgeship run``."""

from __future__ import annotations

from typing import Any

import click

from edgeship.cli.options import json_option, pass_app
from edgeship.console import emit_json, out, progress


@click.command()
@click.option("--dataset", default="digits", show_default=True, help="The dataset to train on.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, default=60, show_default=True, help="Training epochs (upper bound).")
@json_option
@pass_app
def run(app: Any, dataset: str, seed: int, epochs: int, as_json: bool) -> None:
    """Run the whole chain on the built-in default: train, compress, and every later stage.

    \b
    Example:
      edgeship run
      edgeship --runs-dir /tmp/runs run --json
    """
    from edgeship.cli.compress import print_variants
    from edgeship.cli.train import print_train_summary, train_summary
    from edgeship.pipeline import PipelineConfig, run_pipeline

    result = run_pipeline(app.store, PipelineConfig(dataset=dataset, seed=seed, epochs=epochs), progress)
    trained = train_summary(result.train)
    if as_json:
        emit_json({"run_id": result.run.id, "run_dir": str(result.run.path), "train": trained,
                   "variants": result.variants})
        return
    print_train_summary(trained)
    print_variants(result.run, result.variants, None)
    out.print(f"\nnext: [bold]edgeship show {result.run.id}[/]")
