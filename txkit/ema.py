"""An exponential moving average (EMA) of the weights during training (`train.ema_decay`).

After every applied update, ema <- decay * ema + (1 - decay) * weights, for every parameter, in float32 (as
Marian's `exponential-smoothing` and Eole's `average_decay` keep one). It starts from the initial weights.
The average is a second copy of the weights that training never reads: validation (loss, BLEU, RUN/best)
runs on it when it is on, and each checkpoint keeps it as a model folder of its own,
`checkpoint-N/training_state/ema/` (safetensors, config, tokenizer), so that

* resuming restores it exactly (float32 on both sides: a killed and resumed run ends bit-identical);
* `txkit run`'s averaging can take the EMA weights of the last checkpoints instead of their trained weights
  (`eval.final_weights: ema`), with the same code that averages model folders.

Under data parallelism every process holds the same weights after each update, so every process keeps the
same average; only the main process writes it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from txkit import runs

def ema_folder(checkpoint: str | Path) -> Path:
    """Where a checkpoint keeps its EMA weights (a model folder)."""
    return Path(checkpoint) / runs.TRAINING_STATE / runs.EMA_DIR


class WeightEMA:
    """The moving average of a model's parameters (by name, one tensor per distinct parameter: tied
    matrices are averaged once)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), not {decay}")
        self.model = model
        self.decay = decay
        self.params = dict(model.named_parameters())  # name -> the live parameter
        self.shadow = {name: p.detach().float().clone() for name, p in self.params.items()}  # name -> fp32 average

    @torch.no_grad()
    def update(self) -> None:
        """ema += (1 - decay) * (weights - ema): one fused pass over every parameter."""
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[n] for n in names], [self.params[n].detach().float() for n in names],
                             1.0 - self.decay)  # fmt: skip

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped_in(self):
        """Inside the block the model holds the EMA weights; its own weights come back after, bit for bit."""
        saved = {name: p.detach().clone() for name, p in self.params.items()}
        try:
            for name, p in self.params.items():
                p.copy_(self.shadow[name])
            yield self.model
        finally:
            for name, p in self.params.items():
                p.copy_(saved[name])

    @torch.no_grad()
    def load_folder(self, folder: str | Path) -> None:
        """Restore the average from a model folder written by a checkpoint (`ema_folder`): loaded through the
        model itself, so the names that save_pretrained dropped for tied matrices resolve as they do there."""
        from safetensors.torch import load_file

        tensors = load_file(str(Path(folder) / "model.safetensors"))
        saved = {name: p.detach().clone() for name, p in self.params.items()}
        try:
            self.model.load_state_dict(tensors, strict=False)
            self.shadow = {name: p.detach().float().clone() for name, p in self.params.items()}
        finally:
            for name, p in self.params.items():
                p.copy_(saved[name])
