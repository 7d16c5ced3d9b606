"""Where output goes: results on stdout, progress and warnings on stderr.

With ``--json`` a command prints exactly one JSON object on stdout and nothing else there,
so scripts can parse it; everything meant for a person goes to stderr in that mode.

Rich reads ``[...]`` in a printed string as markup, so user text (column names, labels, file,
dataset and variant names) must never reach it raw: a column named ``[/]`` would crash and
``weight [kg]`` would print as ``weight``. ``info``, ``warn`` and progress descriptions take
plain text and escape it; code that builds its own markup around user text wraps that text in
``escape`` (re-exported here from ``rich.markup``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress


class Progress(Protocol):
    """What long work reports to: ``progress`` yields one; tests and callers may pass their own."""

    def update(self, advance: int = 1, status: str = "") -> None: ...


# ``progress`` is one: (description, total) -> a context that yields a Progress.
ProgressFactory = Callable[[str, int | None], AbstractContextManager[Progress]]


def _console(stderr: bool) -> Console:
    """Rich assumes 80 columns when output is piped; logs and CI read better wider.

    No emoji codes: a column called ``:warning:`` prints as written.
    """
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal else 120
    return Console(stderr=stderr, highlight=False, width=width, emoji=False)


err = _console(stderr=True)
out = _console(stderr=False)


def warn(message: str, *, markup: bool = False) -> None:
    """``warning: <message>`` on stderr, one line however long (logs are grepped); the message
    is plain text unless ``markup``."""
    err.print(f"[yellow]warning:[/] {message if markup else escape(message)}", soft_wrap=True)


def info(message: str, *, markup: bool = False) -> None:
    """A line for a person on stderr; plain text unless ``markup``."""
    err.print(message, markup=markup)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=_default) + "\n")
    sys.stdout.flush()


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Progress]:
    """A progress bar on stderr; on a non-terminal, one line per update instead of redraws.

    ``description`` and each ``status`` are plain text (they often hold a variant or device name).
    """
    if not err.is_terminal:
        yield _LineProgress(description, total)
        return
    bar = RichProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    with bar:
        task = bar.add_task(escape(description), total=total, status="")
        yield _BarProgress(bar, task)


class _BarProgress:
    def __init__(self, bar: RichProgress, task: Any):
        self._bar, self._task = bar, task

    def update(self, advance: int = 1, status: str = "") -> None:
        self._bar.update(self._task, advance=advance, status=escape(status))


class _LineProgress:
    def __init__(self, description: str, total: int | None):
        self._desc, self._total, self._done = description, total, 0

    def update(self, advance: int = 1, status: str = "") -> None:
        """Log about ten lines per task, not one per step: logs are read, not watched."""
        self._done += advance
        every = max(1, (self._total or 10) // 10)
        if self._done % every and self._done != self._total:
            return
        of = f"/{self._total}" if self._total else ""
        err.print(f"{self._desc} {self._done}{of} {status}".rstrip(), markup=False)
