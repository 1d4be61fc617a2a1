"""Forward + backward of the training loss (output projection + label-smoothed cross-entropy), side by side.

    python benchmarks/bench_loss.py [--rows 3150] [--vocab 8000] [--dim 128] [--repeat 15]
                                    [--other OLD_loss_txkit.py]

Times, on random hidden states and a tied output matrix of the tiny recipe's shape (3150 target tokens is a
max_tokens 4096 batch), interleaved round by round so that machine noise hits all alike:

* unfused: `label_smoothed_nll(hidden @ weight.T, labels)` through autograd (the (N, V) logits kept);
* fused: txkit's `linear_label_smoothed_nll` (txkit/modeling/loss_txkit.py);
* with --other FILE, the `linear_label_smoothed_nll` of another copy of loss_txkit.py (e.g. an older one from
  `git show REV:txkit/modeling/loss_txkit.py > old.py`), to measure a change of the fused loss.

Prints the median milliseconds of each and its ratio to the fused loss, after checking that all agree on the
loss and the gradients.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3150)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--other", help="another loss_txkit.py to time next to this one")
    args = parser.parse_args()

    from txkit.modeling.loss_txkit import label_smoothed_nll, linear_label_smoothed_nll

    torch.manual_seed(0)
    pad = 1
    hidden = torch.randn(args.rows, args.dim, requires_grad=True)
    weight = (torch.randn(args.vocab, args.dim) * args.dim**-0.5).requires_grad_()
    labels = torch.randint(2, args.vocab, (args.rows,))

    def unfused():
        return label_smoothed_nll(hidden @ weight.T, labels, args.epsilon, pad)[0]

    def fused():
        return linear_label_smoothed_nll(hidden, weight, labels, args.epsilon, pad)[0]

    candidates = {"unfused": unfused, "fused": fused}
    if args.other:
        spec = importlib.util.spec_from_file_location("other_loss", args.other)
        other = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(other)
        candidates["other"] = lambda: other.linear_label_smoothed_nll(hidden, weight, labels, args.epsilon, pad)[0]

    reference = None
    for name, fn in candidates.items():
        loss = fn()
        grads = torch.autograd.grad(loss, (hidden, weight))
        if reference is None:
            reference = (loss, grads)
        else:
            torch.testing.assert_close(loss, reference[0], rtol=1e-4, atol=1e-3)
            for got, want in zip(grads, reference[1]):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

    times = {name: [] for name in candidates}
    for _ in range(args.repeat):
        for name, fn in candidates.items():
            started = time.perf_counter()
            torch.autograd.grad(fn(), (hidden, weight))
            times[name].append(time.perf_counter() - started)
    fused_ms = statistics.median(times["fused"]) * 1e3
    print(f"rows {args.rows}, vocab {args.vocab}, dim {args.dim}, epsilon {args.epsilon}, "
          f"{torch.get_num_threads()} threads, median of {args.repeat}")
    for name, samples in times.items():
        ms = statistics.median(samples) * 1e3
        print(f"{name:8s} {ms:8.1f} ms  ({ms / fused_ms:.2f}x fused)")


if __name__ == "__main__":
    main()
