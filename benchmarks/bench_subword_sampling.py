"""The cost of BPE-dropout (`tokenizer.dropout`) next to the training it feeds, on the tiny recipe's data.

    python benchmarks/bench_subword_sampling.py [--recipe recipes/multi30k-en-de/transformer-tiny.yaml]
                                                                [--dropout 0.1] [--steps 10] [--epochs 2]

Builds the recipe's Trainer through txkit.train_setup (its tokenizer, data and batches; the tokenizer is built
into --work when missing), then times, in one process:

* re-segmenting the whole training corpus for a new epoch (`SampledPairs.segmentation`), `--epochs` times,
  against `tokenizers`' own batch encoding of the same text (the deterministic segmentation, Rust);
* `Trainer.train_step` on the epoch's batches (after one warm-up step), giving the training time of an epoch
  (steps per epoch x seconds per step).

It prints the re-segmentation time as a share of an epoch's training time: the overhead BPE-dropout adds.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "multi30k-en-de" / "transformer-tiny.yaml"))
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "txkit-bench-subword"))
    args = parser.parse_args()

    from txkit.recipe import load_recipe
    from txkit.train_setup import build_trainer

    work = Path(args.work)
    recipe = load_recipe(args.recipe, [f"tokenizer.dropout={args.dropout}", f"tokenizer.path={work / 'tokenizer'}",
                                       "data.valid=", "train.save_every_steps=0"])  # fmt: skip
    run_dir = work / f"run-{time.time_ns()}"
    trainer = build_trainer(recipe, run_dir)
    pairs, sampler = trainer.pairs, trainer.sampler
    n = len(pairs)

    texts = [t.strip() for t in pairs.src_texts] + [t.strip() for t in pairs.tgt_texts]
    started = time.process_time()
    trainer.src_tok.backend_tokenizer.encode_batch_fast(texts)
    encode_s = time.process_time() - started

    resegment = []
    for epoch in range(1, args.epochs + 1):
        started = time.process_time()
        pairs.segmentation(epoch)
        resegment.append(time.process_time() - started)
    reseg_s = min(resegment)

    batches = list(itertools.islice(iter(sampler), args.steps + 1))
    trainer.train_step([batches[0]])  # warm-up
    started = time.perf_counter()
    for batch in batches[1:]:
        trainer.train_step([batch])
    step_s = (time.perf_counter() - started) / (len(batches) - 1)
    steps_per_epoch = len(sampler)
    epoch_s = steps_per_epoch * step_s
    trainer.close()

    print(f"pairs {n}, tokenizer.dropout {args.dropout}, {steps_per_epoch} steps per epoch (train.max_tokens "
          f"{recipe.train.max_tokens})")
    print(f"re-segmenting an epoch (both sides, CPU s, best of {args.epochs}): {reseg_s:.2f} s; "
          f"tokenizers' batch encode of the same text: {encode_s:.2f} s; ratio {reseg_s / encode_s:.2f}x")
    print(f"training step: {step_s:.3f} s (mean of {len(batches) - 1}); an epoch of training: {epoch_s:.1f} s")
    print(f"BPE-dropout overhead: {reseg_s:.2f} s per {epoch_s:.1f} s epoch = {100 * reseg_s / epoch_s:.1f}%")


if __name__ == "__main__":
    main()
