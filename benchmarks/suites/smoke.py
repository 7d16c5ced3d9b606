"""The ``--smoke`` switch every suite shares: its smallest setting, as overridable defaults."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
               smoke: dict[str, Any]) -> argparse.Namespace:
    """Parse ``argv``; with ``--smoke``, ``smoke`` replaces the defaults (explicit flags still win).

    The smallest setting finishes in well under a minute on two cores; its figures show the
    suite works, not how fast anything is.
    """
    shown = " ".join(_shown(k, v) for k, v in smoke.items())
    parser.add_argument("--smoke", action="store_true",
                        help=f"the smallest setting, for a quick check: {shown}")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--smoke", action="store_true")
    known, _ = pre.parse_known_args(argv)
    if known.smoke:
        parser.set_defaults(**smoke)
    return parser.parse_args(argv)


def _shown(dest: str, value: Any) -> str:
    flag = "--" + dest.replace("_", "-")
    return flag if value is True else f"{flag} {value}"
