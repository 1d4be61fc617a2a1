"""`txkit export MODEL --format marian --out DIR`: the model as transformers' built-in MarianMTModel.

    txkit export runs/multi30k --format marian --out exported/marian
    txkit export runs/multi30k --format marian --out exported/marian --ct2 exported/ct2 --quantization int8

The exported folder loads with `AutoModelForSeq2SeqLM.from_pretrained(DIR)` without remote code and
converts with `ct2-transformers-converter`; `--ct2` runs that conversion too. Models the Marian layout
cannot express (pre-norm, separate vocabularies, ...) are refused with the setting named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from txkit.errors import TxkitError


def export_command(
    model: str = typer.Argument(..., help="Model folder, run directory (its final, best or latest model) or Hub id."),
    format: str = typer.Option("marian", "--format", "-f", help="Export format: marian."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the exported model to."),
    ct2: Optional[Path] = typer.Option(None, "--ct2", help="Also convert the export to CTranslate2 in this folder."),
    quantization: Optional[str] = typer.Option(
        None, "--quantization", help="CTranslate2 weight type: int8, int8_float16, float16, ... (default: as is)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace output folders that already exist."),
):
    """Export a model to another layout (MarianMTModel, and optionally CTranslate2)."""
    from txkit import export

    if format not in export.FORMATS:
        raise TxkitError(f"--format {format!r}: choose one of {', '.join(export.FORMATS)}")
    if quantization and ct2 is None:
        raise TxkitError("--quantization applies to the CTranslate2 conversion: give --ct2 DIR too")
    if ct2 is not None:
        from txkit import atomic
        from txkit.runs import resolve_model

        source = resolve_model(model)
        atomic.check_output_dir(ct2, "--ct2", [("MODEL", source if Path(source).exists() else None), ("--out", out)])
        if atomic.same_or_inside(out, ct2) or atomic.same_or_inside(ct2, out) or Path(ct2).absolute() == Path(out).absolute():
            raise TxkitError(f"--ct2 {ct2}: must be a folder apart from --out {out}")
        if ct2.exists() and any(ct2.iterdir()) and not overwrite:
            raise TxkitError(f"{ct2}: output folder exists and is not empty (pass --overwrite to replace it)")
    folder = export.export_marian(model, out, overwrite=overwrite)
    typer.echo(f"MarianMTModel written to {folder}")
    if ct2 is not None:
        converted = export.convert_ctranslate2(folder, ct2, quantization=quantization, overwrite=overwrite)
        typer.echo(f"CTranslate2 model written to {converted}")


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
