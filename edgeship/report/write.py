"""Write a run's report files: ``report.md``, ``report.html`` and the section plots beside them.

The top of the report package: it builds (``build``) and renders (``render`` for Markdown,
``page`` for HTML), so neither of those imports the other's caller.
"""

from __future__ import annotations

import base64
from pathlib import Path

from edgeship.core.fsutil import atomic_path, write_text_atomic
from edgeship.core.runstore import RunDir
from edgeship.report import serving
from edgeship.report.build import build_report
from edgeship.report.model import REPORT_HTML, REPORT_MD, Report
from edgeship.report.page import render_html
from edgeship.report.render import render_markdown


def write_report(run: RunDir, report: Report | None = None) -> dict[str, Path]:
    """Build (unless given) and write ``report.md`` and ``report.html`` atomically; their paths."""
    rep = report or build_report(run)
    md, page = run.path / REPORT_MD, run.path / REPORT_HTML
    write_text_atomic(md, render_markdown(rep) + "\n")
    write_text_atomic(page, render_html(rep))
    write_section_plots(run.path, rep)
    return {"md": md, "html": page}


def write_section_plots(run_path: Path, rep: Report) -> list[Path]:
    """The Serving and Monitoring plots as PNG files beside report.md (which links them)."""
    figures = [(d.plot_file, d.png) for d in (rep.serving.devices if rep.serving else [])]
    figures += [(w.plot_file, w.png) for d in (rep.monitoring.devices if rep.monitoring else [])
                for w in d.watches]
    written = []
    for rel, png in figures:
        path = run_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(base64.b64decode(png()))
        written.append(path)
    folder = run_path / serving.PLOTS_DIR
    for old in sorted(folder.glob("*.png")) if folder.is_dir() else []:
        if old not in written:  # a device or model version no longer in the run: its old plot goes
            old.unlink()
    return written
