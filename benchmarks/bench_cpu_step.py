"""txkit's bf16 training step on a CPU against the step as it was before 2026-12-07, one change at a time, side by
side in one process (each variant its own trainer from the same recipe, stepping the same batches in turn, so that
a change in the machine's load hits all alike).

    python benchmarks/bench_cpu_step.py [--recipe recipes/multi30k-en-de/transformer-tiny.yaml] [--steps 40]
                                        [--warmup 8] [--sentences 8000] [--data ../shared/data]

Variants, each adding one change to the one above it:

* before: dropout masks from `rand_like` (one mt19937 call per element), torch's default AdamW on a CPU (a Python
  loop over the parameter tensors), the thread-count-independent LayerNorm backward (txkit.thread_stable);
* + dropout: masks from 64-bit draws, four elements a draw (txkit.modeling.modeling_txkit.dropout);
* + fused AdamW: torch's one-kernel AdamW (txkit.schedule.build_optimizer(fused=True));
* + torch's LayerNorm backward: the bf16 CPU step of 2026-12-07's evening (its thread count fixed);
* + fused projections: the queries, keys and values of one input as one matrix product in training
  (`TxkitAttention.fuse_projections`), what `txkit train` runs now.

Prints each variant's median step, target tokens per second and its speed against `before`. Record the numbers
with the hardware and date.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path


def rand_dropout(x, p: float, training: bool):
    """The CPU dropout before: a `rand_like` mask (txkit until 2026-12-07)."""
    import torch

    if not training or p == 0.0:
        return x
    return x * torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TXKIT_SHARED_DATA", repo.parent / "shared" / "data")))
    parser.add_argument("--recipe", type=Path, default=repo / "recipes" / "multi30k-en-de" / "transformer-tiny.yaml")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps first")
    parser.add_argument("--sentences", type=int, default=8000, help="training pairs to batch and learn BPE from")
    args = parser.parse_args()

    import torch
    from accelerate.state import AcceleratorState
    from bench_precision import cpu_description  # this folder is on sys.path when a script in it runs

    from txkit.modeling import modeling_txkit
    from txkit.recipe import load_recipe
    from txkit.thread_stable import make_thread_stable
    from txkit.train_setup import build_trainer

    if torch.cuda.is_available():
        raise SystemExit("bench_cpu_step.py measures the CPU step")
    os.environ["TXKIT_DATA"] = str(args.data)
    print(cpu_description())
    now_dropout = modeling_txkit.dropout
    variants = {  # name: (dropout, fused AdamW, thread-stable LayerNorm, fused projections)
        "before": (rand_dropout, False, True, False),
        "+ dropout": (now_dropout, False, True, False),
        "+ fused AdamW": (now_dropout, True, True, False),
        "+ torch LayerNorm": (now_dropout, True, False, False),
        "+ fused projections (now)": (now_dropout, True, False, True),
    }
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for name, (_, fused, stable, _) in variants.items():
            AcceleratorState._reset_state()  # accelerate's state is process-wide: one per trainer
            recipe = load_recipe(args.recipe, [
                f"tokenizer.path={tmp}/tok", "data.valid=", f"data.max_sentences={args.sentences}",
                "train.mixed_precision=bf16", "train.save_every_minutes=0", "train.log_every_steps=0",
            ])  # fmt: skip
            with contextlib.redirect_stderr(io.StringIO()):
                trainer = build_trainer(recipe, Path(tmp) / f"run{len(trainers)}")
            for group in trainer.optimizer.optimizer.param_groups:  # read by AdamW at every step
                group["fused"] = fused
            if stable:
                make_thread_stable(trainer.unwrapped)
            trainers[name] = trainer
        first = next(iter(trainers.values()))
        batches = list(first.sampler)[: args.warmup + args.steps]
        tgt_tok = sum(int(first.pairs.tgt_lengths[b].sum()) for b in batches[args.warmup :])
        print(f"{args.recipe.name}: {first.n_params / 1e6:.1f}M parameters, max_tokens {recipe.train.max_tokens}, "
              f"{len(batches) - args.warmup} timed steps ({tgt_tok} target tokens)")  # fmt: skip
        times = {name: [] for name in trainers}
        try:
            for i, batch in enumerate(batches):
                for name, trainer in trainers.items():
                    modeling_txkit.dropout = variants[name][0]  # the model's layers look it up at each call
                    modeling_txkit.TxkitAttention.fuse_projections = variants[name][3]
                    start = time.perf_counter()
                    assert trainer.train_step([batch])
                    if i >= args.warmup:
                        times[name].append(time.perf_counter() - start)
        finally:
            modeling_txkit.dropout = now_dropout
            modeling_txkit.TxkitAttention.fuse_projections = True
            for trainer in trainers.values():
                trainer.close()

    before = sum(times["before"])
    print(f"{'':26} {'median s':>9} {'tgt tok/s':>10} {'vs before':>10} {'vs the one above':>17}")
    above = before
    for name, seconds in times.items():
        total = sum(seconds)
        print(f"{name:26} {statistics.median(seconds):9.4f} {tgt_tok / total:10,.0f} {before / total:9.3f}x "
              f"{above / total:16.3f}x")
        above = total


if __name__ == "__main__":
    main()
