"""Training throughput of txkit's step against Hugging Face's MarianMTModel built as the same Transformer.

    python benchmarks/bench_train.py [--preset transformer-small] [--max-tokens 4096] [--steps 20]
                                     [--precision no|bf16|fp16] [--data ../shared/data]

Both models get the same architecture (post-norm, ReLU, sqrt(d_model)-scaled embeddings, sinusoidal
positions, one shared vocabulary and embedding matrix, the preset's sizes), the same batches of Multi30k
en-de (token-bucketed by `TokenBatchSampler` at `--max-tokens`), the same label-smoothed loss normalised by
the step's target tokens, the same optimizer (Adam 0.9/0.98/1e-9 with the noam schedule) and the same
gradient-norm computation. txkit's side is `Trainer.train_step`, the step `txkit train` runs (with its
accelerate wrapper, token counting and non-finite checks); Marian's side is a plain loop around
`MarianMTModel.forward`. Dropout is the preset's on both.

Prints source and target tokens per second for each, the ratio, and on a GPU the model FLOPs utilisation
(`txkit.training.training_flops` against the device's peak). Record the numbers with the hardware and date.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def marian_like(config):
    """A MarianMTModel with exactly txkit's architecture and sizes."""
    from transformers import MarianConfig, MarianMTModel

    marian = MarianConfig(
        vocab_size=config.vocab_size, d_model=config.d_model,
        encoder_layers=config.encoder_layers, decoder_layers=config.decoder_layers,
        encoder_attention_heads=config.attention_heads, decoder_attention_heads=config.attention_heads,
        encoder_ffn_dim=config.ffn_dim, decoder_ffn_dim=config.ffn_dim, activation_function="relu",
        dropout=config.dropout, attention_dropout=config.attention_dropout,
        activation_dropout=config.activation_dropout,
        scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        max_position_embeddings=config.max_position_embeddings, pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id, decoder_start_token_id=config.decoder_start_token_id,
    )  # fmt: skip
    return MarianMTModel(marian)


def timed_steps(step_fn, batches, sync) -> list[float]:
    times = []
    for batch in batches:
        sync()
        start = time.perf_counter()
        step_fn(batch)
        sync()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = Path(os.environ.get("TXKIT_SHARED_DATA", repo.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--preset", default="transformer-small")
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch (one batch per step)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--sentences", type=int, default=5000, help="Multi30k pairs to batch and learn BPE from")
    args = parser.parse_args()

    import torch

    from txkit.modeling.modeling_txkit import label_smoothed_nll, shift_tokens_right
    from txkit.recipe import load_recipe
    from txkit.schedule import build_optimizer, build_scheduler, peak_flops, training_flops
    from txkit.train_setup import build_trainer

    os.environ["TXKIT_DATA"] = str(args.data)
    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name() if cuda else f"{platform.processor() or platform.machine()} CPU"
    print(f"device: {device_name}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(None, [
            f"model.preset={args.preset}", f"tokenizer.path={tmp}/tok", f"tokenizer.vocab_size={args.vocab_size}",
            "data.train=multi30k/train", "data.valid=", f"data.max_sentences={args.sentences}", "data.max_len=128",
            f"train.max_tokens={args.max_tokens}", f"train.mixed_precision={args.precision}",
            "train.save_every_minutes=0", "train.log_every_steps=0",
        ])  # fmt: skip
        trainer = build_trainer(recipe, Path(tmp) / "run")
        config = trainer.config
        n_batches = args.warmup + args.steps
        batches = list(trainer.sampler)
        batches = (batches * (n_batches // len(batches) + 1))[:n_batches]
        src_tok = sum(int(trainer.pairs.src_lengths[b].sum()) for b in batches[args.warmup :])
        tgt_tok = sum(int(trainer.pairs.tgt_lengths[b].sum()) for b in batches[args.warmup :])
        timed = batches[args.warmup :]
        flops = sum(training_flops(config, trainer.pairs.src_lengths[b], trainer.pairs.tgt_lengths[b]) for b in timed)
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        print(f"{args.preset}: {trainer.n_params / 1e6:.1f}M parameters, vocabulary {config.vocab_size}, "
              f"max_tokens {args.max_tokens}, precision {args.precision}, {args.steps} timed steps "
              f"({src_tok} source / {tgt_tok} target tokens)")  # fmt: skip

        # Marian: same batches, loss, optimizer, schedule and gradient norm, in a plain loop
        pairs, pad, start = trainer.pairs, config.pad_token_id, config.decoder_start_token_id
        torch.manual_seed(recipe.train.seed)
        model = marian_like(config).to(trainer.accelerator.device).train()
        device = next(model.parameters()).device
        optimizer = build_optimizer(model, recipe.train)
        scheduler = build_scheduler(optimizer, recipe.train, config.d_model)
        scaler = torch.amp.GradScaler("cuda", enabled=args.precision == "fp16")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)

        def marian_step(indices):
            batch = pairs.collate(indices, pad)
            labels = batch["labels"].to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(
                    input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                    decoder_input_ids=shift_tokens_right(labels, pad, start), use_cache=False,
                ).logits  # fmt: skip
            loss_sum, _, n_tokens = label_smoothed_nll(logits, labels, config.label_smoothing, pad)
            scaler.scale(loss_sum / n_tokens).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            float(loss_sum.detach())  # txkit reads the step's loss back too

        # Interleaved, one step of each in turn, so that a change in the machine's load hits both alike.
        steps = {"txkit": lambda b: trainer.train_step([b]), "marian": marian_step}
        times = {name: [] for name in steps}
        for batch in batches:
            for name, step in steps.items():
                times[name] += timed_steps(step, [batch], sync)
        results = {name: sum(t[args.warmup :]) for name, t in times.items()}
        trainer.close()

    peak = peak_flops(device_name, args.precision) if cuda else None
    print(f"{'':8} {'src tok/s':>12} {'tgt tok/s':>12} {'s/step':>8} {'median':>8}" + (f" {'MFU':>7}" if peak else ""))
    for name, seconds in results.items():
        median = statistics.median(times[name][args.warmup :])
        line = f"{name:8} {src_tok / seconds:12,.0f} {tgt_tok / seconds:12,.0f} {seconds / args.steps:8.3f} {median:8.3f}"
        if peak:
            line += f" {flops / seconds / peak:7.1%}"
        print(line)
    print(f"txkit / marian throughput: {results['marian'] / results['txkit']:.2f}x")


if __name__ == "__main__":
    main()
