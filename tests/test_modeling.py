"""The model against the paper: sizes, masks, cache, tying, loading without txkit, and learning."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from txkit.modeling import TxkitConfig, TxkitForConditionalGeneration
from txkit.modeling import loss_txkit, modeling_txkit
from txkit.modeling.modeling_txkit import dropout, label_smoothed_nll, linear_label_smoothed_nll, sinusoidal_positions

TINY = dict(vocab_size=60, d_model=32, attention_heads=4, ffn_dim=64, encoder_layers=2, decoder_layers=2)


def tiny_model(seed: int = 0, **overrides) -> TxkitForConditionalGeneration:
    torch.manual_seed(seed)
    return TxkitForConditionalGeneration(TxkitConfig(**{**TINY, "dropout": 0.0, **overrides})).eval()


def closed_form_parameters(vocab: int, d: int, d_ff: int, n_enc: int, n_dec: int) -> int:
    """The paper's model with biases on every linear layer and one shared embedding matrix."""
    attention = 4 * (d * d + d)  # W^Q, W^K, W^V, W^O with biases
    ffn = d * d_ff + d_ff + d_ff * d + d
    layer_norm = 2 * d
    encoder_layer = attention + ffn + 2 * layer_norm
    decoder_layer = 2 * attention + ffn + 3 * layer_norm
    return vocab * d + n_enc * encoder_layer + n_dec * decoder_layer


@pytest.mark.parametrize(
    "preset, d, d_ff, expected",
    [("transformer-base", 512, 2048, 63_082_496), ("transformer-big", 1024, 4096, 214_245_376)],
)
def test_preset_parameter_counts_match_closed_form(preset, d, d_ff, expected):
    assert closed_form_parameters(37000, d, d_ff, 6, 6) == expected
    config = TxkitConfig.from_preset(preset, vocab_size=37000)
    with torch.device("meta"):  # no memory, no init: only shapes
        model = TxkitForConditionalGeneration(config)
    model.tie_weights()  # transformers < 5.2x leaves a model built on meta untied until it is loaded
    assert sum(p.numel() for p in model.parameters()) == expected


def test_presets_are_the_papers_table_3():
    base, big = TxkitConfig.from_preset("transformer-base"), TxkitConfig.from_preset("transformer-big")
    assert (base.d_model, base.ffn_dim, base.attention_heads, base.encoder_layers, base.dropout) == (512, 2048, 8, 6, 0.1)
    assert (big.d_model, big.ffn_dim, big.attention_heads, big.decoder_layers, big.dropout) == (1024, 4096, 16, 6, 0.3)
    assert base.label_smoothing == 0.1 and not base.normalize_before and base.activation_function == "relu"
    assert TxkitConfig.from_preset("transformer-big", dropout=0.1).dropout == 0.1
    with pytest.raises(ValueError, match="unknown preset"):
        TxkitConfig.from_preset("transformer-huge")


def test_sinusoidal_table_is_the_papers_interleaved_layout():
    table = sinusoidal_positions(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_embedding_input_is_scaled_token_embedding_plus_position():
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7]])
    got = model.model.encoder.embed(ids)
    want = model.model.shared.weight[ids] * math.sqrt(32) + sinusoidal_positions(1024, 32)[:3]
    torch.testing.assert_close(got, want)


def test_causality_future_targets_do_not_change_past_logits():
    model = tiny_model()
    src = torch.randint(4, 60, (2, 9))
    tgt = torch.randint(4, 60, (2, 8))
    changed = tgt.clone()
    t = 4
    changed[:, t + 1 :] = torch.randint(4, 60, (2, 8 - t - 1))
    a = model(input_ids=src, decoder_input_ids=tgt).logits
    b = model(input_ids=src, decoder_input_ids=changed).logits
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=0)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_padding_inside_a_batch_changes_nothing():
    model = tiny_model()
    short_src, short_tgt = torch.randint(4, 60, (1, 5)), torch.randint(4, 60, (1, 4))
    long_src, long_tgt = torch.randint(4, 60, (1, 11)), torch.randint(4, 60, (1, 9))
    pad = model.config.pad_token_id
    src = torch.full((2, 11), pad)
    src[0, :5], src[1] = short_src[0], long_src[0]
    tgt = torch.full((2, 9), pad)
    tgt[0, :4], tgt[1] = short_tgt[0], long_tgt[0]
    mask = src.ne(pad).long()

    alone_enc = model.model.encoder(short_src).last_hidden_state
    batch_enc = model.model.encoder(src, mask).last_hidden_state
    torch.testing.assert_close(batch_enc[0, :5], alone_enc[0], rtol=0, atol=1e-5)

    alone = model(input_ids=short_src, decoder_input_ids=short_tgt).logits
    batch = model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
    torch.testing.assert_close(batch[0, :4], alone[0], rtol=0, atol=1e-5)


def test_incremental_decoding_with_cache_equals_full_forward():
    model = tiny_model()
    src = torch.randint(4, 60, (3, 7))
    tgt = torch.randint(4, 60, (3, 6))
    full = model(input_ids=src, decoder_input_ids=tgt, use_cache=False).logits
    encoder_outputs = model.model.encoder(src)
    out = model(encoder_outputs=encoder_outputs, decoder_input_ids=tgt[:, :1], use_cache=True)
    steps, cache = [out.logits], out.past_key_values
    for t in range(1, 6):
        out = model(encoder_outputs=encoder_outputs, decoder_input_ids=tgt[:, t : t + 1], past_key_values=cache)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-5)
    # several new tokens on top of a cache: the causal mask is offset by the cached length
    out = model(encoder_outputs=encoder_outputs, decoder_input_ids=tgt[:, :2], use_cache=True)
    out = model(encoder_outputs=encoder_outputs, decoder_input_ids=tgt[:, 2:], past_key_values=out.past_key_values)
    torch.testing.assert_close(out.logits, full[:, 2:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_generate_same_with_and_without_cache(num_beams):
    model = tiny_model(init_std=1.0)  # a large init gives peaked, non-degenerate outputs
    src = torch.randint(4, 60, (4, 8))
    src[2, 5:] = 0
    mask = src.ne(0).long()
    kwargs = dict(input_ids=src, attention_mask=mask, max_new_tokens=12, num_beams=num_beams, do_sample=False)
    with_cache = model.generate(**kwargs, use_cache=True)
    without = model.generate(**kwargs, use_cache=False)
    assert torch.equal(with_cache, without)
    assert with_cache[:, 0].eq(model.config.pad_token_id).all()  # starts from the padding token
    assert len(set(map(tuple, with_cache.tolist()))) > 1


def test_search_never_produces_padding_and_its_logit_is_finite():
    model = tiny_model(init_std=1.0)
    with torch.no_grad():  # make padding the most attractive token if it were allowed
        model.model.shared.weight[0] = 50.0
    src = torch.randint(4, 60, (2, 5))
    logits = model(input_ids=src, decoder_input_ids=torch.zeros(2, 3, dtype=torch.long)).logits
    assert torch.isfinite(logits).all()  # losses computed outside txkit (label smoothing) stay finite
    assert (logits[..., 0] < logits[..., 1:].amin(-1) - 100).all()  # but far below every real token
    for dtype in (torch.float32, torch.float16, torch.bfloat16):  # probability exactly 0 in every float type
        assert logits.to(dtype).float().softmax(-1)[..., 0].eq(0).all()
    for kwargs in (dict(num_beams=4), dict(do_sample=True, top_k=0)):
        out = model.generate(input_ids=src, max_new_tokens=12, **kwargs)[:, 1:]  # after the start token
        before_eos = out.eq(model.config.eos_token_id).long().cumsum(1).eq(0)  # (generate pads after </s>)
        assert not (out.eq(0) & before_eos).any()


def test_three_tied_matrices_are_one_tensor_also_after_save_and_load(tmp_path):
    model = tiny_model()
    weight = model.model.shared.weight
    assert model.model.encoder.embed_tokens.weight is weight
    assert model.model.decoder.embed_tokens.weight is weight
    assert model.lm_head.weight is weight
    model.save_pretrained(tmp_path)
    loaded = TxkitForConditionalGeneration.from_pretrained(tmp_path)
    w = loaded.model.shared.weight
    assert loaded.model.encoder.embed_tokens.weight is w and loaded.lm_head.weight is w
    assert w.data_ptr() == loaded.model.decoder.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(w, weight, rtol=0, atol=0)


def test_separate_vocabularies_tie_only_decoder_input_and_output():
    model = tiny_model(tgt_vocab_size=45)
    assert model.model.encoder.embed_tokens.weight.shape == (60, 32)
    assert model.model.decoder.embed_tokens.weight.shape == (45, 32)
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    assert model.model.encoder.embed_tokens.weight is not model.lm_head.weight
    logits = model(input_ids=torch.randint(4, 60, (2, 5)), decoder_input_ids=torch.randint(4, 45, (2, 3))).logits
    assert logits.shape == (2, 3, 45)


def test_options_pre_norm_gelu_and_layer_counts():
    model = tiny_model(normalize_before=True, activation_function="gelu", encoder_layers=3, decoder_layers=1)
    assert model.model.encoder.layer_norm is not None and model.model.decoder.layer_norm is not None
    assert len(model.model.encoder.layers) == 3 and len(model.model.decoder.layers) == 1
    assert tiny_model().model.encoder.layer_norm is None  # post-norm: no final LayerNorm
    x = torch.randn(2, 3, 32)
    ffn = model.model.encoder.layers[0].ffn
    torch.testing.assert_close(ffn(x), ffn.fc2(F.gelu(ffn.fc1(x))))


def test_dropout_everywhere_in_training_and_nowhere_in_eval():
    model = tiny_model(dropout=0.3, attention_dropout=0.1, activation_dropout=0.1)
    src, tgt = torch.randint(4, 60, (2, 6)), torch.randint(4, 60, (2, 5))
    model.train()
    a, b = model(input_ids=src, labels=tgt).loss, model(input_ids=src, labels=tgt).loss
    assert a.item() != b.item()
    model.eval()
    assert model(input_ids=src, labels=tgt).loss.item() == model(input_ids=src, labels=tgt).loss.item()


def test_label_smoothed_loss_matches_the_definition():
    torch.manual_seed(0)
    vocab, eps, pad = 11, 0.1, 0
    logits = torch.randn(2, 5, vocab)
    logits[..., pad] = float("-inf")
    labels = torch.randint(1, vocab, (2, 5))
    labels[1, 3:] = -100
    loss, nll, n = label_smoothed_nll(logits, labels, eps, pad)
    # reference: cross-entropy against (1 - eps) one-hot + eps uniform over the V - 1 non-padding tokens
    keep = labels.ne(-100)
    logp = torch.log_softmax(logits[keep], -1)[:, 1:]  # drop the padding column
    target = torch.full_like(logp, eps / (vocab - 1))
    target[torch.arange(len(logp)), labels[keep] - 1] += 1 - eps
    assert n.item() == 8
    torch.testing.assert_close(loss, -(target * logp).sum())
    torch.testing.assert_close(nll, -logp[torch.arange(len(logp)), labels[keep] - 1].sum())


@pytest.mark.parametrize("pad, eps", [(0, 0.1), (5, 0.1), (10, 0.2), (0, 0.0)])
def test_fused_linear_loss_equals_the_unfused_loss_and_gradients(monkeypatch, pad, eps):
    """The training path's chunked, fused projection + loss gives the unfused path's values and gradients,
    whatever the padding id and smoothing, across chunk boundaries (7 rows per chunk for 23 rows)."""
    monkeypatch.setattr(loss_txkit, "FUSED_LOSS_CPU_ELEMENTS", 7 * 11)
    torch.manual_seed(0)
    hidden = torch.randn(23, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    labels = torch.randint(0, 11, (23,))
    labels[labels == pad] = (pad + 1) % 11
    ref_loss, ref_nll, ref_n = label_smoothed_nll(hidden @ weight.T, labels, eps, pad)
    ref_grads = torch.autograd.grad(ref_loss * 0.37, (hidden, weight))
    loss, nll, n = linear_label_smoothed_nll(hidden, weight, labels, eps, pad)
    grads = torch.autograd.grad(loss * 0.37, (hidden, weight))
    assert n.item() == ref_n.item() == 23 and not nll.requires_grad
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(nll, ref_nll.detach())
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)
    assert grads[1][pad].abs().sum() == 0  # the padding row never learns


def test_training_forward_with_fused_loss_equals_the_logits_path():
    """`return_logits=False` (what `txkit train` runs) gives the loss and parameter gradients of the plain
    forward with logits, also under bf16 autocast (within bf16's precision)."""
    src, tgt = torch.randint(4, 60, (3, 6)), torch.randint(4, 60, (3, 5))
    tgt[1, 3:] = 0  # padding in the labels

    def loss_and_grads(return_logits: bool, autocast: bool):
        model = tiny_model(seed=3, label_smoothing=0.1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids=src, labels=tgt, return_logits=return_logits)
        out.loss.backward()
        return out.loss.detach(), {name: p.grad for name, p in model.named_parameters()}

    for autocast, tol in ((False, {}), (True, {"atol": 2e-2, "rtol": 2e-2})):
        fused_loss, fused_grads = loss_and_grads(False, autocast)
        plain_loss, plain_grads = loss_and_grads(True, autocast)
        torch.testing.assert_close(fused_loss, plain_loss, **tol)
        for name, grad in plain_grads.items():
            torch.testing.assert_close(fused_grads[name], grad, **tol, msg=lambda m: f"{name}: {m}")


def _training_loss_and_grads(model, src, tgt, autocast: bool = False):
    model.train()  # dropout 0: training mode only selects the training code paths
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=src, labels=tgt).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_fused_projections_in_training_equal_the_separate_ones(monkeypatch):
    """Training projects queries, keys and values of one input with one matrix product (`_fused`): the same
    loss and gradients as the three separate projections, in float32 and under bf16 autocast."""
    src, tgt = torch.randint(4, 60, (3, 7)), torch.randint(4, 60, (3, 5))
    src[2, 4:], tgt[1, 3:] = 0, 0  # padding on both sides
    fused_calls = []
    fused = modeling_txkit.TxkitAttention._fused
    monkeypatch.setattr(modeling_txkit.TxkitAttention, "_fused", lambda self, *a: fused_calls.append(1) or fused(self, *a))
    for autocast, tol in ((False, {}), (True, {"atol": 2e-2, "rtol": 2e-2})):
        model = tiny_model(seed=4, label_smoothing=0.1)
        fused_calls.clear()
        loss, grads = _training_loss_and_grads(model, src, tgt, autocast)
        assert len(fused_calls) == 2 * 2 + 2  # encoder and decoder self-attention, decoder cross-attention
        monkeypatch.setattr(modeling_txkit.TxkitAttention, "fuse_projections", False)
        fused_calls.clear()
        plain_loss, plain_grads = _training_loss_and_grads(model, src, tgt, autocast)
        assert not fused_calls
        monkeypatch.setattr(modeling_txkit.TxkitAttention, "fuse_projections", True)
        torch.testing.assert_close(loss, plain_loss, **tol)
        for name, grad in plain_grads.items():
            torch.testing.assert_close(grads[name], grad, **tol, msg=lambda m: f"{name}: {m}")
            assert grad.abs().sum() > 0 or "embed" in name, name  # every projection's gradient is compared


def test_fused_projections_leave_hooked_or_replaced_layers_to_their_own_forward():
    """An adapter (a forward hook, or a subclass of nn.Linear in place of a projection, as PEFT and quantizers
    install) must see its own forward called in training: the fused product would bypass it."""
    src, tgt = torch.randint(4, 60, (2, 6)), torch.randint(4, 60, (2, 5))
    model = tiny_model(seed=5)
    base, _ = _training_loss_and_grads(model, src, tgt)
    cross = model.model.decoder.layers[0].encoder_attn
    hook = cross.v_proj.register_forward_hook(lambda module, args, out: out * 0.0)
    hooked, _ = _training_loss_and_grads(model, src, tgt)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(hooked, model(input_ids=src, labels=tgt).loss)  # the separate projections' loss
    assert not torch.allclose(hooked, base)
    hook.remove()

    class Zeroed(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) * 0.0

    attn = model.model.encoder.layers[1].self_attn
    replaced = Zeroed(attn.k_proj.in_features, attn.k_proj.out_features)
    replaced.load_state_dict(attn.k_proj.state_dict())
    attn.k_proj = replaced
    zeroed, _ = _training_loss_and_grads(model, src, tgt)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(zeroed, model(input_ids=src, labels=tgt).loss)
    assert not torch.allclose(zeroed, base)


def test_cpu_dropout_zeroes_a_fraction_p_and_rescales_the_rest():
    torch.manual_seed(0)
    x = torch.ones(200_001, requires_grad=True)  # not a multiple of the four values a 64-bit draw gives
    y = dropout(x, 0.3, training=True)
    kept = y.ne(0)
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7), rtol=1e-5, atol=0)  # p to 2^-17
    assert abs(y.detach().mean().item() - 1.0) < 0.01  # the expectation is kept
    # each of the four 16-bit parts of a draw is used whole (one biased part would show as a rate off by 1/8)
    for part in range(4):
        assert abs(kept[part::4].float().mean().item() - 0.7) < 0.01, part
    # and neighbours are independent: both kept 0.49 of the time
    assert abs((kept[:-1] & kept[1:]).float().mean().item() - 0.49) < 0.01
    y.sum().backward()  # the gradient flows through the kept values only, rescaled the same way
    torch.testing.assert_close(x.grad, y.detach())
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0, training=True) is x
    torch.manual_seed(1)
    a = dropout(x, 0.3, training=True)
    assert not torch.equal(a, dropout(x, 0.3, training=True))  # a new mask each call
    torch.manual_seed(1)
    assert torch.equal(a, dropout(x, 0.3, training=True))  # seeded like the rest of training
    half = torch.ones(3, 1000, dtype=torch.bfloat16)  # autocast's activations: the mask in their dtype
    out = dropout(half, 0.1, training=True)
    assert out.dtype == torch.bfloat16 and out.shape == half.shape
    assert abs(out.eq(0).float().mean().item() - 0.1) < 0.03


def test_loss_normalised_by_num_items_in_batch():
    model = tiny_model()
    src, tgt = torch.randint(4, 60, (2, 6)), torch.randint(4, 60, (2, 5))
    mean = model(input_ids=src, labels=tgt).loss
    summed = model(input_ids=src, labels=tgt, num_items_in_batch=1).loss
    torch.testing.assert_close(summed, mean * 10)


def test_padding_embedding_stays_zero_through_training():
    model = tiny_model()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.98), eps=1e-9)
    for _ in range(3):
        src, tgt = torch.randint(4, 60, (4, 6)), torch.randint(4, 60, (4, 5))
        tgt[0, 3:] = 0
        model(input_ids=src, attention_mask=src.ne(0).long(), labels=tgt).loss.backward()
        assert model.model.shared.weight.grad[0].abs().sum() == 0
        optimizer.step()
        optimizer.zero_grad()
    assert model.model.shared.weight[0].abs().sum() == 0


def test_loads_through_auto_classes_without_txkit(tmp_path):
    model = tiny_model(init_std=1.0)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "txkit"
    assert config["auto_map"]["AutoModelForSeq2SeqLM"].endswith("TxkitForConditionalGeneration")
    assert (tmp_path / "modeling_txkit.py").exists() and (tmp_path / "configuration_txkit.py").exists()
    src = torch.randint(4, 60, (2, 7))
    torch.save({"src": src}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(input_ids=src, decoder_input_ids=src[:, :4]).logits
        expected_gen = model.generate(input_ids=src, max_new_tokens=6, num_beams=2)
    torch.save({"logits": expected, "generated": expected_gen}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["txkit"] = None  # `import txkit` raises ImportError from here on
        try:
            import txkit
        except ImportError:
            pass
        else:
            raise SystemExit("txkit importable")
        import torch
        from transformers import AutoModelForSeq2SeqLM
        m = AutoModelForSeq2SeqLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
        src = torch.load({str(tmp_path / "inputs.pt")!r})["src"]
        want = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            got = m(input_ids=src, decoder_input_ids=src[:, :4]).logits
            gen = m.generate(input_ids=src, max_new_tokens=6, num_beams=2)
        assert torch.equal(got, want["logits"]), (got - want["logits"]).abs().max()
        assert torch.equal(gen, want["generated"])
        print("OK")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def copy_reverse_batch(task: str, n: int, generator: torch.Generator | None = None):
    """n sources of 6 random tokens + </s>, and their targets: the same tokens (copy) or reversed."""
    body = torch.randint(4, 16, (n, 6), generator=generator)
    target = body if task == "copy" else body.flip(1)
    close = torch.full((n, 1), 2)  # </s>
    return torch.cat([body, close], 1), torch.cat([target, close], 1)


@pytest.fixture(scope="module", params=["copy", "reverse"])
def trained_copy_reverse(request):
    """(task, a small model trained on it, its last 10 losses): trained once per task for this module."""
    task = request.param
    torch.manual_seed(1)
    config = TxkitConfig(
        vocab_size=16, d_model=64, attention_heads=4, ffn_dim=128, encoder_layers=2, decoder_layers=2,
        dropout=0.0, label_smoothing=0.0,
    )
    model = TxkitForConditionalGeneration(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)
    model.train()
    recent = []
    for _ in range(800):  # usually learned in 300-400 steps; stop as soon as it is
        src, tgt = copy_reverse_batch(task, 64)
        loss = model(input_ids=src, labels=tgt).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        recent = (recent + [loss.item()])[-10:]
        if len(recent) == 10 and sum(recent) / 10 < 0.01:
            break
    return task, model.eval(), recent


def test_small_model_learns_to_copy_and_reverse(trained_copy_reverse):
    task, model, recent = trained_copy_reverse
    assert sum(recent) / 10 < 0.02
    src, tgt = copy_reverse_batch(task, 32)
    out = model.generate(input_ids=src, max_new_tokens=8, num_beams=1, do_sample=False)
    assert torch.equal(out[:, 1:8], tgt)  # after the start token: the sequence and </s>


def test_generate_same_with_and_without_cache_on_a_trained_model(trained_copy_reverse):
    """Every decoding mode of `generate`, and continuing from the cache it returns, gives the same sequences
    as decoding without a cache. The model's outputs depend on what it has written so far (the position in
    the copy or the reversal), so a cache that is ignored or wrong changes them."""
    task, model, _ = trained_copy_reverse
    src, tgt = copy_reverse_batch(task, 12, torch.Generator().manual_seed(5))
    src[3, 4:] = model.config.pad_token_id  # a shorter, padded source
    mask = src.ne(model.config.pad_token_id).long()
    inputs = dict(input_ids=src, attention_mask=mask, max_new_tokens=9)
    modes = {
        "greedy": dict(do_sample=False),
        "beam": dict(num_beams=4, num_return_sequences=2, do_sample=False),
        "sample": dict(do_sample=True, top_k=0, temperature=1.5, num_return_sequences=3),
    }
    for mode, kwargs in modes.items():
        runs = []
        for use_cache in (True, False):
            torch.manual_seed(11)  # the same draws for sampling
            runs.append(model.generate(**inputs, **kwargs, use_cache=use_cache))
        assert torch.equal(runs[0], runs[1]), mode
        if mode == "greedy":
            assert torch.equal(runs[0][[0, 1, 2, 4], 1:8], tgt[[0, 1, 2, 4]])  # and right where unpadded
    if mode == "sample":
        assert len({tuple(row) for row in runs[0].tolist()}) > 12  # the draws differ from the greedy path

    # continue from a returned cache: 3 tokens, then on to the end, equals one uncached run (the decoder mask
    # covering the whole sequence tells generate that the cache holds all but the last token)
    first = model.generate(**{**inputs, "max_new_tokens": 3}, return_dict_in_generate=True, use_cache=True)
    cache = getattr(first, modeling_txkit.CACHE_FIELD)
    assert cache is not None and cache.get_seq_length() == 3
    resumed = model.generate(
        **inputs, decoder_input_ids=first.sequences, decoder_attention_mask=torch.ones_like(first.sequences),
        **{modeling_txkit.CACHE_FIELD: cache}, use_cache=True,
    )  # fmt: skip
    whole = model.generate(**{**inputs, "max_new_tokens": 9 + 4}, use_cache=False)
    assert torch.equal(resumed, whole[:, : resumed.size(1)])
