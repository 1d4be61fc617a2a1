"""Token-bucketed batches: pairs grouped by length, at most `max_tokens` tokens a batch with padding.

    TokenizedPairs(ds)      the ids of a tokenized corpus in memory (flat arrays), fast to fetch and collate
    TokenBatchSampler(...)  lists of indices: shuffled per epoch from a seed; sharded so every process
                            gets the same number of batches; its state (epoch, position) resumable
    collate(examples, pad)  padded torch tensors for the model
"""

from __future__ import annotations

import math
import warnings
from typing import Iterator, Sequence

import numpy as np

from txkit.errors import TxkitError


def _round_up(n, multiple: int):
    return -(-n // multiple) * multiple


def _pad(seqs: Sequence, value: int, multiple: int) -> np.ndarray:
    """Right-pad sequences into an int64 (B, L) array, L = longest rounded up to `multiple`."""
    width = _round_up(max(len(s) for s in seqs), multiple)
    out = np.full((len(seqs), width), value, dtype=np.int64)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = seq
    return out


def _collate(src: Sequence, tgt: Sequence, pad_id: int, pad_to_multiple_of: int) -> dict:
    import torch

    input_ids = _pad(src, pad_id, pad_to_multiple_of)  # (B, S)
    labels = _pad(tgt, -100, pad_to_multiple_of)  # (B, T); -100 is ignored by the loss
    src_lengths = np.array([len(s) for s in src])
    attention_mask = np.arange(input_ids.shape[1])[None, :] < src_lengths[:, None]  # (B, S)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask.astype(np.int64)),
        "labels": torch.from_numpy(labels),
        # Counts for loss normalisation and throughput; pop them before calling the model.
        "num_src_tokens": int(src_lengths.sum()),
        "num_tgt_tokens": int(sum(len(t) for t in tgt)),
    }


def collate(examples: Sequence[dict], pad_id: int, pad_to_multiple_of: int = 8) -> dict:
    """Pad examples ({"input_ids": [...], "labels": [...]}) into a batch of torch tensors.

    Returns `input_ids` (B, S) and `attention_mask` (B, S) padded with `pad_id`/0, `labels` (B, T)
    padded with -100, S and T rounded up to `pad_to_multiple_of`; plus the ints `num_src_tokens`
    and `num_tgt_tokens` (non-padding tokens, </s> included).
    """
    return _collate([ex["input_ids"] for ex in examples], [ex["labels"] for ex in examples], pad_id, pad_to_multiple_of)


class TokenizedPairs:
    """The ids of a tokenized corpus, read in place from the dataset's memory-mapped Arrow files.

    Fetching a batch is a few numpy slices instead of an Arrow lookup per example. The token ids
    are numpy views of the Arrow buffers (no copy), so they stay in the `datasets` cache files and
    only the pages of the batches read come into memory; what is built in memory is the lengths,
    a few bytes per pair. (A WMT-sized corpus, 4.5M pairs of ~30 tokens a side, holds ~1 GB of ids:
    copying them out, as this class once did, made peak memory grow with the corpus;
    benchmarks/bench_scale.py measures it.)
    """

    def __init__(self, ds):
        import pyarrow as pa

        table = ds.data.table  # (physical rows) the Arrow table behind the dataset, memory-mapped when cached
        # A filtered dataset (`select` of scattered rows) is the whole table plus an indices mapping
        # from its rows to the table's; keep that mapping rather than gathering the rows into memory.
        indices = getattr(ds, "_indices", None)
        self.rows = None if indices is None else indices.column(0).to_numpy().astype(np.int64)  # (N,)

        def chunks(column: str):
            values, offsets, lengths = [], [], []
            for chunk in table.column(column).chunks:  # one Arrow record batch each (~1000 rows)
                if not isinstance(chunk, pa.ListArray):
                    chunk = chunk.cast(pa.list_(pa.int32()))
                offs = chunk.offsets.to_numpy()  # (rows + 1,) int32 into the chunk's values; a slice's own
                values.append(chunk.values.to_numpy(zero_copy_only=False))  # the ids, a view of the file
                offsets.append(offs)
                lengths.append(np.diff(offs))
            return values, offsets, np.concatenate(lengths) if lengths else np.zeros(0, np.int32)

        self._src_values, self._src_offsets, src_lengths = chunks("input_ids")
        self._tgt_values, self._tgt_offsets, tgt_lengths = chunks("labels")
        sizes = [len(o) - 1 for o in self._src_offsets]
        self._chunk_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # (chunks + 1,)
        if self.rows is not None:
            src_lengths, tgt_lengths = src_lengths[self.rows], tgt_lengths[self.rows]
        self.src_lengths = src_lengths.astype(np.int64)  # (N,)
        self.tgt_lengths = tgt_lengths.astype(np.int64)  # (N,)

    def __len__(self) -> int:
        return len(self.src_lengths)

    def _locate(self, i: int) -> tuple[int, int]:
        """(chunk, row inside it) of pair i."""
        row = int(self.rows[i]) if self.rows is not None else int(i)
        chunk = int(np.searchsorted(self._chunk_starts, row, side="right")) - 1
        return chunk, row - int(self._chunk_starts[chunk])

    def _src(self, i: int) -> np.ndarray:
        c, r = self._locate(i)
        return self._src_values[c][self._src_offsets[c][r] : self._src_offsets[c][r + 1]]

    def _tgt(self, i: int) -> np.ndarray:
        c, r = self._locate(i)
        return self._tgt_values[c][self._tgt_offsets[c][r] : self._tgt_offsets[c][r + 1]]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self._src(i).tolist(), "labels": self._tgt(i).tolist()}

    def collate(self, indices: Sequence[int], pad_id: int, pad_to_multiple_of: int = 8) -> dict:
        """`collate` of the pairs at `indices`, without building Python lists."""
        return _collate([self._src(i) for i in indices], [self._tgt(i) for i in indices], pad_id, pad_to_multiple_of)


class TokenBatchSampler:
    """Batches of pair indices holding at most `max_tokens` tokens each, padding counted.

    Tokens of a batch: B pairs padded to S source and T target positions (S, T rounded up to
    `pad_to_multiple_of`, as `collate` pads) count B * max(S, T) — the larger of the two padded
    tensors, as in fairseq. So `collate`'s `input_ids` and `labels` never exceed `max_tokens`.

    Per epoch: pairs are sorted by max(source, target) padded length, ties broken by a random
    permutation seeded by (seed, epoch); consecutive pairs are packed greedily; the batch order is
    shuffled with the same seed. Batch boundaries depend on the lengths only, so every epoch has
    the same number of batches, while the pairs inside them and their order change. With
    shuffle=False pairs are in exact length order, shortest batches first, the same every epoch.

    Sharding (`num_shards` processes, this one `shard_index`): shard r takes batches r, r+S, ...
    To give every shard the same number of batches, the largest batches are split in two until
    the count divides evenly, so every pair is still seen exactly once per epoch and the shards
    together are the whole epoch. Only when there are fewer pairs than that needs are batches
    repeated (from the start of the epoch's order). All processes compute the same batches.

    State: (epoch, position), position = batches of this shard handed out in this epoch.
    Iterating resumes from the position; finishing an epoch moves to (epoch + 1, 0).
    `set_epoch(e)` jumps to epoch e (position 0) unless already in it, so calling it after
    `load_state_dict` keeps the restored position. Behind a DataLoader with workers the sampler
    runs ahead of the batches consumed: save the position from the training loop in that case.
    """

    def __init__(
        self,
        src_lengths: Sequence[int],
        tgt_lengths: Sequence[int],
        max_tokens: int,
        seed: int = 0,
        num_shards: int = 1,
        shard_index: int = 0,
        shuffle: bool = True,
        pad_to_multiple_of: int = 8,
        max_sentences: int | None = None,
    ):
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index {shard_index} is outside 0..{num_shards - 1}")
        src = np.asarray(src_lengths, dtype=np.int64)
        tgt = np.asarray(tgt_lengths, dtype=np.int64)
        if src.shape != tgt.shape or src.ndim != 1:
            raise ValueError("src_lengths and tgt_lengths must be 1-D and of equal length")
        if len(src) == 0:
            raise TxkitError("no pairs to batch: the corpus is empty")
        self.longer = np.maximum(src, tgt)  # (N,)
        self.src_lengths = src
        # Width of each pair in a batch: its longer side, padded as collate pads.
        self.widths = _round_up(self.longer, pad_to_multiple_of)  # (N,)
        longest = int(self.widths.max())
        if longest > max_tokens:
            raise TxkitError(
                f"max_tokens {max_tokens} is smaller than the longest pair ({longest} tokens after padding); "
                "raise max_tokens or filter with a lower max_len"
            )
        self.max_tokens = max_tokens
        self.max_sentences = max_sentences
        self.seed = seed
        self.num_shards = num_shards
        self.shard_index = shard_index
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, order, this shard's ranges)

    # -- building ----------------------------------------------------------------------------------

    def _pack(self, order: np.ndarray) -> list[tuple[int, int]]:
        """Greedy packing of the pairs in `order` (sorted by width): (start, end) ranges.

        A batch that starts at `start` may grow to element j while (j - start + 1) * width[j] <=
        max_tokens (width is non-decreasing, so width[j] is the batch's width). Runs of equal width
        are taken in one jump, so this loops once per batch, not once per pair.
        """
        widths = self.widths[order]
        run_end = np.searchsorted(widths, widths, side="right")  # end of each element's equal-width run
        cap_sentences = self.max_sentences or len(order)
        ranges, n, i = [], len(order), 0
        while i < n:
            start = i
            while i < n:
                size = min(self.max_tokens // int(widths[i]), cap_sentences)  # batch size allowed at this width
                end = min(start + size, int(run_end[i]))
                if end <= i:
                    break
                full = end < run_end[i]
                i = end
                if full:
                    break
            ranges.append((start, i))
        return ranges

    def _epoch_batches(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """All batches of an epoch (every shard's), in the order shards take them: (order, ranges).

        Batch k is `order[ranges[k, 0]:ranges[k, 1]]`. Kept as two arrays rather than lists of
        Python ints (~40 bytes per pair, 180 MB at WMT's 4.5M pairs), built one batch at a time.
        """
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.widths)
        if self.shuffle:
            perm = rng.permutation(n)
            order = perm[np.argsort(self.widths[perm], kind="stable")]  # by width, random ties
        else:  # exact length order (longer side, then source), e.g. for decoding
            order = np.lexsort((self.src_lengths, self.longer))
        ranges = self._pack(order)
        ranges = self._even_out(ranges)
        if self.shuffle:
            ranges = [ranges[i] for i in rng.permutation(len(ranges))]
        short = -len(ranges) % self.num_shards  # > 0 only when no batch can be split further
        ranges = ranges + [ranges[k % len(ranges)] for k in range(short)]
        return order, np.asarray(ranges, dtype=np.int64).reshape(-1, 2)  # (N,), (batches, 2)

    def _even_out(self, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Split the largest batches in two until the batch count is a multiple of num_shards."""
        need = -len(ranges) % self.num_shards
        if need == 0:
            return ranges
        by_size = sorted(range(len(ranges)), key=lambda k: (-(ranges[k][1] - ranges[k][0]), k))
        split = {k for k in by_size[:need] if ranges[k][1] - ranges[k][0] >= 2}
        out = []
        for k, (a, b) in enumerate(ranges):
            if k in split:
                mid = (a + b) // 2
                out += [(a, mid), (mid, b)]
            else:
                out.append((a, b))
        if len(split) == need:
            return out
        return self._even_out(out) if any(b - a >= 2 for a, b in out) else out

    def _shard_batches(self) -> tuple[np.ndarray, np.ndarray]:
        """This shard's batches of the current epoch: (order, ranges), as `_epoch_batches`."""
        if self._cache is None or self._cache[0] != self.epoch:
            order, ranges = self._epoch_batches(self.epoch)
            self._cache = (self.epoch, order, ranges[self.shard_index :: self.num_shards])
        return self._cache[1], self._cache[2]

    # -- iterating and resuming --------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches per shard per epoch (the same for every shard and every epoch)."""
        return len(self._shard_batches()[1])

    def __iter__(self) -> Iterator[list[int]]:
        order, ranges = self._shard_batches()
        while self.position < len(ranges):
            start, end = ranges[self.position]
            self.position += 1  # counted as handed out before the caller sees it
            yield order[start:end].tolist()
        self.epoch, self.position = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Move to `epoch`, from its start; a no-op when already in it (keeps a restored position)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_shards": self.num_shards}

    def load_state_dict(self, state: dict) -> None:
        """Restore (epoch, position). With a different number of shards the position is rescaled
        to the same share of the epoch (the batches then differ from an uninterrupted run)."""
        if state.get("seed", self.seed) != self.seed:
            warnings.warn(f"restoring a sampler saved with seed {state['seed']} into one with seed {self.seed}")
        self.epoch = int(state["epoch"])
        position = int(state["position"])
        saved_shards = int(state.get("num_shards", self.num_shards))
        if saved_shards != self.num_shards:
            position = math.floor(position * saved_shards / self.num_shards)
            warnings.warn(f"resuming on {self.num_shards} shards from a run on {saved_shards}: position rescaled")
        self.position = position
