"""txkit's own `evaluate` metric modules, each a thin wrapper over one sacreBLEU metric.

`evaluate.load("sacrebleu")` fetches its script from the Hub; these scripts ship inside the
package so that `evaluate.load(<local path>)` works offline. Each module lives in a folder named
like its script (the layout `evaluate.load` expects for a directory), returns the score with the
sacreBLEU signature, and on request the per-sentence sufficient statistics for bootstrap
resampling (see txkit/evaluation.py).
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent

# txkit's metric name -> module folder under txkit/metrics/
MODULE_DIRS = {
    "bleu": "sacrebleu_bleu",
    "chrf": "sacrebleu_chrf",
    "ter": "sacrebleu_ter",
}


def module_path(name: str) -> Path:
    """The folder of the `evaluate` module for metric `name` ("bleu", "chrf" or "ter")."""
    return METRICS_DIR / MODULE_DIRS[name]
