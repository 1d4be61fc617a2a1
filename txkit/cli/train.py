"""`txkit train RECIPE`: train a model as a recipe says, in a run directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from txkit.cli._options import RECIPE_OVERRIDES, RUN_DIR


def default_output_dir(recipe: Path) -> Path:
    """runs/<pair>/<model> for recipes/<pair>/<model>.yaml."""
    return Path("runs") / recipe.parent.name / recipe.stem if recipe.parent.name else Path("runs") / recipe.stem


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_command(
        recipe: Optional[Path] = typer.Argument(
            None, metavar="RECIPE", help="Recipe YAML file (sections model, tokenizer, data, train, eval)."
        ),
        overrides: List[str] = RECIPE_OVERRIDES,
        output_dir: Optional[Path] = RUN_DIR,
        resume: bool = typer.Option(
            False, "--resume", help="Continue from the latest complete checkpoint in the output directory."
        ),
        resume_from: Optional[Path] = typer.Option(None, "--resume-from", help="Continue from this checkpoint."),
        list_keys: bool = typer.Option(False, "--list-keys", help="List every recipe key with its default and exit."),
    ):
        """Train a Transformer from a recipe (also as `accelerate launch -m txkit train` or `torchrun -m txkit train`).

        Relative data paths in the recipe resolve against $TXKIT_DATA (default ./data).
        """
        from txkit.recipe import describe_keys, load_recipe

        if list_keys:
            for key, type_name, default, help_text in describe_keys():
                typer.echo(f"{key:32} {str(default):18} {help_text}  [{type_name}]")
            raise typer.Exit()
        if recipe is None:
            raise typer.BadParameter("missing RECIPE (a YAML file)", param_hint="RECIPE")
        resolved = load_recipe(recipe, overrides)
        if resolved.distill.teacher:
            from txkit.errors import TxkitError

            raise TxkitError(
                f"{recipe}: distill.teacher is set: `txkit run` has the teacher translate data.train before training; "
                "txkit train would train on the original targets (--set distill.teacher= to do that)"
            )
        from txkit.pipeline import training_hooks
        from txkit.training import train

        result = train(resolved, output_dir or default_output_dir(recipe), resume=resume_from or resume or None,
                       hooks=training_hooks())  # fmt: skip
        if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate launch: one summary
            return
        summary = f"stopped at step {result.step} ({result.stop_reason}); last checkpoint {result.last_checkpoint}"
        if result.best_dir:
            summary += f"; best val/{resolved.train.best_metric} {result.best_score:.3f} in {result.best_dir}"
        typer.echo(summary)
