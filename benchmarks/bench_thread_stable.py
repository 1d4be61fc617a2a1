"""What txkit/thread_stable.py's LayerNorm backward costs: training steps with it and with torch's own
LayerNorm, side by side in one process, alternating in blocks so that drift in the machine's load hits both.

    OMP_NUM_THREADS=1 python benchmarks/bench_thread_stable.py [--preset transformer-tiny] [--max-tokens 4096]
                                                               [--blocks 6] [--steps 5] [--sentences 3000]

Prints each side's median seconds per step and the ratio (thread-stable / torch's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TXKIT_SHARED_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--preset", default="transformer-tiny")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--blocks", type=int, default=6, help="blocks per side, alternating")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per block")
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()

    import torch
    from torch import nn

    from txkit.recipe import load_recipe
    from txkit.thread_stable import make_thread_stable
    from txkit.train_setup import build_trainer

    os.environ["TXKIT_DATA"] = str(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(None, [
            f"model.preset={args.preset}", f"tokenizer.path={Path(tmp) / 'tok'}", f"tokenizer.vocab_size={args.vocab_size}",
            "data.train=multi30k/train", "data.valid=", f"data.max_sentences={args.sentences}", "data.max_len=128",
            f"train.max_tokens={args.max_tokens}", "train.save_every_minutes=0", "train.log_every_steps=0",
        ])  # fmt: skip
        trainer = build_trainer(recipe, Path(tmp) / "run")
        trainer.governor = None  # the count stays what the environment says
        norms = [m for m in trainer.unwrapped.modules() if isinstance(m, nn.LayerNorm)]
        batches = list(trainer.sampler)
        print(f"{torch.get_num_threads()} thread(s), {args.preset}, max_tokens {args.max_tokens}, {len(norms)} LayerNorms, "
              f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
        times: dict[str, list[float]] = {"thread-stable": [], "torch": []}
        step = 2
        for batch in batches[:step]:  # warm-up
            trainer.train_step([batch])
        for block in range(2 * args.blocks):
            side = "thread-stable" if block % 2 == 0 else "torch"
            for module in norms:  # switch the backward: the instance's forward, or the class's
                module.__dict__.pop("forward", None)
            if side == "thread-stable":
                make_thread_stable(trainer.unwrapped)
            first = step + (block // 2) * args.steps  # both sides of a pair of blocks run the same batches
            for i in range(args.steps):
                batch = batches[(first + i) % len(batches)]
                started = time.perf_counter()
                trainer.train_step([batch])
                times[side].append(time.perf_counter() - started)
        trainer.close()
    stable, plain = (statistics.median(times[k]) for k in ("thread-stable", "torch"))
    print(f"median s/step: thread-stable {stable:.4f}, torch's LayerNorm {plain:.4f}, ratio {stable / plain:.3f}")


if __name__ == "__main__":
    sys.exit(main())
