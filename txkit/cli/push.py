"""`txkit push MODEL --repo USER/NAME`: upload a model folder to the Hugging Face Hub in one commit.

    txkit push runs/multi30k --repo me/transformer-tiny-en-de
    txkit push runs/multi30k/model --repo me/tiny --private --revision dev --message "after 50k steps"
    txkit push runs/multi30k --repo me/tiny --eval-report test2016.json   # scores into the model card

A txkit model goes up in transformers' built-in Marian form (no remote code) whenever that expresses it
exactly, else in txkit's form with its modeling code; `--format txkit` keeps txkit's form. The model card
says which form and why.

The token comes from HF_TOKEN or the stored login (`hf auth login`) and is never printed; HF_ENDPOINT
points it at another Hub. A folder without README.md gets a model card first.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def push_command(
    model: str = typer.Argument(..., help="Model folder, or run directory (its final, best or latest model)."),
    repo: str = typer.Option(..., "--repo", help="Hub repository USER/NAME (created if it does not exist)."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
    revision: Optional[str] = typer.Option(
        None, "--revision", help="Branch to push to (created from main if missing)."
    ),
    message: Optional[str] = typer.Option(None, "--message", "-m", help="Commit message."),
    eval_report: Optional[List[Path]] = typer.Option(
        None, "--eval-report", help="JSON of `txkit eval --json` to put into the model card (repeatable)."
    ),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe YAML to describe in the model card."),
    license: str = typer.Option("apache-2.0", "--license", help="License id in the model card's metadata."),
    format: str = typer.Option(
        "auto", "--format",
        help="auto: transformers' built-in Marian form when it expresses the model exactly (checked: equal "
        "logits), else txkit's form with its modeling code; marian or txkit: insist on one.",
    ),  # fmt: skip
):
    """Upload a model to the Hugging Face Hub (one commit) and print its URL."""
    from txkit import hub
    from txkit.runs import resolve_model

    if eval_report or recipe:
        folder = resolve_model(model)
        hub.write_model_card(
            folder, eval_report=[str(p) for p in eval_report or []] or None, recipe=recipe,
            license=license, repo_id=repo,
        )  # fmt: skip
    url = hub.push(model, repo, private=private, revision=revision, message=message, format=format)
    typer.echo(url)


def register(app: typer.Typer) -> None:
    app.command("push")(push_command)
