"""Corpus TER through sacreBLEU, as an `evaluate` metric that loads offline from this file."""

import datasets
import evaluate
import numpy as np
from sacrebleu.metrics import TER

_CITATION = """\
@inproceedings{snover-etal-2006-study,
    title = "A Study of Translation Edit Rate with Targeted Human Annotation",
    author = "Snover, Matthew and Dorr, Bonnie and Schwartz, Rich and Micciulla, Linnea and Makhoul, John",
    booktitle = "Proceedings of AMTA",
    year = "2006",
    pages = "223--231",
}
"""

_DESCRIPTION = """\
Corpus-level Translation Edit Rate (lower is better) computed by sacreBLEU, a port of TERCOM.
Returned with sacreBLEU's signature string. Like sacreBLEU (and TERCOM), it ignores case unless
case_sensitive=True.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of hypothesis strings, one per segment.
    references: one list of reference strings per segment (all segments have the same number),
        or one reference string per segment.
    normalized: apply TERCOM's basic tokenization and punctuation normalization.
    no_punct: remove punctuation.
    asian_support: tokenize Asian characters (with normalized).
    case_sensitive: keep case (sacreBLEU's default is to lowercase).
    return_stats: also return the per-segment sufficient statistics (edits, reference length).
Returns:
    name: "TER".
    score: TER in percent (edits per 100 reference words; can exceed 100).
    signature: sacreBLEU signature, e.g. "nrefs:1|case:lc|tok:tercom|norm:no|punct:yes|asian:no|version:2.6.0".
    formatted: sacreBLEU's one-line rendering ("TER = 55.10").
    num_edits, ref_length: corpus totals behind the score.
    stats: only with return_stats, a numpy array of per-segment statistics.
Examples:
    >>> ter = evaluate.load("txkit/metrics/sacrebleu_ter")
    >>> ter.compute(predictions=["the cat sat"], references=[["the cat sat"]])["score"]
    0.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SacrebleuTer(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            homepage="https://github.com/mjpost/sacrebleu",
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
                ),
            ],
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
            reference_urls=["https://aclanthology.org/2006.amta-papers.25"],
        )

    def sacrebleu_metric(self, normalized=False, no_punct=False, asian_support=False, case_sensitive=False):
        """The configured sacreBLEU object (the bootstrap scores resampled statistics with it)."""
        return TER(
            normalized=normalized,
            no_punct=no_punct,
            asian_support=asian_support,
            case_sensitive=case_sensitive,
        )

    def _compute(
        self,
        predictions,
        references,
        normalized=False,
        no_punct=False,
        asian_support=False,
        case_sensitive=False,
        return_stats=False,
    ):
        metric = self.sacrebleu_metric(normalized, no_punct, asian_support, case_sensitive)
        ref_streams = _to_streams(references)
        # corpus_score() would do these three steps but hides the per-segment statistics.
        metric._check_corpus_score_args(predictions, ref_streams)
        stats = metric._extract_corpus_statistics(predictions, ref_streams)
        result = metric._aggregate_and_compute(stats)
        output = {
            "name": result.name,
            "score": result.score,
            "signature": metric.get_signature().format(),
            "formatted": result.format(),
            "num_edits": float(result.num_edits),
            "ref_length": float(result.ref_length),
        }
        if return_stats:
            output["stats"] = np.asarray(stats, dtype=np.float64)
        return output


def _to_streams(references):
    """Per-segment references -> sacreBLEU's layout, one list of strings per reference stream."""
    if references and isinstance(references[0], str):
        return [list(references)]
    n_refs = len(references[0]) if references else 0
    if any(len(refs) != n_refs for refs in references):
        raise ValueError("every segment needs the same number of references")
    return [[refs[i] for refs in references] for i in range(n_refs)]
