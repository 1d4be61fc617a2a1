"""txkit report: the PNG is a real image of the logged steps and the Markdown's numbers come from the log."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import run_cli
from txkit import report
from txkit.errors import TxkitError


def _write_run(run_dir: Path) -> list[dict]:
    """A log shaped like txkit train's: training records every 10 steps, validation every 50."""
    run_dir.mkdir(parents=True)
    records = []
    for step in range(10, 201, 10):
        records.append({
            "step": step, "train/loss": 8.0 * math.exp(-step / 80) + 2.0,
            "train/lr": 1e-3 * min(step / 50, (50 / step) ** 0.5),
            "train/tgt_tok_per_s": 5000.0 + step, "train/src_tok_per_s": 4800.0 + step, "train/epoch": step / 100,
        })  # fmt: skip
        if step % 50 == 0:
            bleu = [3.1, 17.4, 25.6, 24.9][step // 50 - 1]
            records.append({"step": step, "val/loss": 7.0 * math.exp(-step / 90) + 2.5, "val/bleu": bleu})
    records.append({"step": 200, "val/loss": "nan"})  # non-finite values are logged as strings
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"step": 210, "train/lo'  # cut by a kill
    (run_dir / "log.jsonl").write_text(text, encoding="utf-8")
    (run_dir / "training_info.json").write_text(json.dumps({"wall_time_s": 1500, "hardware": "CPU (2 cores)"}))
    (run_dir / "eval").mkdir()
    bleu = "nrefs:1|case:{}|eff:no|tok:13a|smooth:exp|version:2"
    scores = {
        "bleu": {"name": "BLEU", "score": 35.123, "signature": bleu.format("mixed")},
        "bleu_lowercase": {"name": "BLEU (lowercased)", "score": 37.5, "signature": bleu.format("lc")},
        "chrf": {"name": "chrF2", "score": 61.04, "signature": "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|version:2"},
    }
    (run_dir / "eval" / "test2016.json").write_text(json.dumps({"scores": scores}))
    return records


def test_png_is_an_image_of_the_logged_curves(tmp_path, capsys):
    from PIL import Image

    run_dir = tmp_path / "run"
    written = _write_run(run_dir)
    code, out, _ = run_cli(["report", run_dir], capsys)
    assert code == 0
    png, md = run_dir / "report.png", run_dir / "report.md"
    assert str(png) in out and str(md) in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == (int(report.FIGSIZE[0] * report.DPI), int(report.FIGSIZE[1] * report.DPI))
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 50  # curves, text: not a blank canvas

    # the plotted lines are the log's series, step for step
    records = report.read_log(run_dir / "log.jsonl")
    fig = report.training_figure(records)
    lines = {line.get_gid(): line for ax in fig.axes for line in ax.get_lines()}
    assert set(lines) == {"train/loss", "val/loss", "train/lr", "val/bleu", "train/tgt_tok_per_s",
                          "train/src_tok_per_s"}  # fmt: skip
    train = [r for r in written if "train/loss" in r]
    assert list(lines["train/loss"].get_xdata()) == [r["step"] for r in train]
    assert list(lines["train/loss"].get_ydata()) == pytest.approx([r["train/loss"] for r in train])
    assert list(lines["val/bleu"].get_ydata()) == [3.1, 17.4, 25.6, 24.9]
    val_loss = lines["val/loss"].get_ydata()
    assert len(val_loss) == 5 and math.isnan(val_loss[-1])  # the "nan" string read back as NaN

    # the summary's numbers are those of the log
    text = md.read_text(encoding="utf-8")
    assert "![training curves](report.png)" in text
    assert f"| final training loss | {train[-1]['train/loss']:.4f} (step 200) |" in text
    best_val = min(r["val/loss"] for r in written if isinstance(r.get("val/loss"), float))
    assert f"| best validation loss | {best_val:.4f} (step 200) |" in text
    assert "| best validation BLEU | 25.60 (step 150) |" in text
    assert "| peak learning rate | 0.001 (step 50) |" in text
    assert "| last logged step | 200 |" in text and "| training wall time | 25.0 min |" in text
    # and the test scores
    assert "| test set | BLEU | BLEU (lowercased) | chrF2 |" in text
    assert "| test2016 | 35.12 | 37.50 | 61.04 |" in text
    assert "case:lc" in text


def test_a_run_without_validation_or_scores(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.jsonl").write_text('{"step": 5, "train/loss": 9.5, "train/lr": 0.0001}\n')
    files = report.write_run_report(run_dir, tmp_path / "elsewhere")
    assert files.png == tmp_path / "elsewhere" / "report.png" and files.png.is_file()
    text = files.markdown.read_text()
    assert "| final training loss | 9.5000 (step 5) |" in text
    assert "validation" not in text and "Test scores" not in text
    fig = report.training_figure(report.read_log(run_dir / "log.jsonl"))
    notes = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert notes.count("not logged") == 2  # BLEU and throughput panels


def test_not_a_run_directory(tmp_path, capsys):
    code, _, err = run_cli(["report", tmp_path], capsys)
    assert code == 2
    assert "no training log" in err
    (tmp_path / "log.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(TxkitError, match="line 2: not valid JSON"):
        report.read_log(tmp_path / "log.jsonl")
