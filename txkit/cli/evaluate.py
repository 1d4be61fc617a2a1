"""`txkit eval`: score translations with BLEU, chrF(++) and TER (sacreBLEU via `evaluate`).

    txkit eval --hyp HYP --ref REF [--ref REF2 ...]      score an existing output
    txkit eval MODEL --src SRC --ref REF                  translate SRC, then score
    txkit eval M1 M2 --src SRC --ref REF                  translate with an ensemble, then score
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from txkit.errors import TxkitError


def eval_command(
    models: Optional[List[str]] = typer.Argument(
        None, metavar="[MODEL...]",
        help="Model directory (or Hub id) to translate --src with (several: an ensemble, as txkit translate); "
        "leave out to score --hyp.",
    ),
    hyp: Optional[str] = typer.Option(None, "--hyp", "-H", help="Hypothesis file, one segment per line."),
    ref: Optional[List[str]] = typer.Option(
        None, "--ref", "-r", help="Reference file, aligned with the hypotheses; repeat for more references."
    ),
    src: Optional[str] = typer.Option(None, "--src", help="Source file to translate with MODEL."),
    metrics: str = typer.Option(
        "bleu,chrf", "--metrics", "-m", help="Comma-separated: bleu, chrf, ter (bleu_tokenized: see --tokenized-bleu)."
    ),
    lowercase: bool = typer.Option(
        False, "--lowercase", "-lc", help="Case-insensitive BLEU and chrF (TER is always case-insensitive)."
    ),
    tokenize: str = typer.Option("13a", "--tokenize", "-tok", help="BLEU tokenizer: 13a, intl, none, zh, char."),
    tokenized_bleu: Optional[str] = typer.Option(
        None, "--tokenized-bleu", metavar="LANG",
        help="Also report the literature's BLEU on lowercased, Moses-tokenized text (LANG: the target language's "
        "Moses rules, e.g. de), labelled 'BLEU (tokenized, lowercased, Moses)'; never the main score.",
    ),
    chrf_word_order: int = typer.Option(0, "--chrf-word-order", help="chrF word n-gram order: 0 chrF, 2 chrF++."),
    chrfpp: bool = typer.Option(False, "--chrfpp", help="Score chrF++ (same as --chrf-word-order 2)."),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", help="Bootstrap samples for the 95% confidence intervals (0: none)."
    ),
    baseline: Optional[str] = typer.Option(
        None, "--baseline", help="A second hypothesis file: paired bootstrap test against it, with its p-value."
    ),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write the full report as JSON to this file."),
    seed: int = typer.Option(12345, "--seed", help="Seed of the bootstrap resampling (sacreBLEU's default)."),
    beam_size: Optional[int] = typer.Option(None, "--beam-size", help="MODEL form: beam size for decoding."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="MODEL form: tokens per decoding batch."),
    hyp_out: Optional[str] = typer.Option(None, "--hyp-out", help="MODEL form: also save the translations here."),
    length_penalty: Optional[float] = typer.Option(
        None, "--length-penalty", "-a", help="MODEL form: length penalty alpha (default 0.6)."
    ),
    lp_form: Optional[str] = typer.Option(
        None, "--lp-form", help="MODEL form: length-penalty form, gnmt (the paper, default) or hf, as txkit translate."
    ),
    engine: Optional[str] = typer.Option(
        None, "--engine", help="MODEL form: auto (default), txkit or ctranslate2, as txkit translate: auto is "
        "CTranslate2 where it gives txkit's translations (--lp-form hf or --length-penalty 0, one model) and is "
        "installed, else txkit.",
    ),
):
    """Score translations against references: BLEU, chrF(++), TER with sacreBLEU signatures and 95% CIs."""
    from txkit import evaluation
    from txkit.options import ScoreOptions

    model = ", ".join(models) if models else None  # how the report names the system
    metric_names = [name.strip() for name in metrics.split(",") if name.strip()]
    if chrfpp:
        chrf_word_order = 2
    if tokenized_bleu is not None:
        if not tokenized_bleu.strip() or not tokenized_bleu.isalpha():
            raise TxkitError(f"--tokenized-bleu takes the target language's code (e.g. de), not {tokenized_bleu!r}")
        if "bleu_tokenized" not in metric_names:
            metric_names.append("bleu_tokenized")
    ref_paths = list(ref or [])
    if not ref_paths:
        raise TxkitError("give at least one reference with --ref")
    if hyp is not None and (model is not None or src is not None):
        raise TxkitError("give either --hyp, or MODEL with --src, not both")
    if hyp is None and (model is None or src is None):
        raise TxkitError("give --hyp HYP to score a file, or MODEL --src SRC to translate and score")
    model_form = dict(beam_size=beam_size, max_tokens=max_tokens, length_penalty=length_penalty, lp_form=lp_form,
                      engine=engine)  # fmt: skip
    if hyp is not None and (any(v is not None for v in model_form.values()) or hyp_out is not None):
        raise TxkitError(
            "--beam-size, --max-tokens, --length-penalty, --lp-form, --engine and --hyp-out only apply to the MODEL form"
        )
    if bootstrap < 0:
        raise TxkitError(f"--bootstrap must be 0 or more, got {bootstrap}")
    # Outputs first: an unusable or clobbering path fails now, not after translating and scoring.
    from txkit import atomic

    inputs = [("--ref", r) for r in ref_paths] + [("--hyp", hyp), ("--src", src), ("--baseline", baseline)]
    if hyp_out is not None:
        atomic.check_output_file(hyp_out, "--hyp-out", inputs)
    if json_out is not None:
        atomic.check_output_file(json_out, "--json", inputs + [("--hyp-out", hyp_out)])
        if hyp_out is not None and Path(json_out).absolute() == Path(hyp_out).absolute():
            raise TxkitError(f"--json {json_out}: is also the --hyp-out file; give two different files")
    for one in models or []:
        _check_model(one)

    # Read and check every file before the slow parts (loading metrics, translating).
    refs = [evaluation.read_lines(path, "reference") for path in ref_paths]
    named_refs = list(zip(ref_paths, refs))
    evaluation.check_same_length(*named_refs)
    if hyp is not None:
        hyps = evaluation.read_lines(hyp, "hypothesis")
        evaluation.check_same_length((hyp, hyps), *named_refs)
        system = {"path": hyp, "lines": len(hyps)}
    else:
        sources = evaluation.read_lines(src, "source")
        evaluation.check_same_length((src, sources), *named_refs)
        hyps = _translate(models, sources, **model_form)
        if hyp_out is not None:
            _write_lines(hyp_out, hyps)
        system = {"model": model, "source": src, "path": hyp_out, "lines": len(hyps)}
    baseline_hyps, baseline_info = None, None
    if baseline is not None:
        baseline_hyps = evaluation.read_lines(baseline, "baseline hypothesis")
        evaluation.check_same_length((baseline, baseline_hyps), *named_refs)
        baseline_info = {"path": baseline, "lines": len(baseline_hyps)}

    report = evaluation.build_report(
        hyps,
        refs,
        system=system,
        references=[{"path": path, "lines": len(lines)} for path, lines in named_refs],
        baseline_hyps=baseline_hyps,
        baseline=baseline_info,
        options=ScoreOptions(
            metrics=tuple(metric_names), lowercase=lowercase, tokenize=tokenize, chrf_word_order=chrf_word_order,
            bootstrap=bootstrap, seed=seed, moses_lang=tokenized_bleu,
        ),
    )  # fmt: skip
    if json_out is not None:
        evaluation.write_report(json_out, report)
    typer.echo(evaluation.format_table(report))


def _translate(models: list[str], sources: list[str], **decode_opts) -> list[str]:
    from txkit.engines import load_translator
    from txkit.options import DecodeOptions
    from txkit.runs import resolve_model

    options = DecodeOptions.from_dict({k: v for k, v in decode_opts.items() if v is not None})
    hyps = load_translator([resolve_model(m) for m in models], options).translate(sources)
    model = ", ".join(models)
    if len(hyps) != len(sources):
        raise TxkitError(f"{model} returned {len(hyps)} translations for {len(sources)} source lines")
    return hyps


def _check_model(model: str) -> None:
    """A local MODEL's files are complete before any source is read or translated."""
    from txkit.modelfiles import check_model_folder
    from txkit.runs import resolve_model

    resolved = resolve_model(model)
    if Path(resolved).is_dir():
        check_model_folder(resolved)


def _write_lines(path: str, lines: list[str]) -> None:
    from txkit import atomic

    try:
        atomic.write_text(path, "".join(line + "\n" for line in lines))
    except OSError as exc:
        raise TxkitError(f"cannot write --hyp-out {path}: {exc.strerror}") from None


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
