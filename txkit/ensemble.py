"""Ensemble decoding: several models translate together, their log-probabilities averaged at every step.

    txkit translate RUN_A RUN_B RUN_C -i test.en -o test.hyp.de
    txkit eval RUN_A RUN_B --src test.en --ref test.de

How the models are combined. At each step every model gives log p_m(y | y_<t, x) over the shared target
vocabulary, and the ensemble's score of a token is their mean, (1/M) sum_m log p_m: the geometric mean of
the models' distributions (a product of experts), not renormalised. This is the rule Marian and OpenNMT-py
apply (Marian sums weighted log-probabilities; with equal weights the mean ranks the same and keeps scores on
one model's scale); fairseq instead takes the log of the arithmetic mean of the probabilities (a mixture).
txkit takes the mean of log-probabilities because:

* a hypothesis's ensemble score is then exactly the mean of the models' own sentence log-probabilities, so
  the n-best scores and both length-penalty forms mean the same as for one model (sum log p / lp(|Y|));
* a token has to be plausible under every model (one model's near-zero probability vetoes it), which is
  what averaging independently trained translation models is for; the mixture lets one model's mistake
  through at half its weight;
* it needs no exp/log round trip, and an ensemble of one is bit for bit the model itself.

The models must share the target vocabulary (the search compares their scores token by token) and, here,
the source tokenizer (one batch of source ids feeds every encoder); their other settings may differ.
`EnsembleModel` looks like one model to txkit.decoding's Translator: a config, parameters, train/eval, and
a `make_step_decoder` that txkit.step_decoder.step_decoder calls instead of building a single model's.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import torch

from txkit.errors import TxkitError
from txkit.search import StepDecoder
from txkit.step_decoder import step_decoder


class EnsembleStepDecoder:
    """A `StepDecoder` over one step decoder per model: the mean of their log-probabilities at every step.

    Each wrapped decoder keeps its own state (encoder output, cache); `select` keeps the same rows in all.
    """

    def __init__(self, decoders: Sequence[StepDecoder]):
        if not decoders:
            raise ValueError("an ensemble needs at least one step decoder")
        self.decoders = list(decoders)
        self.start_token_id = self.decoders[0].start_token_id
        self.device = getattr(self.decoders[0], "device", torch.device("cpu"))

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (N,) -> (N, V): (1/M) sum_m log p_m, in float32 as each decoder returns it."""
        if len(self.decoders) == 1:
            return self.decoders[0].step(tokens)  # exactly the model: no arithmetic at all
        total = self.decoders[0].step(tokens)  # (N, V)
        for decoder in self.decoders[1:]:
            total = total + decoder.step(tokens)
        return total / len(self.decoders)

    def select(self, rows: torch.Tensor, sentences_changed: bool) -> None:
        for decoder in self.decoders:
            decoder.select(rows, sentences_changed)


class EnsembleModel(torch.nn.Module):
    """Several loaded models as one for txkit.decoding's Translator.

    `config` is the first model's, with `max_position_embeddings` the smallest of the models' (every model
    must be able to read the source and write the output). Translator builds its step decoder through
    `make_step_decoder`, which runs each model's fastest step decoder (txkit.step_decoder.step_decoder).
    """

    def __init__(self, models: Sequence[torch.nn.Module], names: Sequence[str] | None = None):
        super().__init__()
        self.members = torch.nn.ModuleList(models)
        self.names = list(names) if names is not None else [f"model {i + 1}" for i in range(len(models))]
        self.config = copy.copy(models[0].config)
        positions = [getattr(m.config, "max_position_embeddings", None) for m in models]
        if all(p is not None for p in positions):
            self.config.max_position_embeddings = min(positions)

    def make_step_decoder(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> StepDecoder:
        """One step decoder per model on the same source batch, averaged (EnsembleStepDecoder)."""
        return EnsembleStepDecoder([step_decoder(m, input_ids, attention_mask) for m in self.members])


# ----------------------------------------------------------------------------- loading and checks

_SHARED_IDS = ("eos_token_id", "pad_token_id", "decoder_start_token_id")


def _output_size(model) -> int:
    """The number of target tokens the model scores (its output projection's rows)."""
    return model.get_output_embeddings().weight.shape[0]


def check_compatible(models: Sequence, src_toks: Sequence, tgt_toks: Sequence, names: Sequence[str]) -> None:
    """Raise a TxkitError naming the first model whose target vocabulary, special ids or source tokenizer
    differ from the first model's."""
    first = names[0]
    vocab, src_vocab = tgt_toks[0].get_vocab(), src_toks[0].get_vocab()
    for model, src_tok, tgt_tok, name in zip(models[1:], src_toks[1:], tgt_toks[1:], names[1:]):
        if tgt_tok.get_vocab() != vocab or _output_size(model) != _output_size(models[0]):
            raise TxkitError(f"{name}: its target vocabulary differs from {first}'s; the models of an ensemble "
                             "must share one target vocabulary")  # fmt: skip
        for key in _SHARED_IDS:
            if getattr(model.config, key, None) != getattr(models[0].config, key, None):
                raise TxkitError(f"{name}: its {key} differs from {first}'s; an ensemble's models must agree on it")
        if src_tok.get_vocab() != src_vocab:
            raise TxkitError(f"{name}: its source tokenizer differs from {first}'s; txkit's ensembles feed one "
                             "tokenization of the source to every model")  # fmt: skip


def load_ensemble(paths: Sequence[str | Path], device: str | None = None, dtype: str | None = None):
    """Load one or more models (as txkit.decoding.load_model does) for ensemble decoding.

    One path gives the model itself (no wrapper); several give an EnsembleModel, after checking that they
    share the target vocabulary and source tokenizer.

    Returns:
        (model or EnsembleModel, source tokenizer, target tokenizer)
    """
    from txkit.decoding import load_model

    if len(paths) == 1:
        return load_model(paths[0], device, dtype)
    loaded = [load_model(path, device, dtype) for path in paths]
    models, src_toks, tgt_toks = (list(column) for column in zip(*loaded))
    names = [str(path) for path in paths]
    check_compatible(models, src_toks, tgt_toks, names)
    return EnsembleModel(models, names), src_toks[0], tgt_toks[0]
