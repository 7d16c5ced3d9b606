"""``edgeship compress``."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from edgeship.cli.options import COUNT, DURATION, POSITIVE, SEED, Number, json_option, parse_size, pass_app
from edgeship.core.console import emit_json, escape, out, progress
from edgeship.core.errors import InputError


@click.command()
@click.argument("run_ref", metavar="RUN", required=False)
@click.option("--from", "source", default="base", show_default=True,
              help="The variant to compress (base is the trained model).")
@click.option("--prune", type=Number(float, min=0, max=1, max_open=True),
              help="Target sparsity in [0, 1), e.g. 0.75.")
@click.option("--prune-structure", type=click.Choice(["2:4"]), help="Structured 2:4 sparsity.")
@click.option("--cluster", type=Number(int, min=2, max=256), help="Distinct values per kernel, e.g. 16.")
@click.option("--quantize", type=click.Choice(["qat", "dynamic", "float16", "int8"]),
              help="qat trains with fake quantization (exported as int8 only); the others apply at "
                   "export. int8 is measured on the calibration rows export uses.")
@click.option("--distill", is_flag=True, help="Train a smaller student from this model.")
@click.option("--student", help="Student from the model registry (default: this architecture, narrower).")
@click.option("--student-width", type=Number(float, min=0, max=1, min_open=True),
              default=0.25, show_default=True)
@click.option("--temperature", type=POSITIVE, default=4.0, show_default=True)
@click.option("--alpha", type=Number(float, min=0, max=1),
              default=0.1, show_default=True, help="Weight of the hard-label loss.")
@click.option("--distill-epochs", type=COUNT, default=30, show_default=True)
@click.option("--low-rank", help="SVD rank for Dense and 1x1 convolutions, or 'auto'.")
@click.option("--low-rank-energy", type=Number(float, min=0, max=1, min_open=True),
              default=0.9, show_default=True,
              help="auto: keep this share of the singular values' energy.")
@click.option("--epochs", type=COUNT, default=6, show_default=True, help="Fine-tuning epochs per pass.")
@click.option("--batch-size", type=COUNT, default=32, show_default=True)
@click.option("--learning-rate", type=Number(float, min=0, min_open=True, max=10), default=5e-4,
              show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--name", help="Variant name (default: made from the passes).")
@click.option("--recipe", help="A named set of variants: 'default' is what `edgeship run` makes.")
@click.option("--force", is_flag=True,
              help="Replace a variant of the same name (its exports and benchmark results are removed).")
@click.option("--search", "do_search", is_flag=True, help="Search recipes under --accuracy-budget.")
@click.option("--accuracy-budget", type=Number(float, min=0, max=100), default=1.0, show_default=True,
              help="Search: largest validation accuracy drop allowed, in points.")
@click.option("--objective", type=click.Choice(["size", "latency"]), default="size", show_default=True)
@click.option("--time-budget", type=DURATION, default="10m", show_default=True,
              help="Search: stop trying after this.")
@click.option("--model", "model_file", type=click.Path(dir_okay=False),
              help="Start a new run from your own Keras model (.keras or .h5).")
@click.option("--dataset", help="With --model: the dataset to measure it on.")
@click.option("--target", help="With --model and a CSV dataset: the label column.")
@click.option("--image-size", default="32", show_default=True, help="With --model and an image folder.")
@json_option
@pass_app
def compress(app: Any, run_ref: str | None, source: str, prune: float | None, prune_structure: str | None,
             cluster: int | None, quantize: str | None, distill: bool, student: str | None,
             student_width: float, temperature: float, alpha: float, distill_epochs: int,
             low_rank: str | None, low_rank_energy: float, epochs: int, batch_size: int,
             learning_rate: float, seed: int, name: str | None, recipe: str | None, force: bool,
             do_search: bool,
             accuracy_budget: float, objective: str, time_budget: float | None, model_file: str | None,
             dataset: str | None, target: str | None, image_size: str, as_json: bool) -> None:
    """Compress a model of RUN into a new, measured variant.

    Passes compose in a fixed order: distill, low-rank, prune, cluster, quantize.

    \b
    Examples:
      edgeship compress latest --prune 0.75 --quantize qat        # PQAT: sparse and int8
      edgeship compress latest --prune-structure 2:4
      edgeship compress latest --cluster 16 --quantize qat        # CQAT
      edgeship compress latest --distill --student-width 0.25 --quantize int8
      edgeship compress latest --low-rank auto
      edgeship compress latest --recipe default --epochs 2 --distill-epochs 3
      edgeship compress latest --prune 0.5 --name half --force    # replace 'half' and its exports
      edgeship compress latest --search --accuracy-budget 1.0 --objective size --time-budget 10m
      edgeship compress --model mine.keras --dataset digits --prune 0.5
    """
    from edgeship.compression.stage import CompressConfig

    cfg = CompressConfig(
        prune=prune, prune_structure=prune_structure, cluster=cluster, quantize=quantize,
        distill=distill, student=student, student_width=student_width, temperature=temperature,
        alpha=alpha, distill_epochs=distill_epochs, low_rank=low_rank, low_rank_energy=low_rank_energy,
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed, source=source,
        name=name,
    )
    given = _given_options()
    has_pass = any((prune is not None, prune_structure, cluster is not None, quantize, distill, low_rank))
    if do_search and (recipe or has_pass):
        raise InputError("--search picks its own passes: drop --recipe and the pass options")
    fixed = sorted(given & RECIPE_FIXES)
    if recipe and fixed:
        raise InputError(f"--recipe {recipe} fixes each variant's passes and name: drop "
                         f"{', '.join('--' + f.replace('_', '-') for f in fixed)}")
    if do_search and given & {"student", "student_width", "source"}:
        raise InputError("--search tries its own students from the trained model: drop --student, "
                         "--student-width and --from")
    if not (do_search or recipe):
        cfg.check()  # before any slow loading: bad flags fail fast
    tuning = {"epochs": epochs, "distill_epochs": distill_epochs, "learning_rate": learning_rate,
              "batch_size": batch_size, "temperature": temperature, "alpha": alpha,
              "low_rank_energy": low_rank_energy}
    tuned = {k: v for k, v in tuning.items() if k in given}  # the rest: the recipe's or search's own
    configs = _recipe_configs(recipe, cfg, tuned) if recipe else [cfg]  # checked before any loading
    run = _resolve_or_import(app, run_ref, model_file, dataset, target, image_size, seed)
    summaries: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    if do_search:
        from edgeship.compression.search import SearchConfig, search

        scfg = SearchConfig(accuracy_budget=accuracy_budget, objective=objective,
                            time_budget_s=time_budget, seed=seed, name=name, force=force,
                            **tuned)
        scfg.check()
        with progress("searching", total=12) as bar:
            result = search(run, scfg, progress=bar)
        extra = {"search": {"reference_val_accuracy": result.reference_val_accuracy,
                            "tries": result.tries, "table": str(run.path / "search/tries.csv"),
                            "plot": str(run.path / "search/pareto.png")}}
        if result.best is not None:
            summaries.append(result.best.summary)
    else:
        if recipe:
            from edgeship.compression.stage import check_name_free

            for c in configs:  # all names before the first variant trains
                check_name_free(run, c.name or c.default_name(), force)
        for c in configs:
            summaries.append(_compress_one(run, c, force))
    if as_json:
        emit_json({"run_id": run.id, "run_dir": str(run.path), "variants": summaries, **extra})
    else:
        print_variants(run, summaries, extra.get("search"))


# What a recipe sets for each of its variants: giving one of these with --recipe is an error.
RECIPE_FIXES = frozenset({"prune", "prune_structure", "cluster", "quantize", "distill", "student",
                          "student_width", "low_rank", "name"})


def _given_options() -> set[str]:
    """The options typed on the command line (or set in the environment), not left at defaults."""
    ctx = click.get_current_context()
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}


def _compress_one(run: Any, cfg: Any, force: bool = False) -> dict[str, Any]:
    from edgeship.compression.stage import compress_run

    label = cfg.name or cfg.default_name()
    with progress(f"compress {label}", total=cfg.pass_count() or None) as bar:
        return compress_run(run, cfg, progress=bar, force=force).summary


def _recipe_configs(recipe_name: str, cfg: Any, tuned: dict[str, Any]) -> list[Any]:
    """The recipe's variants with this command's seed, source and fine-tuning options."""
    from edgeship.compression.recipes import tuned_recipe

    return tuned_recipe(recipe_name, seed=cfg.seed, source=cfg.source, **tuned)


def _resolve_or_import(app: Any, run_ref: str | None, model_file: str | None, dataset: str | None,
                       target: str | None, image_size: str, seed: int) -> Any:
    if model_file is None:
        if dataset or target:
            raise InputError("--dataset and --target go with --model; a RUN already has its data")
        return app.store.resolve(run_ref or "latest")
    if run_ref:
        raise InputError("give either RUN or --model (which starts a new run), not both")
    if not dataset:
        raise InputError("--model needs --dataset: the data to measure and fine-tune it on")
    from edgeship.training.stage import TrainConfig, adopt

    cfg = TrainConfig(dataset=dataset, target=target, image_size=parse_size(image_size), seed=seed)
    return adopt(app.store, model_file, cfg).run


def print_variants(run: Any, summaries: list[dict[str, Any]], search: dict[str, Any] | None) -> None:
    if search:
        t = Table(title=f"search tries (reference val accuracy {search['reference_val_accuracy']:.4f})")
        for col in ("try", "val acc", "drop (pt)", "gzip bytes", "within budget"):
            t.add_column(col)
        for row in search["tries"]:
            if row.get("status") != "ok":
                t.add_row(escape(str(row["name"])), "-", "-", "-", escape(str(row.get("status", ""))))
                continue
            t.add_row(escape(str(row["recipe"])), f"{row['val_accuracy']:.4f}",
                      f"{row['val_drop_points']:.2f}",
                      f"{row['tflite_gzip_bytes']:,}", "yes" if row["within_budget"] else "no")
        out.print(t)
        out.print(f"table: {search['table']}\nplot:  {search['plot']}", markup=False)
        if not summaries:
            out.print("[yellow]no try stayed within the accuracy budget; nothing was kept[/]")
    t = Table(title=f"variants of {escape(str(run.id))}")
    for col in ("variant", "test acc", "change", "sparsity", "params", "TFLite bytes", "gzip bytes", "form"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for s in summaries:
        t.add_row(escape(str(s["name"])), f"{s['test_accuracy']:.4f}", f"{s['accuracy_delta'] * 100:+.2f} pt",
                  f"{s['sparsity']:.0%}", f"{s['params']:,}", f"{s['tflite_bytes']:,}",
                  f"{s['tflite_gzip_bytes']:,}", escape(str(s["deploy_form"])))
    out.print(t)
