"""`txkit translate MODEL... [-i INPUT] [-o OUTPUT]`: translate a file or standard input, one line per line.

    txkit translate runs/multi30k                    # interactive: type a sentence, get its translation
    txkit translate runs/multi30k -i test.en -o test.hyp.de
    txkit translate user/model --nbest 4 < test.en   # "LINE ||| translation ||| score", 4 lines per input
    txkit translate runs/a runs/b -i test.en         # an ensemble: log-probabilities averaged (txkit/ensemble.py)
    txkit translate runs/en-xx --target-lang fr       # a multilingual model: the direction into French
    txkit translate runs/en-xx --tag "<2fr>"          # the same, naming the tag itself

Standard input is translated as it streams (each line as soon as it arrives when typed; in chunks when
piped); a file given with -o is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from txkit.errors import TxkitError
from txkit.options import DecodeOptions, default_of, help_of


def _option(name: str, *flags: str, help: str | None = None):
    """A command-line option for DecodeOptions field `name`: its default and help come from the dataclass."""
    text = help or help_of(DecodeOptions, name) + "."
    return typer.Option(default_of(DecodeOptions, name), *flags, help=text[0].upper() + text[1:])


def translate_command(
    models: List[str] = typer.Argument(
        ..., metavar="MODEL...",
        help="Run directory (its final, best or latest model), model folder or Hub id; several: an ensemble "
        "(their log-probabilities averaged at every step; they must share the target vocabulary).",
    ),
    input: Optional[Path] = typer.Option(
        None, "--input", "-i", help="Source file, one sentence per line (default: stdin)."
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output file (default: stdout)."),
    beam_size: int = _option("beam_size", "--beam-size", "-b"),
    length_penalty: float = _option("length_penalty", "--length-penalty", "-a"),
    lp_form: str = _option("lp_form", "--lp-form"),
    max_len_a: float = _option("max_len_a", "--max-len-a"),
    max_len_b: int = _option("max_len_b", "--max-len-b"),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy search (same as --beam-size 1)."),
    nbest: int = _option("nbest", "--nbest", help="Output N hypotheses per line as 'LINE ||| text ||| score'."),
    sample: bool = _option("sampling", "--sample"),
    top_k: int = _option("top_k", "--top-k"),
    top_p: float = _option("top_p", "--top-p"),
    temperature: float = _option("temperature", "--temperature"),
    seed: int = _option("seed", "--seed"),
    max_tokens: int = _option("max_tokens", "--max-tokens"),
    max_sentences: Optional[int] = _option("max_sentences", "--max-sentences"),
    overlong: str = _option("overlong", "--overlong"),
    device: Optional[str] = _option("device", "--device"),
    dtype: str = typer.Option("auto", "--dtype", help=help_of(DecodeOptions, "dtype")),
    engine: str = _option("engine", "--engine", help=(
        "auto (the default): CTranslate2 when it is installed and these options give the same translations on it "
        "as on txkit's engine (one local model folder, --lp-form hf or --length-penalty 0, no --sample, "
        "--quantize none, float32 on the CPU, no --max-sentences), otherwise txkit (CTranslate2 is the faster "
        "in benchmarks/bench_decode.py --engines). txkit: txkit's own search. ctranslate2: CTranslate2 on the "
        "model converted once through txkit's Marian export (cached beside the model folder as "
        "MODEL.ctranslate2/<weights hash>, or under $TXKIT_CACHE, else $XDG_CACHE_HOME/txkit, else ~/.cache/txkit "
        "when that cannot be written); the same beam, length limit, n-best and --max-tokens; the paper's gnmt form, "
        "--sample and --max-sentences are refused."
    )),  # fmt: skip
    quantize: str = _option("quantize", "--quantize", help=(
        "none, or int8: linear layers in int8 (txkit: torch's dynamic quantization, CPU only; ctranslate2: its "
        "int8 compute type)."
    )),  # fmt: skip
    tag: str = typer.Option(
        "", "--tag", help="Source tag put before every line, as the model was trained with (data.train's tags), "
        "e.g. '<2de>' for the direction into German of a multilingual model.",
    ),
    target_lang: str = typer.Option(
        "", "--target-lang", help="Target language of a multilingual model, e.g. 'fr': the tag it was trained with "
        "for that direction (read from the recipe.yaml saved with the model) goes before every line, as with --tag.",
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads (default: chosen batch by batch between one per core and one fewer, whichever is faster "
        "now; or $TXKIT_THREADS / $OMP_NUM_THREADS)."
    ),
):
    """Translate a file or standard input: one output line per input line, in order."""
    from txkit import atomic
    from txkit.runs import resolve_model

    if input is not None and input.is_dir():
        raise TxkitError(f"--input {input}: is a directory, not a text file")
    if input is not None and not input.is_file():
        raise TxkitError(f"input file not found: {input}")
    model_paths = [resolve_model(model) for model in models]
    if output is not None:  # before the model is loaded: an unusable output fails now, not after decoding
        atomic.check_output_file(output, "--output", [("--input", input)] + [("MODEL", p) for p in model_paths])

    from transformers.utils import logging as hf_logging

    from txkit.decoding import iter_text_lines

    hf_logging.disable_progress_bar()  # no "Loading weights" bar between the user and the translations

    options = DecodeOptions(
        beam_size=1 if greedy else beam_size, length_penalty=length_penalty, lp_form=lp_form, max_len_a=max_len_a,
        max_len_b=max_len_b, nbest=nbest, sampling=sample, top_k=top_k, top_p=top_p, temperature=temperature,
        seed=seed, max_tokens=max_tokens, max_sentences=max_sentences, device=device, dtype=dtype, overlong=overlong,
        engine=engine, quantize=quantize,
    )  # fmt: skip
    options.check()
    if target_lang:
        if tag:
            raise TxkitError("--target-lang and --tag both pick the direction: give one of them")
        tag = direction_tag(target_lang, model_paths[0])
    from txkit.engines import load_translator
    from txkit.threads import ThreadGovernor

    # txkit's engine: the thread count chosen batch by batch (None when it is the user's); CTranslate2: fixed
    governor = ThreadGovernor.create(threads)
    translator = load_translator(model_paths, options, threads if threads is not None else _torch_threads(), governor)
    if tag:
        _check_tag(tag, translator.src_tok, model_paths[0])

    if input is not None:
        source = open(input, "rb")
        name = str(input)
    else:
        source = sys.stdin.buffer
        name = "standard input"
    try:
        lines = iter_text_lines(source, name)
        if tag:  # in the text, as training saw it (txkit.mixing.tag_text); empty lines stay empty
            from txkit.corpus_spec import tag_text

            lines = (tag_text(tag, line) if line.strip() else line for line in lines)
        if output is None:
            try:
                _write(translator, lines, sys.stdout.buffer, nbest, flush=True)
            except BrokenPipeError:  # the reader went away (`| head`): stop quietly
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return
        else:
            with atomic.open_atomic(output, "wb") as out:
                _write(translator, lines, out, nbest, flush=False)
    finally:
        if input is not None:
            source.close()
    _report_overlong(translator, options.overlong)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def direction_tag(lang: str, model: str) -> str:
    """The source tag that makes `model` translate into `lang`: none when it was trained into `lang` without one
    (a bilingual model; a back-translation mark is not a direction), else the one tag of its corpora into `lang`."""
    from txkit.runs import RECIPE_FILE, trained_directions

    folder = Path(model)
    if not folder.exists():  # a Hub id: the recipe.yaml pushed with the model (from the Hub cache when there)
        from huggingface_hub import errors, hf_hub_download

        try:
            folder = Path(hf_hub_download(model, RECIPE_FILE)).parent
        except Exception as exc:  # not found, offline, no such repository: all mean "cannot tell"
            missing = isinstance(exc, getattr(errors, "EntryNotFoundError", ()))
            why = f"it has no {RECIPE_FILE}" if missing else f"cannot read its {RECIPE_FILE} ({type(exc).__name__})"
            raise TxkitError(f"--target-lang {lang}: {model}: {why}; name the direction's tag with --tag") from None
    directions = trained_directions(folder)
    if directions is None:
        raise TxkitError(f"--target-lang {lang}: no {RECIPE_FILE} with {model} says which directions it was "
                         "trained for; name the direction's tag with --tag")  # fmt: skip
    if any(tgt == lang and not tag for _, tgt, tag in directions):
        return ""
    tags = sorted({tag for _, tgt, tag in directions if tgt == lang})
    if len(tags) > 1:
        raise TxkitError(f"--target-lang {lang}: {model} has several tags into {lang} ({', '.join(tags)}): "
                         "choose one with --tag")  # fmt: skip
    if not tags:
        known = ", ".join(dict.fromkeys(tgt for _, tgt, _ in directions if tgt))
        raise TxkitError(f"--target-lang {lang}: {model} was not trained to translate into {lang} (its target "
                         f"languages: {known or 'none recorded'})")  # fmt: skip
    return tags[0]


def _check_tag(tag: str, src_tok, model: Path) -> None:
    """--tag must be one of the model's source tags: a model never trained with it would read it as plain text."""
    from txkit.tokenization import SPECIAL_TOKENS

    known = [t for t in src_tok.get_added_vocab() if t not in SPECIAL_TOKENS]  # <pad> <s> </s> <unk> are not tags
    if tag not in known:
        tags = ", ".join(known) if known else "none: it was trained without tags"
        raise TxkitError(f"--tag {tag}: not a tag of {model}'s tokenizer (its tags: {tags})")


def _write(translator, lines, out, nbest: int, flush: bool) -> None:
    """Translations of `lines` to the binary stream `out`, flushed after each line when streaming."""
    if nbest == 1:
        for text in translator.translate_stream(lines):
            out.write(text.encode("utf-8") + b"\n")
            if flush:
                out.flush()
        return
    for number, hyps in enumerate(translator.translate_stream_nbest(lines)):
        for text, score in hyps:
            out.write(f"{number} ||| {text} ||| {score:.6f}\n".encode("utf-8"))
        if flush:
            out.flush()


def _report_overlong(translator, policy: str) -> None:
    lines = translator.overlong
    if not lines:
        return
    shown = ", ".join(str(i + 1) for i in lines[:20]) + (", ..." if len(lines) > 20 else "")
    action = "truncated" if policy == "truncate" else "left untranslated (empty lines)"
    typer.echo(
        f"warning: {len(lines)} source line(s) longer than the model's {translator.max_positions} positions "
        f"were {action}: line {shown}",
        err=True,
    )


def register(app: typer.Typer) -> None:
    app.command("translate", no_args_is_help=True)(translate_command)
