"""`txkit run RECIPE`: tokenizer, training, averaging, translation, evaluation, model card and report in one
command; finished stages are skipped and an interrupted training continues."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from txkit.cli._options import RECIPE_OVERRIDES, RUN_DIR


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_command(
        recipe: Path = typer.Argument(..., help="Recipe YAML file, e.g. recipes/multi30k-en-de/transformer-tiny.yaml."),
        overrides: List[str] = RECIPE_OVERRIDES,
        output_dir: Optional[Path] = RUN_DIR,
        fetch: bool = typer.Option(
            True, "--fetch/--no-fetch", help="Download missing corpus files from their public source."
        ),
    ):
        """Train, average, translate the test sets, score them and write the model card, as RECIPE says.

        Run it again to continue: finished stages are skipped, an interrupted training resumes.

        Relative data paths resolve against $TXKIT_DATA (default ./data); missing corpora are fetched.
        """
        import sys

        from txkit.cli.train import default_output_dir
        from txkit.pipeline import run_pipeline
        from txkit.recipe import load_recipe
        from txkit.report import format_scores

        resolved = load_recipe(recipe, overrides)
        run_dir = output_dir or default_output_dir(recipe)

        def echo(message: str) -> None:
            typer.echo(message)
            sys.stdout.flush()  # stages take minutes: show each line as it happens

        result = run_pipeline(resolved, run_dir, fetch=fetch, echo=echo)
        if not result.complete:
            typer.echo(f"training is not finished; run the same command again to continue ({run_dir})", err=True)
            raise typer.Exit(1)
        typer.echo("")
        typer.echo(format_scores(result.reports))
        typer.echo("")
        typer.echo(f"report: {result.report_markdown}")
        typer.echo(f"model:  {result.model_dir}  (share it: txkit push {result.model_dir} --repo USER/NAME)")
