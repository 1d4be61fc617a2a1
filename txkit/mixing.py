"""Several training corpora in one run, mixed by weight, each with an optional source-side tag (`data.train`).

    data:
      train:                                   # a plain string (one corpus) works as before
        - {path: multi30k/train, weight: 2}
        - {path: bt/news.tsv, weight: 1, tag: "<BT>"}

    parse_train(value, source)        the recipe's `data.train` checked (txkit.corpus_spec, light: the recipe uses it)
    train_corpora(recipe)             [TrainCorpus] for either form (txkit.corpus_spec)
    Mixture(sizes, weights, seed)     which pairs of each corpus an epoch draws (stateless, from the seed)
    MixedBatchSampler(...)            txkit.batching's token-bucketed batches over an epoch's drawn pairs

The semantics chosen, and why. Marian weights sentences (a weight per line, scaling the loss); Eole takes
`weight` examples from each corpus in turn, reading every corpus as an endless cycle; OpusTrainer mixes by
per-stage proportions of lines drawn from each corpus, again cycling. txkit follows Eole and OpusTrainer,
because a weight that scales the loss changes the learning rate of a corpus, not what the model sees:

  * a weight is the share of *pairs* drawn from its corpus, whatever the corpus's size (weights 1 and 1
    give half and half, even when one corpus is ten times the other);
  * an epoch keeps its meaning of "as many pairs as the corpora hold together" (the sum of their sizes
    after filtering); corpus i contributes round(N * w_i / sum w) of them, exactly (largest remainders);
  * each corpus is read as an endless stream of shuffled passes over it (pass k is a permutation seeded
    by (train.seed, corpus, k)): a corpus drawn more often than its size shows every pair k times before any
    pair k + 1 times; one drawn less often shows every pair once before any twice, across epochs;
  * the drawn pairs are then batched by token budget exactly as one corpus is (txkit.batching): sorted by
    length, packed, the batch order shuffled. The proportion is exact over an epoch and holds per step in
    expectation (a batch holds pairs of similar length, so one step may lean to one corpus; which steps
    do is random). Making every batch hold the exact proportion would give up length bucketing.

Epoch e's draw depends on (seed, e) only, so all processes draw the same pairs (sharding is the batch
sampler's, unchanged), and resuming at (epoch, position) recomputes the same epoch: exact resume needs no
new state. With BPE-dropout, an epoch's batches are packed from that epoch's segmentation of the drawn pairs.

A recipe with one corpus (the string form, or a one-entry list without a tag) takes the code path it always
took: the same batches, bit for bit, and the same run fingerprint.

The recipe-side parsing lives in txkit.corpus_spec (the standard library only), which the recipe imports;
this module is the data stage's part: the draw, the sampler, the tags in the text and in the tokenizer.
"""

from __future__ import annotations

from txkit.corpus_spec import TrainCorpus, is_mixture, parse_train, tag_text, train_corpora, train_tags
from txkit.errors import TxkitError

__all__ = ["Mixture", "TrainCorpus", "check_tags", "is_mixture", "make_mixed_sampler", "parse_train", "tag_dataset",
           "tag_text", "train_corpora", "train_tags"]  # fmt: skip


def check_tags(tokenizer, tags: list[str], folder) -> None:
    """Each tag is a special token of `tokenizer`: a one-line error naming the tag and the folder otherwise."""
    added = tokenizer.get_added_vocab()
    for tag in tags:
        if tag not in added:
            raise TxkitError(
                f"{folder}: the tokenizer has no token {tag} (a data.train tag); build a new tokenizer with the recipe "
                "(a new tokenizer.path) or remove the tag"
            )


class Mixture:
    """Which pairs each epoch draws from each corpus: counts in proportion to the weights, stateless.

    `sizes`: pairs per corpus (after filtering); corpus i's pairs are global indices offsets[i]..offsets[i+1].
    """

    def __init__(self, sizes: list[int], weights: list[float], seed: int):
        import numpy as np

        self.sizes = [int(s) for s in sizes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)  # (corpora + 1,)
        self.seed = seed
        total = sum(self.sizes)
        shares = np.asarray(weights, dtype=np.float64) / float(sum(weights)) * total
        counts = np.floor(shares).astype(np.int64)
        # largest remainders (ties: the earlier corpus) so the counts add up to the epoch's size exactly
        for i in np.argsort(-(shares - counts), kind="stable")[: total - int(counts.sum())]:
            counts[i] += 1
        self.counts = counts  # (corpora,) pairs per epoch from each corpus

    def _stream(self, corpus: int, start: int, stop: int):
        """Positions start..stop of the corpus's endless stream of shuffled passes (local indices)."""
        import numpy as np

        size = self.sizes[corpus]
        parts = []
        for k in range(start // size, (stop - 1) // size + 1):
            perm = np.random.default_rng([self.seed, 1 + corpus, k]).permutation(size)
            lo, hi = max(start - k * size, 0), min(stop - k * size, size)
            parts.append(perm[lo:hi])
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def draw(self, epoch: int):
        """Global pair indices of epoch `epoch`, corpus by corpus (the batch sampler reorders them): (N,)."""
        import numpy as np

        parts = []
        for i, n in enumerate(self.counts):
            n = int(n)
            if n:
                parts.append(self.offsets[i] + self._stream(i, epoch * n, (epoch + 1) * n))
        return np.concatenate(parts).astype(np.int64)

    def corpus_of(self, indices):
        """Which corpus each global pair index belongs to."""
        import numpy as np

        return np.searchsorted(self.offsets, np.asarray(indices), side="right") - 1


def mixed_sampler(base_cls):
    """A subclass of a TokenBatchSampler class (plain, or BPE-dropout's) that batches each epoch's drawn pairs."""

    class MixedBatchSampler(base_cls):
        mixture: Mixture

        def _epoch_batches(self, epoch: int):
            import numpy as np

            from txkit.batching import TokenBatchSampler, _round_up

            if hasattr(self, "pairs"):  # BPE-dropout: this epoch's segmentation of every pair
                seg = self.pairs.segmentation(epoch)
                src, longer = seg.src_lengths, np.maximum(seg.src_lengths, seg.tgt_lengths)
            else:
                src, longer = self._all_src, self._all_longer
            drawn = self.mixture.draw(epoch)  # (N,) global indices, repeats allowed
            self.src_lengths, self.longer = src[drawn], longer[drawn]
            self.widths = _round_up(self.longer, self._multiple)
            order, ranges = TokenBatchSampler._epoch_batches(self, epoch)
            return drawn[order], ranges

    MixedBatchSampler.__name__ = f"Mixed{base_cls.__name__}"
    return MixedBatchSampler


def make_mixed_sampler(mixture: Mixture, src_lengths, tgt_lengths, max_tokens: int, pairs=None, **kwargs):
    """The batch sampler of a mixture: over `pairs` (BPE-dropout's SampledPairs) when given, else over lengths."""
    import numpy as np

    from txkit.batching import TokenBatchSampler

    if pairs is not None:
        from txkit.subword_sampling import SampledBatchSampler

        sampler = mixed_sampler(SampledBatchSampler)(pairs, max_tokens, **kwargs)
    else:
        sampler = mixed_sampler(TokenBatchSampler)(src_lengths, tgt_lengths, max_tokens, **kwargs)
    sampler.mixture = mixture
    sampler._multiple = kwargs.get("pad_to_multiple_of", 8)
    sampler._all_src = np.asarray(src_lengths, dtype=np.int64)
    sampler._all_longer = np.maximum(sampler._all_src, np.asarray(tgt_lengths, dtype=np.int64))
    return sampler


def _prepend_tag(batch: dict, tag: str) -> dict:
    # an empty source stays empty, so that txkit.data's filter still drops the pair (a lone tag is not a sentence)
    return {"src": [tag_text(tag, text.strip()) if (text or "").strip() else text for text in batch["src"]]}


def tag_dataset(ds, tag: str):
    """A `src`/`tgt` Dataset with `tag` before every source sentence (cached by `datasets` under the tag)."""
    import hashlib

    if not tag:
        return ds
    fingerprint = hashlib.sha256(f"{ds._fingerprint}|tag-v2|{tag}".encode()).hexdigest()[:32]
    return ds.map(_prepend_tag, batched=True, fn_kwargs={"tag": tag}, new_fingerprint=fingerprint, desc="tagging")
