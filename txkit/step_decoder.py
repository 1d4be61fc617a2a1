"""Step decoders: what drives a model one decoder step at a time for txkit.search's algorithms.

`ModelStepDecoder` runs a model's own decoder code on transformers' cache (any encoder-decoder); for txkit's
model, `TxkitStepDecoder` is faster; `step_decoder` picks by the model's config (`model_type`).

A DECLARED COPY. `TxkitStepDecoder.step` restates the arithmetic of `TxkitDecoderLayer.forward`
(txkit/modeling/modeling_txkit.py): the pre-/post-norm residual order and the attention/feed-forward
projections, called as F.linear / F.layer_norm on the layers' own weight tensors (or the layers' int8 modules
after `txkit.engines.quantize_int8`). It is kept because it is
measurably faster (benchmarks/RESULTS.md, README Performance: the search 1.5x its first version, 4.9x
`generate`): cross-attention keys/values once per sentence, a self-attention cache that is never reordered
(an ancestry mask instead), and no nn.Module call machinery per layer per step. It reads the weights and
the activation from the model's modules, so only the order of operations is copied; when the decoder layer
changes, change `step` too: tests/test_step_decoder.py checks it against the model's own decoder for every
architecture option (ReLU and GELU, pre- and post-norm, shared and separate vocabularies), step by step and
after beams are reordered.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from txkit.search import StepDecoder


class ModelStepDecoder:
    """A `StepDecoder` over a transformers encoder-decoder: the encoder runs once per batch, the decoder one
    token at a time on top of an `EncoderDecoderCache` (cross-attention keys/values computed at the first
    step, then only reordered when sentences leave the batch).

    txkit's model is called through its stacks (`model.model.decoder`, `model.output_logits`), skipping the
    output-object plumbing of `forward`; any other model (e.g. a Marian export) goes through `forward`.
    """

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        self.model = model
        self.device = input_ids.device
        self.start_token_id = model.config.decoder_start_token_id
        self.pad_token_id = model.config.pad_token_id
        self.is_txkit = is_txkit_model(model)
        encoder = model.model.encoder if self.is_txkit else model.get_encoder()
        self.encoder_hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, S, D)
        self.encoder_mask = attention_mask  # (B, S)
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.unsqueeze(-1)  # (N, 1)
        if self.is_txkit:
            decoder = self.model.model.decoder
            hidden = decoder(tokens, self.encoder_hidden, self.encoder_mask, past_key_values=self.cache)  # (N, 1, D)
            logits = self.model.output_logits(hidden[:, -1])  # (N, V)
        else:
            out = self.model(
                encoder_outputs=(self.encoder_hidden,),
                attention_mask=self.encoder_mask,
                decoder_input_ids=tokens,
                past_key_values=self.cache,
                use_cache=True,
            )
            logits = out.logits[:, -1].clone()
            if self.pad_token_id is not None:
                logits[:, self.pad_token_id] = float("-inf")  # a translation never contains padding
        return F.log_softmax(logits.float(), dim=-1)

    def select(self, rows: torch.Tensor, sentences_changed: bool) -> None:
        self.cache.self_attention_cache.reorder_cache(rows)
        if sentences_changed:  # beams of one sentence share these, so only leaving sentences require a copy
            self.cache.cross_attention_cache.reorder_cache(rows)
            self.encoder_hidden = self.encoder_hidden.index_select(0, rows)
            self.encoder_mask = self.encoder_mask.index_select(0, rows)


class _LayerParams:
    """One decoder layer's weights as (weight, bias) pairs and LayerNorm arguments, for inference."""

    def __init__(self, layer):
        def linear(module):
            """x -> module(x): F.linear on the float weights, or the module itself when it holds int8 ones
            (txkit.engines.quantize_int8: its weight is packed, not a tensor)"""
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor):
                return lambda x, weight=weight, bias=module.bias: F.linear(x, weight, bias)
            return module

        def norm(module):
            return module.normalized_shape, module.weight, module.bias, module.eps

        attn, cross, ffn = layer.self_attn, layer.encoder_attn, layer.ffn
        self.q, self.k, self.v = linear(attn.q_proj), linear(attn.k_proj), linear(attn.v_proj)
        self.o = linear(attn.out_proj)
        self.cross_q, self.cross_o = linear(cross.q_proj), linear(cross.out_proj)
        self.fc1, self.fc2, self.activation = linear(ffn.fc1), linear(ffn.fc2), ffn.activation
        self.self_norm, self.cross_norm = norm(layer.self_attn_layer_norm), norm(layer.encoder_attn_layer_norm)
        self.ffn_norm = norm(layer.final_layer_norm)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


# Self-attention of sentences that joined at different steps (`TxkitStepDecoder._attention_windows`): at most
# this many calls per layer, each over at least _WINDOW_MIN_GROUPS sentences, and a call only where it skips at
# least _WINDOW_MIN_SAVING steps of the window before it (one call costs about as much as that many steps of a
# few sentences' window).
_WINDOW_CHUNKS = 4
_WINDOW_MIN_GROUPS = 4
_WINDOW_MIN_SAVING = 8


class TxkitStepDecoder:
    """A `StepDecoder` for txkit's model that runs its decoder layers directly, one token at a time.

    The same arithmetic as `ModelStepDecoder` (the model's cached forward), arranged for search; written
    here rather than taken from transformers' caches because it measured faster (benchmarks/RESULTS.md).
    The rows of a sentence (its beams, or samples) are consecutive and form a group:

    * Cross-attention keys/values are projected once per sentence and never copied per beam: a group's
      rows attend to them as that many query positions of one attention call.
    * Self-attention keys/values are never reordered when beams move. Each step appends its group's
      `group` new keys/values as slots of the group's buffer (G, layers, 2, H, slots, Dh), and each row
      attends over all its group's slots through an additive mask of its ancestry (its own slot at every
      earlier step). Reordering beams reorders only that mask; the float buffer is re-indexed only when
      sentences leave. (The plain way, gathering every row's cache at every step, was ~19% of the time.)
    * Sentences can join mid-search (`add`, continuous batching): each row keeps its own position, a new
      group's ancestry starts empty at the current slot, and slots that no group reaches any more (before
      the oldest group's first slot) are dropped in the copy made when sentences leave, or when the buffer
      is full, so it stays bounded. Each run of groups attends only from its own earliest slot
      (`_attention_windows`), so young sentences do not pay for the oldest one's window.
    """

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.model = model
        self.device = input_ids.device
        config = model.config
        self.start_token_id = config.decoder_start_token_id
        self.pad_token_id = config.pad_token_id
        self.decoder = model.model.decoder
        self.layers = list(self.decoder.layers)
        self.heads = config.attention_heads
        self.head_dim = config.d_model // config.attention_heads
        self.pre_norm = bool(config.normalize_before)
        # each layer's weights as plain tensors: calling F.linear / F.layer_norm on them skips nn.Module's call
        # machinery, ~5% of a tiny model's decoding time in cProfile (benchmarks/RESULTS.md)
        self.params = [_LayerParams(layer) for layer in self.layers]
        self._own = {}  # group size -> (group, group) additive mask of each row's own new slot
        self.group = 1  # rows per group (sentence); rows = G * group
        self.slots = 0  # self-attention slots used (shared by all groups; a group uses those from its start on)
        encoder_out = self._encode(input_ids, attention_mask)  # (G, S, D)
        G = input_ids.size(0)
        self.encoder_mask = attention_mask.bool()[:, None, None, :]  # (G, 1, 1, S), one group per sentence
        self.cross = self._cross(encoder_out)  # per layer: keys, values (G, H, S, Dh)
        self.pos = torch.zeros(G, dtype=torch.long, device=self.device)  # (N,) position of each row's next token
        self.start = torch.zeros(G, dtype=torch.long, device=self.device)  # (G,) first slot of each group
        self.kv = encoder_out.new_zeros(G, len(self.layers), 2, self.heads, 16, self.head_dim)  # (G, L, 2, H, cap, Dh)
        # `kv` is a view of the first G groups of `_kv_alloc`; `_spare` is the buffer the previous compaction
        # copied out of. Compactions copy into it rather than into fresh memory: a new tensor this size comes
        # from mmap, and its page faults made the copy 4x slower (33 vs 8 ms for 47 MB; benchmarks/RESULTS.md).
        self._kv_alloc, self._spare = self.kv, None
        # (G, group, cap) additive mask: 0 where a row attends (its ancestry), -inf elsewhere; float rather
        # than bool so that attention does not convert it at every call
        self.ancestry = encoder_out.new_full((G, 1, 16), float("-inf"))

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.model.encoder(input_ids, attention_mask).last_hidden_state  # (B, S, D)

    def _cross(self, encoder_out: torch.Tensor) -> list:
        return [
            (self._split(layer.encoder_attn.k_proj(encoder_out)), self._split(layer.encoder_attn.v_proj(encoder_out)))
            for layer in self.layers
        ]

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, H, L, Dh)"""
        return x.view(x.size(0), x.size(1), self.heads, -1).transpose(1, 2)

    def _rows_as_queries(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (G, H, group, Dh): the rows of a group as query positions"""
        return x.view(-1, self.group, self.heads, self.head_dim).transpose(1, 2)

    def _attend_self(self, p: "_LayerParams", h: torch.Tensor, i: int) -> torch.Tensor:
        """Self-attention of the new position: h (N, D) -> (N, D); its keys/values are the step's slots."""
        N, s, g = h.size(0), self.slots, self.group
        self.kv[:, i, 0, :, s : s + g] = self._rows_as_queries(p.k(h))
        self.kv[:, i, 1, :, s : s + g] = self._rows_as_queries(p.v(h))
        q = self._rows_as_queries(p.q(h))  # (G, H, group, Dh)
        outs = []
        for a, b, lo in self._windows:  # groups a:b attend over slots lo:s+g (views, no copies)
            outs.append(F.scaled_dot_product_attention(
                q[a:b], self.kv[a:b, i, 0, :, lo : s + g], self.kv[a:b, i, 1, :, lo : s + g],
                attn_mask=self.ancestry[a:b, None, :, lo : s + g],  # (G', 1, group, slots)
            ))  # fmt: skip  # (G', H, group, Dh)
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return p.o(out.transpose(1, 2).reshape(N, -1))

    def _attention_windows(self) -> list[tuple[int, int, int]]:
        """The self-attention calls of a step: (first group, end group, first slot) each. A group attends only
        to slots from its own start on, so slots before every group's start are skipped (no copy needed). In
        continuous batching the groups are in the order they joined, oldest first, and a young group would
        otherwise attend (masked) over the oldest one's whole window: the groups are cut into up to
        _WINDOW_CHUNKS consecutive runs, each from its own earliest start. A run is cut off only when its
        window is at least _WINDOW_MIN_SAVING steps shorter than the one before, so a batch whose sentences
        started together (`txkit translate`'s) keeps its single call."""
        G = self.start.numel()
        starts = self.start.tolist()
        if not G or starts[0] == starts[-1] == min(starts):
            return [(0, G, starts[0] if G else 0)]
        chunks = min(_WINDOW_CHUNKS, max(1, G // _WINDOW_MIN_GROUPS))
        bounds = [round(c * G / chunks) for c in range(chunks + 1)]
        windows: list[tuple[int, int, int]] = []
        for a, b in itertools.pairwise(bounds):
            lo = min(starts[a:b])
            if windows and lo - windows[-1][2] < _WINDOW_MIN_SAVING * self.group:
                previous = windows.pop()
                windows.append((previous[0], b, min(previous[2], lo)))
            else:
                windows.append((a, b, lo))
        return windows

    def _attend_encoder(self, p: "_LayerParams", h: torch.Tensor, i: int) -> torch.Tensor:
        """Cross-attention: the rows of each group are query positions over their sentence's keys/values."""
        keys, values = self.cross[i]
        out = F.scaled_dot_product_attention(
            self._rows_as_queries(p.cross_q(h)), keys, values, attn_mask=self.encoder_mask
        )  # (G, H, group, Dh)
        return p.cross_o(out.transpose(1, 2).reshape(h.size(0), -1))

    def _make_room(self, needed: int) -> None:
        """Room for `needed` more slots: drop the slots before every group's start, else double the capacity."""
        s, cap = self.slots, self.kv.size(4)
        dead = int(self.start.min()) if self.start.numel() else s
        keep = s - dead
        new_cap = cap if keep + needed <= cap // 2 else 2 * (keep + needed)
        kv = self.kv.new_zeros(*self.kv.shape[:4], new_cap, self.head_dim)
        kv[..., :keep, :] = self.kv[..., dead:s, :]
        ancestry = self.ancestry.new_full((*self.ancestry.shape[:2], new_cap), float("-inf"))
        ancestry[..., :keep] = self.ancestry[..., dead:s]
        self.kv, self.ancestry, self.slots = kv, ancestry, keep
        self.start = self.start - dead
        self._kv_alloc, self._spare = kv, None

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        g = self.group
        if self.slots + g > self.kv.size(4):
            self._make_room(g)
        s = self.slots
        # the decoder's input embedding (TxkitDecoder.embed, eval mode) at each row's own position
        x = self.decoder.embed_tokens(tokens) * self.decoder.embed_scale + self.decoder.positions[self.pos].to(
            self.kv.dtype
        )  # (N, D)
        own = self._own.get(g)
        if own is None:  # 0 on the diagonal (a row's own new slot), -inf elsewhere
            own = torch.full((g, g), float("-inf"), device=self.device).fill_diagonal_(0.0)
            self._own[g] = own
        self.ancestry[:, :, s : s + g] = own
        self._windows = self._attention_windows()
        for i, p in enumerate(self.params):
            if self.pre_norm:  # x + f(LN(x))
                x = x + self._attend_self(p, F.layer_norm(x, *p.self_norm), i)
                x = x + self._attend_encoder(p, F.layer_norm(x, *p.cross_norm), i)
                x = x + p.ffn(F.layer_norm(x, *p.ffn_norm))
            else:  # LN(x + f(x)), the paper's
                x = F.layer_norm(x + self._attend_self(p, x, i), *p.self_norm)
                x = F.layer_norm(x + self._attend_encoder(p, x, i), *p.cross_norm)
                x = F.layer_norm(x + p.ffn(x), *p.ffn_norm)
        self.slots += g
        self.pos = self.pos + 1
        logits = self.model.output_logits(self.decoder.finish(x))  # (N, V)
        return F.log_softmax(logits.float(), dim=-1)

    def select(self, rows: torch.Tensor, sentences_changed: bool) -> None:
        n = rows.numel()
        self.pos = self.pos.index_select(0, rows)
        ancestry = self.ancestry.view(-1, self.ancestry.size(-1)).index_select(0, rows)  # (n, cap) of the kept rows
        if sentences_changed:
            groups = rows // self.group  # (n,) the group of each kept row
            kept, counts = torch.unique_consecutive(groups, return_counts=True)
            if n and bool((counts == counts[0]).all()):
                self.group = int(counts[0])  # whole groups of equal size: the sentences' states stay shared
            else:  # uneven groups (samples ending at different steps): one group per row
                kept, self.group = groups, 1
            ancestry = _drop_slots(ancestry, self._regroup(kept))
        self.ancestry = ancestry.view(n // self.group, self.group, ancestry.size(-1))

    def _regroup(self, kept: torch.Tensor, extra: int = 0) -> int:
        """Keep the per-group state of groups `kept` (in that order) and `extra` empty groups after them.

        The slots before every kept group's start (those of sentences that left) are dropped in the same copy:
        returns how many, by which the caller shifts its ancestry masks (`_drop_slots`)."""
        self.cross = [(k.index_select(0, kept), v.index_select(0, kept)) for k, v in self.cross]
        self.encoder_mask = self.encoder_mask.index_select(0, kept)
        self.start = self.start.index_select(0, kept)
        dead = int(self.start.min()) if kept.numel() else self.slots
        self.start = self.start - dead
        self.slots -= dead
        total = kept.numel() + extra
        spare = self._spare
        if spare is None or spare.size(0) < total or spare.shape[1:] != self.kv.shape[1:]:
            # the same capacity; room for sentences that join later (`add` grows `kv` into it without a copy)
            spare = self.kv.new_empty(total + total // 2 + 8, *self.kv.shape[1:])
        kv = spare[:total]  # copy the used slots
        used = self.kv[..., dead : dead + self.slots, :]
        torch.index_select(used, 0, kept, out=kv[: kept.numel(), ..., : self.slots, :])
        if extra:
            kv[kept.numel() :, ..., : self.slots, :] = 0  # attended to (masked out) by the new rows: finite
        self.kv, self._kv_alloc, self._spare = kv, spare, self._kv_alloc
        return dead

    def add(self, sources: list[list[int]], rows_per_sentence: int) -> None:
        """Continuous batching: append sentences (source token ids, </s> included) after the current rows,
        each with `rows_per_sentence` rows whose next step is their first. Their encoder states are computed
        now; the state of the rows already here is kept (cross-attention padded to the longest source)."""
        r, B = rows_per_sentence, len(sources)
        longest = max(len(ids) for ids in sources)
        input_ids = torch.full((B, longest), self.pad_token_id, dtype=torch.long)  # (B, S')
        mask = torch.zeros((B, longest), dtype=torch.long)
        for row, ids in enumerate(sources):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        new_cross = self._cross(self._encode(input_ids, mask))  # per layer (B, H, S', Dh)
        new_mask = mask.bool()[:, None, None, :]  # (B, 1, 1, S')
        N = self.pos.numel()
        if not N:  # nothing left from before: start the slots afresh
            self.slots = 0
        if N and r != self.group and self.group != 1:  # mixed group sizes: one group per row from now on
            dead = self._regroup(torch.arange(N // self.group, device=self.device).repeat_interleave(self.group))
            self.ancestry = _drop_slots(self.ancestry.view(N, 1, -1), dead)
            self.group = 1
        if not N:
            self.group = r
        if r != self.group:  # the new sentences' rows as groups of one
            new_cross = [(k.repeat_interleave(r, 0), v.repeat_interleave(r, 0)) for k, v in new_cross]
            new_mask = new_mask.repeat_interleave(r, 0)
        G = N // self.group
        added = new_mask.size(0)  # new groups
        if self._kv_alloc.size(0) >= G + added and self.kv.size(4) == self._kv_alloc.size(4):
            self.kv = self._kv_alloc[: G + added]  # `kv` is a prefix of its buffer: grow in place, no copy
            self.kv[G:, ..., : self.slots, :] = 0  # attended to (masked out) by the new rows: finite
        else:
            self.ancestry = _drop_slots(self.ancestry, self._regroup(torch.arange(G, device=self.device), extra=added))
        S = max(self.encoder_mask.size(-1), longest)

        def widen(x: torch.Tensor, fill) -> torch.Tensor:  # pad dim -2 (source positions) to S
            if x.size(-2) == S:
                return x
            pad = x.new_full((*x.shape[:-2], S - x.size(-2), x.size(-1)), fill)
            return torch.cat([x, pad], dim=-2)

        def widen_mask(m: torch.Tensor) -> torch.Tensor:  # (., 1, 1, S') -> (., 1, 1, S), padding masked
            return m if m.size(-1) == S else torch.cat([m, m.new_zeros(*m.shape[:-1], S - m.size(-1))], dim=-1)

        self.cross = [
            (torch.cat([widen(k, 0), widen(nk, 0)]), torch.cat([widen(v, 0), widen(nv, 0)]))
            for (k, v), (nk, nv) in zip(self.cross, new_cross)
        ]
        self.encoder_mask = torch.cat([widen_mask(self.encoder_mask), widen_mask(new_mask)])
        self.start = torch.cat([self.start, self.start.new_full((added,), self.slots)])
        self.pos = torch.cat([self.pos, self.pos.new_zeros(B * r)])
        cap = self.kv.size(4)
        self.ancestry = torch.cat(
            [self.ancestry.view(G, self.group, cap), self.ancestry.new_full((added, self.group, cap), float("-inf"))]
        )


def _drop_slots(ancestry: torch.Tensor, dead: int) -> torch.Tensor:
    """An ancestry mask (..., cap) with its first `dead` slots dropped (`_regroup`): the rest move to the front,
    the freed slots at the end are masked out."""
    if not dead:
        return ancestry
    return torch.cat([ancestry[..., dead:], ancestry.new_full((*ancestry.shape[:-1], dead), float("-inf"))], dim=-1)


TXKIT_MODEL_TYPE = "txkit"  # TxkitConfig.model_type; repeated here so that choosing a path needs no import


def is_txkit_model(model) -> bool:
    """Whether `model` is txkit's (by its config's model_type, as transformers' Auto classes decide)."""
    return getattr(getattr(model, "config", None), "model_type", None) == TXKIT_MODEL_TYPE


def step_decoder(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> StepDecoder:
    """The fastest `StepDecoder` for a model: `TxkitStepDecoder` for txkit's, `ModelStepDecoder` otherwise;
    a model that makes its own (txkit.ensemble's EnsembleModel) is asked for it."""
    if hasattr(model, "make_step_decoder"):
        return model.make_step_decoder(input_ids, attention_mask)
    if is_txkit_model(model):
        return TxkitStepDecoder(model, input_ids, attention_mask)
    return ModelStepDecoder(model, input_ids, attention_mask)
