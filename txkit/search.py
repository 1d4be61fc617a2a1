"""Batched search over a step-by-step decoder: beam search with a length penalty, greedy, sampling.

`model.generate` already does all three, and the model works with it (that is the path Hub users take).
txkit keeps its own search because it is measurably faster for translating files (benchmarks/bench_decode.py)
and because it applies exactly the paper's search:

* Finished sentences leave the batch. `generate` keeps every sentence of a batch in the decoder until the
  slowest one is done; here the batch, the decoder's cache and the encoder states shrink as sentences finish,
  so the cost follows the unfinished work. Cross-attention keys/values are reordered only when sentences
  leave (beams of one sentence share them), not at every step.
* Each sentence has its own length limit (source length + 50 in the paper), not one limit per batch.
* The length penalty can take the paper's (GNMT, Wu et al. 2016) form
  `lp(Y) = (5 + |Y|)^alpha / (5 + 1)^alpha`, with the stopping rule made exact for it: a sentence stops when
  no open hypothesis can still reach the n-th best finished score, so stopping early never changes the result.
* In the Hugging Face form (`score / |Y|^alpha`) the search reproduces transformers' beam search step for step
  (candidates, which of them may finish, its early-stopping heuristic), so both give the same translations
  (up to float rounding, which in rare near-ties can take another path, as a different batch composition
  can in `generate` itself).

|Y| counts the generated tokens including the final </s>, as transformers and tensor2tensor count it.

The search talks to the model through a `StepDecoder`: `step(last_tokens) -> log-probabilities` and
`select(rows, sentences_changed)` to keep/reorder the decoder state. `TxkitStepDecoder` implements it for
txkit's model by driving its decoder layers directly (the fast path; see its docstring), `ModelStepDecoder`
through the model's cached `forward` (any transformers encoder-decoder); `step_decoder` picks one. Tests use
hand-made step functions to check the search itself.

Shapes in comments: A active sentences, K beam size, V target vocabulary, t tokens generated so far.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

LP_FORMS = ("gnmt", "hf")


@dataclass(order=True)
class Hypothesis:
    """A finished translation: its token ids (without </s>), its length-normalised score and sum of log p."""

    score: float
    tokens: list[int] = field(compare=False)
    log_prob: float = field(compare=False)


class StepDecoder(Protocol):
    """What the search needs from a model: one decoder step at a time over a set of rows."""

    start_token_id: int

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (N,) = the last token of each row -> (N, V) fp32 log-probabilities of the next token."""
        ...

    def select(self, rows: torch.Tensor, sentences_changed: bool) -> None:
        """Keep the decoder state of `rows` (N',), in that order. `sentences_changed` is False when rows only
        move between beams of the same sentences (per-sentence state such as encoder output stays as is)."""
        ...


def length_penalty(length: int, alpha: float, form: str) -> float:
    """The divisor of sum log p: GNMT `(5 + |Y|)^alpha / 6^alpha`, or Hugging Face `|Y|^alpha`."""
    if form == "gnmt":
        return (5.0 + length) ** alpha / 6.0**alpha
    if form == "hf":
        return float(length**alpha)
    raise ValueError(f"unknown length-penalty form {form!r}; choose one of {', '.join(LP_FORMS)}")


def beam_search(
    decoder: StepDecoder,
    max_lengths: list[int],
    eos_token_id: int,
    beam_size: int = 4,
    alpha: float = 0.6,
    lp_form: str = "gnmt",
    nbest: int = 1,
) -> list[list[Hypothesis]]:
    """Beam search over a batch of B sentences whose decoder state holds one row per sentence.

    Each step scores the K * V continuations of a sentence's K open hypotheses and keeps the best 2K; those
    among the best K that end in </s> (or reach the sentence's length limit) are finished, the best K that do
    not end go on. The 2K keeps K open hypotheses even when all of the best K finish.

    Args:
        max_lengths: per sentence, the most tokens to generate (including </s>).
        alpha: length-penalty exponent (0 = plain sum of log-probabilities).
        lp_form: "gnmt" (the paper; exact stopping) or "hf" (transformers' form and stopping heuristic).
        nbest: how many hypotheses to return per sentence (<= beam_size), best first.
    Returns:
        per sentence, its `nbest` best finished hypotheses.
    """
    if lp_form not in LP_FORMS:
        raise ValueError(f"unknown length-penalty form {lp_form!r}; choose one of {', '.join(LP_FORMS)}")
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"nbest ({nbest}) must be between 1 and the beam size ({beam_size})")
    K = beam_size
    batch = len(max_lengths)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]  # min-heaps of the K best per sentence
    if batch == 0:
        return []
    device = _device_of(decoder)
    active = list(range(batch))  # original index of each active sentence
    limits = list(max_lengths)
    scores = torch.zeros(batch, 1, device=device)  # (A, k) sum log p of the open hypotheses; k = 1 at first
    history = torch.zeros(batch, 1, 0, dtype=torch.long, device=device)  # (A, k, t)
    last = torch.full((batch,), decoder.start_token_id, dtype=torch.long, device=device)  # (A * k,)
    t = 0
    while active:
        A, k = scores.shape
        log_probs = decoder.step(last)  # (A * k, V)
        V = log_probs.size(-1)
        top_scores, top_index = top_candidates(scores, log_probs, min(2 * K, k * V))  # (A, 2K), best first
        top_beam = top_index // V  # which open hypothesis each candidate extends
        top_token = top_index % V
        t += 1
        at_limit = torch.tensor([t >= limit for limit in limits], device=device)  # (A,)
        ends = top_token.eq(eos_token_id) | at_limit.unsqueeze(-1)  # (A, 2K)

        # 1. The best K candidates that end become finished hypotheses.
        finishing = ends[:, :K] & top_scores[:, :K].isfinite()
        if finishing.any():
            lp = length_penalty(t, alpha, lp_form)
            normalized = top_scores[:, :K] / lp  # same fp32 op as transformers, so equal scores stay equal
            rows, cols = finishing.nonzero(as_tuple=True)
            prefixes = history[rows, top_beam[rows, cols]].tolist()
            tokens = top_token[rows, cols].tolist()
            for a, prefix, token, score, log_prob in zip(
                rows.tolist(), prefixes, tokens, normalized[rows, cols].tolist(), top_scores[rows, cols].tolist()
            ):
                hyp = Hypothesis(score, prefix if token == eos_token_id else prefix + [token], log_prob)
                heap = finished[active[a]]
                if len(heap) < K:
                    heapq.heappush(heap, hyp)
                elif hyp.score > heap[0].score:
                    heapq.heapreplace(heap, hyp)

        # 2. The best K candidates that do not end stay open.
        open_scores, open_pos = top_scores.masked_fill(ends, float("-inf")).topk(min(K, top_scores.size(1)), dim=-1)
        open_beam = top_beam.gather(1, open_pos)
        open_token = top_token.gather(1, open_pos)
        source_rows = torch.arange(A, device=device).unsqueeze(-1) * k + open_beam  # (A, K) rows of this step

        # 3. Which sentences are done: at their limit, or no open hypothesis can enter the kept finished ones.
        done = _done(open_scores[:, 0], t, limits, [finished[i] for i in active], K, nbest, alpha, lp_form)
        keep = [a for a in range(A) if not done[a]]
        if not keep:
            break
        keep_t = torch.tensor(keep, device=device)
        source_rows = source_rows[keep_t]  # (A', K)
        decoder.select(source_rows.reshape(-1), sentences_changed=(k != K or len(keep) < A))
        history = torch.cat([history.view(A * k, t - 1)[source_rows], open_token[keep_t].unsqueeze(-1)], dim=-1)
        scores = open_scores[keep_t]
        last = open_token[keep_t].reshape(-1)
        active = [active[a] for a in keep]
        limits = [limits[a] for a in keep]
    return [sorted(heap, reverse=True)[:nbest] for heap in finished]


# Width of the vocabulary chunks `top_candidates` ranks first (see there).
TOPK_CHUNK = 64


def top_candidates(scores: torch.Tensor, log_probs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n best continuations of each sentence: `scores` (A, k) of its open hypotheses plus their next-token
    `log_probs` (A * k, V). Returns their summed scores (A, n), best first, and flat indices beam * V + token.

    The same as `(scores[..., None] + log_probs.view(A, k, V)).view(A, k * V).topk(n)` (up to the order of
    exactly equal scores), written out because torch's CPU topk over k * V columns took more time than the
    vocabulary projection itself (benchmarks/RESULTS.md). The vocabulary is cut into chunks of TOPK_CHUNK
    tokens; a chunk's best continuation bounds all of its others, so the n best continuations lie in the n
    chunks with the best bounds, and only those n * TOPK_CHUNK values are summed and ranked.
    """
    A, k = scores.shape
    V = log_probs.size(-1)
    C = V // TOPK_CHUNK
    if C < 2 * n:  # small vocabularies (tests): the plain way
        candidates = (scores.unsqueeze(-1) + log_probs.view(A, k, V)).view(A, k * V)
        return candidates.topk(n, dim=-1)
    chunk_max = log_probs[:, : C * TOPK_CHUNK].view(A * k, C, TOPK_CHUNK).amax(dim=-1)  # (A * k, C)
    if V % TOPK_CHUNK:  # the last, shorter chunk
        chunk_max = torch.cat([chunk_max, log_probs[:, C * TOPK_CHUNK :].amax(dim=-1, keepdim=True)], dim=1)
        C += 1
    bounds = (scores.unsqueeze(-1) + chunk_max.view(A, k, C)).view(A, k * C)
    best_chunks = bounds.topk(n, dim=-1).indices  # (A, n)
    beam, chunk = best_chunks // C, best_chunks % C
    offsets = torch.arange(TOPK_CHUNK, device=log_probs.device)
    token = chunk.unsqueeze(-1) * TOPK_CHUNK + offsets  # (A, n, TOPK_CHUNK)
    outside = token >= V  # positions past the end of the last chunk
    token = token.clamp(max=V - 1)
    rows = torch.arange(A, device=log_probs.device).unsqueeze(-1) * k + beam  # (A, n) rows of log_probs
    values = scores.gather(1, beam).unsqueeze(-1) + log_probs[rows.unsqueeze(-1), token]  # (A, n, TOPK_CHUNK)
    values = values.masked_fill(outside, float("-inf")).view(A, n * TOPK_CHUNK)
    top_values, pos = values.topk(n, dim=-1)  # (A, n)
    flat = (beam.unsqueeze(-1) * V + token).view(A, n * TOPK_CHUNK).gather(1, pos)
    return top_values, flat


def _done(
    best_open: torch.Tensor,
    t: int,
    limits: list[int],
    finished: list[list[Hypothesis]],
    K: int,
    nbest: int,
    alpha: float,
    lp_form: str,
) -> list[bool]:
    """Per active sentence: may its search stop after step t?"""
    if lp_form == "hf":
        # transformers' heuristic (early_stopping=False): the best open hypothesis, normalised at its current
        # length, cannot beat the worst of K finished ones. Computed in fp32 as transformers does.
        bounds = (best_open / float(t**alpha)).tolist()
        need = K
    else:
        # Exact: later hypotheses have sum log p <= the best open one's (<= 0) and a length in (t, limit], so
        # their score is at most best_open / max lp over those lengths (lp is monotonic in the length).
        bounds = []
        for best, limit in zip(best_open.tolist(), limits):
            lp = max(length_penalty(t + 1, alpha, "gnmt"), length_penalty(max(limit, t + 1), alpha, "gnmt"))
            bounds.append(best / lp)
        need = nbest
    done = []
    for bound, limit, heap in zip(bounds, limits, finished):
        if t >= limit:
            done.append(True)
        elif len(heap) < need:
            done.append(False)
        else:
            threshold = heap[0].score if need == K else heapq.nlargest(need, heap)[-1].score
            done.append(bound <= threshold)
    return done


def sample_search(
    decoder: StepDecoder,
    max_lengths: list[int],
    eos_token_id: int,
    sampling: bool = False,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    seeds: list[list[int]] | None = None,
    num_samples: int = 1,
    alpha: float = 0.6,
    lp_form: str = "gnmt",
) -> list[list[Hypothesis]]:
    """Greedy search (`sampling=False`, the beam-1 fast path) or ancestral sampling, one token per step.

    Sampling draws from softmax(logits / temperature) restricted to the `top_k` most likely tokens (0 = all)
    and to the smallest set whose probability reaches `top_p`. `num_samples` draws that many translations
    per sentence; `seeds[i][s]` seeds the random stream of sample s of sentence i, so draws do not depend on
    which other sentences share the batch (None: torch's global generator). Scores use the model's own
    log-probabilities, normalised by the same length penalty as beam search so that they compare.
    """
    if not sampling and num_samples != 1:
        raise ValueError("greedy search gives one hypothesis per sentence; use beam search or sampling for n-best")
    batch = len(max_lengths)
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]
    if batch == 0:
        return []
    device = _device_of(decoder)
    active = [i for i in range(batch) for _ in range(num_samples)]
    limits = [max_lengths[i] for i in active]
    if num_samples > 1:
        decoder.select(torch.arange(batch, device=device).repeat_interleave(num_samples), sentences_changed=True)
    n = len(active)
    generators = None
    if sampling and seeds is not None:
        generators = []
        for i in range(batch):
            for s in range(num_samples):
                generators.append(torch.Generator(device=device).manual_seed(seeds[i][s]))
    sums = torch.zeros(n, device=device)  # (A,) sum log p
    history = torch.zeros(n, 0, dtype=torch.long, device=device)  # (A, t)
    last = torch.full((n,), decoder.start_token_id, dtype=torch.long, device=device)
    t = 0
    while active:
        log_probs = decoder.step(last)  # (A, V)
        if sampling:
            token = _sample(log_probs, top_k, top_p, temperature, generators)
        else:
            token = log_probs.argmax(dim=-1)  # (A,)
        sums = sums + log_probs.gather(1, token.unsqueeze(-1)).squeeze(-1)
        history = torch.cat([history, token.unsqueeze(-1)], dim=-1)
        t += 1
        ended = token.eq(eos_token_id) | torch.tensor([t >= limit for limit in limits], device=device)
        if ended.any():
            lp = length_penalty(t, alpha, lp_form)
            rows = ended.nonzero(as_tuple=True)[0]
            for a, tokens, total in zip(rows.tolist(), history[rows].tolist(), sums[rows].tolist()):
                if tokens[-1] == eos_token_id:
                    tokens = tokens[:-1]
                results[active[a]].append(Hypothesis(total / lp, tokens, total))
            keep = (~ended).nonzero(as_tuple=True)[0]  # (A',)
            if keep.numel() == 0:
                break
            decoder.select(keep, sentences_changed=True)
            kept = keep.tolist()
            active = [active[a] for a in kept]
            limits = [limits[a] for a in kept]
            if generators is not None:
                generators = [generators[a] for a in kept]
            sums, history, token = sums[keep], history[keep], token[keep]
        last = token
    return [sorted(hyps, reverse=True) for hyps in results]


def _sample(
    log_probs: torch.Tensor, top_k: int, top_p: float, temperature: float, generators: list | None
) -> torch.Tensor:
    """(A, V) log-probabilities -> (A,) tokens drawn after temperature, top-k and top-p filtering,
    row a from generators[a]."""
    # log_softmax(log p / T) = log_softmax(logits / T): the normaliser of log p only shifts each row
    logits = log_probs / temperature
    if top_k > 0 and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (A, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens before it already reach top_p (the most likely one always stays)
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if generators is None:
        return torch.multinomial(logits.softmax(dim=-1), 1).squeeze(-1)
    # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits); one noise row per generator
    V = logits.size(-1)
    uniform = torch.stack([torch.rand(V, generator=g, device=logits.device) for g in generators])  # (A, V)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(uniform.dtype).tiny)))
    return (logits + gumbel).argmax(dim=-1)


def _device_of(decoder: StepDecoder) -> torch.device:
    return getattr(decoder, "device", torch.device("cpu"))


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
        self.is_txkit = hasattr(model, "output_logits")
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
            return module.weight, module.bias

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
        return F.linear(self.activation(F.linear(x, *self.fc1)), *self.fc2)


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
    """

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.model = model
        self.device = input_ids.device
        config = model.config
        self.start_token_id = config.decoder_start_token_id
        self.decoder = model.model.decoder
        self.layers = list(self.decoder.layers)
        self.heads = config.attention_heads
        self.head_dim = config.d_model // config.attention_heads
        self.pre_norm = bool(config.normalize_before)
        encoder_out = model.model.encoder(input_ids, attention_mask).last_hidden_state  # (B, S, D)
        self.encoder_mask = attention_mask.bool()[:, None, None, :]  # (G, 1, 1, S), one group per sentence
        self.cross = [
            (self._split(layer.encoder_attn.k_proj(encoder_out)), self._split(layer.encoder_attn.v_proj(encoder_out)))
            for layer in self.layers
        ]  # per layer: keys, values (G, H, S, Dh)
        # each layer's weights as plain tensors: calling F.linear / F.layer_norm on them skips nn.Module's call
        # machinery, ~5% of a tiny model's decoding time in cProfile (benchmarks/RESULTS.md)
        self.params = [_LayerParams(layer) for layer in self.layers]
        self._own = {}  # group size -> (group, group) additive mask of each row's own new slot
        self.group = 1  # rows per group (sentence); rows = G * group
        self.slots = 0  # self-attention slots used per group
        self.t = 0  # tokens decoded so far
        G = input_ids.size(0)
        self.kv = encoder_out.new_empty(G, len(self.layers), 2, self.heads, 16, self.head_dim)  # (G, L, 2, H, cap, Dh)
        # `kv` is a view of the first G groups of `_kv_alloc`; `_spare` is the buffer the previous compaction
        # copied out of. Compactions copy into it rather than into fresh memory: a new tensor this size comes
        # from mmap, and its page faults made the copy 4x slower (33 vs 8 ms for 47 MB; benchmarks/RESULTS.md).
        self._kv_alloc, self._spare = self.kv, None
        # (G, group, cap) additive mask: 0 where a row attends (its ancestry), -inf elsewhere; float rather
        # than bool so that attention does not convert it at every call
        self.ancestry = encoder_out.new_full((G, 1, 16), float("-inf"))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, H, L, Dh)"""
        return x.view(x.size(0), x.size(1), self.heads, -1).transpose(1, 2)

    def _rows_as_queries(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (G, H, group, Dh): the rows of a group as query positions"""
        return x.view(-1, self.group, self.heads, self.head_dim).transpose(1, 2)

    def _attend_self(self, p: "_LayerParams", h: torch.Tensor, i: int) -> torch.Tensor:
        """Self-attention of the new position: h (N, D) -> (N, D); its keys/values are the step's slots."""
        N, s, g = h.size(0), self.slots, self.group
        self.kv[:, i, 0, :, s : s + g] = self._rows_as_queries(F.linear(h, *p.k))
        self.kv[:, i, 1, :, s : s + g] = self._rows_as_queries(F.linear(h, *p.v))
        mask = self.ancestry[:, None, :, : s + g]  # (G, 1, group, slots)
        out = F.scaled_dot_product_attention(
            self._rows_as_queries(F.linear(h, *p.q)), self.kv[:, i, 0, :, : s + g], self.kv[:, i, 1, :, : s + g],
            attn_mask=mask,
        )  # fmt: skip  # (G, H, group, Dh)
        return F.linear(out.transpose(1, 2).reshape(N, -1), *p.o)

    def _attend_encoder(self, p: "_LayerParams", h: torch.Tensor, i: int) -> torch.Tensor:
        """Cross-attention: the rows of each group are query positions over their sentence's keys/values."""
        keys, values = self.cross[i]
        out = F.scaled_dot_product_attention(
            self._rows_as_queries(F.linear(h, *p.cross_q)), keys, values, attn_mask=self.encoder_mask
        )  # (G, H, group, Dh)
        return F.linear(out.transpose(1, 2).reshape(h.size(0), -1), *p.cross_o)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        s, g = self.slots, self.group
        x = self.decoder.embed(tokens.unsqueeze(-1), offset=self.t)[:, 0]  # (N, D)
        if s + g > self.kv.size(4):  # full: double the capacity, keeping what is held
            kv = self.kv.new_empty(*self.kv.shape[:4], 2 * (s + g), self.head_dim)
            kv[..., :s, :] = self.kv[..., :s, :]
            ancestry = self.ancestry.new_full((*self.ancestry.shape[:2], 2 * (s + g)), float("-inf"))
            ancestry[..., :s] = self.ancestry[..., :s]
            self.kv, self.ancestry = kv, ancestry
            self._kv_alloc, self._spare = kv, None
        own = self._own.get(g)
        if own is None:  # 0 on the diagonal (a row's own new slot), -inf elsewhere
            own = torch.full((g, g), float("-inf"), device=self.device).fill_diagonal_(0.0)
            self._own[g] = own
        self.ancestry[:, :, s : s + g] = own
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
        self.t += 1
        logits = self.model.output_logits(self.decoder.finish(x))  # (N, V)
        return F.log_softmax(logits.float(), dim=-1)

    def select(self, rows: torch.Tensor, sentences_changed: bool) -> None:
        n = rows.numel()
        ancestry = self.ancestry.view(-1, self.ancestry.size(-1)).index_select(0, rows)  # (n, cap) of the kept rows
        if sentences_changed:
            groups = rows // self.group  # (n,) the group of each kept row
            kept, counts = torch.unique_consecutive(groups, return_counts=True)
            if bool((counts == counts[0]).all()):
                self.group = int(counts[0])  # whole groups of equal size: the sentences' states stay shared
            else:  # uneven groups (samples ending at different steps): one group per row
                kept, self.group = groups, 1
            self.cross = [(k.index_select(0, kept), v.index_select(0, kept)) for k, v in self.cross]
            self.encoder_mask = self.encoder_mask.index_select(0, kept)
            spare = self._spare
            if spare is None or spare.size(0) < kept.numel():
                spare = self.kv.new_empty(kept.numel(), *self.kv.shape[1:])  # the same capacity
            kv = spare[: kept.numel()]  # copy the used slots
            torch.index_select(self.kv[..., : self.slots, :], 0, kept, out=kv[..., : self.slots, :])
            self.kv, self._kv_alloc, self._spare = kv, spare, self._kv_alloc
        self.ancestry = ancestry.view(n // self.group, self.group, -1)


def step_decoder(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> StepDecoder:
    """The fastest `StepDecoder` for a model: `TxkitStepDecoder` for txkit's, `ModelStepDecoder` otherwise."""
    if hasattr(model, "output_logits") and hasattr(model, "model") and hasattr(model.model, "decoder"):
        return TxkitStepDecoder(model, input_ids, attention_mask)
    return ModelStepDecoder(model, input_ids, attention_mask)
