"""Tests for txkit/subword_sampling.py: BPE-dropout on real Multi30k text with a real `tokenizers` BPE vocabulary."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from conftest import head
from txkit.batching import TokenizedPairs
from txkit.errors import TxkitError
from txkit.subword_sampling import BPEDropout, SampledBatchSampler, SampledPairs, sentence_rng
from txkit.tokenization import load_tokenizer

N_LINES = 5000


@pytest.fixture(scope="module")
def lines(shared_data) -> list[str]:
    m30k = shared_data / "multi30k"
    sides = [(m30k / f"train.{lang}").read_text(encoding="utf-8").splitlines()[:N_LINES] for lang in ("en", "de")]
    return sides[0] + sides[1]


@pytest.fixture(scope="module")
def tok(tokenizer_300):
    return load_tokenizer(tokenizer_300)


def test_without_dropout_it_is_the_tokenizers_own_segmentation(tok, lines):
    """p = 0 gives exactly the ids of `tokenizers` (normalization, byte fallback, </s> included): only the
    merge loop is txkit's, and it merges as tokenizers does."""
    expected = [e.ids for e in tok.backend_tokenizer.encode_batch_fast([line.strip() for line in lines])]
    plain = BPEDropout(tok, 0.0)
    assert [plain.encode(line) for line in lines] == expected
    text = "Ein Café, naïve — 東京"  # characters outside the vocabulary: byte fallback
    assert plain.encode(text + " ") == tok(text)["input_ids"]


def test_it_follows_a_tokenizer_that_splits_punctuation(lines, tmp_path):
    """The pre-tokenizer is the tokenizer's own, so split_punctuation's pieces are never merged across either."""
    from txkit.tokenization import build_tokenizer

    (tmp_path / "train.txt").write_text("\n".join(lines[:2000]) + "\n", encoding="utf-8")
    build_tokenizer([tmp_path / "train.txt"], tmp_path / "tok", vocab_size=1000, split_punctuation=True,
                    show_progress=False, stats=False)  # fmt: skip
    split = load_tokenizer(tmp_path / "tok")
    expected = [e.ids for e in split.backend_tokenizer.encode_batch_fast([line.strip() for line in lines])]
    assert [BPEDropout(split, 0.0).encode(line) for line in lines] == expected
    sampler, rng = BPEDropout(split, 0.5), sentence_rng(1, 0, 0, 0)
    pieces = split.convert_ids_to_tokens(sampler.encode("Ein Hund, der rennt.", rng))
    assert "," in pieces and pieces[-2:] == [".", "</s>"]  # punctuation stays its own piece under dropout too


def test_dropout_is_seeded_per_sentence_and_keeps_the_text(tok, lines):
    sample = lines[:: len(lines) // 400]
    a, b = BPEDropout(tok, 0.1), BPEDropout(tok, 0.1)
    epoch0 = [a.encode(line, sentence_rng(7, 0, 0, i)) for i, line in enumerate(sample)]
    assert epoch0 == [b.encode(line, sentence_rng(7, 0, 0, i)) for i, line in enumerate(sample)]  # same seeds
    epoch1 = [a.encode(line, sentence_rng(7, 1, 0, i)) for i, line in enumerate(sample)]
    plain = [tok(line.strip())["input_ids"] for line in sample]
    assert sum(x != y for x, y in zip(epoch0, epoch1)) > len(sample) // 2  # a fresh segmentation each epoch
    assert sum(map(len, epoch0)) > 1.05 * sum(map(len, plain))  # dropped merges leave more, smaller pieces
    for ids, ref in zip(epoch0, plain):
        assert tok.decode(ids, skip_special_tokens=True) == tok.decode(ref, skip_special_tokens=True)
        assert ids[-1] == ref[-1] == tok.eos_token_id
    # the tokenizers library's own BPE-dropout cannot be seeded: why txkit draws itself
    backend = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer).backend_tokenizer
    backend.model.dropout = 0.5
    assert len({tuple(backend.encode(sample[0]).ids) for _ in range(20)}) > 1


def test_unigram_is_refused_in_one_line(tmp_path, shared_data):
    from txkit.tokenization import build_tokenizer

    head(shared_data / "multi30k" / "train.en", tmp_path / "t.en", 300)
    build_tokenizer([tmp_path / "t.en"], tmp_path / "uni", vocab_size=300, model="unigram", show_progress=False,
                    stats=False)  # fmt: skip
    with pytest.raises(TxkitError, match=r"tokenizer\.dropout: the source tokenizer is a Unigram tokenizer; .*BPE"):
        BPEDropout(load_tokenizer(tmp_path / "uni"), 0.1, "the source tokenizer")


def _sampled(tok, texts, max_tokens=512, shards=1, index=0, p=0.1):
    from datasets import Dataset

    from txkit.data import tokenize_dataset

    ds = Dataset.from_dict({"src": texts[0], "tgt": texts[1]})
    ids, _ = tokenize_dataset(ds, tok, tok, max_len=64, max_ratio=1e9)
    base = TokenizedPairs(ids)
    assert base.rows is not None  # a few pairs longer than 64 were filtered: texts follow the kept rows
    src, tgt = [texts[0][i] for i in base.rows], [texts[1][i] for i in base.rows]
    pairs = SampledPairs(base, src, tgt, tok, tok, p, seed=3, max_len=64, max_tokens=max_tokens)
    return pairs, SampledBatchSampler(pairs, max_tokens, seed=3, num_shards=shards, shard_index=index)


def test_each_epoch_batches_its_own_segmentation_and_resumes_exactly(tok, shared_data):
    m30k = shared_data / "multi30k"
    texts = [(m30k / f"train.{lang}").read_text(encoding="utf-8").splitlines()[:400] for lang in ("en", "de")]
    pairs, sampler = _sampled(tok, texts)
    n = len(pairs)
    epochs = []
    for _ in range(2):
        batches = list(sampler)
        collated = [pairs.collate(b, tok.pad_token_id) for b in batches]
        assert all(b.epoch == sampler.epoch - 1 for b in batches)
        assert all(c["input_ids"].numel() <= 512 and c["labels"].numel() <= 512 for c in collated)  # the budget holds
        assert sorted(i for b in batches for i in b) == list(range(n))  # every pair once an epoch
        epochs.append({i: row for b, c in zip(batches, collated) for i, row in zip(b, c["input_ids"].tolist())})
    assert sum(epochs[0][i] != epochs[1][i] for i in range(n)) > n // 2  # re-segmented, not only re-shuffled
    plain = tok(texts[0][int(pairs.base.rows[0])])["input_ids"]
    assert tok.decode([t for t in epochs[1][0] if t != tok.pad_token_id], skip_special_tokens=True) == \
        tok.decode(plain, skip_special_tokens=True)  # fmt: skip

    # a sampler and pairs rebuilt from the state of the middle of epoch 1 continue with the same batches and ids
    pairs, sampler = _sampled(tok, texts)
    list(sampler)
    stream = iter(sampler)
    first = [next(stream) for _ in range(3)]
    state = sampler.state_dict()
    rest = [pairs.collate(b, tok.pad_token_id)["labels"] for b in stream]
    pairs2, resumed = _sampled(tok, texts)
    resumed.load_state_dict(state)
    again = [pairs2.collate(b, tok.pad_token_id)["labels"] for b in resumed]
    assert len(again) == len(rest) and all(x.equal(y) for x, y in zip(again, rest))
    assert first[0].epoch == 1


def test_with_a_vanishing_rate_training_sees_exactly_the_plain_batches(tok, shared_data):
    """The sampled path (SampledPairs, SampledBatchSampler, collate by epoch) with dropout 1e-12, in effect none,
    hands training the very tensors of the plain path (TokenizedPairs, TokenBatchSampler) epoch after epoch: so
    what BPE-dropout changes in training is the segmentations, nothing else. (End to end, `txkit run` of the tiny
    recipe with tokenizer.dropout=1e-9 logged the baseline's training losses bit for bit through step 350.)"""
    from txkit.batching import TokenBatchSampler

    m30k = shared_data / "multi30k"
    texts = [(m30k / f"train.{lang}").read_text(encoding="utf-8").splitlines()[:400] for lang in ("en", "de")]
    pairs, sampler = _sampled(tok, texts, p=1e-12)
    base = pairs.base
    plain = TokenBatchSampler(base.src_lengths, base.tgt_lengths, 512, seed=3)
    for _ in range(3):
        sampled_batches, plain_batches = list(sampler), list(plain)
        assert [list(b) for b in sampled_batches] == [list(b) for b in plain_batches]
        for b in sampled_batches:
            got, want = pairs.collate(b, tok.pad_token_id), base.collate(list(b), tok.pad_token_id)
            assert got.keys() == want.keys()
            for key, value in want.items():
                assert got[key].equal(value) if hasattr(value, "equal") else got[key] == value, key
