"""Tests for txkit/ensemble.py and the ensembles of `txkit translate` / `txkit eval`: real trained models,
real Multi30k sentences, the real search."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import run_cli, train_small_model
from txkit.decoding import DecodeOptions, Translator, load_model
from txkit.ensemble import EnsembleModel, load_ensemble
from txkit.errors import TxkitError
from txkit.search import length_penalty
from txkit.step_decoder import step_decoder

N_LINES = 80


@pytest.fixture(scope="module")
def second_model(tmp_path_factory, shared_data) -> Path:
    """A second small model: the same data and vocabulary as `trained_model`, another seed."""
    return train_small_model(tmp_path_factory.mktemp("ens") / "seed1", shared_data, seed=1)


@pytest.fixture(scope="module")
def sources(shared_data) -> list[str]:
    return (shared_data / "multi30k" / "test2016.en").read_text(encoding="utf-8").splitlines()[:N_LINES]


SEARCHES = [
    dict(beam_size=4, nbest=2, lp_form="gnmt"),
    dict(beam_size=4, nbest=3, lp_form="hf"),
    dict(beam_size=1, lp_form="gnmt"),
    dict(beam_size=1, lp_form="hf"),
]


@pytest.mark.parametrize("search", SEARCHES, ids=lambda s: f"beam{s['beam_size']}-{s['lp_form']}")
def test_an_ensemble_of_one_is_the_model_bit_for_bit(trained_model, sources, search):
    model, src_tok, tgt_tok = load_model(trained_model)
    single = Translator(model, src_tok, tgt_tok, DecodeOptions(**search)).translate_hypotheses(sources)
    alone = Translator(EnsembleModel([model]), src_tok, tgt_tok, DecodeOptions(**search)).translate_hypotheses(sources)
    assert alone == single  # tokens, scores and log-probabilities, exactly


def _forced_log_prob(model, src_tok, source: str, tokens: list[int]) -> float:
    """sum log p of `tokens` + </s> under one model, step by step with its own step decoder."""
    ids = torch.tensor([src_tok(source)["input_ids"]])
    decoder = step_decoder(model, ids, torch.ones_like(ids))
    last, total = torch.tensor([decoder.start_token_id]), 0.0
    for token in tokens + [model.config.eos_token_id]:
        total += float(decoder.step(last)[0, token])
        last = torch.tensor([token])
    return total


def test_two_models_average_their_log_probabilities(trained_model, second_model, sources, shared_data):
    import sacrebleu

    refs = (shared_data / "multi30k" / "test2016.de").read_text(encoding="utf-8").splitlines()[:N_LINES]
    a, src_tok, tgt_tok = load_model(trained_model)
    b, _, _ = load_model(second_model)
    ensemble, _, _ = load_ensemble([str(trained_model), str(second_model)])
    assert isinstance(ensemble, EnsembleModel)
    for search in SEARCHES:
        options = DecodeOptions(**search)
        outputs = {name: Translator(m, src_tok, tgt_tok, options) for name, m in (("a", a), ("b", b), ("ab", ensemble))}
        hyps = {name: t.translate_hypotheses(sources) for name, t in outputs.items()}
        texts = {name: [t.detokenize(h)[0][0] for h in hyps[name]] for name, t in outputs.items()}
        assert texts["ab"] != texts["a"] and texts["ab"] != texts["b"], search
        bleu = {name: sacrebleu.corpus_bleu(t, [refs]).score for name, t in texts.items()}
        # two weak models (200 updates each): the ensemble is no worse than the weaker one by more than noise
        assert bleu["ab"] > min(bleu["a"], bleu["b"]) - 1.0 and bleu["ab"] > 1.0, (search, bleu)
        for i in range(0, N_LINES, 8):  # the score is the mean of the models' own sentence log-probabilities
            for hyp in hyps["ab"][i]:
                expected = (_forced_log_prob(a, src_tok, sources[i], hyp.tokens)
                            + _forced_log_prob(b, src_tok, sources[i], hyp.tokens)) / 2  # fmt: skip
                assert hyp.log_prob == pytest.approx(expected, abs=1e-3)
                lp = length_penalty(len(hyp.tokens) + 1, options.length_penalty, options.lp_form)
                assert hyp.score == pytest.approx(hyp.log_prob / lp, abs=1e-5)


def test_cli_ensembles_and_refuses_another_vocabulary(trained_model, second_model, shared_data, tmp_path, capsys):
    from txkit.modeling import TxkitConfig, TxkitForConditionalGeneration
    from txkit.tokenization import build_tokenizer, load_tokenizer

    src = tmp_path / "src.en"
    ref = tmp_path / "ref.de"
    for path, lang in ((src, "en"), (ref, "de")):
        lines = (shared_data / "multi30k" / f"test2016.{lang}").read_text(encoding="utf-8").splitlines()[:20]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    out = tmp_path / "out.de"
    code, _, err = run_cli(["translate", str(trained_model), str(second_model), "-i", str(src), "-o", str(out)], capsys)
    assert code == 0, err
    model, src_tok, tgt_tok = load_ensemble([str(trained_model), str(second_model)])
    lines = src.read_text(encoding="utf-8").splitlines()
    assert out.read_text(encoding="utf-8").splitlines() == Translator(model, src_tok, tgt_tok).translate(lines)
    code, stdout, err = run_cli(["eval", str(trained_model), str(second_model), "--src", str(src), "--ref", str(ref),
                                 "--bootstrap", "0"], capsys)  # fmt: skip
    assert code == 0 and "BLEU" in stdout, err

    other = tmp_path / "other-vocab"  # a model whose tokenizer has another vocabulary
    build_tokenizer([shared_data / "multi30k" / "val.en", shared_data / "multi30k" / "val.de"], other,
                    vocab_size=700, show_progress=False, stats=False)  # fmt: skip
    config = TxkitConfig(vocab_size=len(load_tokenizer(other)), d_model=32, attention_heads=4, ffn_dim=64,
                         encoder_layers=1, decoder_layers=1, max_position_embeddings=128)  # fmt: skip
    TxkitForConditionalGeneration(config).save_pretrained(other)
    code, stdout, err = run_cli(["translate", str(trained_model), str(other), "-i", str(src)], capsys)
    assert code == 2 and stdout == ""
    assert err.strip().splitlines()[-1].endswith(f"{other}: its target vocabulary differs from {trained_model}'s; "
                                                  "the models of an ensemble must share one target vocabulary")
    with pytest.raises(TxkitError, match="target vocabulary differs"):
        load_ensemble([str(other), str(trained_model)])
