"""txkit.step_decoder: the fast step decoder is a declared copy of the decoder layer's arithmetic, so it is
checked here against the model's own decoder for every architecture option, step by step, through beam
expansion and reordering, sentences leaving the batch, uneven groups and buffer growth."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from txkit.modeling import TxkitConfig, TxkitForConditionalGeneration
from txkit.step_decoder import ModelStepDecoder, TxkitStepDecoder, step_decoder

VOCAB, TGT_VOCAB = 50, 40


def small_model(activation: str, normalize_before: bool, separate: bool) -> TxkitForConditionalGeneration:
    torch.manual_seed(0)
    config = TxkitConfig(
        vocab_size=VOCAB, tgt_vocab_size=TGT_VOCAB if separate else None, d_model=32, attention_heads=4,
        ffn_dim=64, encoder_layers=2, decoder_layers=2, normalize_before=normalize_before,
        activation_function=activation, init_std=0.5,
    )  # fmt: skip
    return TxkitForConditionalGeneration(config).eval()


@pytest.mark.parametrize("separate", [False, True], ids=["shared-vocab", "separate-vocab"])
@pytest.mark.parametrize("normalize_before", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_txkit_step_decoder_equals_the_models_own_decoder(activation, normalize_before, separate):
    model = small_model(activation, normalize_before, separate)
    config = model.config
    out_vocab = TGT_VOCAB if separate else VOCAB
    input_ids = torch.randint(4, VOCAB, (3, 7))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0
    input_ids[1, 4:] = config.pad_token_id
    fast = step_decoder(model, input_ids, attention_mask)
    assert isinstance(fast, TxkitStepDecoder)  # chosen by config.model_type
    cached = ModelStepDecoder(model, input_ids, attention_mask)  # the model's decoder layers on its cache
    gen = torch.Generator().manual_seed(1)
    # (rows kept after the step, sentences changed): expand to 2 beams, reorder beams, drop sentence 1, uneven
    selects = [
        (torch.tensor([0, 0, 1, 1, 2, 2]), True),
        (torch.tensor([1, 0, 2, 2, 5, 4]), False),
        (torch.tensor([0, 1, 4, 5]), True),
        (torch.tensor([0, 2, 3]), True),
    ] + [(None, False)] * 14  # past the buffers' first capacity of 16 positions
    sentence = torch.arange(3)  # the source sentence of each row
    history = torch.full((3, 1), config.decoder_start_token_id)  # (rows, t) decoder input of each row so far
    steps_checked = 0
    with torch.inference_mode():
        for rows, changed in selects:
            tokens = history[:, -1]
            got, expected = fast.step(tokens), cached.step(tokens)
            assert got.shape == expected.shape == (history.size(0), out_vocab)
            real = torch.arange(out_vocab) != config.pad_token_id
            torch.testing.assert_close(got[:, real], expected[:, real], atol=1e-5, rtol=0)
            # padding's value sits ~110 below the row's smallest (probability 0), so compare it relatively
            torch.testing.assert_close(got[:, ~real], expected[:, ~real], atol=1e-5, rtol=1e-6)
            # and the full forward of the model (no cache) over each row's whole history
            full = model(
                input_ids=input_ids[sentence], attention_mask=attention_mask[sentence], decoder_input_ids=history,
                use_cache=False,
            ).logits[:, -1]  # fmt: skip
            torch.testing.assert_close(got, F.log_softmax(full.float(), dim=-1), atol=1e-4, rtol=0)
            steps_checked += 1
            next_tokens = torch.randint(4, out_vocab, (got.size(0),), generator=gen)
            history = torch.cat([history, next_tokens.unsqueeze(-1)], dim=-1)
            if rows is not None:
                fast.select(rows, changed)
                cached.select(rows, changed)
                history, sentence = history[rows], sentence[rows]
    assert steps_checked == len(selects)


def test_a_model_that_is_not_txkits_gets_the_generic_step_decoder():
    """The choice reads config.model_type, not the presence of an attribute."""
    model = small_model("relu", False, False)
    model.config.model_type = "marian"  # as a Marian export's config says
    decoder = step_decoder(model, torch.randint(4, VOCAB, (1, 3)), torch.ones(1, 3, dtype=torch.long))
    assert isinstance(decoder, ModelStepDecoder)
