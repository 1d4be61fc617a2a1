"""txkit's training step in float32 against bf16 autocast on the same batches, side by side in one run.

    python benchmarks/bench_precision.py [--preset transformer-tiny] [--max-tokens 2048] [--steps 30]
                                         [--data ../shared/data]

Three trainers built from the same recipe and seed, each stepping `Trainer.train_step` (the step `txkit train`
runs) on the same Multi30k en-de batches, one step of each in turn so that a change in the machine's load hits
all alike:

* float32 (`train.mixed_precision=no`), torch's fused attention (SDPA);
* bf16 as `txkit train` runs it on a CPU: autocast, attention written out (txkit.training);
* bf16 with the fused attention, to show why txkit writes it out on the CPU (on a GPU it keeps SDPA).

Prints target tokens per second (median step and all steps) and the ratios to float32, with whether the CPU has
bf16 instructions (AVX512-BF16 or AMX): without them torch emulates bf16 and the ratios fall below 1. Record the
numbers with the hardware and date.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def cpu_description() -> str:
    """The line both CPU step benchmarks start with: the CPU, torch, its thread count and bf16 support."""
    import torch

    from txkit.training import _native_cpu_bf16

    return (f"device: {platform.processor() or platform.machine()} CPU, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"threads {torch.get_num_threads()}, bf16 instructions: {'yes' if _native_cpu_bf16() else 'no (emulated)'}")


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = Path(os.environ.get("TXKIT_SHARED_DATA", repo.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--preset", default="transformer-tiny")
    parser.add_argument("--max-tokens", type=int, default=2048, help="tokens per batch (one batch per step)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--sentences", type=int, default=5000, help="Multi30k pairs to batch and learn BPE from")
    args = parser.parse_args()

    import torch
    from accelerate.state import AcceleratorState

    from txkit.recipe import load_recipe
    from txkit.train_setup import build_trainer

    if torch.cuda.is_available():
        raise SystemExit("bench_precision.py measures the CPU step; on a GPU use bench_train.py --precision bf16")
    os.environ["TXKIT_DATA"] = str(args.data)
    print(cpu_description())

    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for name, precision in (("float32", "no"), ("bf16", "bf16"), ("bf16+sdpa", "bf16")):
            # accelerate's state is process-wide and keeps its first mixed precision: forget it between trainers
            # (each prepared model keeps the autocast it was wrapped with)
            AcceleratorState._reset_state()
            recipe = load_recipe(None, [
                f"model.preset={args.preset}", f"tokenizer.path={tmp}/tok", f"tokenizer.vocab_size={args.vocab_size}",
                "tokenizer.split_punctuation=true", "data.train=multi30k/train", "data.valid=",
                f"data.max_sentences={args.sentences}", "data.max_len=128", f"train.max_tokens={args.max_tokens}",
                f"train.mixed_precision={precision}", "train.save_every_minutes=0", "train.log_every_steps=0",
            ])  # fmt: skip
            trainer = build_trainer(recipe, Path(tmp) / name)
            if name == "bf16+sdpa":
                trainer.unwrapped.config._attn_implementation = "sdpa"
            trainer.governor = None  # the thread count stays torch's: the variants must not differ in it
            trainers[name] = trainer
        first = next(iter(trainers.values()))
        n_batches = args.warmup + args.steps
        batches = list(first.sampler)
        batches = (batches * (n_batches // len(batches) + 1))[:n_batches]
        tgt_tok = sum(int(first.pairs.tgt_lengths[b].sum()) for b in batches[args.warmup :])
        print(f"{args.preset}: {first.n_params / 1e6:.1f}M parameters, max_tokens {args.max_tokens}, "
              f"{args.steps} timed steps ({tgt_tok} target tokens)")  # fmt: skip
        times = {name: [] for name in trainers}
        for batch in batches:
            for name, trainer in trainers.items():
                start = time.perf_counter()
                assert trainer.train_step([batch])
                times[name].append(time.perf_counter() - start)
        for trainer in trainers.values():
            trainer.close()

    total = {name: sum(t[args.warmup :]) for name, t in times.items()}
    print(f"{'':10} {'tgt tok/s':>10} {'s/step':>8} {'median':>8} {'vs float32':>11}")
    for name, seconds in total.items():
        median = statistics.median(times[name][args.warmup :])
        ratio = total["float32"] / seconds
        print(f"{name:10} {tgt_tok / seconds:10,.0f} {seconds / args.steps:8.3f} {median:8.3f} {ratio:10.2f}x")


if __name__ == "__main__":
    main()
