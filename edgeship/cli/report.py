"""``edgeship report``: build the report of a run, write report.md and report.html, print one form."""

from __future__ import annotations

import sys
from typing import Any

import click

from edgeship.cli.options import pass_app


@click.command()
@click.argument("run_ref", metavar="RUN", default="latest")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "html", "json", "csv"]),
              default="table", show_default=True,
              help="What to print on stdout (report.md and report.html are always written).",
)
@pass_app
def report(app: Any, run_ref: str, fmt: str) -> None:
    """Summarise RUN's benchmarks: per device, sorted by p50, with verdicts and flags.

    Writes RUN/report.md and a self-contained RUN/report.html (latency distributions, a
    size/accuracy/latency Pareto plot, the compression table, environment facts).

    \b
    Examples:
      edgeship report latest
      edgeship report latest --format csv > latency.csv
      edgeship report latest --format json | jq '.devices[].verdicts'
    """
    from benchmarks.report import build_report, render_csv, render_json, render_markdown, write_report

    run = app.store.resolve(run_ref)
    rep = build_report(run)
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
    from rich.table import Table

    from benchmarks.report import EMULATED
    from edgeship.console import out

    for d in rep.devices:
        title = d.title if not d.emulated else d.title.replace(EMULATED, f"[yellow]{EMULATED}[/]")
        t = Table(title=title, title_justify="left")
        cols = ("variant", "artifact", "thr", "p50 ms", "p90 ms", "p99 ms", "e2e p50", "RSS MB", "size",
                "accuracy", "flag")
        for c in cols:
            t.add_column(c, justify="left" if c in ("variant", "artifact", "flag") else "right",
                         no_wrap=c != "flag")
        for r in d.rows:
            lat = r.latency
            t.add_row(r.variant, r.artifact, str(r.threads or "-"), f"{lat['p50']:.4f}", f"{lat['p90']:.4f}",
                      f"{lat['p99']:.4f}", "-" if r.e2e_p50 is None else f"{r.e2e_p50:.4f}",
                      "-" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}",
                      "-" if not r.bytes else f"{r.bytes / 1024:.1f} KiB",
                      "-" if r.accuracy is None else f"{r.accuracy:.2%}",
                      "[red]" + "; ".join(r.flags) + "[/]" if r.flags else "")
        out.print(t)
        for v in d.verdicts:
            style = "red" if "FLAGGED" in v else "bold"
            out.print(f"  [{style}]-[/] {v}", highlight=False)
        out.print()
    out.print(f"report: {files['html']}\n        {files['md']}")
