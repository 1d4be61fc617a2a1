"""txkit.data and txkit.batching: corpus formats, filters, the datasets cache, token batching, sharding, resuming."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

import txkit.data
from txkit.batching import TokenBatchSampler, TokenizedPairs, collate
from txkit.data import load_parallel, tokenize_dataset
from conftest import head, run_cli
from txkit.errors import TxkitError
from txkit.tokenization import build_tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tok_dir(shared_data, tmp_path_factory) -> Path:
    """A small joint BPE vocabulary (1000 tokens) on 3000 lines of Multi30k en+de."""
    tmp = tmp_path_factory.mktemp("tok")
    files = [head(shared_data / "multi30k" / f"train.{lang}", tmp / f"train.{lang}", 3000) for lang in ("en", "de")]
    build_tokenizer(files, tmp / "tok", vocab_size=1000, show_progress=False, stats=False)
    return tmp / "tok"


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


@pytest.fixture(scope="module")
def val_pairs(shared_data, tok, tmp_path_factory) -> TokenizedPairs:
    """Multi30k val (1014 pairs), tokenized and held in memory."""
    cache = tmp_path_factory.mktemp("cache")
    ds = load_parallel(shared_data / "multi30k" / "val", "en", "de", cache_dir=cache)
    tokenized, _ = tokenize_dataset(ds, tok)
    return TokenizedPairs(tokenized)


# -- loading ---------------------------------------------------------------------------------------

PAIRS = [("A dog runs.", "Ein Hund rennt."), ("Two men.", "Zwei Männer."), ("It's red.", "Es ist rot.")]


def test_load_plain_text_pair(shared_data, tmp_path):
    ds = load_parallel(shared_data / "multi30k" / "val", "en", "de", cache_dir=tmp_path)
    assert ds.column_names == ["src", "tgt"] and len(ds) == 1014
    with open(shared_data / "multi30k" / "val.de", encoding="utf-8") as f:
        first_de = f.readline().strip()
    assert ds[0]["tgt"] == first_de


def test_load_tsv_jsonl_parquet_and_hub(tmp_path, monkeypatch):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    # TSV with a header naming the languages in the other order.
    (tmp_path / "c.tsv").write_text("de\ten\n" + "".join(f"{t}\t{s}\n" for s, t in PAIRS), encoding="utf-8")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"translation": {"en": s, "de": t}}) + "\n" for s, t in PAIRS))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"src": s, "tgt": t}) + "\n" for s, t in PAIRS))
    pq.write_table(pa.table({"translation": [{"en": s, "de": t} for s, t in PAIRS]}), tmp_path / "d.parquet")
    pq.write_table(pa.table({"en": [s for s, _ in PAIRS], "de": [t for _, t in PAIRS]}), tmp_path / "e.parquet")
    for name in ("c.tsv", "a.jsonl", "b.jsonl", "d.parquet", "e.parquet"):
        ds = load_parallel(tmp_path / name, "en", "de", cache_dir=tmp_path / "cache")
        assert list(zip(ds["src"], ds["tgt"])) == PAIRS, name

    # The Hub path (nothing can be downloaded here): load_dataset is replaced by a local dataset
    # shaped like wmt/wmt14's, with its Translation feature.
    features = datasets.Features({"translation": datasets.Translation(languages=["de", "en"])})
    hub_like = datasets.Dataset.from_dict({"translation": [{"en": s, "de": t} for s, t in PAIRS]}, features=features)
    calls = []

    def fake_load_dataset(path, name=None, split=None, cache_dir=None):
        calls.append((path, name, split))
        if path != "wmt/wmt14":
            raise FileNotFoundError(f"Couldn't find dataset {path} on the Hub\nmore detail")
        return hub_like

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_parallel("hub:wmt/wmt14", "en", "de", hub_config="de-en", split="train")
    assert calls == [("wmt/wmt14", "de-en", "train")]
    assert list(zip(ds["src"], ds["tgt"])) == PAIRS
    with pytest.raises(TxkitError, match="has languages de, en, not en and fr"):
        load_parallel("hub:wmt/wmt14", "en", "fr")
    with pytest.raises(TxkitError, match=r"^hub:nobody/none split train: cannot load \(Couldn't find dataset"):
        load_parallel("hub:nobody/none", "en", "de")


def test_bad_corpus_files(tmp_path):
    (tmp_path / "x.tsv").write_text("a\tb\nonly one column\n", encoding="utf-8")
    with pytest.raises(TxkitError, match=r"x.tsv line 2: expected 2 tab-separated columns"):
        load_parallel(tmp_path / "x.tsv", "en", "de", cache_dir=tmp_path)
    (tmp_path / "x.jsonl").write_text('{"en": "a", "de": "b"}\n{"en": "a"}\n', encoding="utf-8")
    with pytest.raises(TxkitError, match=r"x.jsonl line 2: no en/de text"):
        load_parallel(tmp_path / "x.jsonl", "en", "de", cache_dir=tmp_path)
    with pytest.raises(TxkitError, match=r"is a directory"):
        load_parallel(tmp_path, "en", "de")
    (tmp_path / "empty.en").write_text("", encoding="utf-8")
    (tmp_path / "empty.de").write_text("", encoding="utf-8")
    with pytest.raises(TxkitError, match=r"empty.de: no sentence pairs \(the corpus is empty\)"):
        load_parallel(tmp_path / "empty", "en", "de", cache_dir=tmp_path)


# -- tokenizing, filtering, cache ------------------------------------------------------------------


def test_filters_are_counted(tok, tmp_path):
    long = " ".join(["a"] * 40)  # "▁a" is one token
    rows = [
        ("A dog runs.", "Ein Hund rennt."),
        ("", "Leer."),  # empty
        (long, long),  # too long
        ("Hi", " ".join(["a"] * 20)),  # ratio: 20 tokens against at most 3
        ("A dog runs.", "Ein Hund rennt."),  # duplicate
        ("Two men.", "Zwei Männer."),
    ]
    (tmp_path / "c.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in rows), encoding="utf-8")
    ds = load_parallel(tmp_path / "c.tsv", "en", "de", cache_dir=tmp_path / "cache")
    out, report = tokenize_dataset(ds, tok, max_len=30, max_ratio=5, dedup=True)
    assert (report.total, report.empty, report.too_long, report.bad_ratio, report.duplicates, report.kept) == (6, 1, 1, 1, 1, 2)
    assert str(report) == (
        "6 pairs: 1 empty, 1 longer than 30 tokens, 1 with length ratio above 5, 1 duplicates removed; 2 kept"
    )
    assert out.column_names == ["input_ids", "labels"] and len(out) == 2
    assert tok.decode(out[1]["labels"], skip_special_tokens=True) == "Zwei Männer."
    assert out[0]["input_ids"][-1] == tok.eos_token_id and out[0]["labels"][-1] == tok.eos_token_id
    _, report = tokenize_dataset(ds, tok, max_len=30, max_ratio=5, dedup=False)
    assert report.kept == 3 and "duplicates" not in str(report)


def test_second_load_does_not_tokenize_again(shared_data, tok, tmp_path, monkeypatch):
    calls = []
    encode = txkit.data._encode_batch

    def counting_encode(batch, **kwargs):
        calls.append(len(batch["src"]))
        return encode(batch, **kwargs)

    monkeypatch.setattr(txkit.data, "_encode_batch", counting_encode)
    corpus = head(shared_data / "multi30k" / "val.en", tmp_path / "v.en", 400)
    head(shared_data / "multi30k" / "val.de", tmp_path / "v.de", 400)
    first, _ = tokenize_dataset(load_parallel(tmp_path / "v", "en", "de", cache_dir=tmp_path / "c"), tok)
    assert sum(calls) == 400
    second, _ = tokenize_dataset(load_parallel(tmp_path / "v", "en", "de", cache_dir=tmp_path / "c"), tok)
    assert sum(calls) == 400, "the second run tokenized again"
    assert second.cache_files == first.cache_files and second["labels"] == first["labels"]
    # A changed file is read and tokenized again.
    with open(corpus, "a", encoding="utf-8") as f:
        f.write("One more line.\n")
    with open(tmp_path / "v.de", "a", encoding="utf-8") as f:
        f.write("Eine Zeile mehr.\n")
    third, _ = tokenize_dataset(load_parallel(tmp_path / "v", "en", "de", cache_dir=tmp_path / "c"), tok)
    assert len(third) == 401 and sum(calls) == 800 + 1


# -- batching --------------------------------------------------------------------------------------


def synthetic_lengths(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    src = rng.integers(2, 120, size=n)
    tgt = np.clip(src + rng.integers(-10, 30, size=n), 2, None)
    return src, tgt


def flat(batches) -> list[int]:
    return sorted(i for b in batches for i in b)


def test_batches_respect_max_tokens_with_padding(val_pairs, tok):
    sampler = TokenBatchSampler(val_pairs.src_lengths, val_pairs.tgt_lengths, max_tokens=1000, seed=3)
    sizes = []
    for indices in sampler:
        batch = val_pairs.collate(indices, tok.pad_token_id)
        assert batch["input_ids"].numel() <= 1000 and batch["labels"].numel() <= 1000
        assert batch["input_ids"].shape[1] % 8 == 0 and batch["labels"].shape[1] % 8 == 0
        sizes.append(len(indices))
    assert max(sizes) > 10  # batches are full, not one pair each
    # collate from examples gives the same tensors as the in-memory fast path.
    indices = next(iter(sampler))
    slow = collate([val_pairs[i] for i in indices], tok.pad_token_id)
    fast = val_pairs.collate(indices, tok.pad_token_id)
    for key in ("input_ids", "attention_mask", "labels", "num_src_tokens", "num_tgt_tokens"):
        assert np.array_equal(np.asarray(slow[key]), np.asarray(fast[key])), key


def test_collate_pads():
    examples = [{"input_ids": [5, 6, 2], "labels": [7, 2]}, {"input_ids": [9, 2], "labels": [8, 8, 8, 2]}]
    batch = collate(examples, pad_id=0, pad_to_multiple_of=8)
    assert batch["input_ids"].tolist() == [[5, 6, 2, 0, 0, 0, 0, 0], [9, 2, 0, 0, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[7, 2] + [-100] * 6, [8, 8, 8, 2] + [-100] * 4]
    assert (batch["num_src_tokens"], batch["num_tgt_tokens"]) == (5, 6)


def test_tokenized_pairs_read_the_ids_in_place(shared_data, tok, tmp_path):
    """The ids stay in the memory-mapped Arrow cache files: building TokenizedPairs allocates the lengths (a few
    bytes a pair), not a copy of the ids (which grew with the corpus: ~1 GB at WMT's 4.5M pairs); filtered
    (scattered `select`) and sliced datasets give their own rows, across Arrow's record batches."""
    import tracemalloc

    from txkit.data import column_lengths

    ds = load_parallel(shared_data / "multi30k" / "train", "en", "de", cache_dir=tmp_path).select(range(8000))
    tokenized, _ = tokenize_dataset(ds, tok)
    ids_bytes = 4 * int(column_lengths(tokenized, "input_ids").sum() + column_lengths(tokenized, "labels").sum())
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    pairs = TokenizedPairs(tokenized)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < ids_bytes / 4, (peak, ids_bytes)
    scattered = tokenized.select(np.arange(len(tokenized))[::-3])  # an indices mapping over the cache file
    for view in (tokenized, scattered, tokenized.select(range(1500, 3500))):
        got = TokenizedPairs(view)
        assert len(got) == len(view)
        assert [got[i]["input_ids"] for i in range(len(got))] == view["input_ids"]
        assert [got[i]["labels"] for i in range(len(got))] == view["labels"]
        assert got.src_lengths.tolist() == [len(x) for x in view["input_ids"]]
    batch = pairs.collate([7999, 0, 1000], tok.pad_token_id)
    assert batch["input_ids"][0, : len(tokenized[7999]["input_ids"])].tolist() == tokenized[7999]["input_ids"]


def test_every_pair_once_per_epoch_and_epochs_differ():
    src, tgt = synthetic_lengths()
    sampler = TokenBatchSampler(src, tgt, max_tokens=2048, seed=7)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert flat(batches) == list(range(len(src)))
        assert len(batches) == len(sampler)
        for b in batches:
            width = -(-max(max(src[b]), max(tgt[b])) // 8) * 8
            assert len(b) * width <= 2048
        epochs.append(batches)
    assert epochs[0] != epochs[1] and len(epochs[0]) == len(epochs[1])
    # Same seed, same epoch: the same batches (every process computes the same epoch).
    again = TokenBatchSampler(src, tgt, max_tokens=2048, seed=7)
    again.set_epoch(1)
    assert list(again) == epochs[1]
    # Without shuffling, batches come in length order.
    ordered = list(TokenBatchSampler(src, tgt, max_tokens=2048, shuffle=False))
    widths = [max(max(src[b]), max(tgt[b])) for b in ordered]
    assert widths == sorted(widths)


@pytest.mark.parametrize("num_shards", [2, 3, 4, 7])
def test_shards_are_equal_and_together_the_whole_epoch(num_shards):
    src, tgt = synthetic_lengths(1001, seed=num_shards)
    shards = [TokenBatchSampler(src, tgt, 2048, seed=1, num_shards=num_shards, shard_index=r) for r in range(num_shards)]
    for epoch in (0, 1):
        batches = []
        for s in shards:
            s.set_epoch(epoch)
            batches.append(list(s))
        assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(shards[0])
        assert flat(itertools.chain(*batches)) == list(range(1001))  # every pair exactly once


def test_tiny_corpus_on_many_shards():
    shards = [TokenBatchSampler([3, 4, 5], [3, 4, 5], 64, num_shards=4, shard_index=r) for r in range(4)]
    batches = [list(s) for s in shards]
    assert [len(b) for b in batches] == [1, 1, 1, 1]
    assert set(flat(itertools.chain(*batches))) == {0, 1, 2}  # one pair is repeated: 3 pairs, 4 shards


def test_restored_sampler_continues_exactly():
    src, tgt = synthetic_lengths()
    reference = TokenBatchSampler(src, tgt, 2048, seed=5, num_shards=2, shard_index=1)
    uninterrupted = list(reference) + list(reference)  # epochs 0 and 1
    per_epoch = len(reference)
    for k in (0, 5, per_epoch - 1, per_epoch, per_epoch + 3):
        run = TokenBatchSampler(src, tgt, 2048, seed=5, num_shards=2, shard_index=1)
        seen = []
        while len(seen) < k:  # consume k batches, crossing the epoch boundary when k is large
            for batch in run:
                seen.append(batch)
                if len(seen) == k:
                    break
        state = json.loads(json.dumps(run.state_dict()))  # as saved in a checkpoint
        restored = TokenBatchSampler(src, tgt, 2048, seed=5, num_shards=2, shard_index=1)
        restored.load_state_dict(state)
        restored.set_epoch(state["epoch"])  # a training loop calls this; it keeps the position
        rest = []
        while len(seen) + len(rest) < 2 * per_epoch:
            rest += list(restored)
        assert seen + rest[: 2 * per_epoch - k] == uninterrupted, k


def test_max_tokens_smaller_than_a_pair():
    with pytest.raises(TxkitError, match="max_tokens 16 is smaller than the longest pair"):
        TokenBatchSampler([10, 30], [12, 5], max_tokens=16)


# -- user errors through the CLI -------------------------------------------------------------------


def test_cli_corpus_errors(tok_dir, tmp_path, capsys):
    cache = ["--cache-dir", str(tmp_path / "cache")]

    def encode(corpus: str, *extra: str) -> tuple[int, str, str]:
        """Exit code, stdout and the last line of stderr (progress bars of `datasets` come before it)."""
        code, out, err = run_cli(["tokenizer", "encode", str(tok_dir), corpus, *cache, *extra], capsys)
        assert "Traceback" not in err
        return code, out, (err.strip().splitlines() or [""])[-1]

    (tmp_path / "a.en").write_text("One.\nTwo.\nThree.\n", encoding="utf-8")
    (tmp_path / "a.de").write_text("Eins.\nZwei.\n", encoding="utf-8")
    code, _, err = encode(str(tmp_path / "a"))
    assert code == 2
    assert err == f"error: {tmp_path / 'a.en'} has 3 lines but {tmp_path / 'a.de'} has 2 lines; parallel files must align"

    (tmp_path / "b.en").write_text("One.\nTwo.\n", encoding="utf-8")
    (tmp_path / "b.de").write_bytes(b"Eins.\nZw\xe4i.\n")
    code, _, err = encode(str(tmp_path / "b"))
    assert code == 2
    assert err == f"error: {tmp_path / 'b.de'} line 2: not valid UTF-8 (byte 0xe4); use --errors replace to go on"
    code, out, err = encode(str(tmp_path / "b"), "--errors", "replace")
    assert code == 0 and "2 pairs" in out and "2 kept" in out

    code, _, err = encode(str(tmp_path / "nothing"))
    assert code == 2 and err == f"error: {tmp_path / 'nothing.en'}: no such file"

    (tmp_path / "corpus.xml").write_text("<xml/>", encoding="utf-8")
    code, _, err = encode(str(tmp_path / "corpus.xml"))
    assert code == 2 and err.startswith(f"error: {tmp_path / 'corpus.xml'}: unknown corpus format")

    (tmp_path / "e.en").write_text("\n \nHello\n", encoding="utf-8")
    (tmp_path / "e.de").write_text("Hallo\n\n\n", encoding="utf-8")
    code, _, err = encode(str(tmp_path / "e"))
    assert code == 2
    assert err == (
        f"error: {tmp_path / 'e'} is empty after filtering (3 pairs: 3 empty, 0 longer than 256 tokens, "
        "0 with length ratio above 9 removed; 0 kept)"
    )
