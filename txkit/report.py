"""A run at a glance: a PNG of the training curves and a short Markdown summary, from RUN/log.jsonl.

    write_run_report(run_dir)      -> RUN/report.png and RUN/report.md
    training_figure(records)       the matplotlib Figure (four panels, x = update step)
    scores_table(reports)          the test scores (RUN/eval/*.json) as rows, for Markdown or the terminal

The log is the one `txkit train` writes: one JSON object per logged step, {"step": N, "train/loss": ...,
"train/lr": ..., "train/tgt_tok_per_s": ..., "val/loss": ..., "val/bleu": ...}; non-finite values are
stored as strings ("nan", "inf") and read back as floats. Plots use matplotlib's Agg canvas directly (no
pyplot, no display needed).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from txkit import atomic, runs
from txkit.runs import read_log  # noqa: F401  (the one log reader; report.read_log stays importable)
from txkit.errors import TxkitError

PNG_NAME = runs.REPORT_PNG  # the run directory's names are runs.py's
MARKDOWN_NAME = runs.REPORT_MARKDOWN
EVAL_DIR = runs.EVAL_DIR
FIGSIZE = (12.0, 8.0)  # inches; at DPI pixels per inch: 1200 x 800
DPI = 100

# The four panels: (title, y label, [(log key, legend label), ...]).
PANELS = [
    ("Loss (label-smoothed cross-entropy per token)", "loss", [("train/loss", "training"), ("val/loss", "validation")]),
    ("Learning rate", "learning rate", [("train/lr", "learning rate")]),
    ("Validation BLEU", "BLEU", [("val/bleu", "validation BLEU")]),
    ("Throughput", "tokens / s",
     [("train/tgt_tok_per_s", "target tokens/s"), ("train/src_tok_per_s", "source tokens/s")]),
]


@dataclass
class ReportFiles:
    png: Path
    markdown: Path


# ----------------------------------------------------------------------------- reading


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):  # "nan", "inf", "-inf" as RunLog writes them
        try:
            return float(value)
        except ValueError:
            return None
    return None


def series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged key, in log order; records without the key are skipped."""
    steps, values = [], []
    for record in records:
        value = _number(record.get(key))
        if value is not None:
            steps.append(int(record["step"]))
            values.append(value)
    return steps, values


def load_eval_reports(run_dir: str | os.PathLike) -> dict[str, dict]:
    """RUN/eval/<test>.json reports (written by `txkit run`), by test-set name."""
    folder = Path(run_dir) / EVAL_DIR
    reports = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            reports[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise TxkitError(f"{path}: not valid JSON (line {exc.lineno})") from None
    return reports


# ----------------------------------------------------------------------------- the figure


def training_figure(records: Sequence[dict], title: str = ""):
    """Four panels against the update step: training and validation loss, learning rate, validation BLEU,
    tokens per second. A key that was never logged leaves its panel with a note instead of a curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True).ravel()  # one step axis for all four panels
    for ax, (panel_title, ylabel, keys) in zip(axes, PANELS):
        plotted = False
        for key, label in keys:
            steps, values = series(records, key)
            if not steps:
                continue
            marker = "o" if len(steps) <= 30 else None
            ax.plot(steps, values, label=label, marker=marker, markersize=3, linewidth=1.4, gid=key)
            plotted = True
        ax.set_title(panel_title, fontsize=11)
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if plotted and len(keys) > 1:
            ax.legend(fontsize=9)
        elif not plotted:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    for ax in axes[2:]:
        ax.set_xlabel("update step")
    if title:
        fig.suptitle(title, fontsize=13)
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a figure as PNG, atomically (temporary name, then rename)."""
    path = Path(path)
    with atomic.writing_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


# ----------------------------------------------------------------------------- tables and summary


def scores_table(reports: dict[str, dict]) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, signatures) of the test scores: one row per test set, one column per metric."""
    names: list[tuple[str, str]] = []  # (key, display name), in first-seen order
    for report in reports.values():
        for key, result in report.get("scores", {}).items():
            if key not in [k for k, _ in names]:
                names.append((key, result.get("name", key)))
    header = ["test set"] + [name for _, name in names]
    rows, signatures = [], []
    for test, report in reports.items():
        scores = report.get("scores", {})
        rows.append([test] + [f"{scores[k]['score']:.2f}" if k in scores else "" for k, _ in names])
        for key, name in names:
            if key in scores and scores[key].get("signature") and scores[key]["signature"] not in signatures:
                signatures.append(scores[key]["signature"])
    return header, rows, signatures


def format_scores(reports: dict[str, dict]) -> str:
    """The scores as an aligned plain-text table with the sacreBLEU signatures below it."""
    header, rows, signatures = scores_table(reports)
    if not rows:
        return "no test scores"
    table = [header] + rows
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in table]  # fmt: skip
    return "\n".join(lines + [f"  {s}" for s in signatures])


def _markdown_table(header: list[str], rows: list[list[str]], align_right_from: int = 1) -> list[str]:
    align = ["---" if i < align_right_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(row) + " |" for row in [header, align] + rows]


def _best(steps: list[int], values: list[float], higher: bool) -> tuple[float, int] | None:
    finite = [(v, s) for s, v in zip(steps, values) if math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if higher else min(finite, key=lambda vs: (vs[0], -vs[1]))


def summary_markdown(run_dir: str | os.PathLike, records: Sequence[dict], reports: dict[str, dict],
                     image: str = PNG_NAME) -> str:  # fmt: skip
    """The run in a few lines: training facts from the log (and training_info.json), the test scores."""
    run_dir = Path(run_dir)
    lines = [f"# Run report: {run_dir.resolve().name}", "", f"![training curves]({image})", ""]
    facts: list[tuple[str, str]] = []
    steps_logged = [int(r["step"]) for r in records]
    if steps_logged:
        facts.append(("last logged step", f"{max(steps_logged)}"))
    steps, losses = series(records, "train/loss")
    if steps:
        facts.append(("final training loss", f"{losses[-1]:.4f} (step {steps[-1]})"))
    val_steps, val_losses = series(records, "val/loss")
    if (best := _best(val_steps, val_losses, higher=False)) is not None:
        facts.append(("best validation loss", f"{best[0]:.4f} (step {best[1]})"))
    bleu_steps, bleus = series(records, "val/bleu")
    if (best := _best(bleu_steps, bleus, higher=True)) is not None:
        facts.append(("best validation BLEU", f"{best[0]:.2f} (step {best[1]})"))
    lr_steps, lrs = series(records, "train/lr")
    if (best := _best(lr_steps, lrs, higher=True)) is not None:
        facts.append(("peak learning rate", f"{best[0]:.3g} (step {best[1]})"))
    _, speed = series(records, "train/tgt_tok_per_s")
    if speed:
        ordered = sorted(speed)
        facts.append(("throughput (median of logged intervals)", f"{ordered[len(ordered) // 2]:,.0f} target tokens/s"))
    _, epochs = series(records, "train/epoch")
    if epochs:
        facts.append(("epochs", f"{epochs[-1]:.2f}"))
    info_path = run_dir / "training_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("wall_time_s") is not None:
            seconds = float(info["wall_time_s"])
            facts.append(("training wall time", f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"))
        if info.get("hardware"):
            facts.append(("hardware", str(info["hardware"])))
        if info.get("date"):
            facts.append(("date", str(info["date"])))
    if facts:
        lines += _markdown_table(["run", ""], [[k, v] for k, v in facts], align_right_from=2) + [""]
    else:
        lines += ["Nothing was logged yet.", ""]
    header, rows, signatures = scores_table(reports)
    if rows:
        lines += ["## Test scores", ""] + _markdown_table(header, rows) + [""]
        lines += [f"- `{s}`" for s in signatures] + [""]
        lines += ["sacreBLEU on detokenized text. \"BLEU (tokenized, lowercased, Moses)\" is the Multi30k literature's "
                  "measure (lowercased, Moses-tokenized text, no further tokenization), for comparison with "
                  "papers only.", ""]  # fmt: skip
    return "\n".join(lines)


def write_run_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> ReportFiles:
    """Write report.png and report.md for a run directory (into `out_dir`, default the run directory)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TxkitError(f"{run_dir}: no such run directory")
    records = read_log(run_dir / runs.LOG_FILE)
    reports = load_eval_reports(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    atomic.check_output_dir(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    png = save_figure(training_figure(records, title=run_dir.resolve().name), out / PNG_NAME)
    image = os.path.relpath(png, out)
    markdown = out / MARKDOWN_NAME
    atomic.write_text(markdown, summary_markdown(run_dir, records, reports, image=image))
    return ReportFiles(png=png, markdown=markdown)
