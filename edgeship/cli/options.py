"""Small pieces shared by commands: the app context and the --json flag."""

from __future__ import annotations

import functools
import io
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``: exactly one JSON object on stdout, whatever native libraries print.

    TensorFlow's converter and TVM write to file descriptor 1 from C++; while the command runs,
    fd 1 points at stderr and only ``emit_json`` reaches the real stdout.
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("as_json"):
            return f(*args, **kwargs)
        with _stdout_reserved_for_json():
            return f(*args, **kwargs)

    return click.option("--json", "as_json", is_flag=True,
                        help="Print exactly one JSON object on stdout.")(wrapper)


@contextmanager
def _stdout_reserved_for_json() -> Iterator[None]:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, io.UnsupportedOperation, ValueError):
        yield  # captured in-process (tests): native output cannot reach it anyway
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    os.dup2(sys.stderr.fileno(), fd)
    real_stdout = sys.stdout
    sys.stdout = os.fdopen(os.dup(saved), "w", encoding="utf-8")
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout.close()
        sys.stdout = real_stdout
        os.dup2(saved, fd)
        os.close(saved)


# The root group puts an ``App`` (run store, debug flag) on ctx.obj; subcommands inherit it.
pass_app = click.pass_obj


def parse_size(value: str) -> tuple[int, int]:
    """'32' or '32x48' (height x width)."""
    try:
        parts = [int(p) for p in value.lower().split("x")]
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a size: use 32 or 32x48") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise click.BadParameter(f"'{value}' is not a size: use 32 or 32x48")
    return parts[0], parts[1]


def parse_duration(value: str | None) -> float | None:
    """'90s', '10m', '1h' or plain seconds."""
    if value in (None, "", "none"):
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    text = value.strip().lower()
    scale = units.get(text[-1])
    number = text[:-1] if scale else text
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a duration: use 90s, 10m or 1h") from None
    if seconds <= 0:
        raise click.BadParameter(f"'{value}': use a positive duration")
    return seconds
