"""Corpus chrF / chrF++ through sacreBLEU, as an `evaluate` metric that loads offline from this file."""

import datasets
import evaluate
import numpy as np
from sacrebleu.metrics import CHRF

_CITATION = """\
@inproceedings{popovic-2015-chrf,
    title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
    author = "Popovi{\\'c}, Maja",
    booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
    year = "2015",
    pages = "392--395",
}
@inproceedings{popovic-2017-chrf,
    title = "chr{F}++: words helping character n-grams",
    author = "Popovi{\\'c}, Maja",
    booktitle = "Proceedings of the Second Conference on Machine Translation",
    year = "2017",
    pages = "612--618",
}
"""

_DESCRIPTION = """\
Corpus-level chrF (character n-gram F-score) computed by sacreBLEU; with word_order=2 it is chrF++.
Returned with sacreBLEU's signature string.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of hypothesis strings, one per segment.
    references: one list of reference strings per segment (all segments have the same number),
        or one reference string per segment.
    char_order: character n-gram order (6).
    word_order: word n-gram order: 0 is chrF, 2 is chrF++.
    beta: weight of recall against precision (2).
    lowercase: lowercase hypotheses and references before scoring.
    whitespace: keep whitespace when extracting character n-grams.
    eps_smoothing: the smoothing of chrF++.py / NLTK / Moses instead of sacreBLEU's effective order.
    return_stats: also return the per-segment sufficient statistics.
Returns:
    name: "chrF2" (chrF2++ with word_order=2; the digit is beta).
    score: chrF in [0, 100].
    signature: sacreBLEU signature, e.g. "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0".
    formatted: sacreBLEU's one-line rendering ("chrF2 = 58.10").
    char_order, word_order, beta: the settings used.
    stats: only with return_stats, a numpy array of per-segment statistics.
Examples:
    >>> chrf = evaluate.load("txkit/metrics/sacrebleu_chrf")
    >>> round(chrf.compute(predictions=["the cat sat"], references=[["the cat sat"]])["score"], 2)
    100.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SacrebleuChrf(evaluate.Metric):
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
            reference_urls=["https://aclanthology.org/W15-3049", "https://aclanthology.org/W17-4770"],
        )

    def sacrebleu_metric(
        self, char_order=6, word_order=0, beta=2, lowercase=False, whitespace=False, eps_smoothing=False
    ):
        """The configured sacreBLEU object (the bootstrap scores resampled statistics with it)."""
        return CHRF(
            char_order=char_order,
            word_order=word_order,
            beta=beta,
            lowercase=lowercase,
            whitespace=whitespace,
            eps_smoothing=eps_smoothing,
        )

    def _compute(
        self,
        predictions,
        references,
        char_order=6,
        word_order=0,
        beta=2,
        lowercase=False,
        whitespace=False,
        eps_smoothing=False,
        return_stats=False,
    ):
        metric = self.sacrebleu_metric(char_order, word_order, beta, lowercase, whitespace, eps_smoothing)
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
            "char_order": char_order,
            "word_order": word_order,
            "beta": beta,
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
