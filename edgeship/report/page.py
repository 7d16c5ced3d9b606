"""Render a ``Report`` as one self-contained HTML page (no external resources, plots inline)."""

from __future__ import annotations

import html
from collections.abc import Iterable

from edgeship.report import fleet, monitoring, serving
from edgeship.report.fmt import EMULATED, fact
from edgeship.report.model import Report, Row
from edgeship.report.plots import distribution_plot, pareto_plot
from edgeship.report.render import (
    COMPRESSION_COLUMNS,
    FACT_KEYS,
    P99_NOTE,
    TABLE_COLUMNS,
    budget_heading,
    cells,
    compression_cells,
    environment_facts,
    method_text,
    no_bench_line,
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}tr.flag td{background:#fff2f0}tr.ship td{background:#eef8ee}
.emu{color:#b35900;font-weight:600}.note{color:#b00020;font-weight:600}p.ok{color:#1b6e1b;font-weight:600}
.verdict li{margin:.3em 0}.flagged{color:#b00020;font-weight:600}figure{display:inline-block;margin:.5em}
figcaption{font-size:.8em;color:#555}p.method{font-size:.85em;color:#444}ul.ship li{margin:.3em 0}
"""


def _anchor(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def _table(cols: Iterable[str], rows: Iterable[tuple[list[str], str]], left: int = 3) -> str:
    e = html.escape
    cols = list(cols)
    head = "".join(f"<th class='{'l' if i < left else ''}'>{e(c)}</th>" for i, c in enumerate(cols))
    body = []
    for row_cells, cls in rows:
        tds = "".join(f"<td class='{'l' if i < left or i == len(cols) - 1 else ''}'>{c}</td>"
                      for i, c in enumerate(row_cells))
        body.append(f"<tr class='{cls}'>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _row_class(r: Row) -> str:
    cls = "artifact-row"
    if "S" in r.codes or "Q" in r.codes:
        cls = "flag " + cls
    if "R" in r.codes:
        cls = "ship " + cls
    return cls


def render_html(rep: Report) -> str:
    """report.html: one file, no external resources, plots as data: URIs."""
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>edgeship report {e(rep.run_id)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Benchmark report: {e(rep.run_id)}</h1>",
             f"<h2 id='ship-this'>{e(budget_heading(rep))}</h2><ul class='ship'>",
             *(f"<li>{e(rec['line'])}</li>" for rec in rep.recommendations),
             *([] if rep.devices else [f"<li>{e(no_bench_line(rep))}</li>"]), "</ul>",
             f"<p class='method'>{e(method_text(rep) if rep.devices else '')}</p>"]
    for d in rep.devices:
        emu = f" <span class='emu'>{e(EMULATED)}</span>" if d.emulated else ""
        title = d.title.replace(f" - {EMULATED}", "")
        parts.append(f"<h2 id='device-{_anchor(d.key)}'>{e(title)}{emu}</h2>")
        if d.note:
            parts.append(f"<p class='note'>{e(d.note)}</p>")
        parts.append("<ul class='verdict'>")
        for v in d.verdicts:
            cls = " class='flagged'" if "FLAGGED" in v else ""
            parts.append(f"<li{cls}>{e(v)}</li>")
        parts.append("</ul>")
        rows = []
        for r in d.rows:
            row_cells = [e(c) for c in cells(r)]
            row_cells[1] = f"<a href='#dist-{_anchor(r.name)}'>{row_cells[1]}</a>"
            if r.emulated:
                row_cells[2] += f" <span class='emu'>{e(EMULATED)}</span>"
            rows.append((row_cells, _row_class(r)))
        parts.append(_table(TABLE_COLUMNS, rows))
        parts.append(f"<p class='method'>{e(P99_NOTE)}</p>")
        parts.append(f"<figure><img alt='Pareto plot {e(d.key)}' class='plot pareto' "
                     f"src='data:image/png;base64,{pareto_plot(d)}'><figcaption>size, p50 latency (with "
                     f"its interval) and accuracy on {e(d.key)}{' - ' + e(EMULATED) if d.emulated else ''}; "
                     "ringed: the Pareto front</figcaption></figure>")
    parts += ["<h2 id='distributions'>Latency distributions, per artifact</h2>"] if rep.rows else []
    by_name: dict[str, list[Row]] = {}
    order = {d.key: i for i, d in enumerate(rep.devices)}
    for r in rep.rows:
        by_name.setdefault(r.name, []).append(r)
    for name in sorted(by_name):
        rows_ = sorted(by_name[name], key=lambda r: (order.get(r.device, 99), r.threads or 0))
        emu = any(r.emulated for r in rows_)
        parts.append(f"<figure id='dist-{_anchor(name)}'><img alt='latency distribution {e(name)}' "
                     f"class='plot distribution' src='data:image/png;base64,{distribution_plot(rows_)}'>"
                     f"<figcaption>{e(name)}{' - includes ' + e(EMULATED) + ' rows' if emu else ''}"
                     "</figcaption></figure>")
    if rep.fleet:
        parts.append(f"<h2 id='fleet'>{e(fleet.HEADING)}</h2><p class='method'>{e(fleet.NOTE)}</p>")
        parts.append(_table(fleet.COLUMNS, (([e(c) for c in fleet.cells(r)], "") for r in rep.fleet)))
    parts += serving.html_parts(rep.serving) + monitoring.html_parts(rep.monitoring)
    parts.append("<h2 id='compression'>Compression</h2>")
    parts.append(_table(COMPRESSION_COLUMNS,
                        (([e(c) for c in compression_cells(c)], "") for c in rep.compression)))
    parts.append("<h2 id='environment'>Environment</h2>")
    for d in rep.devices:
        parts.append(f"<h3>{e(d.title)}</h3>")
        parts.append(_table(("fact", "value"), (([e(k), e(fact(d.facts.get(k)))], "")
                                                for k in FACT_KEYS if k in d.facts), left=2))
    if rep.environment:
        parts.append("<h3>The run (training and export)</h3>")
        parts.append(_table(("fact", "value"), (([e(k), e(v)], "")
                                                for k, v in environment_facts(rep.environment)), left=2))
    parts.append("</body></html>")
    return "\n".join(parts)
