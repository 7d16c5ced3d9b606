"""Render a ``Report`` for the terminal (rich): ship-this lines, one table per device that fits
120 columns (flags as one-letter codes, legend below), verdicts."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeship.core.console import out
from edgeship.report import monitoring, serving
from edgeship.report.fmt import EMULATED, sig
from edgeship.report.model import Device, Report, Row
from edgeship.report.render import budget_heading, no_bench_line
from edgeship.report.verdicts import CODES

P99_STAR = "*: p99 over k-call means (no single-call tail)"


def _unit(dev: Device) -> tuple[str, float]:
    """us when every p50 interval on the device is below 1 ms, else ms."""
    top = max(max([r.p50, *(r.ci or [])]) for r in dev.rows)
    return ("us", 1000.0) if top < 1 else ("ms", 1.0)


def shared_level(dev: Device) -> float | None:
    """The one level every interval on the device has (the header then states it), else None."""
    levels = {r.ci_level for r in dev.rows if r.ci is not None}
    return next(iter(levels)) if len(levels) == 1 else None


def _p50_cell(r: Row, scale: float, with_level: bool = True) -> str:
    """``9.12 [8.90, 9.40] 94%``: the interval's level beside it (``?`` for an older result),
    unless the column's header states the one level of the whole table."""
    p50 = sig(r.p50 * scale)
    if r.ci is None:
        return f"{p50} [-]"
    cell = f"{p50} [{sig(r.ci[0] * scale)}, {sig(r.ci[1] * scale)}]"
    if not with_level:
        return cell
    return cell + (" ?" if r.ci_level is None else f" {r.ci_level * 100:.0f}%")


def _size(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1024:.1f}K" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f}M"


def device_title(dev: Device) -> str:
    """The section heading, as rich markup (emulation in yellow)."""
    title = f"[bold]{escape(dev.title)}[/]"
    return title.replace(EMULATED, f"[yellow]{EMULATED}[/]") if dev.emulated else title


def device_table(dev: Device) -> Table:
    """The device's rows, sorted by p50: at most ~110 columns, one line per row (long names are
    cut with an ellipsis rather than wrapped)."""
    unit, scale = _unit(dev)
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    level = shared_level(dev)
    narrow = level is None and any(r.ci is not None for r in dev.rows)  # a level in every p50 cell
    t.add_column("variant", no_wrap=True, overflow="ellipsis", max_width=16 if narrow else 20)
    t.add_column("artifact", no_wrap=True, overflow="ellipsis", max_width=16 if narrow else 18)
    t.add_column("thr", justify="right", no_wrap=True)
    header = f"p50 {unit} [{level * 100:.4g}% int.]" if level is not None else f"p50 {unit} [int.] level"
    t.add_column(escape(header), justify="right", no_wrap=True)
    t.add_column(f"p99 {unit} 1-call", justify="right", no_wrap=True)
    t.add_column("rnd", justify="right", no_wrap=True)
    t.add_column("size", justify="right", no_wrap=True)
    t.add_column("acc", justify="right", no_wrap=True)
    t.add_column("flags", no_wrap=True)
    for r in dev.rows:
        p99, single = r.p99
        codes = "".join(r.codes)
        style = "red" if ("S" in r.codes or "Q" in r.codes) else ("green" if "R" in r.codes else None)
        t.add_row(escape(r.variant), escape(r.artifact), str(r.threads or "-"),
                  _p50_cell(r, scale, with_level=level is None),
                  sig(p99 * scale) + ("" if single else "*"), str(r.rounds), _size(r.bytes),
                  "-" if r.accuracy is None else f"{r.accuracy * 100:.1f}%", codes, style=style)
    return t


def legend(dev: Device) -> str:
    """The codes used in the device's table, spelled out."""
    used = {c for r in dev.rows for c in r.codes}
    parts = [f"{c} {text}" for c, text in CODES.items() if c in used]
    if any(not r.p99[1] for r in dev.rows):
        parts.append(P99_STAR)
    parts.append("p99 1-call: single-call samples")
    if shared_level(dev) is None and any(r.ci is not None and r.ci_level is None for r in dev.rows):
        parts.append("?: interval from an older result, level not stated")
    return "flags: " + "; ".join(parts)


def print_report(rep: Report, files: dict[str, Any] | None = None, console: Console | None = None) -> None:
    """Ship-this lines first, then per device: note, table, legend, verdicts; then the files."""
    console = console or out
    console.print(f"[bold]{escape(budget_heading(rep))}[/]", highlight=False)
    for rec in rep.recommendations:
        console.print(f"  [green]-[/] {escape(rec['line'])}", highlight=False)
    if not rep.devices:
        console.print(f"  {escape(no_bench_line(rep))}", highlight=False)
    console.print()
    for d in rep.devices:
        if d.note:
            console.print(f"[red]{escape(d.note)}[/]", highlight=False)
        console.print(device_title(d), highlight=False)
        console.print(device_table(d))
        console.print(f"  [dim]{escape(legend(d))}[/]", highlight=False)
        for v in d.verdicts:
            style = "red" if "FLAGGED" in v else "bold"
            console.print(f"  [{style}]-[/] {escape(v)}", highlight=False)
        console.print()
    for line in serving.terminal_lines(rep.serving) + monitoring.terminal_lines(rep.monitoring):
        console.print(escape(line), highlight=False)
    if files:
        console.print(f"report: {escape(str(files['html']))}\n        {escape(str(files['md']))}",
                      highlight=False)  # a run folder may be named "[x]": paths are text, not markup


def print_ship_lines(recs: list[dict[str, Any]], console: Console | None = None) -> None:
    """One "ship this" line per device (the end of ``edgeship run``)."""
    console = console or out
    for rec in recs:
        console.print(f"[bold green]{escape(rec['line'])}[/]", highlight=False)
