"""Small pieces shared by commands: the app context and the --json flag."""

from __future__ import annotations

import click

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print exactly one JSON object on stdout.")


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
