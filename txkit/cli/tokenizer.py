"""`txkit tokenizer build|stats|encode`: train a subword vocabulary, inspect it, tokenize a corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from txkit.options import TokenizerOptions, help_of

tokenizer_app = typer.Typer(
    help="Train subword vocabularies (BPE or Unigram) and tokenize parallel corpora.",
    no_args_is_help=True,
)

_DEFAULTS = TokenizerOptions()  # the one declaration of the defaults (also the recipe's tokenizer section)


def _help(name: str) -> str:
    text = help_of(TokenizerOptions, name)
    return text[0].upper() + text[1:] + "."


_ERRORS_HELP = "strict: stop at the first line that is not UTF-8; replace: substitute U+FFFD and go on."


@tokenizer_app.command("build")
def build(
    files: Annotated[list[Path], typer.Argument(help="Plain-text training files, one sentence per line.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to save the tokenizer in.")],
    vocab_size: Annotated[int, typer.Option(help=_help("vocab_size"))] = _DEFAULTS.vocab_size,
    model: Annotated[str, typer.Option(help=_help("model"))] = _DEFAULTS.model,
    joint: Annotated[
        bool,
        typer.Option(
            "--joint/--separate",
            help="One vocabulary for both languages, or one per language. --separate groups FILES by "
            "their suffix (train.en, train.de) and saves the target tokenizer in OUT/target.",
        ),
    ] = _DEFAULTS.joint,
    src_lang: Annotated[
        Optional[str], typer.Option(help="--separate: the source language suffix (default: the first file's).")
    ] = None,
    min_frequency: Annotated[int, typer.Option(help=_help("min_frequency"))] = _DEFAULTS.min_frequency,
    limit_alphabet: Annotated[int, typer.Option(help=_help("limit_alphabet"))] = _DEFAULTS.limit_alphabet,
    normalization: Annotated[str, typer.Option(help=_help("normalization"))] = _DEFAULTS.normalization,
    byte_fallback: Annotated[
        bool, typer.Option("--byte-fallback/--no-byte-fallback", help=_help("byte_fallback"))
    ] = _DEFAULTS.byte_fallback,
    lowercase: Annotated[bool, typer.Option("--lowercase/--keep-case", help=_help("lowercase"))] = _DEFAULTS.lowercase,
    split_punctuation: Annotated[
        bool, typer.Option("--split-punctuation/--no-split-punctuation", help=_help("split_punctuation"))
    ] = _DEFAULTS.split_punctuation,
    errors: Annotated[str, typer.Option(help=_ERRORS_HELP)] = "strict",
    stats_lines: Annotated[int, typer.Option(help="Lines per file the statistics are computed on.")] = 100_000,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
):
    """Train a BPE or Unigram vocabulary on FILES and save it as a PreTrainedTokenizerFast folder."""
    from txkit.tokenization import build_tokenizer

    report = build_tokenizer(
        files,
        out,
        vocab_size=vocab_size,
        model=model,
        joint=joint,
        src_lang=src_lang,
        min_frequency=min_frequency,
        limit_alphabet=limit_alphabet,
        normalization=normalization,
        byte_fallback=byte_fallback,
        lowercase=lowercase,
        split_punctuation=split_punctuation,
        errors=errors,
        show_progress=not quiet,
        stats_lines=stats_lines,
    )
    typer.echo(report.format())


@tokenizer_app.command("stats")
def stats(
    tokenizer_dir: Annotated[Path, typer.Argument(help="A folder saved by `txkit tokenizer build` (or a model).")],
    files: Annotated[list[Path], typer.Argument(help="Plain-text files to measure.")],
    target: Annotated[bool, typer.Option("--target", help="Use the target tokenizer of separate vocabularies.")] = False,
    max_lines: Annotated[int, typer.Option(help="Lines per file to measure.")] = 100_000,
    errors: Annotated[str, typer.Option(help=_ERRORS_HELP)] = "strict",
):
    """Print vocabulary size, character coverage, tokens per sentence, <unk> and round-trip rates."""
    from txkit.textio import check_text_file
    from txkit.tokenization import format_stats, load_tokenizers, tokenizer_stats

    src_tok, tgt_tok = load_tokenizers(tokenizer_dir)
    tok = tgt_tok if target else src_tok
    side = "joint" if src_tok is tgt_tok else ("target" if target else "source")
    files = [check_text_file(f) for f in files]
    typer.echo(format_stats(tokenizer_stats(tok, files, side, max_lines=max_lines, errors=errors)))


@tokenizer_app.command("encode")
def encode(
    tokenizer_dir: Annotated[Path, typer.Argument(help="A folder saved by `txkit tokenizer build`.")],
    corpus: Annotated[
        str,
        typer.Argument(help="DIR/train (for DIR/train.SRC + DIR/train.TGT), a .tsv/.jsonl/.parquet file, or hub:OWNER/NAME."),
    ],
    src_lang: Annotated[str, typer.Option(help="Source language code.")] = "en",
    tgt_lang: Annotated[str, typer.Option(help="Target language code.")] = "de",
    hub_config: Annotated[Optional[str], typer.Option(help="Hub dataset configuration, e.g. de-en.")] = None,
    split: Annotated[str, typer.Option(help="Hub dataset split.")] = "train",
    max_len: Annotated[int, typer.Option(help="Drop pairs with a side longer than this (tokens, </s> included).")] = 256,
    max_ratio: Annotated[float, typer.Option(help="Drop pairs whose length ratio exceeds this.")] = 9.0,
    dedup: Annotated[bool, typer.Option("--dedup", help="Drop exact duplicate pairs.")] = False,
    num_proc: Annotated[int, typer.Option(help="Processes for tokenizing.")] = 1,
    errors: Annotated[str, typer.Option(help=_ERRORS_HELP)] = "strict",
    cache_dir: Annotated[Optional[Path], typer.Option(help="datasets cache folder (default: HF_DATASETS_CACHE).")] = None,
):
    """Tokenize a parallel corpus into the datasets cache and print what each filter removed.

    Training later finds the result in the cache and skips the work.
    """
    from txkit.data import column_lengths, load_parallel, tokenize_dataset
    from txkit.tokenization import load_tokenizers

    src_tok, tgt_tok = load_tokenizers(tokenizer_dir)
    ds = load_parallel(
        corpus, src_lang, tgt_lang, errors=errors, hub_config=hub_config, split=split, cache_dir=cache_dir
    )
    tokenized, report = tokenize_dataset(
        ds, src_tok, tgt_tok, num_proc=num_proc, max_len=max_len, max_ratio=max_ratio, dedup=dedup, name=corpus
    )
    src_avg = column_lengths(tokenized, "input_ids").mean()
    tgt_avg = column_lengths(tokenized, "labels").mean()
    typer.echo(f"{corpus}: {report}")
    typer.echo(f"tokens per sentence (</s> included): {src_lang} {src_avg:.2f}, {tgt_lang} {tgt_avg:.2f}")


def register(app: typer.Typer) -> None:
    app.add_typer(tokenizer_app, name="tokenizer")
