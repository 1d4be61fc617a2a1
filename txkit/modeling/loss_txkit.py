"""The training loss: label-smoothed cross-entropy over the non-padding targets, plain and fused.

Self-contained (imports only torch): `save_pretrained` copies it next to `modeling_txkit.py`, which imports it.
"""

from __future__ import annotations

import torch


def label_smoothed_nll(
    logits: torch.Tensor, labels: torch.Tensor, epsilon: float, pad_token_id: int, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross-entropy over the non-padding targets.

    The smoothed target puts 1 - eps on the reference token and eps spread uniformly over the V - 1
    non-padding tokens: the padding token can never be predicted, so its column is left out of the
    softmax (whether or not its logit is already -inf), which also gives it exactly zero gradient.
    Computed from the log-sum-exp and a gather: no (N, V) log-probability tensor next to the logits.

    Args:
        logits: (..., V) raw or pad-masked logits.
        labels: (...) target ids; `ignore_index` and the padding id are skipped.
    Returns:
        (smoothed loss sum, nll sum, number of target tokens), all scalars.
    """
    vocab = logits.size(-1)
    logits = logits.reshape(-1, vocab)
    labels = labels.reshape(-1)
    keep = labels.ne(ignore_index) & labels.ne(pad_token_id)
    if not keep.all():  # (the training path hands over only kept tokens and skips this copy)
        logits, labels = logits[keep], labels[keep]
    # the V - 1 non-padding columns, as a view where padding is the first or last id
    if pad_token_id == 0:
        logits, labels = logits[:, 1:], labels - 1
    elif pad_token_id == vocab - 1:
        logits = logits[:, :-1]
    else:
        logits = torch.cat([logits[:, :pad_token_id], logits[:, pad_token_id + 1 :]], dim=1)
        labels = labels - labels.gt(pad_token_id).long()
    logits = logits.float()  # (N, V - 1)
    lse = torch.logsumexp(logits, dim=-1)  # (N,)
    nll = lse - logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # -log p(reference)
    if epsilon > 0:
        smooth = lse - logits.mean(-1)  # mean over the non-pad classes of -log p
        loss = (1.0 - epsilon) * nll + epsilon * smooth
    else:
        loss = nll
    return loss.sum(), nll.sum(), keep.sum()


class _LinearSmoothedNLL(torch.autograd.Function):
    """`label_smoothed_nll(hidden @ weight.T, labels)` for the training path, fused and in row chunks.

    The unfused way keeps an (N, V) fp32 logits tensor and walks it about fifteen times (log-sum-exp, its
    backward, the gather's and the column slice's zero-filled gradients, their sum): on a 2-core CPU a
    third of a transformer-tiny step (benchmarks/RESULTS.md). Here each chunk of rows is projected, its
    log-sum-exp taken, and its logits turned in place into exp(logits - max), which goes straight into the
    gradients of `hidden` and `weight` (dL/dlogits = softmax - q, q the smoothed target, with the softmax's
    row scale and q applied to the small products); no (N, V) tensor exists and nothing but those two
    gradients is kept for backward. Kept libraries that do this
    (Liger-Kernel, cut-cross-entropy) are Triton kernels for GPUs only.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, epsilon, pad_token_id, chunk_rows, dtype):
        # hidden (N, D), weight (V, D), labels (N,) with no padding; dtype: the matmuls' (autocast's) dtype
        vocab = weight.size(0)
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        w = weight.to(dtype)
        # sum over the non-padding columns of the logits = hidden . (sum of the non-padding rows of weight)
        w_sum = (weight.float().sum(0) - weight[pad_token_id].float()) if epsilon > 0 else None
        loss = torch.zeros((), device=hidden.device)
        nll_total = torch.zeros((), device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        c = epsilon / (vocab - 1)  # smoothed mass on each non-padding class
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.size(0), chunk_rows):
                h = hidden[start : start + chunk_rows].to(dtype)  # (n, D)
                y = labels[start : start + chunk_rows].unsqueeze(-1)  # (n, 1)
                logits = (h @ w.T).float()  # (n, V)
                logits[:, pad_token_id] = float("-inf")
                # log-sum-exp by hand, so that its exp is the softmax's numerator and no pass is repeated:
                # four passes over the chunk (max, subtract, exp, sum) where logsumexp followed by
                # exp(logits - lse) - c took seven (benchmarks/bench_loss.py)
                top = logits.amax(-1, keepdim=True)  # (n, 1)
                target_logit = logits.gather(1, y)  # (n, 1), before the chunk is overwritten
                e = logits.sub_(top).exp_()  # (n, V) exp(logits - max), 0 at padding
                total = e.sum(-1, keepdim=True)  # (n, 1)
                lse = (top + total.log()).squeeze(-1)  # (n,)
                nll = lse - target_logit.squeeze(-1)
                nll_total += nll.sum()
                if epsilon > 0:
                    mean_logit = (h.float() @ w_sum) / (vocab - 1)
                    loss += ((1.0 - epsilon) * nll + epsilon * (lse - mean_logit)).sum()
                else:
                    loss += nll.sum()
                if not want_grad:
                    continue
                # dL/dlogits = e / total - c (non-padding columns) - (1 - eps) at the reference, never
                # materialised: the row scale 1 / total and the two constant terms are applied to the
                # (n, D) and (V, D) products instead, which costs O((n + V) D) rather than passes over (n, V)
                inv = total.reciprocal()  # (n, 1)
                e = e.to(dtype)
                if grad_hidden is not None:
                    gh = (e @ w).float().mul_(inv)  # softmax @ w
                    gh -= (1.0 - epsilon) * w[y.squeeze(-1)].float()
                    if epsilon > 0:
                        gh -= c * w_sum
                    grad_hidden[start : start + chunk_rows] = gh.to(grad_hidden.dtype)
                if grad_weight is not None:
                    hf = h.float()
                    grad_weight += (e.T @ (hf * inv).to(dtype)).float()  # softmax^T @ h
                    grad_weight.index_add_(0, y.squeeze(-1), hf, alpha=-(1.0 - epsilon))
                    if epsilon > 0:
                        row = hf.sum(0)  # (D,): every non-padding row of the weight gets -c * sum of h
                        grad_weight -= c * row
                        grad_weight[pad_token_id] += c * row
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(nll_total)
        return loss, nll_total

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


# Rows per chunk of the fused loss: on CPU ~4M logits (16 MB, cache-sized; measured best for V = 8000 on
# a 2-core machine, benchmarks/RESULTS.md); on GPUs chunks large enough to keep the matmuls efficient.
FUSED_LOSS_CPU_ELEMENTS = 1 << 22
FUSED_LOSS_GPU_ELEMENTS = 1 << 28


def linear_label_smoothed_nll(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, epsilon: float, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`label_smoothed_nll(hidden @ weight.T, labels, ...)` for rows whose labels are all real tokens, fused
    (see `_LinearSmoothedNLL`): (smoothed loss sum, nll sum, number of tokens). The nll sum carries no
    gradient. Under autocast the projection runs in autocast's dtype, as `nn.Linear` would."""
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    elements = FUSED_LOSS_CPU_ELEMENTS if device_type == "cpu" else FUSED_LOSS_GPU_ELEMENTS
    chunk_rows = max(1, elements // weight.size(0))
    loss, nll = _LinearSmoothedNLL.apply(hidden, weight, labels, epsilon, pad_token_id, chunk_rows, dtype)
    return loss, nll, labels.new_tensor(labels.numel())
