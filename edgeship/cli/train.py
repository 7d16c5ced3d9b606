"""``edgeship train``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from edgeship.cli.options import COUNT, SEED, Number, json_option, parse_size, pass_app
from edgeship.core.console import emit_json, escape, out, progress


@click.command()
@click.option("--dataset", default="digits", show_default=True,
              help="digits, breast_cancer, wine, iris, a .csv file, or an image folder.")
@click.option("--target", help="The label column of a CSV file.")
@click.option("--time-column", help="Split by time on this CSV column (oldest rows train).")
@click.option("--image-size", default="32", show_default=True,
              callback=lambda _ctx, _param, value: parse_size(value),
              help="Resize image-folder images to this (32 or HxW, at most 1024).")
@click.option("--model", "model_name", default="auto", show_default=True,
              help="cnn, dscnn, mobilenetv2 (images) or mlp (tables); auto picks by data.")
@click.option("--width", type=Number(float, min=0, min_open=True, max=8),
              default=1.0, show_default=True, help="Width multiplier.")
@click.option("--alpha", type=Number(float, min=0, min_open=True, max=2), default=0.35, show_default=True,
              help="MobileNetV2 alpha.")
@click.option("--epochs", type=COUNT, default=60, show_default=True,
              help="Upper bound; early stopping on validation loss usually ends sooner.")
@click.option("--batch-size", type=COUNT, default=32, show_default=True)
@click.option("--learning-rate", type=Number(float, min=0, min_open=True, max=10), default=1e-3,
              show_default=True)
@click.option("--patience", type=COUNT, default=8, show_default=True,
              help="Early-stopping patience in epochs.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none",
              show_default=True, help="'balanced' for imbalanced classes.")
@click.option("--val-fraction", type=Number(float, min=0, max=1, min_open=True, max_open=True),
              default=0.15, show_default=True)
@click.option("--test-fraction", type=Number(float, min=0, max=1, min_open=True, max_open=True),
              default=0.15, show_default=True)
@click.option("--augment", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Random shifts and zooms of training images; auto: on for images of 32 px and up.")
@click.option("--from", "from_run", default=None,
              help="With --add-feedback: retrain this run's model with its own settings.")
@click.option("--add-feedback", "feedback_dir", type=click.Path(path_type=Path), default=None,
              help="A request-log folder (--log-inputs raw) whose labelled requests join the train split.")
@json_option
@pass_app
def train(app: Any, dataset: str, target: str | None, time_column: str | None, image_size: tuple[int, int],
          model_name: str, width: float, alpha: float, epochs: int, batch_size: int,
          learning_rate: float, patience: int, seed: int, class_weight: str,
          val_fraction: float, test_fraction: float, augment: str, from_run: str | None,
          feedback_dir: Path | None, as_json: bool) -> None:
    """Train a Keras model and store it as a new run.

    \b
    Examples:
      edgeship train                                   # CNN on the 8x8 digits
      edgeship train --dataset wine --epochs 100
      edgeship train --dataset sales.csv --target churned --time-column date --json
      edgeship train --dataset photos/ --image-size 96 --model mobilenetv2
      edgeship train --from latest --add-feedback device-logs/   # + labelled logged requests
    """
    if (from_run is None) != (feedback_dir is None):
        raise click.UsageError("--from and --add-feedback go together: "
                               "edgeship train --from RUN --add-feedback LOGDIR")
    if from_run is not None and feedback_dir is not None:
        from edgeship.training.feedback import train_with_feedback

        with progress("training", total=None) as bar:
            result = train_with_feedback(app.store, from_run, feedback_dir, progress=bar)
        summary = {**train_summary(result), "lineage": result.run.manifest.get("lineage")}
        if as_json:
            emit_json(summary)
        else:
            print_train_summary(summary)
        return
    from edgeship.training.stage import TrainConfig
    from edgeship.training.stage import train as train_stage

    cfg = TrainConfig(
        dataset=dataset, target=target, time_column=time_column,
        image_size=image_size, model=model_name, width=width, alpha=alpha,
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, patience=patience,
        seed=seed, class_weight=class_weight, val_fraction=val_fraction,
        test_fraction=test_fraction, augment=augment,
    )
    with progress("training", total=epochs) as bar:
        result = train_stage(app.store, cfg, progress=bar)
    summary = train_summary(result)
    if as_json:
        emit_json(summary)
    else:
        print_train_summary(summary)


def train_summary(result: Any) -> dict[str, Any]:
    m = result.metrics
    manifest = result.run.manifest
    return {
        "run_dir": str(result.run.path),
        "run_id": result.run.id,
        "dataset": manifest["data"]["dataset"],
        "model": manifest["model"]["name"],
        "test_accuracy": m["test"]["accuracy"],
        "test_macro_f1": m["test"]["macro_f1"],
        "baselines": {k: v["accuracy"] for k, v in m["baselines"].items()},
        "val_accuracy": m.get("val_accuracy"),
        "beats_baselines": m.get("beats_baselines"),
        "warnings": m.get("warnings", []),
        "params": m["params"],
        "epochs_run": m["epochs_run"],
        "wall_time_s": m["wall_time_s"],
        "split": manifest["data"]["split"]["sizes"],
    }


def print_train_summary(s: dict[str, Any]) -> None:
    model, dataset = escape(str(s["model"])), escape(str(s["dataset"]))
    table = Table(title=f"{model} on {dataset} (test split, {s['split']['test']} rows)")
    table.add_column("model")
    table.add_column("test accuracy", justify="right")
    table.add_row(f"[bold]{model}[/]", f"[bold]{s['test_accuracy']:.4f}[/]")
    for name, acc in s["baselines"].items():
        table.add_row(escape(f"{name.replace('_', ' ')} (baseline)"), f"{acc:.4f}")
    out.print(table)
    out.print(f"{s['params']:,} parameters, {s['epochs_run']} epochs in {s['wall_time_s']:.1f} s")
    out.print(f"run: [bold]{escape(str(s['run_id']))}[/]  ({escape(str(s['run_dir']))})")
