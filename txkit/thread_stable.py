"""Training numerics that do not depend on torch's CPU thread count, so the count can change from one step to
the next (txkit.threads.ThreadGovernor) without changing a single bit of the result, and exact resume holds.

Measured on torch 2.13's CPU build (x86, MKL): a transformer training step's forward pass, its loss and every
gradient are bitwise the same with 1 and 2 threads except the LayerNorm weight and bias gradients. Those are
sums over all token rows, and ATen's LayerNorm backward splits that sum into one partial sum per thread, so
the rounding follows the thread count. (The Linear layers' weight gradients, also sums over tokens, are
matrix products that MKL does not split along the summed dimension at these sizes on the AMD EPYC this was
measured on; on an Intel Xeon with AMX it does, unless MKL's strict reproducibility mode is on, which
`import txkit` sets: MKL_CBWR=AUTO,STRICT, see txkit/__init__.py.) This module replaces that
one reduction:

* the input gradient comes from ATen's own LayerNorm backward, asked for the input gradient only (computed
  row by row, so independent of threads);
* the weight and bias gradients are `ones(1, N) @ X`, a matrix product like the Linear layers' weight
  gradients, so they add up in the same order whatever the thread count.

The forward pass and the input gradient are bitwise `nn.LayerNorm`'s; the weight and bias gradients equal
its up to the order of summation (tests/test_threads.py). The model definition is untouched (the Hub file
stays plain `nn.LayerNorm`); the trainer switches its LayerNorm modules to this backward in float32 CPU runs only
(a bf16 run keeps one thread count, where torch's own backward is reproducible and faster). Cost: the backward
recomputes the normalised input (measured in README, Performance).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _row_sum(rows: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (D,): the column sums as a matrix product, whose order does not follow the thread count."""
    return torch.mm(rows.new_ones(1, rows.shape[0]), rows)[0]


class _LayerNormFunction(torch.autograd.Function):
    """LayerNorm over the last dimension with a thread-count-independent weight and bias gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        d = x.shape[-1]
        normed, mean, rstd = torch.native_layer_norm(x, (d,), None, None, ctx.eps)  # recomputed, row by row
        grad_x = torch.ops.aten.native_layer_norm_backward(
            grad, x, (d,), mean, rstd, weight, None, [True, False, False]
        )[0]
        rows = grad.reshape(-1, d)  # (N, D)
        return grad_x, _row_sum(rows * normed.reshape(-1, d)), _row_sum(rows), None


def _stable_forward(self: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    if not (torch.is_grad_enabled() and self.weight is not None and self.bias is not None):
        return nn.LayerNorm.forward(self, x)
    if len(self.normalized_shape) != 1:
        return nn.LayerNorm.forward(self, x)
    return _LayerNormFunction.apply(x, self.weight, self.bias, self.eps)


def make_thread_stable(model: nn.Module) -> int:
    """Give every `nn.LayerNorm` in `model` the thread-count-independent backward; returns how many. Same
    parameters, state-dict names and forward results; only the backward's summation order changes."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) and "forward" not in vars(module):
            module.forward = _stable_forward.__get__(module)
            count += 1
    return count
