"""``edgeship runs`` and ``edgeship show``: read the run store, never write it."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from edgeship.cli.options import json_option, pass_app
from edgeship.cli.summary import render_summary
from edgeship.core.console import emit_json, escape, out
from edgeship.core.errors import RunError
from edgeship.core.runstore import RunDir


def run_row(run: RunDir) -> dict[str, Any]:
    m = run.manifest
    train = run.last_stage("train") or {}
    return {
        "run_id": m.get("run_id", run.path.name),
        "dataset": m.get("data", {}).get("dataset"),
        "model": m.get("model", {}).get("name"),
        "test_accuracy": train.get("metrics", {}).get("test_accuracy"),
        "created": m.get("created"),
        "path": str(run.path),
    }


@click.command()
@json_option
@pass_app
def runs(app: Any, as_json: bool) -> None:
    """List runs, oldest first.

    \b
    Example:
      edgeship runs
      edgeship --runs-dir /data/runs runs --json
    """
    rows = []
    for run in app.store.list():
        try:
            rows.append(run_row(run))
        except RunError as e:
            rows.append({"run_id": run.path.name, "error": str(e)})
    if as_json:
        emit_json({"runs": rows})
        return
    if not rows:
        out.print(f"no runs in {app.store.root}; make one with `edgeship run` or `edgeship train`",
                  markup=False)
        return

    table = Table(title=f"runs in {escape(str(app.store.root))}")
    for col in ("id", "dataset", "model", "test accuracy", "created"):
        table.add_column(col, justify="right" if col == "test accuracy" else "left")
    for r in rows:
        acc = r.get("test_accuracy")
        table.add_row(escape(str(r["run_id"])), escape(str(r.get("dataset") or "-")),
                      escape(str(r.get("model") or "-")), f"{acc:.4f}" if acc is not None else "-",
                      escape(str(r.get("created") or "-")))
    out.print(table)


@click.command()
@click.argument("run_ref", metavar="RUN", default="latest")
@json_option
@pass_app
def show(app: Any, run_ref: str, as_json: bool) -> None:
    """Summarise a run: data, split, model, stages and what they wrote.

    RUN is a path, a run id, or 'latest' (the default).

    \b
    Example:
      edgeship show latest
      edgeship show 20261126-093012-digits-cnn-1a2b --json
    """
    run = app.store.resolve(run_ref)
    manifest = run.manifest
    if as_json:
        emit_json(manifest)
        return

    render_summary(run, manifest, out)
