"""txkit.tokenization and `txkit tokenizer build|stats`: round trip, special ids, layouts, user errors."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import head, run_cli
from txkit.errors import TxkitError
from txkit.tokenization import (
    BYTE_TOKENS,
    METADATA_FILE,
    SPECIAL_TOKENS,
    TARGET_SUBDIR,
    build_tokenizer,
    config_kwargs_from_tokenizer,
    is_round_trip,
    load_tokenizer,
    load_tokenizers,
    tokenizer_stats,
)

LANGS = ("en", "de", "fr", "cs")


@pytest.fixture(scope="module")
def joint_dir(shared_data, tmp_path_factory) -> Path:
    """A joint BPE vocabulary of 2000 tokens on 4000 training lines of each Multi30k language."""
    tmp = tmp_path_factory.mktemp("joint")
    files = [head(shared_data / "multi30k" / f"train.{lang}", tmp / f"train.{lang}", 4000) for lang in LANGS]
    build_tokenizer(files, tmp / "tok", vocab_size=2000, show_progress=False, stats=False)
    return tmp / "tok"


def test_round_trip_on_all_four_languages(joint_dir, shared_data):
    # Whole validation and test files: text the vocabulary was not trained on.
    tok = load_tokenizer(joint_dir)
    for lang in LANGS:
        files = [shared_data / "multi30k" / f"{split}.{lang}" for split in ("val", "test2016")]
        stats = tokenizer_stats(tok, files, max_lines=None)
        for f in stats.files:
            assert f.round_trip_rate >= 0.999, (f.path, f.round_trip_rate)
            assert f.unk == 0, f.path
        assert stats.char_coverage > 0.999


def test_special_token_ids_agree_with_model_config(joint_dir):
    from transformers import AutoTokenizer

    from txkit.modeling.configuration_txkit import TxkitConfig

    tok = AutoTokenizer.from_pretrained(joint_dir)
    assert tok.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3]
    config = TxkitConfig.from_preset("transformer-tiny", **config_kwargs_from_tokenizer(tok))
    assert config.vocab_size == len(tok) == 2000
    assert config.tgt_vocab_size is None and config.shared_vocab
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id, config.unk_token_id) == (
        tok.pad_token_id,
        tok.bos_token_id,
        tok.eos_token_id,
        tok.unk_token_id,
    )
    assert config.decoder_start_token_id == tok.pad_token_id


def test_encoding_appends_eos_only_and_decodes_to_text(joint_dir):
    tok = load_tokenizer(joint_dir)
    text = "Zwei Männer, ein Hund – l'homme « ici » a 2\u00a0chiens; 日本 ☃!"
    ids = tok(text)["input_ids"]
    assert ids[-1] == tok.eos_token_id and tok.bos_token_id not in ids
    assert tok.unk_token_id not in ids  # unseen characters are spelled as bytes
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert is_round_trip(tok, "Un chien noir et un chien à tâches se battent.")
    # Byte tokens are ordinary entries, right after the special tokens.
    assert tok.convert_tokens_to_ids(BYTE_TOKENS[:2]) == [4, 5]
    assert sorted(tok.all_special_ids) == [0, 1, 2, 3]


def test_separate_vocabularies_layout(shared_data, tmp_path):
    en = head(shared_data / "multi30k" / "train.en", tmp_path / "train.en", 1500)
    de = head(shared_data / "multi30k" / "train.de", tmp_path / "train.de", 1500)
    report = build_tokenizer([de, en], tmp_path / "tok", joint=False, src_lang="en", vocab_size=700, show_progress=False)
    assert (tmp_path / "tok" / TARGET_SUBDIR / "tokenizer.json").is_file()
    src_tok, tgt_tok = load_tokenizers(tmp_path / "tok")
    assert src_tok is not tgt_tok
    assert [s.side for s in report.sides] == ["source", "target"]
    assert report.sides[0].files[0].path.endswith("train.en")
    kwargs = config_kwargs_from_tokenizer(src_tok, tgt_tok)
    assert kwargs["vocab_size"] == len(src_tok) and kwargs["tgt_vocab_size"] == len(tgt_tok)
    assert is_round_trip(tgt_tok, "Ein kleines Mädchen klettert in ein Spielhaus aus Holz.")
    # A joint folder gives the same object twice.
    joint_src, joint_tgt = load_tokenizers(tmp_path / "tok" / TARGET_SUBDIR)
    assert joint_src is joint_tgt


def test_unigram_with_byte_fallback(shared_data, tmp_path):
    cs = head(shared_data / "multi30k" / "train.cs", tmp_path / "train.cs", 1500)
    report = build_tokenizer([cs], tmp_path / "tok", model="unigram", vocab_size=800, show_progress=False)
    (stats,) = report.sides
    assert stats.files[0].round_trip_rate >= 0.999 and stats.files[0].unk == 0
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.unk_token_id not in tok("Žluťoučký kůň ☃")["input_ids"]
    assert is_round_trip(tok, "Žluťoučký kůň ☃")


def _mixed(tok) -> list[str]:
    """Vocabulary entries that join punctuation or symbols to letters or digits ("▁Hund.", "-schwarz")."""
    import re

    learned = [t for t in tok.get_vocab() if t not in SPECIAL_TOKENS and t not in BYTE_TOKENS]
    return [t for t in learned if re.search(r"\w", t) and re.search(r"[^\w\s▁]", t)]


def test_split_punctuation_keeps_punctuation_out_of_words(shared_data, tmp_path):
    files = [head(shared_data / "multi30k" / f"train.{lang}", tmp_path / f"train.{lang}", 4000) for lang in ("en", "de")]
    build_tokenizer(files, tmp_path / "plain", vocab_size=2000, show_progress=False, stats=False)
    build_tokenizer(files, tmp_path / "split", vocab_size=2000, split_punctuation=True, show_progress=False, stats=False)
    plain, split = load_tokenizer(tmp_path / "plain"), load_tokenizer(tmp_path / "split")
    assert len(_mixed(plain)) > 100  # without the split, sentence-final words merge with their full stop
    assert _mixed(split) == []
    words = [w for w, _ in split.backend_tokenizer.pre_tokenizer.pre_tokenize_str("Ein Hund (braun-weiß) rennt... 5 $")]
    assert words == ["▁Ein", "▁Hund", "▁(", "braun", "-", "weiß", ")", "▁rennt", "...", "▁5", "▁$"]
    assert split.tokenize("Zwei Männer.")[-1] == "." and plain.tokenize("Zwei Männer.")[-1] != "."
    # Still exact round trips on text the vocabulary was not trained on, and the setting is recorded.
    for lang in ("en", "de"):
        stats = tokenizer_stats(split, [shared_data / "multi30k" / f"test2016.{lang}"], max_lines=None)
        assert stats.files[0].round_trip_rate == 1.0 and stats.files[0].unk == 0
    assert is_round_trip(split, "« Salut ! » dit-il, l'air ravi (100 %) ☃")
    assert json.loads((tmp_path / "split" / METADATA_FILE).read_text())["split_punctuation"] is True


def test_lowercase_reads_and_writes_lowercase_only(shared_data, tmp_path):
    files = [head(shared_data / "multi30k" / f"train.{lang}", tmp_path / f"train.{lang}", 2000) for lang in ("en", "de")]
    report = build_tokenizer(files, tmp_path / "lc", vocab_size=1000, lowercase=True, show_progress=False)
    tok = load_tokenizer(tmp_path / "lc")
    learned = [t for t in tok.get_vocab() if t not in SPECIAL_TOKENS and t not in BYTE_TOKENS]
    assert learned and all(t == t.lower() for t in learned)
    assert tok("Ein HUND")["input_ids"] == tok("ein hund")["input_ids"]
    assert tok.decode(tok("Zwei Männer\u00a0ÜBER Äpfeln")["input_ids"], skip_special_tokens=True) == "zwei männer\u00a0über äpfeln"
    # Round trips are counted against the lowercased text.
    assert is_round_trip(tok, "Ein Hund.")
    assert all(f.round_trip_rate == 1.0 for side in report.sides for f in side.files)
    assert json.loads((tmp_path / "lc" / METADATA_FILE).read_text())["lowercase"] is True


def test_options_are_checked(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("a b c\n", encoding="utf-8")
    with pytest.raises(TxkitError, match="unknown tokenizer model 'wordpiece'"):
        build_tokenizer([text], tmp_path / "t", model="wordpiece", show_progress=False)
    with pytest.raises(TxkitError, match="unknown normalization 'NFX'"):
        build_tokenizer([text], tmp_path / "t", normalization="NFX", show_progress=False)
    with pytest.raises(TxkitError, match="exactly two languages"):
        build_tokenizer([text], tmp_path / "t", joint=False, show_progress=False)
    with pytest.raises(TxkitError, match="not a tokenizer folder"):
        load_tokenizer(tmp_path)


# -- CLI -------------------------------------------------------------------------------------------


def test_cli_build_prints_statistics(shared_data, tmp_path, capsys):
    en = head(shared_data / "multi30k" / "val.en", tmp_path / "val.en", 500)
    de = head(shared_data / "multi30k" / "val.de", tmp_path / "val.de", 500)
    code, out, _ = run_cli(
        ["tokenizer", "build", "--out", str(tmp_path / "tok"), "--vocab-size", "600", "--quiet", str(en), str(de)], capsys
    )
    assert code == 0
    assert "joint BPE vocabulary" in out and "600 tokens" in out and "characters cover" in out
    assert "val.en" in out and "val.de" in out and "round trip" in out
    code, out, _ = run_cli(["tokenizer", "stats", str(tmp_path / "tok"), str(en)], capsys)
    assert code == 0 and "tokens/sent" in out


def test_cli_user_errors(tmp_path, capsys):
    good = tmp_path / "good.en"
    good.write_text("one line\n", encoding="utf-8")
    bad = tmp_path / "bad.de"
    bad.write_bytes("erste Zeile\nzweite Zeile\n".encode() + b"dritte \xff Zeile\n")
    packed = tmp_path / "train.en.gz"
    packed.write_bytes(gzip.compress(b"a line\n"))
    out_dir = str(tmp_path / "tok")

    code, _, err = run_cli(["tokenizer", "build", "--out", out_dir, "-q", str(tmp_path / "missing.en")], capsys)
    assert code == 2 and err.strip() == f"error: {tmp_path / 'missing.en'}: no such file"

    code, _, err = run_cli(["tokenizer", "build", "--out", out_dir, "-q", str(good), str(bad)], capsys)
    assert code == 2
    assert err.strip() == f"error: {bad} line 3: not valid UTF-8 (byte 0xff); use --errors replace to go on"

    code, _, err = run_cli(["tokenizer", "build", "--out", out_dir, "-q", str(packed)], capsys)
    assert code == 2 and "unknown format (a gzip file)" in err and str(packed) in err

    code, _, err = run_cli(
        ["tokenizer", "build", "--out", out_dir, "-q", "--vocab-size", "300", "--errors", "replace", str(good), str(bad)],
        capsys,
    )
    assert code == 0, err


def test_cli_error_in_a_real_process(tmp_path):
    missing = tmp_path / "nothing.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "txkit", "tokenizer", "build", "--out", str(tmp_path / "t"), str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {missing}: no such file"]
    assert "Traceback" not in proc.stderr + proc.stdout
