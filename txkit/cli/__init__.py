"""The `txkit` command line: one Typer command (or group) per module in this package.

Command modules import only typer at module level; torch, transformers and friends are imported
inside the command functions so that `txkit --help` answers instantly.
"""

from __future__ import annotations

import importlib
import sys

import typer

from txkit import __version__
from txkit.errors import TxkitError

app = typer.Typer(
    name="txkit",
    help="Train the Transformer of 'Attention Is All You Need' from scratch for machine translation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each module calls `register(app)`; order is the order shown in --help.
_COMMAND_MODULES = [
    "tokenizer",
    "train",
    "translate",
    "evaluate",
    "average",
    "push",
    "export",
    "serve",
    "run",
    "report",
]


def _version_callback(value: bool):
    if value:
        typer.echo(f"txkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
):
    """txkit: tokenizer, train, translate, eval, average, export, push, serve, run."""


for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"txkit.cli.{_name}")
    except ModuleNotFoundError as _exc:  # a command not written yet
        if _exc.name != f"txkit.cli.{_name}":
            raise
        continue
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit."""
    from txkit.memory import keep_freed_memory
    from txkit.threads import prepare_environment

    prepare_environment()  # before torch is imported: how its threads wait (txkit/threads.py)
    try:
        keep_freed_memory()  # a step's freed tensors stay for the next one, not page-faulted in again (txkit/memory.py)
        app(args=argv, prog_name="txkit")
    except TxkitError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
