"""Options that several commands declare the same way (`txkit train` and `txkit run`)."""

from __future__ import annotations

import typer

RECIPE_OVERRIDES = typer.Option(
    [], "--set", help="Override a recipe key, e.g. --set train.max_steps=300 (repeatable).", metavar="KEY=VALUE"
)
RUN_DIR = typer.Option(None, "--output-dir", "-o", help="Run directory (default: runs/<recipe folder>/<recipe name>).")
