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
`select(rows, sentences_changed)` to keep/reorder the decoder state, and for continuous batching (a finished
sentence's place taken at once by a waiting one, `*_continuous`) `add(sources, rows_per_sentence)` to let
sentences join mid-search, each with its own step count; txkit.step_decoder implements it for
models (`TxkitStepDecoder`, `ModelStepDecoder`). Tests use hand-made step functions to check the search itself.

Shapes in comments: A active sentences, K beam size, V target vocabulary, t tokens generated so far.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Protocol

import torch

from txkit.options import LP_FORMS



@dataclass(order=True)
class Hypothesis:
    """A finished translation: its token ids (without </s>), its length-normalised score and sum of log p."""

    score: float
    tokens: list[int] = field(compare=False)
    log_prob: float = field(compare=False)

    def __eq__(self, other) -> bool:
        """Equal hypotheses are the same translation: tokens and scores (ordering is by score alone)."""
        if not isinstance(other, Hypothesis):
            return NotImplemented
        return (self.score, self.tokens, self.log_prob) == (other.score, other.tokens, other.log_prob)


class StepDecoder(Protocol):
    """What the search needs from a model: one decoder step at a time over a set of rows."""

    start_token_id: int

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (N,) = the last token of each row -> (N, V) fp32 log-probabilities of the next token."""
        ...

    def select(self, rows: torch.Tensor, sentences_changed: bool) -> None:
        """Keep the decoder state of `rows` (N',), in that order. `sentences_changed` is False when rows only
        move between beams of the same sentences (per-sentence state such as encoder output stays as is).
        `rows` may be empty (every sentence left; `add` may follow)."""
        ...

    # Continuous batching (`beam_search_continuous`, `token_search_continuous` with a `feed`) also needs:
    #
    #     def add(self, sources: list[list[int]], rows_per_sentence: int) -> None:
    #         """Append sentences (source token ids, </s> included) after the current rows, each with
    #         `rows_per_sentence` rows whose next `step` is their first (position 0, no history)."""
    #
    # (TxkitStepDecoder has it; a decoder without it is searched one batch at a time.)


def length_penalty(length: int, alpha: float, form: str) -> float:
    """The divisor of sum log p: GNMT `(5 + |Y|)^alpha / 6^alpha`, or Hugging Face `|Y|^alpha`."""
    if form == "gnmt":
        return (5.0 + length) ** alpha / 6.0**alpha
    if form == "hf":
        return float(length**alpha)
    raise ValueError(f"unknown length-penalty form {form!r}; choose one of {', '.join(LP_FORMS)}")


@dataclass(eq=False)
class _Sentence:
    """A sentence of a batch search: its output limit and its index in the batch (`feed` items of the
    continuous searches have these fields too, plus `ids`, the source, and `cancelled`)."""

    max_length: int
    key: int
    cancelled: bool = False


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
    results: list[list[Hypothesis]] = [[] for _ in max_lengths]
    items = [_Sentence(limit, i) for i, limit in enumerate(max_lengths)]
    beam_search_continuous(decoder, items, None, lambda item, hyps: results.__setitem__(item.key, hyps),
                           eos_token_id, beam_size, alpha, lp_form, nbest)  # fmt: skip
    return results


def beam_search_continuous(
    decoder: StepDecoder,
    items: list,
    feed,
    done,
    eos_token_id: int,
    beam_size: int = 4,
    alpha: float = 0.6,
    lp_form: str = "gnmt",
    nbest: int = 1,
    room: int = 0,
) -> None:
    """`beam_search` with continuous batching: `items` (with `max_length`; one decoder row each) start the
    search; whenever fewer than `room` sentences are searched, `feed(free places)` may give more (items with
    `ids` and `max_length`), which join through `decoder.add` and start at their first step while the others
    go on. `done(item, hyps)` receives each sentence's `nbest` best hypotheses as it finishes; an item whose
    `cancelled` is set leaves without a result. Returns when no sentence is left and `feed` gives none.
    Every sentence has its own step count, so its result does not depend on when it joined.
    """
    if lp_form not in LP_FORMS:
        raise ValueError(f"unknown length-penalty form {lp_form!r}; choose one of {', '.join(LP_FORMS)}")
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"nbest ({nbest}) must be between 1 and the beam size ({beam_size})")
    K = beam_size
    device = _device_of(decoder)
    active = list(items)  # the sentences searched, in row-group order
    finished: list[list[Hypothesis]] = [[] for _ in active]  # min-heaps of the K best per sentence
    steps = [0] * len(active)  # tokens generated per sentence
    # Every sentence has K rows from the start; the other beams begin at -inf, so the first step's candidates
    # are its first beam's (the same as one row), and sentences joining later have the same row layout.
    if active:
        decoder.select(torch.arange(len(active), device=device).repeat_interleave(K), sentences_changed=True)
    scores = _fresh_scores(len(active), K, device)  # (A, K) sum log p of the open hypotheses
    history = torch.zeros(len(active), K, 0, dtype=torch.long, device=device)  # (A, K, T) right-aligned tokens
    while True:
        if feed is not None and len(active) < room:
            joining = [item for item in feed(room - len(active)) if not item.cancelled]
            if joining:
                decoder.add([item.ids for item in joining], K)
                active += joining
                finished += [[] for _ in joining]
                steps += [0] * len(joining)
                scores = torch.cat([scores, _fresh_scores(len(joining), K, device)])
                history = torch.cat([history, history.new_zeros(len(joining), K, history.size(2))])
        if not active:
            return
        A = len(active)
        T = history.size(2)
        last = history[:, :, -1].reshape(-1) if T else history.new_full((A * K,), decoder.start_token_id)
        if T:
            fresh = torch.tensor([n == 0 for n in steps], device=device)
            if fresh.any():
                last = last.masked_fill(fresh.repeat_interleave(K), decoder.start_token_id)
        log_probs = decoder.step(last)  # (A * K, V)
        V = log_probs.size(-1)
        top_scores, top_index = top_candidates(scores, log_probs, min(2 * K, K * V))  # (A, 2K), best first
        top_beam = top_index // V  # which open hypothesis each candidate extends
        top_token = top_index % V
        steps = [n + 1 for n in steps]
        limits = [item.max_length for item in active]
        at_limit = torch.tensor([n >= limit for n, limit in zip(steps, limits)], device=device)  # (A,)
        ends = top_token.eq(eos_token_id) | at_limit.unsqueeze(-1)  # (A, 2K)

        # 1. The best K candidates that end become finished hypotheses.
        finishing = ends[:, :K] & top_scores[:, :K].isfinite()
        if finishing.any():
            lp = torch.tensor([length_penalty(n, alpha, lp_form) for n in steps], device=device)  # (A,) fp32
            normalized = top_scores[:, :K] / lp.unsqueeze(-1)  # same fp32 op as transformers: equal scores stay equal
            rows, cols = finishing.nonzero(as_tuple=True)
            prefixes = history[rows, top_beam[rows, cols]].tolist()
            tokens = top_token[rows, cols].tolist()
            for a, prefix, token, score, log_prob in zip(
                rows.tolist(), prefixes, tokens, normalized[rows, cols].tolist(), top_scores[rows, cols].tolist()
            ):
                prefix = prefix[T - steps[a] + 1 :] if steps[a] > 1 else []
                hyp = Hypothesis(score, prefix if token == eos_token_id else prefix + [token], log_prob)
                heap = finished[a]
                if len(heap) < K:
                    heapq.heappush(heap, hyp)
                elif hyp.score > heap[0].score:
                    heapq.heapreplace(heap, hyp)

        # 2. The best K candidates that do not end stay open.
        open_scores, open_pos = top_scores.masked_fill(ends, float("-inf")).topk(K, dim=-1)
        open_beam = top_beam.gather(1, open_pos)
        open_token = top_token.gather(1, open_pos)
        source_rows = torch.arange(A, device=device).unsqueeze(-1) * K + open_beam  # (A, K) rows of this step

        # 3. Which sentences are done: at their limit, or no open hypothesis can enter the kept finished ones.
        is_done = _done(open_scores[:, 0], steps, limits, finished, K, nbest, alpha, lp_form)
        keep = []
        for a, item in enumerate(active):
            if item.cancelled:
                continue
            if is_done[a]:
                done(item, sorted(finished[a], reverse=True)[:nbest])
            else:
                keep.append(a)
        if not keep and feed is None:
            return
        keep_t = torch.tensor(keep, dtype=torch.long, device=device)
        source_rows = source_rows[keep_t]  # (A', K)
        decoder.select(source_rows.reshape(-1), sentences_changed=len(keep) < A)
        width = max((steps[a] for a in keep), default=0)  # history columns still needed
        kept_history = history.view(A * K, T)[source_rows][..., T - width + 1 :] if width > 1 else history[:0, :0, :0]
        history = torch.cat([kept_history.reshape(len(keep), K, max(width - 1, 0)), open_token[keep_t].unsqueeze(-1)], dim=-1)
        scores = open_scores[keep_t]
        active = [active[a] for a in keep]
        finished = [finished[a] for a in keep]
        steps = [steps[a] for a in keep]


def _fresh_scores(n: int, K: int, device) -> torch.Tensor:
    """(n, K) scores of sentences before their first step: 0 for the first beam, -inf for the others."""
    scores = torch.full((n, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    return scores


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
    steps: list[int],
    limits: list[int],
    finished: list[list[Hypothesis]],
    K: int,
    nbest: int,
    alpha: float,
    lp_form: str,
) -> list[bool]:
    """Per active sentence: may its search stop after its step `steps[a]`?"""
    if lp_form == "hf":
        # transformers' heuristic (early_stopping=False): the best open hypothesis, normalised at its current
        # length, cannot beat the worst of K finished ones. Computed in fp32 as transformers does.
        divisors = torch.tensor([float(t**alpha) for t in steps], device=best_open.device)
        bounds = (best_open / divisors).tolist()
        need = K
    else:
        # Exact: later hypotheses have sum log p <= the best open one's (<= 0) and a length in (t, limit], so
        # their score is at most best_open / max lp over those lengths (lp is monotonic in the length).
        bounds = []
        for best, t, limit in zip(best_open.tolist(), steps, limits):
            lp = max(length_penalty(t + 1, alpha, "gnmt"), length_penalty(max(limit, t + 1), alpha, "gnmt"))
            bounds.append(best / lp)
        need = nbest
    done = []
    for bound, t, limit, heap in zip(bounds, steps, limits, finished):
        if t >= limit:
            done.append(True)
        elif len(heap) < need:
            done.append(False)
        else:
            threshold = heap[0].score if need == K else heapq.nlargest(need, heap)[-1].score
            done.append(bound <= threshold)
    return done


def greedy_search(
    decoder: StepDecoder, max_lengths: list[int], eos_token_id: int, alpha: float = 0.6, lp_form: str = "gnmt"
) -> list[list[Hypothesis]]:
    """Greedy search (beam 1, the fast path): the most likely token at each step; one hypothesis per sentence.

    Scores are normalised by the same length penalty as beam search so that they compare.
    """
    results: list[list[Hypothesis]] = [[] for _ in max_lengths]
    items = [_Sentence(limit, i) for i, limit in enumerate(max_lengths)]
    token_search_continuous(decoder, items, None, lambda item, hyps: results.__setitem__(item.key, hyps),
                            eos_token_id, alpha=alpha, lp_form=lp_form)  # fmt: skip
    return results


def sample_search(
    decoder: StepDecoder,
    max_lengths: list[int],
    eos_token_id: int,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    seeds: list[list[int]] | None = None,
    num_samples: int = 1,
    alpha: float = 0.6,
    lp_form: str = "gnmt",
) -> list[list[Hypothesis]]:
    """Ancestral sampling, one token per step.

    Draws from softmax(logits / temperature) restricted to the `top_k` most likely tokens (0 = all) and to
    the smallest set whose probability reaches `top_p`. `num_samples` draws that many translations per
    sentence; `seeds[i][s]` seeds the random stream of sample s of sentence i, so draws do not depend on
    which other sentences share the batch (None: torch's global generator). Scores use the model's own
    log-probabilities, normalised by the same length penalty as beam search so that they compare.
    """
    results: list[list[Hypothesis]] = [[] for _ in max_lengths]
    items = [_Sentence(limit, i) for i, limit in enumerate(max_lengths)]
    token_search_continuous(
        decoder, items, None, lambda item, hyps: results.__setitem__(item.key, hyps), eos_token_id,
        sampling=dict(top_k=top_k, top_p=top_p, temperature=temperature),
        seeds=None if seeds is None else (lambda item: seeds[item.key]), num_samples=num_samples, alpha=alpha,
        lp_form=lp_form,
    )  # fmt: skip
    return results


def token_search_continuous(
    decoder: StepDecoder,
    items: list,
    feed,
    done,
    eos_token_id: int,
    sampling: dict | None = None,
    seeds=None,
    num_samples: int = 1,
    alpha: float = 0.6,
    lp_form: str = "gnmt",
    room: int = 0,
) -> None:
    """Greedy search (`sampling` None) or sampling (`sampling` = top_k, top_p, temperature; `num_samples`
    rows per sentence, row s drawing from a generator seeded with `seeds(item)[s]`, or torch's global one
    when `seeds` is None), one token per step, with continuous batching as in `beam_search_continuous`:
    a row leaves when it ends, a sentence is `done` when all its rows have ended, and `feed` fills the
    free places up to `room` sentences."""
    device = _device_of(decoder)
    n = num_samples
    records = [[item, n, []] for item in items]  # per sentence: item, rows still going, hypotheses
    rows = [rec for rec in records for _ in range(n)]  # the sentence of each row
    if n > 1 and records:
        decoder.select(torch.arange(len(records), device=device).repeat_interleave(n), sentences_changed=True)

    def generators_for(recs):
        if seeds is None:
            return None
        return [torch.Generator(device=device).manual_seed(seed) for rec in recs for seed in seeds(rec[0])[:n]]

    generators = generators_for(records)
    steps = [0] * len(rows)  # tokens generated per row
    sums = torch.zeros(len(rows), device=device)  # (N,) sum log p
    history = torch.zeros(len(rows), 0, dtype=torch.long, device=device)  # (N, T) right-aligned tokens
    live = len(records)  # sentences searched
    while True:
        if feed is not None and live < room:
            joining = [[item, n, []] for item in feed(room - live) if not item.cancelled]
            if joining:
                decoder.add([rec[0].ids for rec in joining], n)
                rows += [rec for rec in joining for _ in range(n)]
                steps += [0] * (n * len(joining))
                sums = torch.cat([sums, sums.new_zeros(n * len(joining))])
                history = torch.cat([history, history.new_zeros(n * len(joining), history.size(1))])
                if generators is not None:
                    generators += generators_for(joining)
                live += len(joining)
        if not rows:
            return
        T = history.size(1)
        last = history[:, -1] if T else history.new_full((len(rows),), decoder.start_token_id)
        if T and 0 in steps:
            last = last.masked_fill(torch.tensor([t == 0 for t in steps], device=device), decoder.start_token_id)
        log_probs = decoder.step(last)  # (N, V)
        if sampling is None:
            token = log_probs.argmax(dim=-1)  # (N,)
        else:
            token = _sample(log_probs, generators=generators, **sampling)
        sums = sums + log_probs.gather(1, token.unsqueeze(-1)).squeeze(-1)
        history = torch.cat([history, token.unsqueeze(-1)], dim=-1)
        steps = [t + 1 for t in steps]
        ended = token.eq(eos_token_id) | torch.tensor(
            [t >= rec[0].max_length for t, rec in zip(steps, rows)], device=device
        )  # (N,)
        cancelled = [rec[0].cancelled for rec in rows]
        if not ended.any() and not any(cancelled):
            continue
        T = history.size(1)
        ended_rows = ended.nonzero(as_tuple=True)[0].tolist()
        for r, tokens, total in zip(ended_rows, history[ended_rows].tolist(), sums[ended_rows].tolist()):
            rec = rows[r]
            if cancelled[r]:
                continue
            tokens = tokens[T - steps[r] :]
            if tokens[-1] == eos_token_id:
                tokens = tokens[:-1]
            rec[2].append(Hypothesis(total / length_penalty(steps[r], alpha, lp_form), tokens, total))
            rec[1] -= 1
            if rec[1] == 0:
                done(rec[0], sorted(rec[2], reverse=True))
                live -= 1
        ended_list = ended.tolist()
        keep = [r for r in range(len(rows)) if not ended_list[r] and not cancelled[r]]
        for rec in {id(rows[r]): rows[r] for r in range(len(rows)) if cancelled[r]}.values():
            rec[1] = -1  # cancelled: leaves without a result
            live -= 1
        if not keep and feed is None:
            return
        keep_t = torch.tensor(keep, dtype=torch.long, device=device)  # (N',)
        decoder.select(keep_t, sentences_changed=True)
        width = max((steps[r] for r in keep), default=0)
        history = history[keep_t][:, T - width :] if width else history.new_zeros(len(keep), 0)
        sums = sums[keep_t]
        if generators is not None:
            generators = [generators[r] for r in keep]
        rows = [rows[r] for r in keep]
        steps = [steps[r] for r in keep]


def _sample(
    log_probs: torch.Tensor, top_k: int, top_p: float, temperature: float, generators: list | None = None
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
