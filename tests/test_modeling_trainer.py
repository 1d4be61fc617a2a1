"""transformers' `Trainer` and `Seq2SeqTrainer` train a txkit model, with their own label smoothing."""

from __future__ import annotations

import math

import pytest
import torch

from txkit.modeling import TxkitConfig, TxkitForConditionalGeneration


def copy_examples(n: int, generator: torch.Generator) -> list[dict]:
    """n copy-task examples of 6 tokens + </s>, as a collator would hand them over (already the same length)."""
    body = torch.randint(4, 16, (n, 6), generator=generator)
    src = torch.cat([body, torch.full((n, 1), 2)], 1)  # (n, 7), </s> last
    decoder_input_ids = torch.cat([torch.zeros(n, 1, dtype=torch.long), src[:, :-1]], 1)  # <pad> starts
    return [
        {"input_ids": s, "attention_mask": torch.ones_like(s), "labels": s, "decoder_input_ids": d}
        for s, d in zip(src, decoder_input_ids)
    ]


@pytest.mark.parametrize("trainer_name", ["Trainer", "Seq2SeqTrainer"])
def test_transformers_trainer_with_label_smoothing_gives_a_finite_falling_loss(tmp_path, trainer_name):
    import transformers
    from transformers import Seq2SeqTrainingArguments, default_data_collator

    torch.manual_seed(0)
    config = TxkitConfig(
        vocab_size=16, d_model=32, attention_heads=4, ffn_dim=64, encoder_layers=1, decoder_layers=1, dropout=0.0
    )
    model = TxkitForConditionalGeneration(config)
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), max_steps=60, per_device_train_batch_size=32, learning_rate=3e-3,
        warmup_steps=5, label_smoothing_factor=0.1, logging_steps=10, save_strategy="no", report_to=[],
        use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0, logging_nan_inf_filter=False,
    )  # fmt: skip
    trainer = getattr(transformers, trainer_name)(
        model=model, args=args, train_dataset=copy_examples(512, torch.Generator().manual_seed(1)),
        data_collator=default_data_collator,
    )  # fmt: skip
    assert trainer.label_smoother is not None  # the loss is the Trainer's, from the logits, not txkit's
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses), losses
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.85 * losses[0], losses
