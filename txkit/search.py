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
`select(rows, sentences_changed)` to keep/reorder the decoder state; txkit.step_decoder implements it for
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


def greedy_search(
    decoder: StepDecoder, max_lengths: list[int], eos_token_id: int, alpha: float = 0.6, lp_form: str = "gnmt"
) -> list[list[Hypothesis]]:
    """Greedy search (beam 1, the fast path): the most likely token at each step; one hypothesis per sentence.

    Scores are normalised by the same length penalty as beam search so that they compare.
    """
    return _token_by_token(decoder, max_lengths, eos_token_id, lambda log_probs, _: log_probs.argmax(dim=-1),
                           None, 1, alpha, lp_form)  # fmt: skip


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
    generators = None
    if seeds is not None:
        device = _device_of(decoder)
        generators = [torch.Generator(device=device).manual_seed(seeds[i][s])
                      for i in range(len(max_lengths)) for s in range(num_samples)]  # fmt: skip

    def draw(log_probs, row_generators):
        return _sample(log_probs, top_k, top_p, temperature, row_generators)

    return _token_by_token(decoder, max_lengths, eos_token_id, draw, generators, num_samples, alpha, lp_form)


def _token_by_token(
    decoder: StepDecoder,
    max_lengths: list[int],
    eos_token_id: int,
    choose,
    generators: list | None,
    num_samples: int,
    alpha: float,
    lp_form: str,
) -> list[list[Hypothesis]]:
    """The loop greedy search and sampling share: `choose(log_probs (A, V), generators of the A rows) -> (A,)`
    picks each row's next token; a row leaves the batch when it ends."""
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
    sums = torch.zeros(n, device=device)  # (A,) sum log p
    history = torch.zeros(n, 0, dtype=torch.long, device=device)  # (A, t)
    last = torch.full((n,), decoder.start_token_id, dtype=torch.long, device=device)
    t = 0
    while active:
        log_probs = decoder.step(last)  # (A, V)
        token = choose(log_probs, generators)  # (A,)
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
