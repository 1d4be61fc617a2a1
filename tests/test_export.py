"""The Marian export: same logits and translations as txkit, refusals, and CTranslate2 for real.

The model under test is a small Transformer trained for a few hundred updates on Multi30k en-de (a
random model repeats one token, which would hide search differences): tests/conftest.py's `trained_model`,
the one trained model of the test suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import SMALL, run_cli
from txkit.errors import TxkitError
from txkit.export import export_marian, marian_blockers, marian_feature_order, pad_last_order
from txkit.modeling import TxkitConfig, TxkitForConditionalGeneration
from txkit.modeling.modeling_txkit import sinusoidal_positions

N_TEST = 300  # Multi30k test2016 sentences translated by txkit and CTranslate2


@pytest.fixture(scope="module")
def marian_dir(trained_model, tmp_path_factory) -> Path:
    return export_marian(trained_model, tmp_path_factory.mktemp("export") / "marian")


@pytest.fixture(scope="module")
def test_sentences(shared_data) -> list[str]:
    return (shared_data / "multi30k" / "test2016.en").read_text(encoding="utf-8").splitlines()[:N_TEST]


def _txkit_hypotheses(model_dir: Path, lines: list[str], beam_size: int, max_len: int) -> list[list[int]]:
    """txkit's own search (transformers' length-penalty form, a fixed length limit): token ids per line."""
    from txkit.decoding import DecodeOptions, Translator, load_model

    model, src_tok, tgt_tok = load_model(model_dir, device="cpu", dtype="fp32")
    options = DecodeOptions(beam_size=beam_size, length_penalty=0.6, lp_form="hf", max_len_a=0.0, max_len_b=max_len)
    return [hyps[0].tokens for hyps in Translator(model, src_tok, tgt_tok, options).translate_hypotheses(lines)]


def _old_ids(new_ids: list[int], order: list[int]) -> list[int]:
    return [order[i] for i in new_ids]


# --------------------------------------------------------------------------------------------------
# The re-orderings
# --------------------------------------------------------------------------------------------------


def test_feature_order_turns_the_papers_table_into_marians():
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    marian = MarianSinusoidalPositionalEmbedding(40, 16).create_weight()
    paper = sinusoidal_positions(40, 16)
    torch.testing.assert_close(paper[:, marian_feature_order(16)], marian, atol=1e-6, rtol=0)


def test_pad_moves_last_and_the_rest_keeps_its_order():
    assert pad_last_order(6, 0) == [1, 2, 3, 4, 5, 0]
    assert pad_last_order(6, 5) == list(range(6))


# --------------------------------------------------------------------------------------------------
# The exported folder against the txkit model
# --------------------------------------------------------------------------------------------------


def test_export_is_a_builtin_marian_model_with_identical_logits(trained_model, marian_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, MarianMTModel

    files = {p.name for p in marian_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    assert not any(name.endswith(".py") for name in files)  # no remote code
    marian = AutoModelForSeq2SeqLM.from_pretrained(marian_dir, dtype=torch.float32).eval()  # no trust_remote_code
    assert type(marian) is MarianMTModel and "auto_map" not in marian.config.to_dict()

    txkit_model = TxkitForConditionalGeneration.from_pretrained(trained_model, dtype=torch.float32).eval()
    tok, marian_tok = AutoTokenizer.from_pretrained(trained_model), AutoTokenizer.from_pretrained(marian_dir)
    order = pad_last_order(len(tok), tok.pad_token_id)
    assert marian_tok.pad_token_id == len(tok) - 1 and marian_tok.convert_ids_to_tokens(len(tok) - 1) == "<pad>"

    src = ["Two young dogs are playing in the snow.", "A man in a red shirt is climbing a rock wall."]
    tgt = ["Zwei junge Hunde spielen im Schnee.", "Ein Mann in einem roten Hemd klettert."]
    batch, marian_batch = (
        tok(src, return_tensors="pt", padding=True),
        marian_tok(src, return_tensors="pt", padding=True),
    )
    assert marian_batch["input_ids"].tolist() == [
        [order.index(i) for i in row] for row in batch["input_ids"].tolist()
    ]  # the same tokens under their new ids
    labels = tok(tgt, return_tensors="pt", padding=True)["input_ids"]
    decoder_in = txkit_model.prepare_decoder_input_ids_from_labels(labels.masked_fill(labels.eq(0), -100))
    marian_decoder_in = torch.tensor([[order.index(i) for i in row] for row in decoder_in.tolist()])
    with torch.no_grad():
        want = txkit_model(**batch, decoder_input_ids=decoder_in).logits[..., order]  # (B, T, V) in Marian's order
        got = marian(**marian_batch, decoder_input_ids=marian_decoder_in).logits
    torch.testing.assert_close(got[..., :-1], want[..., :-1], atol=1e-5, rtol=0)  # every token but <pad>
    assert got.softmax(-1)[..., -1].eq(0).all() and want.softmax(-1)[..., -1].eq(0).all()  # <pad>: never


def test_greedy_and_beam_outputs_equal_txkits(trained_model, marian_dir, test_sentences):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    lines = test_sentences[:24]
    marian = AutoModelForSeq2SeqLM.from_pretrained(marian_dir, dtype=torch.float32).eval()
    marian_tok = AutoTokenizer.from_pretrained(marian_dir)
    order = pad_last_order(len(marian_tok), 0)
    special = {marian.config.eos_token_id, marian.config.pad_token_id}
    for beam in (1, 4):
        want = _txkit_hypotheses(trained_model, lines, beam, max_len=40)
        out = marian.generate(
            **marian_tok(lines, return_tensors="pt", padding=True), num_beams=beam, length_penalty=0.6,
            max_new_tokens=40, do_sample=False,
        )  # fmt: skip
        got = [_old_ids([i for i in row[1:] if i not in special], order) for row in out.tolist()]
        assert got == want, f"beam {beam}"
    assert len(set(map(tuple, want))) > 15  # the model's outputs depend on the input


# --------------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------------


def test_pre_norm_model_is_refused_naming_the_setting(tmp_path):
    torch.manual_seed(0)
    model = TxkitForConditionalGeneration(
        TxkitConfig(vocab_size=64, d_model=32, attention_heads=4, ffn_dim=64, encoder_layers=1, decoder_layers=1,
                    normalize_before=True)
    )  # fmt: skip
    model.save_pretrained(tmp_path / "prenorm")
    with pytest.raises(TxkitError, match="normalize_before=true \\(pre-norm\\)"):
        export_marian(tmp_path / "prenorm", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()

    # the other settings Marian cannot express are named too; GELU and unscaled embeddings are fine
    blockers = marian_blockers(TxkitConfig(vocab_size=64, tgt_vocab_size=70, layer_norm_eps=1e-6))
    assert any("separate source and target vocabularies" in b for b in blockers)
    assert any("layer_norm_eps" in b for b in blockers)
    assert marian_blockers(TxkitConfig(vocab_size=64, activation_function="gelu", scale_embedding=False)) == []


def test_gelu_unscaled_model_exports_with_identical_logits(trained_model, tmp_path):
    """Settings the paper does not use but Marian expresses: GELU and unscaled embeddings."""
    from transformers import AutoTokenizer, MarianMTModel

    tok = AutoTokenizer.from_pretrained(trained_model)
    torch.manual_seed(1)
    config = TxkitConfig(vocab_size=len(tok), activation_function="gelu", scale_embedding=False, **SMALL)
    model = TxkitForConditionalGeneration(config).eval()
    model.save_pretrained(tmp_path / "gelu")
    tok.save_pretrained(tmp_path / "gelu")
    out = export_marian(tmp_path / "gelu", tmp_path / "marian")
    marian = MarianMTModel.from_pretrained(out, dtype=torch.float32).eval()
    assert marian.config.activation_function == "gelu" and not marian.config.scale_embedding
    order = pad_last_order(len(tok), 0)
    new = torch.tensor([order.index(i) for i in range(len(tok))])
    src = torch.randint(4, len(tok), (3, 11))
    tgt = torch.cat([torch.zeros(3, 1, dtype=torch.long), torch.randint(4, len(tok), (3, 6))], dim=1)
    with torch.no_grad():
        want = model(input_ids=src, decoder_input_ids=tgt).logits[..., order]
        got = marian(input_ids=new[src], decoder_input_ids=new[tgt]).logits
    torch.testing.assert_close(got[..., :-1], want[..., :-1], atol=1e-5, rtol=0)  # every token but <pad>
    assert got.softmax(-1)[..., -1].eq(0).all() and want.softmax(-1)[..., -1].eq(0).all()  # <pad>: never


def test_export_refuses_to_overwrite_and_cli_reports_errors(trained_model, marian_dir, tmp_path):
    with pytest.raises(TxkitError, match="exists and is not empty"):
        export_marian(trained_model, marian_dir)
    with pytest.raises(TxkitError, match="not a txkit model \\(model_type 'marian'\\)"):
        export_marian(marian_dir, tmp_path / "again")
    code, _, err = run_cli(["export", trained_model, "--format", "onnx", "--out", tmp_path / "x"])
    assert code == 2 and "choose one of marian" in err


# --------------------------------------------------------------------------------------------------
# CTranslate2, for real
# --------------------------------------------------------------------------------------------------


def test_ctranslate2_conversion_translates_like_txkit(trained_model, test_sentences, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import AutoTokenizer

    marian_out, ct2_out = tmp_path / "marian", tmp_path / "ct2"
    code, out, err = run_cli(["export", trained_model, "--format", "marian", "--out", marian_out, "--ct2", ct2_out])
    assert code == 0, out + err
    assert (ct2_out / "model.bin").is_file()

    marian_tok = AutoTokenizer.from_pretrained(marian_out)
    order = pad_last_order(len(marian_tok), 0)
    translator = ctranslate2.Translator(str(ct2_out), device="cpu", intra_threads=1)
    sources = [marian_tok.convert_ids_to_tokens(marian_tok(line)["input_ids"]) for line in test_sentences]
    max_len = 60
    for beam in (1, 4):
        want = _txkit_hypotheses(trained_model, test_sentences, beam, max_len)
        results = translator.translate_batch(
            sources, beam_size=beam, length_penalty=0.6, max_decoding_length=max_len, max_batch_size=64
        )
        got = [_old_ids(marian_tok.convert_tokens_to_ids(r.hypotheses[0]), order) for r in results]
        same = sum(a == b for a, b in zip(got, want))
        assert same == len(want), f"beam {beam}: {len(want) - same} of {len(want)} translations differ"
