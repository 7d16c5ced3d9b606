"""Small pieces shared by commands: the app context and the --json flag."""

from __future__ import annotations

import functools
import io
import math
import os
import re
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


MAX_IMAGE_SIDE = 1024  # a 100000-pixel side would allocate the dataset at that size first


def parse_size(value: str) -> tuple[int, int]:
    """'32' or '32x48' (height x width)."""
    try:
        parts = [int(p) for p in value.lower().split("x")]
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a size: use 32 or 32x48") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1 or max(parts) > MAX_IMAGE_SIDE:
        raise click.BadParameter(f"'{value}' is not a size: use 32 or 32x48 "
                                 f"(allowed: 1 <= side <= {MAX_IMAGE_SIDE})")
    return parts[0], parts[1]


MAX_DURATION_S = 7 * 24 * 3600
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smh]?)")


def parse_duration(value: str | None) -> float | None:
    """'90s', '10m', '1h' or plain seconds; anything else (blank, NaN, negative, '1x') is refused."""
    if value is None or value.strip().lower() in ("none", "off"):
        return None
    match = _DURATION.fullmatch(value.strip().lower())
    if not match:
        raise click.BadParameter(f"{value!r} is not a duration: use a number of seconds, or 90s, 10m, 1h")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if not 0 < seconds <= MAX_DURATION_S:
        raise click.BadParameter(f"{value!r}: use a duration above 0 and at most 7 days (e.g. 10m)")
    return seconds


class Duration(click.ParamType):
    """``--time-budget``: checked when the command line is parsed, before any run is opened."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except click.BadParameter as e:
            self.fail(e.message, param, ctx)


DURATION = Duration()


class Number(click.ParamType):
    """A finite number within a range, checked at parse time: NaN and infinity are refused (click's
    FloatRange lets NaN through, since every comparison with it is false), and the message names
    the allowed range."""

    def __init__(self, kind: type = float, *, min: float | None = None, max: float | None = None,
                 min_open: bool = False, max_open: bool = False) -> None:
        self.kind, self.min, self.max, self.min_open, self.max_open = kind, min, max, min_open, max_open
        self.name = "integer" if kind is int else "number"

    def describe(self) -> str:
        def show(v: float) -> str:
            return str(int(v)) if self.kind is int else f"{v:g}"

        lo = "" if self.min is None else f"{show(self.min)} {'<' if self.min_open else '<='} "
        hi = "" if self.max is None else f" {'<' if self.max_open else '<='} {show(self.max)}"
        return f"{lo}x{hi}" if (lo or hi) else "any finite value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, self.kind) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = self.kind(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not {'an integer' if self.kind is int else 'a number'} "
                          f"(allowed: {self.describe()})", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number (allowed: {self.describe()})", param, ctx)
        too_low = self.min is not None and (number <= self.min if self.min_open else number < self.min)
        too_high = self.max is not None and (number >= self.max if self.max_open else number > self.max)
        if too_low or too_high:
            self.fail(f"{value!r} is out of range (allowed: {self.describe()})", param, ctx)
        return number


COUNT = Number(int, min=1)  # epochs, runs, batch sizes: at least one
SEED = Number(int, min=0, max=2**32 - 1)  # numpy and TensorFlow seeds are unsigned 32-bit
PORT = Number(int, min=1, max=65535)
POSITIVE = Number(float, min=0, min_open=True)
