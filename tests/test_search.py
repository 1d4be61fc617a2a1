"""txkit.search on hand-made step functions: the paper's length penalty, the length limit, exact stopping,
independence from the batch, greedy and sampling."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from txkit.search import (
    Hypothesis,
    _sample,
    beam_search,
    greedy_search,
    length_penalty,
    beam_search_continuous,
    sample_search,
    token_search_continuous,
    top_candidates,
)

PAD, START, EOS, A = 0, 0, 2, 3  # start token = padding, as in txkit's models
V = 10  # tokens 4..9 and <s>=1 are near-impossible fillers


class TableDecoder:
    """A `StepDecoder` whose next-token distribution is a function of (sentence, prefix)."""

    start_token_id = START
    device = torch.device("cpu")

    def __init__(self, log_probs_of, batch: int):
        self.log_probs_of = log_probs_of
        self.rows = [(sentence, ()) for sentence in range(batch)]  # (sentence, tokens so far) per row
        self.started = False
        self.steps = 0
        self.row_steps = 0  # rows summed over steps: the work done

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.started:  # the tokens chosen at the previous step extend each row
            self.rows = [(s, prefix + (tok,)) for (s, prefix), tok in zip(self.rows, tokens.tolist())]
        self.started = True
        self.steps += 1
        self.row_steps += len(self.rows)
        return torch.stack([self.log_probs_of(s, prefix) for s, prefix in self.rows])

    def select(self, rows: torch.Tensor, sentences_changed: bool) -> None:
        if not sentences_changed:  # the search promises rows stay within their sentences
            assert [self.rows[r][0] for r in rows.tolist()] == [s for s, _ in self.rows]
        self.rows = [self.rows[r] for r in rows.tolist()]


def distribution(probs: dict[int, float]) -> torch.Tensor:
    """(V,) fp32 log-probabilities: the given tokens, the rest spread thinly, padding impossible."""
    p = torch.full((V,), 1e-6, dtype=torch.float64)
    for token, value in probs.items():
        p[token] = value
    p[PAD] = 0.0
    return (p / p.sum()).log().float()


# Two ways to end: S = "</s>" at once, or L = "a a a a a </s>" (the a's get likelier as they go).
P_END_NOW, P_A_FIRST, P_A_NEXT, P_END_AFTER_A = 0.45, 0.5499, 0.82, 0.17


def two_endings(sentence: int, prefix: tuple) -> torch.Tensor:
    if prefix == ():
        return distribution({EOS: P_END_NOW, A: P_A_FIRST})
    if all(t == A for t in prefix) and len(prefix) < 5:
        return distribution({A: P_A_NEXT, EOS: P_END_AFTER_A})
    return distribution({EOS: 0.99})


def raw_scores() -> tuple[float, float]:
    """sum log p of S and of L, computed from the table above, not by the search."""
    short = math.log(two_endings(0, ())[EOS].exp().item())
    long = math.log(two_endings(0, ())[A].exp().item())
    for k in range(1, 5):
        long += math.log(two_endings(0, (A,) * k)[A].exp().item())
    long += math.log(two_endings(0, (A,) * 5)[EOS].exp().item())
    return short, long


def search(lp_form, alpha, max_lengths=(50,), beam_size=2, nbest=1, table=two_endings):
    decoder = TableDecoder(table, len(max_lengths))
    return beam_search(decoder, list(max_lengths), EOS, beam_size=beam_size, alpha=alpha, lp_form=lp_form, nbest=nbest)


def test_gnmt_length_penalty_picks_a_different_winner_than_raw_scores():
    short, long = raw_scores()
    gnmt = lambda raw, n: raw / ((5 + n) ** 0.6 / (5 + 1) ** 0.6)  # the paper's form, |Y| counts </s>
    hf = lambda raw, n: raw / n**0.6
    # the premise of the test: raw score and the two forms disagree about the winner
    assert short > long and gnmt(short, 1) > gnmt(long, 6) and hf(long, 6) > hf(short, 1)

    (best,) = search("gnmt", 0.0)[0]
    assert best.tokens == [] and best.score == pytest.approx(short, abs=1e-5)  # alpha 0: raw sum log p

    (best, second) = search("gnmt", 0.6, nbest=2)[0]
    assert best.tokens == [] and best.score == pytest.approx(gnmt(short, 1), abs=1e-5)
    assert second.tokens == [A] * 5 and second.score == pytest.approx(gnmt(long, 6), abs=1e-5)
    assert second.log_prob == pytest.approx(long, abs=1e-5)

    (best,) = search("hf", 0.6)[0]  # transformers' form rewards length more
    assert best.tokens == [A] * 5 and best.score == pytest.approx(hf(long, 6), abs=1e-5)

    (best,) = search("gnmt", 1.0)[0]  # a stronger paper-form penalty also prefers L
    assert best.tokens == [A] * 5 and best.score == pytest.approx(long / (11 / 6), abs=1e-5)


def test_length_penalty_formulas():
    assert length_penalty(1, 0.6, "gnmt") == pytest.approx(1.0)
    assert length_penalty(6, 0.6, "gnmt") == pytest.approx((11 / 6) ** 0.6)
    assert length_penalty(6, 0.6, "hf") == pytest.approx(6**0.6)
    assert length_penalty(9, 0.0, "gnmt") == 1.0
    with pytest.raises(ValueError):
        length_penalty(3, 0.6, "fairseq")


def test_each_sentence_has_its_own_length_limit():
    # L needs 6 tokens. With a limit of 4, the search must finish "a a a a" at the limit (no </s>), which
    # the HF form then prefers to S; the sentence with room still finds L.
    limited, free = search("hf", 0.6, max_lengths=(4, 50))
    assert limited[0].tokens == [A] * 4
    assert free[0].tokens == [A] * 5

    def never_ends(sentence, prefix):
        return distribution({4 + (len(prefix) + sentence) % 6: 0.9, EOS: 1e-5})

    for lp_form in ("gnmt", "hf"):
        results = search(lp_form, 0.6, max_lengths=(3, 7, 1), beam_size=3, table=never_ends)
        assert [len(hyps[0].tokens) for hyps in results] == [3, 7, 1]
    greedy = greedy_search(TableDecoder(never_ends, 3), [3, 7, 1], EOS)
    assert [len(hyps[0].tokens) for hyps in greedy] == [3, 7, 1]


def random_table(seed: int):
    """A random but fixed next-token distribution per (sentence, prefix); </s> grows likelier with length."""

    def log_probs_of(sentence: int, prefix: tuple) -> torch.Tensor:
        g = torch.Generator().manual_seed(hash((seed, sentence) + prefix) % 2**31)
        logits = torch.randn(V, generator=g, dtype=torch.float64) * 2.0
        logits[EOS] += 0.4 * len(prefix) - 1.0
        logits[PAD] = -math.inf
        return logits.log_softmax(-1).float()

    return log_probs_of


def exhaustive_beam(log_probs_of, sentence, limit, K, alpha):
    """Reference: one sentence, no early stopping (runs to the limit), every finished hypothesis kept."""
    open_ = [(torch.tensor(0.0), ())]
    finished = []
    for t in range(1, limit + 1):
        cands = []
        for score, prefix in open_:
            log_p = log_probs_of(sentence, prefix)
            for token in range(V):
                cands.append(((score + log_p[token]).item(), prefix, token))
        cands.sort(key=lambda c: -c[0])
        cands = cands[: 2 * K]
        for rank, (score, prefix, token) in enumerate(cands[:K]):
            if token == EOS or t == limit:
                if math.isfinite(score):
                    tokens = list(prefix) if token == EOS else list(prefix) + [token]
                    normalized = torch.tensor(score) / length_penalty(t, alpha, "gnmt")
                    finished.append(Hypothesis(normalized.item(), tokens, score))
        open_ = [(torch.tensor(s), p + (tok,)) for s, p, tok in cands if tok != EOS][:K]
    return sorted(finished, reverse=True)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5, -0.5])
def test_gnmt_early_stopping_is_exact(alpha):
    """Stopping early gives exactly what searching to the length limit gives."""
    table = random_table(seed=int(alpha * 10))
    limits = [3, 9, 14, 6, 12, 10, 8, 14]
    got = beam_search(TableDecoder(table, len(limits)), limits, EOS, beam_size=3, alpha=alpha, lp_form="gnmt", nbest=2)
    stopped_early = 0
    for sentence, limit in enumerate(limits):
        want = exhaustive_beam(table, sentence, limit, 3, alpha)[:2]
        assert [h.tokens for h in got[sentence]] == [h.tokens for h in want]
        assert [h.score for h in got[sentence]] == pytest.approx([h.score for h in want], abs=1e-5)
        stopped_early += max(len(h.tokens) for h in want) < limit
    assert stopped_early  # some sentences end before their limit, so the stopping rule was exercised


def test_gnmt_search_does_not_stop_while_a_longer_hypothesis_can_still_win():
    # S = "</s>" finishes first. The open "a" scores worse than S even normalised at the next length, but
    # nine nearly free tokens later, normalised at length 10, it wins: stopping then would be wrong.
    def late_bloomer(sentence, prefix):
        if prefix == ():
            return distribution({EOS: 0.45, A: 0.37})
        if all(t == A for t in prefix) and len(prefix) < 9:
            return distribution({A: 0.999})
        return distribution({EOS: 0.999})

    (best,) = search("gnmt", 0.6, beam_size=2, table=late_bloomer)[0]
    assert best.tokens == [A] * 9
    s_raw, a_raw = math.log(0.45 / 0.82), math.log(0.37 / 0.82)
    assert a_raw / length_penalty(2, 0.6, "gnmt") < s_raw < best.score  # the premise


@pytest.mark.parametrize("lp_form", ["gnmt", "hf"])
def test_finished_sentences_leave_the_batch_without_changing_results(lp_form):
    table = random_table(seed=7)
    limits = [4, 12, 7, 12, 2, 9]
    decoder = TableDecoder(table, len(limits))
    together = beam_search(decoder, limits, EOS, beam_size=3, alpha=0.6, lp_form=lp_form, nbest=3)
    steps_alone = []
    for sentence, limit in enumerate(limits):
        alone_decoder = TableDecoder(lambda s, p, sentence=sentence: table(sentence, p), 1)
        (alone,) = beam_search(alone_decoder, [limit], EOS, beam_size=3, alpha=0.6, lp_form=lp_form, nbest=3)
        assert [h.tokens for h in together[sentence]] == [h.tokens for h in alone]
        scores = [h.score for h in together[sentence]]
        assert scores == sorted(scores, reverse=True) and len(scores) == 3
        steps_alone.append(alone_decoder.steps)
    # A sentence occupies the batch only while it is searched (3 beam rows from its first step on, the two
    # not yet opened at -inf, so that sentences joining mid-search have the same layout), so the work is what
    # the sentences cost alone; a sentence that stayed after finishing would add rows.
    assert len(set(steps_alone)) > 1  # the premise: sentences finish at different steps
    assert decoder.steps == max(steps_alone)
    assert decoder.row_steps == sum(3 * n for n in steps_alone)


class JoiningDecoder:
    """A `StepDecoder` like TableDecoder that sentences can join mid-search (`add`; a sentence's source is
    [its number]). `waiting()` is asked at every step, so a test sees whether the batch stays full."""

    start_token_id = START
    device = torch.device("cpu")

    def __init__(self, log_probs_of, waiting):
        self.log_probs_of = log_probs_of
        self.waiting = waiting
        self.rows: list[tuple[int, tuple, bool]] = []  # (sentence, tokens so far, started) per row
        self.steps_seen: list[tuple[int, int]] = []  # per step: (sentences searched, sentences still waiting)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.rows = [(s, prefix + (tok,) if started else prefix, True)
                     for (s, prefix, started), tok in zip(self.rows, tokens.tolist())]  # fmt: skip
        self.steps_seen.append((len({s for s, _, _ in self.rows}), self.waiting()))
        return torch.stack([self.log_probs_of(s, prefix) for s, prefix, _ in self.rows])

    def select(self, rows: torch.Tensor, sentences_changed: bool) -> None:
        self.rows = [self.rows[r] for r in rows.tolist()]

    def add(self, sources: list[list[int]], rows_per_sentence: int) -> None:
        self.rows += [(ids[0], (), False) for ids in sources for _ in range(rows_per_sentence)]


@dataclasses.dataclass(eq=False)
class Item:
    ids: list
    max_length: int
    key: int
    cancelled: bool = False


@pytest.mark.parametrize(
    "how",
    [dict(lp_form="gnmt"), dict(lp_form="hf"), dict(lp_form="gnmt", nbest=3), dict(greedy=True),
     dict(sampling=True)],
    ids=["gnmt", "hf", "nbest", "greedy", "sampling"],
)  # fmt: skip
def test_continuous_search_fills_free_places_and_keeps_each_result(how):
    """Sentences of mixed limits join as others finish: the batch stays at `room` sentences while any wait,
    and every sentence gets what it gets searched alone (a cancelled one gets nothing)."""
    table = random_table(seed=11)
    limits = [4, 12, 7, 12, 2, 9, 3, 11, 6, 5, 12, 8]
    K = 3
    seeds = lambda item: [100 + item.key, 200 + item.key]  # noqa: E731

    def run(decoder, items, feed, done, room):
        if how.get("greedy") or how.get("sampling"):
            sampling = dict(top_k=0, top_p=1.0, temperature=1.0) if how.get("sampling") else None
            n = 2 if sampling else 1
            token_search_continuous(decoder, items, feed, done, EOS, sampling=sampling, seeds=seeds,
                                    num_samples=n, room=room)  # fmt: skip
            return
        beam_search_continuous(decoder, items, feed, done, EOS, beam_size=K, alpha=0.6,
                               lp_form=how["lp_form"], nbest=how.get("nbest", 1), room=room)  # fmt: skip

    alone = {}
    for key, limit in enumerate(limits):
        decoder = TableDecoder(lambda s, p, key=key: table(key, p), 1)
        run(decoder, [Item([key], limit, key)], None, lambda item, hyps: alone.__setitem__(item.key, hyps), 0)
    waiting = [Item([key], limit, key) for key, limit in enumerate(limits)]
    cancelled = waiting[5]
    got = {}

    def done(item, hyps):
        got[item.key] = hyps
        if cancelled not in waiting:  # the client of sentence 5 goes away while it is searched
            cancelled.cancelled = True

    decoder = JoiningDecoder(table, lambda: len(waiting))
    room = 4
    run(decoder, [], lambda free: [waiting.pop(0) for _ in range(min(free, len(waiting)))],
                            done, room)  # fmt: skip
    assert not waiting and set(got) == set(range(len(limits))) - {5}
    for key, hyps in got.items():
        assert hyps == alone[key], key
    # while sentences waited, every step searched `room` of them: a finished one's place is taken at once
    assert all(searched == room for searched, still_waiting in decoder.steps_seen if still_waiting)
    assert sum(1 for _, still_waiting in decoder.steps_seen if still_waiting) > 5  # the premise: many joins


def test_greedy_takes_the_most_likely_token_and_stops_at_eos():
    table = random_table(seed=3)
    limits = [10, 10, 10]
    results = greedy_search(TableDecoder(table, 3), limits, EOS)
    for sentence, (hyp,) in enumerate(results):
        prefix: tuple = ()
        total = 0.0
        while len(prefix) < 10:
            log_p = table(sentence, prefix)
            token = int(log_p.argmax())
            total += log_p[token].item()
            if token == EOS:
                break
            prefix += (token,)
        assert hyp.tokens == list(prefix)
        assert hyp.log_prob == pytest.approx(total, abs=1e-5)


def test_sampling_is_reproducible_per_sentence_and_filters():
    table = random_table(seed=5)
    seeds = [[11, 12], [21, 22], [31, 32]]
    run = lambda decoder, seeds, **kw: sample_search(
        decoder, [8] * len(seeds), EOS, seeds=seeds, num_samples=2, **kw
    )
    first = run(TableDecoder(table, 3), seeds)
    assert run(TableDecoder(table, 3), seeds) == first
    # sentence 1 alone, with its seeds, draws what it drew in the batch
    alone = run(TableDecoder(lambda s, p: table(1, p), 1), [seeds[1]])
    assert [h.tokens for h in alone[0]] == [h.tokens for h in first[1]]
    assert all(len(hyps) == 2 for hyps in first)
    # top_k=1 is greedy
    greedy = greedy_search(TableDecoder(table, 3), [8] * 3, EOS)
    top1 = run(TableDecoder(table, 3), seeds, top_k=1)
    assert [[h.tokens for h in hyps] for hyps in top1] == [[g[0].tokens] * 2 for g in greedy]


def test_sample_filters_top_k_top_p_and_temperature():
    log_probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(2000, 1)
    gens = [torch.Generator().manual_seed(i) for i in range(2000)]
    drawn = _sample(log_probs, top_k=2, top_p=1.0, temperature=1.0, generators=gens)
    assert set(drawn.tolist()) == {0, 1}
    assert 0.55 < drawn.eq(0).float().mean().item() < 0.70  # 0.5 / 0.8 = 0.625
    gens = [torch.Generator().manual_seed(i) for i in range(2000)]
    drawn = _sample(log_probs, top_k=0, top_p=0.7, temperature=1.0, generators=gens)
    assert set(drawn.tolist()) == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    gens = [torch.Generator().manual_seed(i) for i in range(2000)]
    drawn = _sample(log_probs, top_k=0, top_p=1.0, temperature=0.05, generators=gens)
    assert drawn.eq(0).all()  # a low temperature is nearly greedy
    gens = [torch.Generator().manual_seed(i) for i in range(2000)]
    drawn = _sample(log_probs, top_k=0, top_p=1.0, temperature=1.0, generators=gens)
    assert 0.03 < drawn.eq(3).float().mean().item() < 0.08


def test_beam_search_rejects_bad_arguments():
    with pytest.raises(ValueError, match="nbest"):
        search("gnmt", 0.6, beam_size=2, nbest=3)
    with pytest.raises(ValueError, match="length-penalty form"):
        search("marian", 0.6)
    assert beam_search(TableDecoder(two_endings, 0), [], EOS) == []


@pytest.mark.parametrize("vocab", [8000, 8003, 300])
def test_chunked_top_candidates_equal_a_topk_over_all_continuations(vocab):
    gen = torch.Generator().manual_seed(vocab)
    for A, k in [(6, 4), (3, 1)]:
        log_probs = torch.randn(A * k, vocab, generator=gen).mul(4).log_softmax(-1)
        log_probs[:, 0] = float("-inf")  # padding, as txkit's models give it
        log_probs[1, 130:200] = float("-inf")  # whole chunks that can never be chosen
        scores = torch.randn(A, k, generator=gen) * 5
        values, index = top_candidates(scores, log_probs, 8)
        expected = (scores.unsqueeze(-1) + log_probs.view(A, k, vocab)).view(A, k * vocab).topk(8, dim=-1)
        assert torch.equal(values, expected.values) and torch.equal(index, expected.indices)


def test_hypotheses_are_equal_only_with_the_same_tokens():
    """Tests compare search results with ==: that must compare the translations, not only their scores."""
    assert Hypothesis(-1.0, [4, 5], -2.0) == Hypothesis(-1.0, [4, 5], -2.0)
    assert Hypothesis(-1.0, [4, 5], -2.0) != Hypothesis(-1.0, [5, 4], -2.0)
    assert Hypothesis(-1.0, [4], -2.0) < Hypothesis(-0.5, [], -1.0)  # ranked by score
