"""Reports people read: what was measured, on which device, and what to ship there.

``build_report(run)`` gathers the stored results (``bench/*.json``, any device, schema 1 or 2)
and the compression table (``variants/*/metrics.json`` via the manifest) into a ``Report``: one
section per device id, rows sorted by p50, verdicts and flags drawn only where two p50 intervals
do not overlap (``compare``), and one "ship this" recommendation per device
(``recommendations``). ``write_report`` renders ``report.md`` and one self-contained
``report.html`` (plots embedded as base64 PNG) atomically into the run.

Emulated results are labelled "emulated (not device latency)" in every table, heading, plot
and verdict: QEMU timings say whether a build runs, not how fast a Pi is.

Modules, one job each: ``model`` (rows, devices, grouping by device id), ``verdicts``
(interval comparisons, flags, sentences), ``recommend`` (ship this), ``build`` (a run into a
Report), ``plots`` (figures), ``render`` (method, Markdown, CSV, JSON, writing the files),
``page`` (HTML), ``terminal`` (rich tables), ``fmt`` (number formats); ``serving`` and
``monitoring`` (the "Serving" and "Monitoring" sections from ``serve/*.json`` and
``monitor/*.json``: data, Markdown, HTML and plots, also written as ``report-plots/*.png``).
"""

from __future__ import annotations

from edgeship.report.build import build_report, compression_table, zero_rule_accuracy
from edgeship.report.fmt import EMULATED
from edgeship.report.model import (
    REPORT_HTML,
    REPORT_MD,
    Device,
    Report,
    Row,
    device_title,
    group_devices,
)
from edgeship.report.page import render_html
from edgeship.report.plots import distribution_plot, pareto_front, pareto_plot
from edgeship.report.recommend import (
    DEFAULT_ACCURACY_BUDGET,
    check_budget,
    recommend,
    recommendations,
    ship_line,
)
from edgeship.report.render import (
    CSV_FIELDS,
    METHOD,
    OUTPUT_FORMATS,
    method_text,
    render_csv,
    render_json,
    render_markdown,
)
from edgeship.report.terminal import device_table, print_report, print_ship_lines
from edgeship.report.verdicts import CODES, NO_DIFFERENCE, NO_INTERVAL, compare
from edgeship.report.write import write_report

__all__ = [
    "CODES", "CSV_FIELDS", "DEFAULT_ACCURACY_BUDGET", "EMULATED", "METHOD", "NO_DIFFERENCE", "NO_INTERVAL",
    "OUTPUT_FORMATS", "REPORT_HTML", "REPORT_MD", "Device", "Report", "Row", "build_report",
    "check_budget", "compare", "compression_table", "device_table", "device_title", "distribution_plot",
    "group_devices", "method_text", "pareto_front", "pareto_plot", "print_report", "print_ship_lines",
    "recommend", "recommendations", "render_csv", "render_html", "render_json", "render_markdown",
    "ship_line", "write_report", "zero_rule_accuracy",
]
