"""Scores for translations: BLEU, chrF(++) and TER through txkit's `evaluate` modules over sacreBLEU,
with 95% bootstrap confidence intervals and a paired bootstrap significance test.

The stage after decoding: text files in, a report (JSON and a terminal table) out. The metric
modules live in txkit/metrics/ and load offline; sacreBLEU does all the scoring, so every number
carries a sacreBLEU signature and matches `sacrebleu` on the same files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from txkit.errors import TxkitError
from txkit.options import BLEU_TOKENIZERS, METRICS, ScoreOptions
from txkit.textio import decode_lines

TOKENIZERS = BLEU_TOKENIZERS  # sacreBLEU's tokenizers for BLEU that need no extra package or download
CONFIDENCE = 0.95

_loaded_metrics: dict = {}


# ----------------------------------------------------------------------------- reading files


def read_lines(path: str | os.PathLike, what: str = "hypothesis") -> list[str]:
    """One segment per line of a UTF-8 text file, line ends ("\\n" or "\\r\\n") removed.

    Lines are split on "\\n" only (not str.splitlines, which also breaks at U+2028 and friends and
    would shift every later segment). A UTF-8 byte order mark is dropped.

    Raises:
        TxkitError: the file is missing, empty, or not UTF-8 (naming the line).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            lines = list(decode_lines(fh, f"{what} file {path}"))
    except FileNotFoundError:
        raise TxkitError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise TxkitError(f"{what} file is a directory: {path}") from None
    except OSError as exc:
        raise TxkitError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if not lines:
        raise TxkitError(f"{what} file is empty: {path}")
    return lines


def check_same_length(*named: tuple[str | os.PathLike, Sequence[str]]) -> int:
    """Check that every (path, lines) pair has as many lines as the first; returns that count."""
    (first_path, first_lines), *others = named
    for path, lines in others:
        if len(lines) != len(first_lines):
            raise TxkitError(
                f"{first_path} has {len(first_lines)} lines but {path} has {len(lines)}; "
                "segments must be aligned line by line"
            )
    return len(first_lines)


# ----------------------------------------------------------------------------- metrics


def load_metric(name: str):
    """The `evaluate` module for metric `name` ("bleu", "chrf" or "ter"), loaded from txkit's own script.

    `evaluate.load` of a local path needs no network (unlike Hub names such as "sacrebleu").
    Loaded modules are cached per process; they keep their data in memory, never in cache files.
    """
    if name not in METRICS:
        raise TxkitError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    if name == TOKENIZED_BLEU:
        name = "bleu"  # the same sacreBLEU BLEU, on text that _tokenized_inputs prepared
    if name not in _loaded_metrics:
        import evaluate

        from txkit.metrics import module_path

        _loaded_metrics[name] = evaluate.load(str(module_path(name)), keep_in_memory=True)
    return _loaded_metrics[name]


def _metric_options(name: str, lowercase: bool, tokenize: str, chrf_word_order: int) -> dict:
    """txkit's options -> the keyword arguments of that metric module's compute()."""
    if name == TOKENIZED_BLEU:
        # The text is already lowercased and Moses-tokenized (_tokenized_inputs): sacreBLEU adds nothing.
        return {"lowercase": False, "tokenize": "none"}
    if name == "bleu":
        return {"lowercase": lowercase, "tokenize": tokenize}
    if name == "chrf":
        return {"lowercase": lowercase, "word_order": chrf_word_order}
    # TER keeps sacreBLEU's defaults: its own (tercom) tokenization and always case-insensitive,
    # as `sacrebleu -m ter` and TERCOM report it.
    return {}


def _check_options(metrics: Sequence[str], tokenize: str, chrf_word_order: int, moses_lang: str | None = None) -> None:
    for name in metrics:
        if name not in METRICS:
            raise TxkitError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    if TOKENIZED_BLEU in metrics and not moses_lang:
        raise TxkitError(f"{TOKENIZED_BLEU} needs the target language for the Moses tokenizer (--tokenized-bleu LANG)")
    if tokenize not in TOKENIZERS:
        raise TxkitError(f"unknown tokenizer {tokenize!r}; choose from {', '.join(TOKENIZERS)}")
    if chrf_word_order not in (0, 1, 2):
        raise TxkitError(f"chrF word order must be 0 (chrF), 1 or 2 (chrF++), got {chrf_word_order}")


def _check_corpus(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> None:
    if not refs:
        raise TxkitError("at least one reference is needed")
    if not hyps:
        raise TxkitError("there are no hypotheses to score")
    for i, stream in enumerate(refs, 1):
        if len(stream) != len(hyps):
            raise TxkitError(f"reference {i} has {len(stream)} lines but the hypotheses have {len(hyps)}")


# ----------------------------------------------------------------------------- the literature's tokenized BLEU
#
# Papers on Multi30k (and many on WMT) report BLEU computed by multi-bleu.perl on lowercased text that the
# Moses tokenizer split. txkit reports it next to sacreBLEU's score as "BLEU (tokenized, lowercased, Moses)"
# so a run can be compared with those papers, never as the main score: its value depends on the tokenizer.
# The tokenizer is sacremoses (the Moses tokenizer's maintained Python port), run with escape=False so that
# "&" and quotes stay as the reference spells them; sacreBLEU then scores with tokenize="none".

TOKENIZED_BLEU = "bleu_tokenized"
TOKENIZED_BLEU_NAME = "BLEU (tokenized, lowercased, Moses)"


def moses_tokenize(lines: Sequence[str], lang: str) -> list[str]:
    """Lowercased, Moses-tokenized copies of `lines` (sacremoses, `lang`'s rules, no XML escaping)."""
    try:
        from sacremoses import MosesTokenizer
    except ImportError:
        raise TxkitError("the tokenized BLEU needs the sacremoses package: pip install sacremoses") from None
    tokenizer = MosesTokenizer(lang=lang)
    return [tokenizer.tokenize(line.lower(), escape=False, return_str=True) for line in lines]


def _tokenized_inputs(hyps: Sequence[str], refs_by_segment: list[list[str]], lang: str):
    """(hyps, refs_by_segment) lowercased and Moses-tokenized, as the tokenized BLEU scores them."""
    tokenized_hyps = moses_tokenize(hyps, lang)
    streams = moses_tokenize([r for segment in refs_by_segment for r in segment], lang)
    tokenized_refs, at = [], 0
    for segment in refs_by_segment:
        tokenized_refs.append(streams[at : at + len(segment)])
        at += len(segment)
    return tokenized_hyps, tokenized_refs


def _label_tokenized(result: dict, lang: str) -> dict:
    """Name the tokenized BLEU as such; its signature says what was done before sacreBLEU saw the text."""
    import sacremoses

    result["name"] = TOKENIZED_BLEU_NAME
    result["signature"] = f"{result['signature']}|pretok:lc+moses-{lang}+sacremoses-{sacremoses.__version__}"
    result["formatted"] = result["formatted"].replace("BLEU", TOKENIZED_BLEU_NAME, 1)
    return result


def _score_metric(name: str, hyps, refs_by_segment, o: ScoreOptions, counts: np.ndarray | None):
    """`_score_one` for txkit's metric `name`, the tokenized BLEU's text preparation and label included."""
    options = _metric_options(name, o.lowercase, o.tokenize, o.chrf_word_order)
    if name != TOKENIZED_BLEU:
        return _score_one(name, list(hyps), refs_by_segment, options, counts)
    hyps, refs_by_segment = _tokenized_inputs(hyps, refs_by_segment, o.moses_lang)
    result, boot = _score_one(name, hyps, refs_by_segment, options, counts)
    return _label_tokenized(result, o.moses_lang), boot


# ----------------------------------------------------------------------------- bootstrap
#
# Why not sacrebleu's own `corpus_score(n_bootstrap=...)` / `PairedTest`: they read the seed only
# from the SACREBLEU_SEED environment variable, they materialize the resampled statistics as one
# (samples, segments, stats) float32 array (~300 MB for chrF++ on newstest2014), and their paired
# bootstrap counts `>` where a tie must count: a system compared with itself gets p = 1/(n+1)
# instead of 1. So the resampling is written here over the same sufficient statistics, with the
# same draws (`default_rng(seed).choice`, as sacreBLEU does): segment counts per sample times the
# statistics matrix gives every resampled corpus in one product, and sacreBLEU's
# `_compute_score_from_stats` turns each into a score. The results equal sacreBLEU's up to its
# float32 rounding (tests/test_evaluation.py checks this).


def _resample_counts(n_segments: int, n_samples: int, seed: int | None) -> np.ndarray:
    """(samples, segments): how often each segment is drawn into each bootstrap sample."""
    rng = np.random.default_rng(seed)
    draws = rng.choice(n_segments, size=(n_samples, n_segments), replace=True)
    flat = (draws + np.arange(n_samples)[:, None] * n_segments).ravel()
    return np.bincount(flat, minlength=n_samples * n_segments).reshape(n_samples, n_segments).astype(np.float64)


def _bootstrap_scores(stats: np.ndarray, scorer, counts: np.ndarray) -> np.ndarray:
    """The metric on every resampled corpus; stats is (segments, n_stats), counts (samples, segments)."""
    totals = counts @ stats  # (samples, n_stats): the corpus statistics of each resample, exact in float64
    return np.array([scorer._compute_score_from_stats(row).score for row in totals], dtype=np.float64)


def _percentile_ci(scores: np.ndarray) -> tuple[float, float]:
    """95% percentile interval: the same order statistics sacreBLEU uses (n//40 from each end)."""
    ordered = np.sort(scores)
    k = len(ordered) // 40
    return float(ordered[k]), float(ordered[len(ordered) - k - 1])


def _score_one(name: str, hyps, refs_by_segment, options: dict, counts: np.ndarray | None):
    """Score one system with one metric; returns (result, bootstrap scores or None)."""
    module = load_metric(name)
    out = module.compute(predictions=hyps, references=refs_by_segment, return_stats=counts is not None, **options)
    stats = out.pop("stats", None)
    result = {
        "name": out.pop("name"),  # BLEU, chrF2, chrF2++, TER
        "formatted": out.pop("formatted"),  # sacreBLEU's one-line rendering
        "score": float(out.pop("score")),
        "signature": out.pop("signature"),
        "ci": None,
        "details": out,  # BLEU: precisions, bp, sys_len, ref_len; chrF: orders, beta; TER: edits
    }
    boot = None
    if counts is not None:
        boot = _bootstrap_scores(stats, module.sacrebleu_metric(**options), counts)
        result["ci"] = _percentile_ci(boot)
        result["bootstrap_mean"] = float(boot.mean())
    return result, boot


def _by_segment(refs: Sequence[Sequence[str]]) -> list[list[str]]:
    """Reference streams (one list per reference) -> one list of references per segment (evaluate's layout)."""
    return [list(segment_refs) for segment_refs in zip(*refs)]


def score(hyps: Sequence[str], refs: Sequence[Sequence[str]], options: ScoreOptions | None = None) -> dict:
    """Corpus scores of one system, with 95% bootstrap confidence intervals.

    Args:
        hyps: one hypothesis per segment.
        refs: one list per reference stream, each aligned with hyps.
        options: metrics, case, BLEU tokenizer, chrF word order, bootstrap samples (0 skips the interval:
            ci is None) and seed; default ScoreOptions().

    Returns:
        {metric: {"name", "score", "signature", "ci": (low, high) | None, "bootstrap_mean", "details"}}
    """
    o = options or ScoreOptions()
    _check_options(o.metrics, o.tokenize, o.chrf_word_order, o.moses_lang)
    _check_corpus(hyps, refs)
    refs_by_segment = _by_segment(refs)
    counts = _resample_counts(len(hyps), o.bootstrap, o.seed) if o.bootstrap > 0 else None
    results = {}
    for name in o.metrics:
        results[name], _ = _score_metric(name, hyps, refs_by_segment, o, counts)
    return results


def paired_bootstrap(
    hyps_a: Sequence[str],
    hyps_b: Sequence[str],
    refs: Sequence[Sequence[str]],
    metric: str = "bleu",
    options: ScoreOptions | None = None,
) -> dict:
    """Paired bootstrap resampling test (Koehn, 2004) of system A against baseline B on the same references.

    The test statistic is that of sacreBLEU's `paired-bs` (after Moses'
    bootstrap-hypothesis-difference-significance.pl): the observed |A - B| against the
    resampled |A - B| centred on their mean, so p is the chance of a difference this large
    if the systems were equally good. Both systems are resampled with the same segments.

    `options.bootstrap` is the number of samples (its `metrics` are not used: `metric` is tested).

    Returns:
        {"metric", "system": result of A, "baseline": result of B (both as in `score`, with ci),
         "difference": A - B, "p_value", "samples", "seed"}
    """
    o = options or ScoreOptions()
    n, seed = o.bootstrap, o.seed
    if n <= 0:
        raise TxkitError(f"the paired bootstrap needs a positive number of samples, got {n}")
    _check_options([metric], o.tokenize, o.chrf_word_order, o.moses_lang)
    _check_corpus(hyps_a, refs)
    if len(hyps_b) != len(hyps_a):
        raise TxkitError(f"the baseline has {len(hyps_b)} lines but the system has {len(hyps_a)}")
    refs_by_segment = _by_segment(refs)
    counts = _resample_counts(len(hyps_a), n, seed)
    result_a, boot_a = _score_metric(metric, hyps_a, refs_by_segment, o, counts)
    result_b, boot_b = _score_metric(metric, hyps_b, refs_by_segment, o, counts)

    observed = abs(result_a["score"] - result_b["score"])
    resampled = np.abs(boot_a - boot_b)
    centred = resampled - resampled.mean()
    # `>=` (sacreBLEU has `>`): identical systems give centred == observed == 0 and must get p = 1.
    # The +1 keeps the test from claiming p = 0 with finitely many samples.
    p_value = (int(np.sum(centred >= observed)) + 1) / (n + 1)
    return {
        "metric": metric,
        "system": result_a,
        "baseline": result_b,
        "difference": result_a["score"] - result_b["score"],
        "p_value": p_value,
        "samples": n,
        "seed": seed,
    }


# ----------------------------------------------------------------------------- reports


def build_report(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    system: dict,
    references: list[dict],
    baseline_hyps: Sequence[str] | None = None,
    baseline: dict | None = None,
    options: ScoreOptions | None = None,
) -> dict:
    """Score a system (and compare it with a baseline) into the report `write_report` saves.

    Args:
        system, references, baseline: what was scored, e.g. {"path": ..., "lines": ...}; copied
            into the report as given.
        baseline_hyps: the baseline's hypotheses; runs `paired_bootstrap` per metric.
        options: as for `score`.
    """
    o = options or ScoreOptions()
    from txkit import __version__

    report = {
        "txkit_version": __version__,
        "system": system,
        "references": references,
        "options": {
            "metrics": list(o.metrics),
            "lowercase": o.lowercase,
            "tokenize": o.tokenize,
            "chrf_word_order": o.chrf_word_order,
            "bootstrap": o.bootstrap,
            "seed": o.seed,
            "moses_lang": o.moses_lang,
            "confidence": CONFIDENCE,
        },
    }
    if baseline_hyps is None:
        report["scores"] = score(hyps, refs, o)
        return report
    if o.bootstrap <= 0:
        raise TxkitError("a comparison with a baseline needs bootstrap samples (--bootstrap > 0)")
    report["scores"] = {}
    report["baseline"] = {**(baseline or {}), "scores": {}}
    report["significance"] = {}
    for name in o.metrics:
        test = paired_bootstrap(hyps, baseline_hyps, refs, name, o)
        report["scores"][name] = test["system"]
        report["baseline"]["scores"][name] = test["baseline"]
        report["significance"][name] = {
            "test": "paired bootstrap",
            "difference": test["difference"],
            "p_value": test["p_value"],
            "samples": test["samples"],
            "seed": test["seed"],
        }
    return report


def write_report(path: str | os.PathLike, report: dict) -> None:
    """Write the report as JSON, atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise TxkitError(f"folder of the JSON report does not exist: {path.parent}")
    from txkit import atomic

    atomic.write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def format_table(report: dict) -> str:
    """A compact terminal table: one row per metric, then the signatures."""

    def ci(result: dict) -> str:
        return "" if result.get("ci") is None else "[{:.2f}, {:.2f}]".format(*result["ci"])

    compare = "significance" in report
    header = ["metric", "score", "95% CI"]
    if compare:
        header += ["baseline", "95% CI", "diff", "p"]
    rows = [header]
    for name, result in report["scores"].items():
        row = [result["name"], f"{result['score']:.2f}", ci(result)]
        if compare:
            base, test = report["baseline"]["scores"][name], report["significance"][name]
            row += [f"{base['score']:.2f}", ci(base), f"{test['difference']:+.2f}", f"{test['p_value']:.4f}"]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]

    system = report["system"]
    described = system.get("path") or system.get("model")
    lines.insert(0, f"system {described} ({system['lines']} lines) vs " + ", ".join(
        f"{ref['path']}" for ref in report["references"]
    ))
    if compare:
        lines.insert(1, f"baseline {report['baseline'].get('path')}")
    for result in report["scores"].values():
        lines.append(f"{result['name']}: {result['signature']}")
    return "\n".join(lines)
