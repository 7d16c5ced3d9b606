"""``edgeship report``: build the report of a run, write report.md and report.html, print one form."""

from __future__ import annotations

import sys
from typing import Any

import click

from edgeship.cli.options import pass_app
from edgeship.report import build_report, check_budget, render_csv, render_json, render_markdown, write_report
from edgeship.report import print_report as show

DEFAULT_ACCURACY_BUDGET = 1.0  # percentage points; benchmarks.report.DEFAULT_ACCURACY_BUDGET


def accuracy_budget_option(f: Any) -> Any:
    """``--accuracy-budget POINTS``: a finite number >= 0, else one line and exit code 2."""

    def check(ctx: click.Context, param: click.Parameter, value: str) -> float:
        return check_budget(value)  # InputError: the CLI's one-line error, exit 2

    return click.option(
        "--accuracy-budget", "accuracy_budget", metavar="POINTS", default=str(DEFAULT_ACCURACY_BUDGET),
        show_default=True, callback=check,
        help="Ship this: the fastest artifact within this many accuracy percentage points "
             "(>= 0) of the best accuracy measured on each device.",
    )(f)


@click.command()
@click.argument("run_ref", metavar="RUN", default="latest")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "html", "json", "csv"]),
              default="table", show_default=True,
              help="What to print on stdout (report.md and report.html are always written).",
)
@accuracy_budget_option
@pass_app
def report(app: Any, run_ref: str, fmt: str, accuracy_budget: float) -> None:
    """Summarise RUN's benchmarks: "ship this" per device, then per device id the results sorted
    by p50 with their intervals and each interval's level, verdicts and flags (only where
    intervals separate).

    Writes RUN/report.md and a self-contained RUN/report.html (latency distributions, a
    size/accuracy/latency Pareto plot, the compression table, environment facts). A run with load
    sweeps (`edgeship load`) or monitor results (`edgeship monitor`) gets a Serving and a
    Monitoring section per device, their plots also as RUN/report-plots/*.png.

    \b
    Examples:
      edgeship report latest
      edgeship report latest --accuracy-budget 0.5
      edgeship report latest --format csv > latency.csv
      edgeship report latest --format json | jq '.recommendations[].line'
    """
    run = app.store.resolve(run_ref)
    rep = build_report(run, accuracy_budget)
    files = write_report(run, rep)
    if fmt == "table":
        print_report(rep, files)
    elif fmt == "md":
        sys.stdout.write(render_markdown(rep) + "\n")
    elif fmt == "html":
        sys.stdout.write(files["html"].read_text(encoding="utf-8"))
    elif fmt == "json":
        sys.stdout.write(render_json(rep) + "\n")
    else:
        sys.stdout.write(render_csv(rep))


def print_report(rep: Any, files: dict[str, Any]) -> None:
    """The terminal report (see ``benchmarks.report.terminal``) on stdout."""
    show(rep, files)
