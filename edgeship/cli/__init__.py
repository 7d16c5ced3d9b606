"""The ``edgeship`` command: a lazy root group and the one error boundary.

Subcommands live in small modules and are imported only when invoked, so ``edgeship --help``
never pays for TensorFlow. Library code raises ``EdgeshipError``; here it becomes one line on
stderr and exit code 2 (a traceback only with ``--debug``).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from edgeship import __version__
from edgeship.errors import EdgeshipError
from edgeship.runstore import ENV_ROOT, RunStore

# name -> "module:attribute"; order is the order shown in --help.
COMMANDS = {
    "train": ("edgeship.cli.train:train",
              "Train a Keras model on a built-in dataset, a CSV or an image folder."),
    "runs": ("edgeship.cli.runs:runs", "List runs."),
    "show": ("edgeship.cli.runs:show", "Summarise one run's manifest."),
    "run": ("edgeship.cli.pipeline:run", "The whole chain on the built-in default, in one command."),
}


@dataclass
class App:
    store: RunStore
    debug: bool


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeship")
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=ENV_ROOT,
    default=None,
    help=f"Where runs live (default ./runs, or ${ENV_ROOT}).",
)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, runs_dir: Path | None, debug: bool) -> None:
    """edgeship: train, compress, export, deploy and measure small models for edge devices.

    \b
    Example:
      edgeship run                       # the whole chain on the digits default
      edgeship train --dataset iris      # one stage at a time
      edgeship show latest
    """
    ctx.obj = App(store=RunStore(runs_dir), debug=debug)


def main() -> None:
    debug = "--debug" in sys.argv[1:] or os.environ.get("EDGESHIP_DEBUG") == "1"
    try:
        cli.main(standalone_mode=False)
    except EdgeshipError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("interrupted: the stage in progress was rolled back", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted: the stage in progress was rolled back", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:
        if debug:
            raise
        # Disk full, permission denied and the like: the user's environment, not a bug.
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        click.echo(f"error: {e.strerror or e}{where}; free space or fix permissions and retry",
                   err=True)
        sys.exit(2)
