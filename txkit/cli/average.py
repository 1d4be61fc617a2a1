"""`txkit average`: average checkpoints into one model folder, as the paper does for its final models."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("average")
    def average_command(
        paths: List[Path] = typer.Argument(
            ..., metavar="RUN_DIR | CKPT...", help="With --last: one run directory. Otherwise: the checkpoint folders."
        ),
        out: Path = typer.Option(..., "--out", "-o", help="Model folder to write (replaced if it is one already)."),
        last: Optional[int] = typer.Option(
            None, "--last", "-n", help="Average the last N checkpoints of RUN_DIR (paper: 5 for base, 20 for big)."
        ),
    ):
        """Average checkpoints: `txkit average --last 5 RUN_DIR --out DIR` or `txkit average CKPT... --out DIR`."""
        from txkit.averaging import average_checkpoints, last_checkpoints
        from txkit.errors import TxkitError

        if last is not None:
            if len(paths) != 1:
                raise TxkitError("--last takes exactly one run directory")
            paths = last_checkpoints(paths[0], last)
        result = average_checkpoints(paths, out)
        typer.echo(f"averaged {len(paths)} checkpoints ({paths[0].name} .. {paths[-1].name}) into {result}")
