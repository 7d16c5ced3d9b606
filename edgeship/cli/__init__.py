"""The ``edgeship`` command: a lazy root group and the one error boundary.

Subcommands live in small modules and are imported only when invoked, so ``edgeship --help``
never pays for TensorFlow. Library code raises ``EdgeshipError``; here it becomes one line on
stderr and exit code 2 (a traceback only with ``--debug``).
"""

from __future__ import annotations

import errno
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import click

from edge_runtime.errors import EdgeRuntimeError
from edgeship import __version__
from edgeship.core.errors import EdgeshipError
from edgeship.core.runstore import ENV_ROOT, RunStore

# name -> "module:attribute"; order is the order shown in --help.
COMMANDS = {
    "train": ("edgeship.cli.train:train",
              "Train a Keras model on a built-in dataset, a CSV or an image folder."),
    "compress": ("edgeship.cli.compress:compress",
                 "Prune, cluster, quantize (incl. QAT), distill, low-rank; search under a budget."),
    "export": ("edgeship.cli.export:export",
               "Export to TFLite, ONNX and TVM (host and Pi), each validated against its Keras model."),
    "deploy": ("edgeship.cli.deploy:deploy",
               "Ship a TFLite or TVM artifact to a Raspberry Pi over SSH and run it."),
    "pi": ("edgeship.cli.pi:pi", "The emulated Raspberry Pi (aarch64 Debian 12 under QEMU)."),
    "demo": ("edgeship.cli.demo:demo", "Serve the in-browser demo (LiteRT.js, onnxruntime-web)."),
    "fleet": ("edgeship.cli.fleet:fleet",
              "A fleet of devices through TVM's RPC tracker: tracker, join, list, leave."),
    "serve": ("edgeship.cli.serve:serve", "A serving device (python -m edge_runtime serve): status."),
    "load": ("edgeship.cli.serve:load",
             "Open-loop load on a serving device: throughput, p50/p99, the knee (serve/*.json)."),
    "monitor": ("edgeship.cli.monitor:monitor",
                "A device's request logs against the run: drift, prediction mix, live accuracy (exit 3)."),
    "bench": ("edgeship.cli.bench:bench",
              "Measure latency on the host, in a browser, on a Pi: one result schema."),
    "report": ("edgeship.cli.report:report",
               "Read the latency reports: terminal table, Markdown, HTML with plots."),
    "runs": ("edgeship.cli.runs:runs", "List runs."),
    "show": ("edgeship.cli.runs:show", "Summarise one run's manifest."),
    "run": ("edgeship.cli.run:run", "The whole chain on the built-in default, in one command."),
}


@dataclass
class App:
    store: RunStore
    debug: bool
    no_wait: bool = False  # a run another command is writing: fail at once instead of waiting


class CommandError(click.ClickException):
    """An ``EdgeshipError`` as the CLI shows it: one line, exit code 2."""

    exit_code = 2

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.message}", err=True)


# OS errors that are the user's environment, not a bug: shown as one line like EdgeshipError.
USER_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT}


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

    def invoke(self, ctx: click.Context) -> object:
        """The one error boundary: library errors become one line and exit code 2."""
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # a bad option value: one line, with where to look
            command = f"{e.ctx.command_path} --help" if e.ctx else "--help"
            raise CommandError(f"{e.format_message()} (see {command})") from e
        except (EdgeshipError, EdgeRuntimeError) as e:
            if _debug(ctx):
                raise
            raise CommandError(str(e)) from e
        except OSError as e:
            if e.errno not in USER_ERRNOS or _debug(ctx):
                raise
            where = f" ({e.filename})" if e.filename else ""
            raise CommandError(f"{e.strerror}{where}: free space or fix permissions, then retry") from e
        except KeyboardInterrupt as e:
            saved = getattr(e, "stage_saved", False)  # Ctrl-C during a commit: runstore.StageSaved
            click.echo("interrupted: the stage in progress " + ("had just been saved" if saved
                       else "was rolled back"), err=True)
            ctx.exit(130)


def _debug(ctx: click.Context) -> bool:
    return bool(getattr(ctx.obj, "debug", False)) or os.environ.get("EDGESHIP_DEBUG") == "1"


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
@click.option("--no-wait", is_flag=True, envvar="EDGESHIP_NO_WAIT",
              help="If another command is writing the run, fail at once instead of waiting.")
@click.pass_context
def cli(ctx: click.Context, runs_dir: Path | None, debug: bool, no_wait: bool) -> None:
    """edgeship: train, compress, export, deploy and measure small models for edge devices.

    \b
    Example:
      edgeship run                       # the whole chain on the digits default
      edgeship train --dataset iris      # one stage at a time
      edgeship show latest
    """
    ctx.obj = App(store=RunStore(runs_dir, wait=not no_wait), debug=debug, no_wait=no_wait)


def main() -> None:
    cli(prog_name="edgeship")
