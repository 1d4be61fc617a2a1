"""The cost of mixing corpora by weight (txkit/mixing.py) at WMT scale, next to one corpus's batching.

    python benchmarks/bench_mixing.py [--pairs 4500000] [--epochs 3]

An epoch of a mixture draws its pairs (a seeded permutation per pass over each corpus) and then packs them
into token-bucketed batches as one corpus is packed. This times, in one process and on the same synthetic
lengths (WMT14 en-de's size, three corpora of 80%, 15% and 5% mixed 1:1:1):

* the reference: `TokenBatchSampler._epoch_batches` of the concatenated corpus (what one corpus costs now);
* the mixture: `Mixture.draw` alone, and the mixed sampler's `_epoch_batches` (draw + packing).

It prints seconds per epoch and the mixture's ratio to the reference: the overhead per epoch of mixing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4_500_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=4096)
    args = parser.parse_args()

    from txkit.batching import TokenBatchSampler
    from txkit.mixing import Mixture, make_mixed_sampler

    rng = np.random.default_rng(0)
    src = rng.integers(3, 120, args.pairs)
    tgt = np.clip(src + rng.integers(-5, 6, args.pairs), 2, None)
    sizes = [int(args.pairs * 0.8), int(args.pairs * 0.15)]
    sizes.append(args.pairs - sum(sizes))

    def timed(fn) -> float:
        start = time.perf_counter()
        for epoch in range(args.epochs):
            fn(epoch)
        return (time.perf_counter() - start) / args.epochs

    reference = TokenBatchSampler(src, tgt, args.max_tokens, seed=1)
    mixture = Mixture(sizes, [1, 1, 1], seed=1)
    mixed = make_mixed_sampler(mixture, src, tgt, args.max_tokens, seed=1)
    one = timed(reference._epoch_batches)
    draw = timed(mixture.draw)
    both = timed(mixed._epoch_batches)
    print(f"{args.pairs} pairs, corpora {sizes}, weights 1:1:1, {args.epochs} epochs each")
    print(f"one corpus, batches of an epoch:        {one:.2f} s")
    print(f"mixture, draw of an epoch:              {draw:.2f} s")
    print(f"mixture, draw + batches of an epoch:    {both:.2f} s  ({both / one:.2f}x one corpus)")


if __name__ == "__main__":
    main()
