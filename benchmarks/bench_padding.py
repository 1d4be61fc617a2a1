"""Padding batches to a multiple of 8 against padding them to their longest pair only, on a CPU: the bf16 training
step of a recipe with `train.pad_to_multiple_of` 8 (the default) and 1, side by side in one process (the two
trainers step in turn, so that a change in the machine's load hits both alike; with --blocks each steps half of
its batches alone, then the other, twice, so that neither steps on memory the other just left).

    python benchmarks/bench_padding.py [--recipe recipes/multi30k-en-de/transformer-tiny.yaml] [--steps 60]
                                       [--warmup 8] [--sentences 29000] [--data ../shared/data] [--blocks]

The two settings batch the same pairs differently (the sampler packs by padded width), so each steps its own
batches: the first `warmup + steps` of its epochs. Prints, for each, the real target tokens a batch holds, the
padded cells of its larger tensor (what `max_tokens` bounds), the median seconds a step, and real target tokens
per second; then the ratios. Seconds a step decide the wall time of a recipe's fixed number of steps; target
tokens per second, how much data that time trains on. Record the numbers with the hardware and date.
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


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TXKIT_SHARED_DATA", repo.parent / "shared" / "data")))
    parser.add_argument("--recipe", type=Path, default=repo / "recipes" / "multi30k-en-de" / "transformer-tiny.yaml")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps first")
    parser.add_argument("--blocks", action="store_true",
                        help="step each setting's batches in a block of its own (8, 1, 8, 1), not in turn")
    parser.add_argument("--sentences", type=int, default=29000,
                        help="training pairs to batch and learn BPE from (29000: all of Multi30k, as a run batches)")
    args = parser.parse_args()

    import torch
    from accelerate.state import AcceleratorState
    from bench_precision import cpu_description  # this folder is on sys.path when a script in it runs

    from txkit.recipe import load_recipe
    from txkit.train_setup import build_trainer

    if torch.cuda.is_available():
        raise SystemExit("bench_padding.py measures the CPU step")
    os.environ["TXKIT_DATA"] = str(args.data)
    print(cpu_description())
    multiples = (8, 1)
    with tempfile.TemporaryDirectory() as tmp:
        trainers, batches = {}, {}
        for multiple in multiples:
            AcceleratorState._reset_state()  # accelerate's state is process-wide: one per trainer
            recipe = load_recipe(args.recipe, [
                f"tokenizer.path={tmp}/tok", "data.valid=", f"data.max_sentences={args.sentences}",
                "train.mixed_precision=bf16", "train.save_every_minutes=0", "train.log_every_steps=0",
                f"train.pad_to_multiple_of={multiple}",
            ])  # fmt: skip
            with contextlib.redirect_stderr(io.StringIO()):
                trainer = build_trainer(recipe, Path(tmp) / f"run{multiple}")
            trainers[multiple] = trainer
            batches[multiple] = []
            while len(batches[multiple]) < args.warmup + args.steps:  # the next epoch when one is not enough
                batches[multiple] += list(trainer.sampler)
            del batches[multiple][args.warmup + args.steps :]
        times = {m: [] for m in multiples}

        def step(multiple: int, i: int) -> None:
            start = time.perf_counter()
            assert trainers[multiple].train_step([batches[multiple][i]])
            if i >= args.warmup:
                times[multiple].append(time.perf_counter() - start)

        half = args.warmup + args.steps // 2
        try:
            if args.blocks:  # each block: warmup steps (or the second half of the timed ones) of one setting alone
                for first, last in ((0, half), (half, args.warmup + args.steps)):
                    for multiple in multiples:
                        for i in range(first, last):
                            step(multiple, i)
            else:
                for i in range(args.warmup + args.steps):
                    for multiple in multiples:
                        step(multiple, i)
        finally:
            for trainer in trainers.values():
                trainer.close()

    print(f"{args.recipe.name}: max_tokens {recipe.train.max_tokens}, {args.steps} timed steps each")
    print(f"{'pad_to_multiple_of':>18} {'tgt tok/batch':>14} {'cells/batch':>12} {'median s':>9} {'tgt tok/s':>10}")
    rows = {}
    for multiple, trainer in trainers.items():
        timed = batches[multiple][args.warmup :]
        pairs = trainer.pairs
        tgt = sum(int(pairs.tgt_lengths[b].sum()) for b in timed)
        widths = trainer.sampler.widths  # each pair's padded width, as the sampler packed it
        cells = sum(len(b) * int(widths[b].max()) for b in timed)
        rows[multiple] = (statistics.median(times[multiple]), tgt / sum(times[multiple]))
        print(f"{multiple:>18} {tgt / len(timed):14,.0f} {cells / len(timed):12,.0f} {rows[multiple][0]:9.4f} "
              f"{rows[multiple][1]:10,.0f}")
    (s8, t8), (s1, t1) = rows[8], rows[1]
    print(f"1 against 8: {s1 / s8:.3f}x the seconds a step, {t1 / t8:.3f}x the target tokens a second")


if __name__ == "__main__":
    main()
