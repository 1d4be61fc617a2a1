"""Subword regularisation: BPE-dropout on the training data, a fresh segmentation every epoch (`tokenizer.dropout`).

BPE-dropout (Provilkov et al., 2020) segments a word as BPE does, merging the adjacent pair with the best
merge rank again and again, except that at each step every candidate merge is left out with probability p;
when every candidate is left out, the word stays as it is. The model then sees many segmentations of the
same text and learns to compose words from smaller pieces. Validation and test keep the deterministic
segmentation (the tokenizer itself is never changed: the tokenizer.json that checkpoints and models carry
has no dropout, so decoding stays deterministic).

Why the merge loop is written here rather than taken from `tokenizers`: its BPE model has BPE-dropout
(`tokenizer.model.dropout = p`), but it draws from the Rust thread RNG (`rand::thread_rng`), which no API
seeds (tokenizers 0.23: two encodes of one sentence differ, within and across processes). Training then
could not be repeated or resumed exactly. So only the merge loop is txkit's: normalization, pre-tokenization,
the vocabulary, the merges and the special tokens all come from the tokenizer itself, and with p = 0 this
segmentation gives exactly the tokenizer's ids (tests/test_subword_sampling.py checks every Multi30k line).
Each sentence draws from its own generator seeded by (train.seed, epoch, side, pair index): the segmentation
of a pair does not depend on batching, processes or the pairs around it, and a resumed run recomputes the
epoch it resumes in. The cost is one pass of Python over the corpus per epoch (README gives the figure).

The unigram model of `tokenizers` cannot sample segmentations (it has no sampling parameter), so
`tokenizer.dropout` with a unigram tokenizer is an error rather than a silent no-op.
"""

from __future__ import annotations

import json
import random
import re
from typing import Sequence

import numpy as np

from txkit.batching import TokenBatchSampler, _collate, _round_up
from txkit.errors import TxkitError


_NO_MERGE = 1 << 62  # the rank of a pair that no merge joins


class BPEDropout:
    """The segmentation of a BPE `tokenizers` tokenizer, with each merge left out with probability `p`.

    `encode(text, rng)` returns what `tokenizer(text)["input_ids"]` returns (special tokens included) when
    p is 0; with p > 0 another segmentation of the same text (it decodes to the same text).
    """

    def __init__(self, tokenizer, p: float, what: str = "tokenizer"):
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        spec = json.loads(backend.to_str())
        model = spec["model"]
        if model["type"] != "BPE":
            raise TxkitError(
                f"tokenizer.dropout: {what} is a {model['type']} tokenizer; the tokenizers library can sample "
                "segmentations only of BPE (its Unigram model has no sampling), so build a BPE tokenizer "
                "(tokenizer.model: bpe) or set tokenizer.dropout to 0"
            )
        if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            raise TxkitError(f"tokenizer.dropout: {what} marks word pieces (prefix/suffix), which txkit's "
                             "BPE-dropout does not handle; use a tokenizer built by txkit")  # fmt: skip
        self.p = float(p)
        self.vocab: dict[str, int] = model["vocab"]
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}  # (left, right) -> priority (lower first)
        self.byte_fallback = bool(model.get("byte_fallback"))
        self.unk_id = self.vocab.get(model["unk_token"]) if model.get("unk_token") else None
        self.normalizer, self.pre_tokenizer = backend.normalizer, backend.pre_tokenizer
        self.prefix, self.suffix = _special_tokens(spec.get("post_processor"), self.vocab)
        # Added tokens (the special tokens, a recipe's source tags such as <2de>) are matched whole in the raw text
        # before anything else, as the tokenizer matches them; the space after one with rstrip belongs to it.
        added = spec.get("added_tokens") or []
        self.added = {t["content"]: (t["id"], bool(t.get("lstrip")), bool(t.get("rstrip"))) for t in added}
        longest_first = sorted(self.added, key=len, reverse=True)
        self._added_re = re.compile("|".join(map(re.escape, longest_first))) if added else None
        self._cache: dict[str, list[int]] = {}  # p = 0, or words that cannot be merged: their ids
        self._start: dict[str, tuple[list, list]] = {}  # word -> (characters, ranks of adjacent pairs)

    def encode(self, text: str, rng: random.Random | None = None) -> list[int]:
        """Subword ids of `text` (stripped, as txkit.data tokenizes it), special tokens included."""
        text = text.strip()
        ids = list(self.prefix)
        start = 0
        for match in self._added_re.finditer(text) if self._added_re is not None else ():
            token_id, lstrip, rstrip = self.added[match.group()]
            piece = text[start : match.start()]
            ids += self._piece(piece.rstrip() if lstrip else piece, rng)
            ids.append(token_id)
            start = match.end()
            if rstrip:
                start += len(text[start:]) - len(text[start:].lstrip())
        return ids + self._piece(text[start:], rng) + self.suffix

    def _piece(self, text: str, rng: random.Random | None) -> list[int]:
        """The ids of text without added tokens: normalized, pre-tokenized, each word segmented."""
        if not text:
            return []
        if self.normalizer is not None:
            text = self.normalizer.normalize_str(text)
        words = self.pre_tokenizer.pre_tokenize_str(text) if self.pre_tokenizer is not None else [(text, None)]
        ids = []
        for word, _ in words:
            ids += self._word(word, rng)
        return ids

    def _symbols(self, word: str) -> list[str]:
        """The word's characters as vocabulary entries: byte tokens (<0xE9>) or <unk> for the others."""
        symbols = []
        for ch in word:
            if ch in self.vocab:
                symbols.append(ch)
            elif self.byte_fallback and all(f"<0x{b:02X}>" in self.vocab for b in ch.encode("utf-8")):
                symbols += [f"<0x{b:02X}>" for b in ch.encode("utf-8")]
            else:
                symbols.append(None)  # <unk>: never merged
        return symbols

    def _word(self, word: str, rng: random.Random | None) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        start = self._start.get(word)
        if start is None:  # the word's characters and the ranks of their adjacent pairs, kept for the next time
            symbols = self._symbols(word)
            pairs = zip(symbols, symbols[1:])
            start = self._start[word] = (symbols, [self.ranks.get(pair, _NO_MERGE) for pair in pairs])
        symbols, pair_ranks = list(start[0]), list(start[1])  # pair_ranks[i]: rank of (symbols[i], symbols[i+1])
        p = self.p if rng is not None else 0.0
        ranks = self.ranks
        while len(pair_ranks):
            best = min(pair_ranks)
            if best == _NO_MERGE:
                break
            i = pair_ranks.index(best)  # the leftmost of the best rank, as tokenizers merges
            if p and rng.random() < p:
                # BPE-dropout: each candidate merge of this step is left out with probability p and the best one
                # kept is applied; the best was left out, so draw for the others in rank order until one is kept
                others = sorted((r, j) for j, r in enumerate(pair_ranks) if r != _NO_MERGE and j != i)
                for _, i in others:
                    if rng.random() >= p:
                        break
                else:  # every candidate left out: the word is done
                    break
            merged = symbols[i] + symbols[i + 1]
            symbols[i : i + 2] = [merged]
            del pair_ranks[i]
            if i < len(symbols) - 1:
                pair_ranks[i] = ranks.get((merged, symbols[i + 1]), _NO_MERGE)
            if i > 0:
                pair_ranks[i - 1] = ranks.get((symbols[i - 1], merged), _NO_MERGE)
        ids = [self.unk_id if s is None else self.vocab[s] for s in symbols]
        if not p or all(r == _NO_MERGE for r in start[1]):  # the same every time: remember it
            self._cache[word] = ids
        return ids


def _special_tokens(post_processor: dict | None, vocab: dict) -> tuple[list[int], list[int]]:
    """(ids before, ids after) the sentence that the tokenizer's TemplateProcessing adds (txkit's: </s>)."""
    if post_processor is None:
        return [], []
    if post_processor.get("type") != "TemplateProcessing":
        raise TxkitError(f"tokenizer.dropout: unsupported post-processor {post_processor.get('type')}")
    before, after, seen = [], [], False
    for item in post_processor["single"]:
        if "Sequence" in item:
            seen = True
        else:
            token = item["SpecialToken"]["id"]
            ids = post_processor["special_tokens"][token]["ids"] if token in post_processor.get("special_tokens", {}) \
                else [vocab[token]]  # fmt: skip
            (after if seen else before).extend(ids)
    return before, after


def sentence_rng(seed: int, epoch: int, side: int, index: int) -> random.Random:
    """The generator of one sentence's segmentation in one epoch (side 0 = source, 1 = target)."""
    return random.Random(((seed * 1_000_003 + epoch) * 2 + side) * 10_000_019 + index)


class _Segmentation:
    """One epoch's ids as flat arrays: values and offsets per side."""

    def __init__(self, src: list[list[int]], tgt: list[list[int]]):
        self.src_lengths = np.fromiter((len(s) for s in src), dtype=np.int64, count=len(src))
        self.tgt_lengths = np.fromiter((len(t) for t in tgt), dtype=np.int64, count=len(tgt))
        self._src = np.fromiter((i for s in src for i in s), dtype=np.int32)
        self._tgt = np.fromiter((i for t in tgt for i in t), dtype=np.int32)
        self._src_at = np.concatenate([[0], np.cumsum(self.src_lengths)])
        self._tgt_at = np.concatenate([[0], np.cumsum(self.tgt_lengths)])

    def src(self, i: int) -> np.ndarray:
        return self._src[self._src_at[i] : self._src_at[i + 1]]

    def tgt(self, i: int) -> np.ndarray:
        return self._tgt[self._tgt_at[i] : self._tgt_at[i + 1]]


class SampledPairs:
    """The training pairs of txkit.batching.TokenizedPairs, segmented afresh each epoch with BPE-dropout.

    Same interface as TokenizedPairs (`src_lengths`, `tgt_lengths`, `collate`, `len`, indexing); `collate`
    takes the epoch from the indices SampledBatchSampler hands out, so an update whose batches straddle two
    epochs collates each with its own epoch's segmentation. A pair whose sampled segmentation would be
    longer than `max_len` or wider than `max_tokens` keeps its deterministic one (the filters and batch
    budget still hold).
    """

    def __init__(self, base, src_texts: Sequence[str], tgt_texts: Sequence[str], src_tok, tgt_tok, p: float,
                 seed: int, max_len: int, max_tokens: int, pad_to_multiple_of: int = 8):  # fmt: skip
        if len(src_texts) != len(base) or len(tgt_texts) != len(base):
            raise ValueError("one source and one target text per tokenized pair")
        self.base = base
        self.src_texts, self.tgt_texts = src_texts, tgt_texts
        self.src_seg = BPEDropout(src_tok, p, "the source tokenizer")
        self.tgt_seg = self.src_seg if tgt_tok is src_tok else BPEDropout(tgt_tok, p, "the target tokenizer")
        self.seed, self.max_len, self.max_tokens, self.multiple = seed, max_len, max_tokens, pad_to_multiple_of
        self.src_lengths, self.tgt_lengths = base.src_lengths, base.tgt_lengths
        self._epochs: dict[int, _Segmentation] = {}  # the current epoch and the one before it

    def __len__(self) -> int:
        return len(self.base)

    def _fits(self, n: int) -> bool:
        return n <= self.max_len and _round_up(n, self.multiple) <= self.max_tokens

    def segmentation(self, epoch: int) -> _Segmentation:
        """Epoch `epoch`'s segmentation (computed on first use; the last two epochs are kept)."""
        if epoch not in self._epochs:
            src, tgt = [], []
            for i in range(len(self.base)):
                s = self.src_seg.encode(self.src_texts[i], sentence_rng(self.seed, epoch, 0, i))
                t = self.tgt_seg.encode(self.tgt_texts[i], sentence_rng(self.seed, epoch, 1, i))
                src.append(s if self._fits(len(s)) else self.base._src(i))
                tgt.append(t if self._fits(len(t)) else self.base._tgt(i))
            self._epochs[epoch] = _Segmentation(src, tgt)
            for old in [e for e in self._epochs if e < epoch - 1]:
                del self._epochs[old]
        seg = self._epochs[epoch]
        self.src_lengths, self.tgt_lengths = seg.src_lengths, seg.tgt_lengths
        return seg

    def __getitem__(self, i: int) -> dict:
        seg = self.segmentation(max(self._epochs, default=0))
        return {"input_ids": seg.src(i).tolist(), "labels": seg.tgt(i).tolist()}

    def collate(self, indices: Sequence[int], pad_id: int, pad_to_multiple_of: int = 8) -> dict:
        seg = self.segmentation(getattr(indices, "epoch", max(self._epochs, default=0)))
        return _collate([seg.src(i) for i in indices], [seg.tgt(i) for i in indices], pad_id, pad_to_multiple_of)


class EpochIndices(list):
    """A batch's pair indices, with the epoch whose segmentation they are to be collated with."""

    epoch: int = 0


class SampledBatchSampler(TokenBatchSampler):
    """TokenBatchSampler over SampledPairs: each epoch's batches are packed from that epoch's lengths."""

    def __init__(self, pairs: SampledPairs, max_tokens: int, **kwargs):
        super().__init__(pairs.base.src_lengths, pairs.base.tgt_lengths, max_tokens, **kwargs)
        self.pairs = pairs
        self._multiple = kwargs.get("pad_to_multiple_of", 8)

    def _epoch_batches(self, epoch: int):
        seg = self.pairs.segmentation(epoch)
        self.src_lengths = seg.src_lengths
        self.longer = np.maximum(seg.src_lengths, seg.tgt_lengths)  # (N,)
        self.widths = _round_up(self.longer, self._multiple)
        return super()._epoch_batches(epoch)

    def __iter__(self):
        epoch = self.epoch
        for batch in super().__iter__():
            tagged = EpochIndices(batch)
            tagged.epoch = epoch
            yield tagged
