"""transformers' own model tests (`ModelTesterMixin`) run against txkit's model, as transformers runs them
against its Marian model.

`test_modeling_common.py` is transformers' code: it is not in this repository but comes from the source
distribution of the installed transformers, which `.ci/run` downloads and unpacks into
`$TXKIT_TRANSFORMERS_TESTS/<version>/` (default `~/.cache/txkit/transformers-tests/<version>/`):

    .ci/transformers_tests.sh [PYTHON]   # what .ci/run runs for each environment it tests

Without those files the tests fail (they are never skipped silently). The source distribution does not ship
two modules the file imports, `tests/exporters/test_export.py` (`ExportTesterMixin`: `torch.export` tests)
and `tests/generation/test_utils.py` (`GenerationTesterMixin`); they are replaced here by an empty mixin and by
`TxkitGenerationChecks`, txkit's own generate checks. Every skip below names its reason.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import unittest
import unittest.mock
from pathlib import Path

import pytest
import torch
import transformers

from txkit.modeling import TxkitConfig, TxkitForConditionalGeneration, TxkitModel

SUITE_DIR = Path(
    os.environ.get("TXKIT_TRANSFORMERS_TESTS", Path.home() / ".cache" / "txkit" / "transformers-tests")
) / transformers.__version__
PACKAGE = "transformers_test_suite"


class TxkitGenerationChecks:
    """Stands in for transformers' `GenerationTesterMixin` (not in the source distribution): generate with
    and without the cache, in every decoding mode, gives the same sequences, and `generate` returns the
    attentions and hidden states it is asked for. (Also what `ModelTesterMixin` checks a generating model's
    tester inherits.) The same checks on a trained model are in tests/test_modeling.py."""

    def _generate_model(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        config.dropout = config.attention_dropout = 0.0
        torch.manual_seed(0)
        model = TxkitForConditionalGeneration(config).eval()
        with torch.no_grad():
            model.model.shared.weight.normal_(0, 1.0)  # peaked outputs: different paths pick different tokens
            model.model.shared.weight[config.pad_token_id] = 0
        return model, {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}

    def _same_with_and_without_cache(self, seed=None, **kwargs):
        model, inputs = self._generate_model()
        runs = []
        for use_cache in (True, False):
            if seed is not None:
                torch.manual_seed(seed)
            runs.append(model.generate(**inputs, **kwargs, max_new_tokens=6, min_new_tokens=6, use_cache=use_cache))
        self.assertTrue(torch.equal(runs[0], runs[1]))

    def test_greedy_generate_cache(self):
        self._same_with_and_without_cache(do_sample=False, num_beams=1)

    def test_beam_search_generate_cache(self):
        self._same_with_and_without_cache(do_sample=False, num_beams=3, num_return_sequences=2)

    def test_sample_generate_cache(self):
        self._same_with_and_without_cache(seed=7, do_sample=True, top_k=0, num_return_sequences=2)

    def test_generate_dict_outputs_attentions_and_hidden_states(self):
        model, inputs = self._generate_model()
        config = model.config
        out = model.generate(
            **inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, return_dict_in_generate=True,
            output_attentions=True, output_hidden_states=True, output_scores=True,
        )  # fmt: skip
        batch, src_len = inputs["input_ids"].shape
        self.assertEqual(len(out.encoder_attentions), config.encoder_layers)
        self.assertEqual(out.encoder_attentions[0].shape, (batch, config.attention_heads, src_len, src_len))
        self.assertEqual(len(out.encoder_hidden_states), config.encoder_layers + 1)
        self.assertEqual(len(out.decoder_attentions), 3)  # one tuple per generated token
        for step, (self_attn, cross_attn) in enumerate(zip(out.decoder_attentions, out.cross_attentions)):
            self.assertEqual(len(self_attn), config.decoder_layers)
            self.assertEqual(self_attn[0].shape, (batch, config.attention_heads, 1, step + 1))  # cached
            self.assertEqual(cross_attn[0].shape, (batch, config.attention_heads, 1, src_len))
            torch.testing.assert_close(self_attn[0].sum(-1), torch.ones(batch, config.attention_heads, 1))
        self.assertEqual(len(out.decoder_hidden_states[0]), config.decoder_layers + 1)


class TxkitModelTester:
    """Small configurations and inputs for the common tests (the sizes transformers' Marian tester uses)."""

    def __init__(self, parent, batch_size=13, seq_length=7, vocab_size=99, hidden_size=16, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=4, is_training=True, label_smoothing=0.1):  # fmt: skip
        self.parent = parent
        self.batch_size, self.seq_length, self.vocab_size = batch_size, seq_length, vocab_size
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.num_attention_heads, self.intermediate_size = num_attention_heads, intermediate_size
        self.is_training, self.label_smoothing = is_training, label_smoothing
        self.encoder_seq_length = self.decoder_seq_length = seq_length

    def get_config(self) -> TxkitConfig:
        return TxkitConfig(
            vocab_size=self.vocab_size, d_model=self.hidden_size, encoder_layers=self.num_hidden_layers,
            decoder_layers=self.num_hidden_layers, attention_heads=self.num_attention_heads,
            ffn_dim=self.intermediate_size, dropout=0.1, attention_dropout=0.1, max_position_embeddings=100,
            label_smoothing=self.label_smoothing, pad_token_id=1, bos_token_id=0,  # as transformers' Marian tester: its all-zero labels are real tokens
        )  # fmt: skip

    def prepare_config_and_inputs(self):
        config = self.get_config()
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.randint(4, self.vocab_size, (self.batch_size, self.seq_length), generator=generator)
        input_ids[:, -1] = config.eos_token_id
        attention_mask = torch.ones_like(input_ids)
        input_ids[0, -3:] = config.pad_token_id  # one padded source
        attention_mask[0, -3:] = 0
        decoder_input_ids = torch.randint(4, self.vocab_size, (self.batch_size, self.seq_length), generator=generator)
        decoder_input_ids[:, 0] = config.decoder_start_token_id
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": decoder_input_ids}
        return config, inputs

    def prepare_config_and_inputs_for_common(self):
        return self.prepare_config_and_inputs()


def _load_model_tester_mixin():
    """`ModelTesterMixin` from the unpacked source distribution, imported as package `PACKAGE`, with the two
    modules it imports that the distribution lacks filled in (see the module docstring)."""
    common = SUITE_DIR / "test_modeling_common.py"
    if not common.exists():
        pytest.fail(
            f"{common} is missing: transformers' own model tests come from its source distribution; "
            "get them with `.ci/transformers_tests.sh` (what .ci/run does)",
            pytrace=False,
        )
    if PACKAGE + ".test_modeling_common" in sys.modules:
        return sys.modules[PACKAGE + ".test_modeling_common"].ModelTesterMixin
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(SUITE_DIR)]
    sys.modules[PACKAGE] = package
    stand_ins = {
        "exporters": {},
        "exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {})},
        "generation": {},
        "generation.test_utils": {"GenerationTesterMixin": TxkitGenerationChecks},
    }
    for name, attributes in stand_ins.items():
        module = types.ModuleType(f"{PACKAGE}.{name}")
        module.__path__ = []
        module.__dict__.update(attributes)
        sys.modules[module.__name__] = module
    return importlib.import_module(PACKAGE + ".test_modeling_common").ModelTesterMixin


ModelTesterMixin = _load_model_tester_mixin()


class TxkitModelTest(ModelTesterMixin, TxkitGenerationChecks, unittest.TestCase):
    all_model_classes = (TxkitModel, TxkitForConditionalGeneration)
    is_encoder_decoder = True
    # transformers gates this test on the "# Copyright <year>" line of the config file, which txkit's lacks
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        # The common tests decide what a class is (base model: no loss; seq2seq LM: gets labels) from
        # transformers' tables of its own models' class names; list txkit's there, as a built-in model is.
        from transformers.models.auto import modeling_auto

        for table, name in (
            (modeling_auto.MODEL_MAPPING_NAMES, "TxkitModel"),
            (modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, "TxkitForConditionalGeneration"),
        ):
            patcher = unittest.mock.patch.dict(table, {"txkit": name})
            patcher.start()
            cls.addClassCleanup(patcher.stop)

    def setUp(self):
        self.model_tester = TxkitModelTester(self)

    if hasattr(ModelTesterMixin, "test_encoder_decoder_loss_no_double_shift"):  # transformers >= 5.2x

        def test_encoder_decoder_loss_no_double_shift(self):
            # its oracle is plain cross-entropy against `labels`; txkit's loss is the paper's label-smoothed one,
            # which is that cross-entropy at label_smoothing 0
            self.model_tester.label_smoothing = 0.0
            super().test_encoder_decoder_loss_no_double_shift()
