"""Corpus BLEU through sacreBLEU, as an `evaluate` metric that loads offline from this file."""

import datasets
import evaluate
import numpy as np
from sacrebleu.metrics import BLEU

_CITATION = """\
@inproceedings{papineni-etal-2002-bleu,
    title = "{B}leu: a Method for Automatic Evaluation of Machine Translation",
    author = "Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing",
    booktitle = "Proceedings of ACL",
    year = "2002",
    pages = "311--318",
}
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    pages = "186--191",
}
"""

_DESCRIPTION = """\
Corpus-level BLEU computed by sacreBLEU, returned with sacreBLEU's signature string so that the
score can be compared with published numbers (same tokenizer, casing, smoothing and version).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of hypothesis strings, one per segment (detokenized).
    references: one list of reference strings per segment (all segments have the same number),
        or one reference string per segment.
    lowercase: lowercase hypotheses and references before scoring (signature `case:lc`).
    tokenize: sacreBLEU tokenizer: "13a" (WMT default), "intl", "none", "zh", "char", ...
    smooth_method: "exp" (default), "floor", "add-k" or "none".
    smooth_value: the value for "floor" or "add-k" smoothing; None takes sacreBLEU's default.
    effective_order: stop at the highest n-gram order with a match (meant for sentence BLEU).
    return_stats: also return the per-segment sufficient statistics, shape (segments, 2 + 2 * 4).
Returns:
    name: "BLEU".
    score: BLEU in [0, 100].
    signature: sacreBLEU signature, e.g. "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0".
    formatted: sacreBLEU's one-line rendering ("BLEU = 27.30 58.1/33.0/... (BP = ...)").
    precisions: the n-gram precisions (1 to 4), in percent.
    bp: brevity penalty.
    sys_len, ref_len: hypothesis and effective reference length in tokens.
    stats: only with return_stats, a numpy array of per-segment statistics.
Examples:
    >>> bleu = evaluate.load("txkit/metrics/sacrebleu_bleu")
    >>> round(bleu.compute(predictions=["the cat sat on the mat"], references=[["the cat sat on the mat"]])["score"], 2)
    100.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SacrebleuBleu(evaluate.Metric):
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
            reference_urls=["https://aclanthology.org/P02-1040", "https://aclanthology.org/W18-6319"],
        )

    def sacrebleu_metric(
        self, lowercase=False, tokenize="13a", smooth_method="exp", smooth_value=None, effective_order=False
    ):
        """The configured sacreBLEU object (the bootstrap scores resampled statistics with it)."""
        return BLEU(
            lowercase=lowercase,
            tokenize=tokenize,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            effective_order=effective_order,
        )

    def _compute(
        self,
        predictions,
        references,
        lowercase=False,
        tokenize="13a",
        smooth_method="exp",
        smooth_value=None,
        effective_order=False,
        return_stats=False,
    ):
        metric = self.sacrebleu_metric(lowercase, tokenize, smooth_method, smooth_value, effective_order)
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
            "precisions": list(result.precisions),
            "bp": result.bp,
            "sys_len": int(result.sys_len),
            "ref_len": int(result.ref_len),
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
