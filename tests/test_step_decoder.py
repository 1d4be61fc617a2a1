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


@pytest.mark.parametrize("normalize_before", [False, True], ids=["post-norm", "pre-norm"])
def test_sentences_joining_mid_search_get_the_models_own_outputs(normalize_before):
    """Continuous batching: sentences `add`ed while others are at later steps (with longer and shorter sources,
    in groups of the same and of another size, after the buffer was compacted and grew) each get, at each of
    their steps, what the model's full forward gives for their own history."""
    model = small_model("relu", normalize_before, False)
    config = model.config
    gen = torch.Generator().manual_seed(2)
    sources = [torch.randint(4, VOCAB, (n,), generator=gen).tolist() + [config.eos_token_id] for n in (5, 9, 3, 12, 6)]

    def padded(ids_list):
        longest = max(map(len, ids_list))
        ids = torch.full((len(ids_list), longest), config.pad_token_id)
        for i, ids_ in enumerate(ids_list):
            ids[i, : len(ids_)] = torch.tensor(ids_)
        return ids, ids.ne(config.pad_token_id).long()

    decoder = step_decoder(model, *padded(sources[:2]))
    decoder.select(torch.tensor([0, 0, 1, 1]), True)  # two beams per sentence
    sentence = [0, 0, 1, 1]  # the source of each row
    history = [[config.decoder_start_token_id] for _ in sentence]  # decoder input of each row so far
    # per step: sentences to add (and rows each), then rows kept after the step
    plan = [(None, [1, 0, 2, 3]), ([2], None), ([3], [0, 1, 2, 3, 4, 5]), (None, [2, 3, 4, 5]),
            ([4], [0, 2, 2, 3, 4, 5]), ([1], None), (None, [3, 4, 5, 6, 7])] + [(None, None)] * 16  # fmt: skip
    written = 0  # self-attention slots written
    with torch.inference_mode():
        for number, (joining, kept) in enumerate(plan):
            if joining:
                decoder.add([sources[s] for s in joining], 2)
                for s in joining:
                    sentence += [s, s]
                    history += [[config.decoder_start_token_id], [config.decoder_start_token_id]]
            written += decoder.group
            got = decoder.step(torch.tensor([h[-1] for h in history]))
            for row, (s, h) in enumerate(zip(sentence, history)):
                ids, mask = padded([sources[s]])
                full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.tensor([h]),
                             use_cache=False).logits[0, -1]  # fmt: skip
                torch.testing.assert_close(got[row], F.log_softmax(full.float(), dim=-1), atol=1e-4, rtol=0,
                                           msg=lambda m: f"step {number}, row {row}: {m}")  # fmt: skip
            tokens = torch.randint(4, VOCAB, (len(history),), generator=gen).tolist()
            history = [h + [t] for h, t in zip(history, tokens)]
            if kept is not None:
                changed = [sentence[r] for r in kept] != sentence  # False: beams moved within their sentences
                decoder.select(torch.tensor(kept), changed)
                sentence, history = [sentence[r] for r in kept], [list(history[r]) for r in kept]
    assert int(decoder.start.min()) == 0 and decoder.slots < written  # the slots before any group's start were dropped
