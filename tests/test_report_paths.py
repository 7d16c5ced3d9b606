"""The report's file paths are printed as text: a runs folder named like rich markup stays whole."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from edgeship.report.model import Report
from edgeship.report.terminal import print_report


def test_report_paths_with_brackets_print_as_typed() -> None:
    folder = Path("/tmp/[bold]runs[/]/weight [kg]")
    rep = Report(run_id="r", run_path=folder, devices=[], compression=[], environment={})
    buf = io.StringIO()
    print_report(rep, {"html": folder / "report.html", "md": folder / "report.md"},
                 console=Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    assert f"report: {folder / 'report.html'}" in text and str(folder / "report.md") in text
