"""Tests for txkit/evaluation.py, the metric modules in txkit/metrics/ and `txkit eval`.

The reference is the real newstest2014.de; hypotheses are deterministic perturbations of it
(word drops, a swap, case flips), so every score is known to sacreBLEU and never 0 or 100.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF, TER

from conftest import run_cli
from txkit import evaluation
from txkit.errors import TxkitError
from txkit.options import ScoreOptions

REPO = Path(__file__).resolve().parents[1]
# Lines of newstest2014 for the tests that score many times: a metric pass over all 3003 lines
# costs about a second (sacreBLEU's statistics), the lowercase x references matrix alone needs 24.
N_HEAD = 300


def _perturb(line: str, i: int) -> str:
    """A deterministic, imperfect translation: drop every 7th word, swap a pair, flip case of every 5th."""
    words = [w for j, w in enumerate(line.split()) if (i + j) % 7 != 3]
    if len(words) > 3:
        k = i % (len(words) - 1)
        words[k], words[k + 1] = words[k + 1], words[k]
    return " ".join(w.swapcase() if (i + j) % 5 == 1 else w for j, w in enumerate(words))


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    """Paths and lines: the real reference, a second reference, a system, a much worse system."""
    tmp = tmp_path_factory.mktemp("eval")
    ref_path = shared_data / "newstest2014" / "newstest2014.de"
    ref = ref_path.read_text(encoding="utf-8").splitlines()
    hyp = [_perturb(line, i) for i, line in enumerate(ref)]
    worse = [" ".join(line.split()[::2]) for line in ref]  # every other word
    head = ref[:N_HEAD]
    ref2_head = [_perturb(line, i + 3) for i, line in enumerate(head)]
    return {
        "ref_path": ref_path,
        "ref": ref,
        "hyp_path": _write(tmp / "hyp.de", hyp),
        "hyp": hyp,
        "worse_path": _write(tmp / "worse.de", worse),
        "worse": worse,
        "head_ref_path": _write(tmp / "newstest2014.head.de", head),
        "head_ref2_path": _write(tmp / "newstest2014.head.ref2.de", ref2_head),
        "head_hyp_path": _write(tmp / "hyp.head.de", hyp[:N_HEAD]),
        "tmp": tmp,
    }


def _txkit(capsys, *args) -> tuple[int, str, str]:
    """Run `txkit ...` in this process; returns (exit code, stdout, stderr)."""
    return run_cli(list(args), capsys)


# ----------------------------------------------------------------------------- exact agreement with sacreBLEU


@pytest.mark.parametrize("n_refs", [1, 2])
@pytest.mark.parametrize("lowercase", [False, True])
def test_cli_reproduces_sacrebleu(corpus, capsys, lowercase, n_refs):
    ref_paths = [corpus["head_ref_path"], corpus["head_ref2_path"]][:n_refs]
    out_json = corpus["tmp"] / f"report-{lowercase}-{n_refs}.json"
    args = ["eval", "--hyp", corpus["head_hyp_path"], "--metrics", "bleu,chrf,ter", "--bootstrap", "0"]
    args += [a for path in ref_paths for a in ("--ref", path)]
    args += ["--json", out_json] + (["--lowercase"] if lowercase else [])
    code, out, err = _txkit(capsys, *args)
    assert code == 0, err
    report = json.loads(out_json.read_text())

    hyps = evaluation.read_lines(corpus["head_hyp_path"])
    refs = [evaluation.read_lines(path) for path in ref_paths]
    # TER stays sacreBLEU's default (case-insensitive) whatever --lowercase says.
    expected_metrics = {"bleu": BLEU(lowercase=lowercase), "chrf": CHRF(lowercase=lowercase), "ter": TER()}
    for name, sacrebleu_metric in expected_metrics.items():
        expected = sacrebleu_metric.corpus_score(hyps, refs)
        assert report["scores"][name]["score"] == expected.score, name
        assert report["scores"][name]["signature"] == sacrebleu_metric.get_signature().format(), name
        assert report["scores"][name]["ci"] is None
    assert f"nrefs:{n_refs}|case:{'lc' if lowercase else 'mixed'}" in report["scores"]["bleu"]["signature"]
    bleu_metric = BLEU(lowercase=lowercase)
    bleu = bleu_metric._aggregate_and_compute(bleu_metric._extract_corpus_statistics(hyps, refs))
    details = report["scores"]["bleu"]["details"]
    assert details["precisions"] == list(bleu.precisions)
    assert (details["bp"], details["sys_len"], details["ref_len"]) == (bleu.bp, bleu.sys_len, bleu.ref_len)
    assert "BLEU" in out and "chrF2" in out and "TER" in out


def test_variants_reproduce_sacrebleu(corpus):
    hyps = corpus["hyp"][:N_HEAD]
    refs = [corpus["ref"][:N_HEAD]]
    results = evaluation.score(hyps, refs, ScoreOptions(metrics=("bleu",), tokenize="intl", lowercase=True, bootstrap=0))
    assert results["bleu"]["score"] == BLEU(tokenize="intl", lowercase=True).corpus_score(hyps, refs).score
    results = evaluation.score(hyps, refs, ScoreOptions(metrics=("bleu",), tokenize="none", bootstrap=0))
    assert results["bleu"]["score"] == BLEU(tokenize="none").corpus_score(hyps, refs).score
    results = evaluation.score(hyps, refs, ScoreOptions(metrics=("chrf",), chrf_word_order=2, bootstrap=0))
    assert results["chrf"]["name"] == "chrF2++"
    assert results["chrf"]["score"] == CHRF(word_order=2).corpus_score(hyps, refs).score


# ----------------------------------------------------------------------------- the literature's tokenized BLEU


def test_tokenized_bleu_is_moses_then_sacrebleu_none(shared_data, tmp_path, capsys):
    """On real Multi30k lines: lowercase, Moses-tokenize (sacremoses, target language), sacreBLEU tokenize=none;
    labelled as such, after the main score, never instead of it."""
    from sacremoses import MosesTokenizer

    ref = (shared_data / "multi30k" / "test2016.de").read_text(encoding="utf-8").splitlines()[:200]
    # Glue punctuation onto words and drop some, so that the Moses tokenization has work to do.
    hyp = [_perturb(line, i).replace(" ,", ",").replace("“", '"') for i, line in enumerate(ref)]
    moses = MosesTokenizer(lang="de")
    tokenized = [[moses.tokenize(line.lower(), escape=False, return_str=True) for line in lines] for lines in (hyp, ref)]
    expected = BLEU(tokenize="none").corpus_score(tokenized[0], [tokenized[1]])

    options = ScoreOptions(metrics=("bleu", "bleu_tokenized"), moses_lang="de", bootstrap=100)
    results = evaluation.score(hyp, [ref], options)
    assert results["bleu_tokenized"]["score"] == expected.score
    assert results["bleu_tokenized"]["name"] == "BLEU (tokenized, lowercased, Moses)"
    assert "tok:none" in results["bleu_tokenized"]["signature"] and "moses-de" in results["bleu_tokenized"]["signature"]
    assert results["bleu"]["score"] == BLEU().corpus_score(hyp, [ref]).score  # the main score is untouched
    low, high = results["bleu_tokenized"]["ci"]
    assert low <= expected.score <= high
    # Not the lowercased 13a score under another name: the Moses tokenization changes the figure.
    assert expected.score != BLEU(lowercase=True).corpus_score(hyp, [ref]).score

    hyp_path, ref_path = _write(tmp_path / "hyp.de", hyp), _write(tmp_path / "ref.de", ref)
    code, out, err = _txkit(capsys, "eval", "--hyp", hyp_path, "--ref", ref_path, "--tokenized-bleu", "de",
                            "--bootstrap", "0", "--json", tmp_path / "r.json")  # fmt: skip
    assert code == 0, err
    rows = out.splitlines()
    assert rows[2].startswith("BLEU ") and rows[4].startswith("BLEU (tokenized, lowercased, Moses)"), out
    assert f"{expected.score:.2f}" in rows[4]
    report = json.loads((tmp_path / "r.json").read_text())
    assert list(report["scores"]) == ["bleu", "chrf", "bleu_tokenized"]
    assert report["options"]["moses_lang"] == "de"
    code, _, err = _txkit(capsys, "eval", "--hyp", hyp_path, "--ref", ref_path, "--metrics", "bleu_tokenized")
    assert code == 2 and "--tokenized-bleu LANG" in err


# ----------------------------------------------------------------------------- evaluate modules


def test_metric_modules_load_offline(monkeypatch):
    """evaluate.load of the shipped scripts, with HF_HUB_OFFLINE=1 and every network connection refused."""
    import evaluate

    from txkit.metrics import MODULE_DIRS, module_path

    def no_network(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    for name, folder in MODULE_DIRS.items():
        assert (module_path(name) / f"{folder}.py").is_file()  # matches package-data "metrics/*/*.py"
        module = evaluate.load(str(module_path(name)), keep_in_memory=True)
        assert isinstance(module, evaluate.Metric)
        out = module.compute(predictions=["Das ist ein kleiner Test ."], references=[["Das ist ein kleiner Test ."]])
        assert out["score"] == pytest.approx(0.0 if name == "ter" else 100.0)
        assert "version:" in out["signature"]
    assert evaluation.load_metric("bleu") is evaluation.load_metric("bleu")


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_score_and_follows_sacrebleu(corpus):
    results = evaluation.score(corpus["hyp"], [corpus["ref"]], ScoreOptions(metrics=("bleu", "chrf"), bootstrap=1000))
    for result in results.values():
        low, high = result["ci"]
        assert low < result["score"] < high
        assert 0.05 < high - low < 2.0

    hyps, refs = corpus["hyp"][:N_HEAD], [corpus["ref"][:N_HEAD]]
    result = evaluation.score(hyps, refs, ScoreOptions(metrics=("bleu",), bootstrap=1000, seed=12345))["bleu"]
    low, high = result["ci"]

    # Same draws as sacreBLEU's `--confidence` (seed 12345): the same bootstrap mean and spread.
    from sacrebleu.significance import _bootstrap_resample, estimate_ci

    metric = BLEU()
    stats = metric._extract_corpus_statistics(hyps, refs)
    _, scores = _bootstrap_resample(stats, metric, 1000)
    mean, half_width = estimate_ci(np.array([s.score for s in scores]))
    assert result["bootstrap_mean"] == pytest.approx(mean, abs=1e-4)
    assert (high - low) / 2 == pytest.approx(half_width, abs=1e-4)

    again = evaluation.score(hyps, refs, ScoreOptions(metrics=("bleu",), bootstrap=1000, seed=12345))["bleu"]
    assert again["ci"] == result["ci"]
    other = evaluation.score(hyps, refs, ScoreOptions(metrics=("bleu",), bootstrap=1000, seed=7))["bleu"]
    assert other["ci"] != result["ci"]


def test_paired_bootstrap(corpus):
    hyps, worse, refs = corpus["hyp"][:N_HEAD], corpus["worse"][:N_HEAD], [corpus["ref"][:N_HEAD]]
    better = evaluation.paired_bootstrap(hyps, worse, refs, metric="bleu", options=ScoreOptions(bootstrap=1000))
    assert better["difference"] > 10
    assert better["p_value"] == pytest.approx(1 / 1001)
    assert better["system"]["ci"][0] > better["baseline"]["ci"][1]

    same = evaluation.paired_bootstrap(hyps, list(hyps), refs, metric="bleu", options=ScoreOptions(bootstrap=1000))
    assert same["difference"] == 0.0
    assert same["p_value"] == 1.0


def test_paired_bootstrap_follows_sacrebleu_on_close_systems(corpus):
    """Two systems of about equal quality: a p-value in between, sacreBLEU's paired-bs p-value."""
    from sacrebleu.significance import Result, _paired_bs_test

    ref = corpus["ref"][:N_HEAD]
    system_a = corpus["hyp"][:N_HEAD]
    system_b = [_perturb(line, i + 1) for i, line in enumerate(ref)]
    ours = evaluation.paired_bootstrap(
        system_a, system_b, [ref], metric="chrf", options=ScoreOptions(bootstrap=500, seed=12345)
    )
    assert 0.01 < ours["p_value"] < 1.0

    metric = CHRF()
    stats_b = metric._extract_corpus_statistics(system_b, [ref])
    baseline_info = {"chrF2": (stats_b, Result(metric._aggregate_and_compute(stats_b).score))}
    _, theirs = _paired_bs_test(baseline_info, "a", system_a, [ref], {"chrF2": metric}, n_samples=500, seed=12345)
    assert ours["p_value"] == pytest.approx(theirs["chrF2"].p_value, abs=2 / 501)


# ----------------------------------------------------------------------------- report


def test_json_report_and_table(corpus, capsys):
    out_json = corpus["tmp"] / "report.json"
    code, out, err = _txkit(
        capsys, "eval", "-H", corpus["hyp_path"], "-r", corpus["ref_path"], "--metrics", "bleu,ter",
        "--baseline", corpus["worse_path"], "--bootstrap", "300", "--json", out_json,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out_json.read_text(encoding="utf-8"))
    assert report["system"] == {"path": str(corpus["hyp_path"]), "lines": 3003}
    assert report["references"] == [{"path": str(corpus["ref_path"]), "lines": 3003}]
    assert report["baseline"]["path"] == str(corpus["worse_path"])
    assert report["baseline"]["lines"] == 3003
    assert report["options"]["bootstrap"] == 300 and report["options"]["seed"] == 12345
    for name in ("bleu", "ter"):
        result = report["scores"][name]
        assert 0 < result["score"] < 100
        assert result["signature"].startswith("nrefs:1|")
        assert result["ci"][0] <= result["score"] <= result["ci"][1]
        assert report["baseline"]["scores"][name]["ci"] is not None
        assert report["significance"][name]["p_value"] < 0.01
    assert set(report["scores"]["bleu"]["details"]) == {"precisions", "bp", "sys_len", "ref_len"}
    assert report["significance"]["ter"]["difference"] < 0  # fewer edits than the baseline
    assert not list(corpus["tmp"].glob(".report.json.*"))  # the temp file was renamed away

    # the compact table: header, one row per metric with score and CI, then the signatures
    assert out.strip() == evaluation.format_table(report)
    rows = out.splitlines()
    assert rows[2].split()[:2] == ["metric", "score"]
    assert rows[3].startswith("BLEU ") and f"{report['scores']['bleu']['score']:.2f}" in rows[3]
    assert any(line.startswith("TER: nrefs:1|case:lc|tok:tercom") for line in rows)


# ----------------------------------------------------------------------------- errors


def test_non_utf8_is_one_line_error_in_a_real_process(tmp_path, corpus):
    bad = tmp_path / "bad.de"
    bad.write_bytes(b"gut\nauch gut\nschlecht \xff\xfe hier\n")
    proc = subprocess.run(
        [sys.executable, "-m", "txkit", "eval", "--hyp", str(bad), "--ref", str(corpus["head_ref_path"])],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and str(bad) in lines[0] and "line 3" in lines[0]


def test_user_errors_through_the_cli(tmp_path, corpus, capsys):
    head_ref, head_hyp = corpus["head_ref_path"], corpus["head_hyp_path"]
    short = _write(tmp_path / "short.de", corpus["hyp"][: N_HEAD - 1])
    empty = tmp_path / "empty.de"
    empty.write_bytes(b"")
    bad_ref = tmp_path / "bad_ref.de"
    bad_ref.write_bytes("eins\nzwei\n".encode() + "drei \u00e4".encode("latin-1") + b"\n")

    cases = [
        (["--hyp", short, "--ref", head_ref], [f"{short} has {N_HEAD - 1} lines but {head_ref} has {N_HEAD}"]),
        (["--hyp", head_hyp, "--ref", head_ref, "--ref", short], [str(short), "lines"]),
        (["--hyp", head_hyp, "--ref", head_ref, "--baseline", short], [str(short)]),
        (["--hyp", empty, "--ref", head_ref], [str(empty), "empty"]),
        (["--hyp", head_hyp, "--ref", empty], [str(empty), "empty"]),
        (["--hyp", head_hyp, "--ref", bad_ref], [str(bad_ref), "line 3", "UTF-8"]),
        (["--hyp", tmp_path / "missing.de", "--ref", head_ref], ["missing.de", "not found"]),
        (["--ref", head_ref], ["--hyp"]),
        (["model_dir", "--hyp", head_hyp, "--ref", head_ref], ["not both"]),
        (["model_dir", "--ref", head_ref], ["--src"]),
        (["--hyp", head_hyp], ["--ref"]),
        (["--hyp", head_hyp, "--ref", head_ref, "--metrics", "bleu,meteor"], ["meteor"]),
        (["--hyp", head_hyp, "--ref", head_ref, "--tokenize", "moses"], ["moses"]),
        (["--hyp", head_hyp, "--ref", head_ref, "--json", tmp_path / "no" / "r.json"], ["--json", "folder"]),
    ]
    for args, expected in cases:
        code, out, err = _txkit(capsys, "eval", *args)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        for fragment in expected:
            assert fragment in lines[0], (args, lines[0])


# ----------------------------------------------------------------------------- reading files


def test_read_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffa b\r\nc\u2028d\n\nlast".encode())
    assert evaluation.read_lines(path) == ["a b", "c\u2028d", "", "last"]
    path.write_bytes(b"\n")
    assert evaluation.read_lines(path) == [""]  # one empty segment, not an empty file
    path.write_bytes(b"ok\n\x80\n")
    with pytest.raises(TxkitError, match=r"reference file .*t\.txt line 2: not valid UTF-8 \(byte 0x80\)"):
        evaluation.read_lines(path, "reference")
    assert evaluation.check_same_length(("a", ["x", "y"]), ("b", ["x", "y"])) == 2
    with pytest.raises(TxkitError, match="a has 2 lines but b has 1"):
        evaluation.check_same_length(("a", ["x", "y"]), ("b", ["x"]))
