"""What a training run has done so far, as one dataclass: what checkpoints save and resuming restores.

`state_dict()` is the JSON a checkpoint keeps in training_state/trainer_state.json (the layout is the one
checkpoints have always had, so older checkpoints resume); `load_state_dict` reads it back. The random
number generators, the optimizer, the schedule and the batch sampler have their own state (checkpointing).

Light module (the standard library only): `txkit run` reads a checkpoint's state through it for the model
card without importing torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from txkit import runs

INTERVAL_KEYS = ("loss", "nll", "tgt", "src", "steps", "seconds", "flops", "grad_norm", "lr")


def new_interval() -> dict[str, float]:
    """Sums over the updates since the last training log line (loss, tokens, time, ...), and the latest
    gradient norm and learning rate."""
    return {key: 0 if key == "steps" else 0.0 for key in INTERVAL_KEYS}


@dataclass
class TrainState:
    """Counters of a run: updates applied, tokens seen, skipped updates, the best validation so far."""

    step: int = 0  # updates applied
    skipped_steps: int = 0  # non-finite loss or gradient: not applied
    overflow_steps: int = 0  # fp16 overflow: skipped by the loss scaler
    tokens_src: int = 0
    tokens_tgt: int = 0
    train_seconds: float = 0.0
    best_score: float | None = None  # the best validation metric so far (RUN/best)
    best_step: int | None = None
    bad_evals: int = 0  # validations since the best one (early stopping)
    epoch: int = 0
    accumulation: int = 1
    world_size: int = 1
    interval: dict[str, float] = field(default_factory=new_interval)  # the training log's running sums

    def state_dict(self) -> dict:
        """The JSON-able state, as trainer_state.json holds it."""
        return {
            "counters": {
                "skipped_steps": self.skipped_steps, "overflow_steps": self.overflow_steps,
                "tokens_src": self.tokens_src, "tokens_tgt": self.tokens_tgt, "train_seconds": self.train_seconds,
            },
            "best": {"score": self.best_score, "step": self.best_step, "bad_evals": self.bad_evals},
            "interval": dict(self.interval),
            "epoch": self.epoch,
            "accumulation": self.accumulation,
            "step": self.step,
            "world_size": self.world_size,
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`'s form."""
        counters, best = state.get("counters", {}), state.get("best", {})
        self.step = int(state["step"])
        self.skipped_steps = int(counters.get("skipped_steps", 0))
        self.overflow_steps = int(counters.get("overflow_steps", 0))
        self.tokens_src = int(counters.get("tokens_src", 0))
        self.tokens_tgt = int(counters.get("tokens_tgt", 0))
        self.train_seconds = float(counters.get("train_seconds", 0.0))
        self.best_score, self.best_step = best.get("score"), best.get("step")
        self.bad_evals = int(best.get("bad_evals", 0))
        self.epoch = int(state.get("epoch", 0))
        self.accumulation = int(state.get("accumulation", 1))
        self.world_size = int(state.get("world_size", 1))
        self.interval = {**new_interval(), **state.get("interval", {})}

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path) -> "TrainState":
        """The state saved in a checkpoint folder."""
        state = cls()
        path = Path(checkpoint) / runs.TRAINING_STATE / runs.TRAINER_STATE
        state.load_state_dict(json.loads(path.read_text(encoding="utf-8")))
        return state
