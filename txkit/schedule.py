"""The optimizer and the learning-rate schedules (the paper's by default), and what a step costs in FLOPs.

Steps count parameter updates from 1: `learning_rate(1, ...)` is the rate of the first update, as in the
paper's formula (transformers' `get_*_schedule` helpers are 0-based and give the first update a rate of
0, and none of them is the paper's noam schedule, so the four schedules are written out here; each is a
line of arithmetic).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from txkit.options import SCHEDULES
from txkit.recipe import TrainSection


def learning_rate(
    step: int,
    schedule: str = "noam",
    *,
    d_model: int = 512,
    warmup_steps: int = 4000,
    lr: float = 5e-4,
    lr_scale: float = 1.0,
    min_lr: float = 0.0,
    max_steps: int = 100000,
) -> float:
    """The learning rate of update number `step` (1-based).

    noam          lr_scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)       (paper, eq. 3)
    inverse_sqrt  lr * min(step / warmup, sqrt(warmup / step))                       (fairseq)
    linear        lr * step / warmup, then straight down to min_lr at max_steps
    cosine        lr * step / warmup, then half a cosine down to min_lr at max_steps

    noam is inverse_sqrt with a peak of d_model^-0.5 * warmup^-0.5 (7.0e-4 for the base model).
    """
    step = max(step, 1)
    if schedule == "noam":
        return lr_scale * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)
    if warmup_steps > 0 and step < warmup_steps:
        return lr * step / warmup_steps
    if schedule == "inverse_sqrt":
        return lr * math.sqrt(warmup_steps / step) if warmup_steps > 0 else lr / math.sqrt(step)
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))  # 0 at the peak, 1 at the end
    if schedule == "linear":
        return min_lr + (lr - min_lr) * (1.0 - progress)
    if schedule == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def schedule_kwargs(train: TrainSection, d_model: int) -> dict:
    """The keyword arguments of `learning_rate` from a recipe's train section."""
    return dict(
        schedule=train.lr_schedule,
        d_model=d_model,
        warmup_steps=train.warmup_steps,
        lr=train.lr,
        lr_scale=train.lr_scale,
        min_lr=train.min_lr,
        max_steps=train.max_steps,
    )


def build_optimizer(model: torch.nn.Module, train: TrainSection, fused: bool = False) -> torch.optim.Optimizer:
    """Adam(beta1, beta2, eps) as in the paper. With `weight_decay` > 0, decoupled decay (AdamW) on the
    matrices (weights and the embedding), never on biases and LayerNorm parameters; with 0, AdamW is Adam.

    fused: torch's one-kernel AdamW, the trainer's choice on CPUs, where torch's default is a Python loop over
    the parameters (transformer-tiny's 169 tensors: 8.4 ms an update against 2.2 fused on 2 cores, a 3% faster
    training step; README, Training on a CPU in bf16)."""
    decay, no_decay = [], []
    for param in model.parameters():  # tied parameters appear once
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The schedule sets each group's lr before every update (LambdaLR with base lr 1.0).
    return torch.optim.AdamW(groups, lr=1.0, betas=tuple(train.adam_betas), eps=train.adam_eps, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainSection, d_model: int):
    """LambdaLR over a base rate of 1.0: after `n` updates the rate is `learning_rate(n + 1)`, the rate of the
    next update, so the first update gets the paper's lr(1)."""
    kwargs = schedule_kwargs(train, d_model)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: learning_rate(done + 1, **kwargs))


# ----------------------------------------------------------------------------- FLOPs per step and MFU

# Dense peak FLOP/s per GPU for the precisions training runs in (bf16/fp16 on tensor cores; "no" = fp32,
# or TF32 where torch allows it). Unknown devices get no MFU.
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "no": 67e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "no": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "no": 19.5e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "no": 91.6e12},
    "A10G": {"bf16": 70e12, "fp16": 70e12, "tf32": 35e12, "no": 31.2e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "no": 30.3e12},
    "V100": {"fp16": 125e12, "no": 15.7e12},
    "T4": {"fp16": 65e12, "no": 8.1e12},
}


def peak_flops(device_name: str, precision: str) -> float | None:
    """The table's peak for a CUDA device name such as 'NVIDIA H100 80GB HBM3', or None when unknown."""
    if precision == "no" and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"
    for key, peaks in PEAK_FLOPS.items():
        if key in device_name:
            return peaks.get(precision)
    return None


def training_flops(config, src_lengths, tgt_lengths) -> float:
    """Model FLOPs of one training pass (forward + backward = 3 x forward) over a batch of real tokens.

    A multiply-add is 2 FLOPs. With S_i, T_i the source/target lengths of sentence i, P_enc, P_dec the
    parameters of the encoder/decoder layers, V x D the output projection and L_enc, L_dec the layers:

        linear     6 * (P_enc * sum S_i + (P_dec + V*D) * sum T_i)
        attention  12 * D * (L_enc * sum S_i^2 + L_dec * sum T_i^2 + L_dec * sum S_i*T_i)

    (attention: q.k and the weighted sum of v are D multiply-adds per query-key pair each; the causal
    decoder self-attention is counted in full, as is customary.) Padding is not counted: this is the
    useful work, so MFU = these FLOPs / (time * peak).
    """
    d, layers_e, layers_d = config.d_model, config.encoder_layers, config.decoder_layers
    f = config.ffn_dim
    per_layer_enc = 4 * d * d + 4 * d + 2 * d * f + d + f + 4 * d  # attention, FFN, 2 LayerNorms
    per_layer_dec = per_layer_enc + 4 * d * d + 4 * d + 2 * d  # + cross-attention and its LayerNorm
    s = np.asarray(src_lengths, dtype=np.float64)
    t = np.asarray(tgt_lengths, dtype=np.float64)
    per_target_token = layers_d * per_layer_dec + config.target_vocab_size * d  # decoder + output projection
    linear = 6 * (layers_e * per_layer_enc * s.sum() + per_target_token * t.sum())
    attention = 12 * d * (layers_e * (s * s).sum() + layers_d * (t * t).sum() + layers_d * (s * t).sum())
    return float(linear + attention)
