"""`txkit report RUN_DIR`: the training curves as a PNG and a short Markdown summary of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_command(
        run_dir: Path = typer.Argument(..., help="Run directory (with the log.jsonl that txkit train writes)."),
        out: Optional[Path] = typer.Option(
            None, "--out", "-o", help="Folder for report.png and report.md (default: RUN_DIR)."
        ),
    ):
        """Plot a run's loss, learning rate, validation BLEU and tokens/s (report.png); summarise it (report.md)."""
        from txkit.report import write_run_report

        files = write_run_report(run_dir, out)
        typer.echo(f"wrote {files.png}")
        typer.echo(f"wrote {files.markdown}")
