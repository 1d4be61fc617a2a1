"""Checkpoints of a training run: written atomically, pruned to the last K, enough to resume exactly.

A checkpoint is a `save_pretrained` model folder (safetensors weights, config, generation config,
tokenizer, modeling code), so any checkpoint can be translated with, averaged or shared as it is, plus

    training_state/
      trainer_state.json   step, epoch, counters, best validation score, patience, wall time
      optimizer.pt         Adam's moments (identical on every process under data parallelism)
      scheduler.pt         the learning-rate schedule's position
      scaler.pt            fp16 only: the loss scale
      rank-00000.pt        per process: RNG states (python, numpy, torch, CUDA) and the batch sampler's
                           (epoch, position); each process draws its own dropout masks and reads its own shard
      ema/                 with train.ema_decay: the moving average of the weights, as a model folder

It is written to `checkpoint-NNNNNNNN.tmp/` and renamed when every process has written its part, so a
crash (or a kill) at any moment leaves the previous checkpoints intact and never a half-written latest one.
`RUN/best` is replaced the same way. All processes must see the run directory (a shared filesystem
when training on several machines).
"""

from __future__ import annotations

import datetime
import json
import os
import random
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import torch

from txkit import atomic, runs
from txkit.errors import TxkitError

# The names are runs.py's (the run directory's layout); these aliases keep this module's code short.
TRAINER_STATE = runs.TRAINER_STATE
OPTIMIZER = runs.OPTIMIZER_STATE
SCHEDULER = runs.SCHEDULER_STATE
SCALER = runs.SCALER_STATE
rank_file = runs.rank_file


# ----------------------------------------------------------------------------- the run directory


def refuse_sharded_launch() -> None:
    """Stop before training under an FSDP launch config (recipes/launch/*-fsdp.yml), which txkit cannot run.

    Its checkpoints are written by the main process from the unwrapped model and `optimizer.state_dict()`,
    which under FSDP hold only each process's shard; validation decodes different sentences on each
    process, which FSDP's per-layer all-gathers cannot follow. On GPUs that would fail or hang at the first
    checkpoint or validation; on CPUs accelerate (1.15) ignores the FSDP config and trains with DDP, so
    the run would not be what was asked for either. One line now instead of either.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1"):
        raise TxkitError(
            "FSDP launch configs (distributed_type: FSDP) are not supported by txkit train yet: checkpoints "
            "and validation need the whole model on every process; use recipes/launch/1node-8gpu.yml or "
            "2node-8gpu.yml (DDP)"
        )


def prepare_run_dir(output_dir: str | os.PathLike) -> Path:
    """Create the run directory (and its checkpoints folder) or fail with one line saying why."""
    run_dir = Path(output_dir)
    try:
        (run_dir / runs.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        # host and pid: processes of several machines probe the same shared folder at once
        probe = run_dir / f".write-test-{socket.gethostname()}-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise TxkitError(f"cannot write to output directory {run_dir}: {exc.strerror or exc}") from None
    return run_dir


def write_recipe(run_dir: Path, recipe) -> None:
    """RUN/recipe.yaml: the resolved recipe (every key, after overrides), with where and how it ran."""
    program = "txkit" if sys.argv[0].endswith(("__main__.py", "txkit")) else sys.argv[0]
    header = (
        f"Resolved recipe of this run, written by txkit train on {datetime.datetime.now():%Y-%m-%d %H:%M:%S}\n"
        f"from {recipe.source}; data paths relative to TXKIT_DATA={os.environ.get('TXKIT_DATA', './data')}\n"
        f"command: {' '.join([program, *sys.argv[1:]])}"
    )
    write_text_atomic(run_dir / runs.RECIPE_FILE, recipe.to_yaml(header=header))


# ----------------------------------------------------------------------------- random number generators


def capture_rng() -> dict:
    """The states of every random number generator training draws from (dropout, shuffling)."""
    state = {
        "python": random.getstate(),
        # numpy's state as plain lists so that torch.load(weights_only=True) can read it back
        "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------- writing


def write_text_atomic(path: Path, text: str) -> None:
    """Write a whole text file under a temporary name, then rename it into place."""
    atomic.write_text(path, text)


def save_model_folder(folder: Path, model, src_tok, tgt_tok, on_model_folder=None) -> None:
    """A standard model folder: weights (safetensors), config, generation config, code, tokenizer(s); then
    `on_model_folder(folder)` (the caller's model card writer: the training stage imports no sharing code)."""
    from txkit.tokenization import save_tokenizers

    model.save_pretrained(folder)
    save_tokenizers(src_tok, tgt_tok, folder)
    if on_model_folder is not None:
        on_model_folder(folder)


def save_checkpoint(
    accelerator,
    run_dir: Path,
    step: int,
    model,
    tokenizers: tuple,
    optimizer,
    scheduler,
    trainer_state: dict,
    rank_state: dict,
    keep_last: int = 0,
    on_model_folder=None,
    ema=None,
) -> Path:
    """Write RUN/checkpoints/checkpoint-{step}; every process calls this (each writes its rank file).

    Args:
        model: the unwrapped model.
        trainer_state: JSON-able counters, written by the main process.
        rank_state: this process's sampler state; its RNG states are added here.
        on_model_folder: called with the model folder before it is renamed (see `save_model_folder`).
        ema: the run's txkit.ema.WeightEMA, or None; its weights become training_state/ema/, a model folder.
    """
    final = run_dir / runs.CHECKPOINTS / runs.checkpoint_name(step)
    # Every process writes into this folder, so its name is agreed on rather than random; it lives in the
    # run's own checkpoints folder, and only names of this form are ever deleted there.
    tmp = final.with_name(final.name + ".tmp")
    state_dir = tmp / runs.TRAINING_STATE
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        state_dir.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save({**rank_state, "rng": capture_rng()}, state_dir / rank_file(accelerator.process_index))
    if accelerator.is_main_process:
        save_model_folder(tmp, model, *tokenizers, on_model_folder)
        if ema is not None:
            with ema.swapped_in():
                save_model_folder(state_dir / runs.EMA_DIR, model, *tokenizers)
        torch.save(optimizer.state_dict(), state_dir / OPTIMIZER)
        torch.save(scheduler.state_dict(), state_dir / SCHEDULER)
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), state_dir / SCALER)
        state = {**trainer_state, "step": step, "world_size": accelerator.num_processes}
        (state_dir / TRAINER_STATE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    accelerator.wait_for_everyone()  # every rank file is on disk before the folder gets its final name
    if accelerator.is_main_process:
        atomic.replace_dir(tmp, final)
        prune_checkpoints(run_dir, keep_last)
    return final


def prune_checkpoints(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints (0 keeps all); returns what was deleted."""
    if keep_last <= 0:
        return []
    old = runs.list_checkpoints(run_dir)[:-keep_last]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old


def clean_partial(run_dir: Path) -> None:
    """Remove what a crash left behind: unfinished `checkpoint-N.tmp` folders (the only names deleted there)
    and the temporaries of dead txkit processes; restore `best` if a swap was cut."""
    folder = run_dir / runs.CHECKPOINTS
    if folder.is_dir():
        for path in folder.iterdir():
            if runs.is_partial_checkpoint(path):
                shutil.rmtree(path, ignore_errors=True)
    atomic.recover_dir(run_dir / runs.BEST)


def save_best(run_dir: Path, model, tokenizers: tuple, metrics: dict, on_model_folder=None) -> Path:
    """Replace RUN/best with the current model (main process only); `best/val_metrics.json` says why."""
    final = run_dir / runs.BEST
    with atomic.building_dir(final) as tmp:
        save_model_folder(tmp, model, *tokenizers, on_model_folder)
        (tmp / runs.VAL_METRICS).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return final


# ----------------------------------------------------------------------------- reading


def find_resume_checkpoint(run_dir: Path, resume: bool | str | os.PathLike | None, warn=None) -> Path | None:
    """The checkpoint to resume from: None/False = none; True = the newest checkpoint of the run whose files
    are all complete (None when there is none yet, so a relaunched job starts fresh; each damaged newer one
    is reported through `warn` with the reason and skipped); a path = that checkpoint, which must be complete."""
    from txkit.modelfiles import check_checkpoint

    if resume is None or resume is False:
        return None
    if resume is True:
        found = runs.list_checkpoints(run_dir)
        for path in reversed(found):
            try:
                check_checkpoint(path)
            except TxkitError as exc:
                (warn or _stderr)(f"warning: skipping {path.name}, it is damaged: {exc}")
                continue
            return path
        if found:
            raise TxkitError(f"{run_dir}: no checkpoint is complete ({len(found)} damaged); nothing to resume from")
        return None
    path = Path(resume)
    if not (path / runs.TRAINING_STATE / TRAINER_STATE).is_file():
        raise TxkitError(f"{path}: not a complete training checkpoint (no {runs.TRAINING_STATE}/{TRAINER_STATE})")
    check_checkpoint(path)
    return path


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_rank_state(checkpoint: Path, rank: int) -> dict | None:
    """This process's RNG and sampler state, or None when the checkpoint was written by fewer processes."""
    path = checkpoint / runs.TRAINING_STATE / rank_file(rank)
    return torch.load(path, weights_only=True) if path.is_file() else None


def load_optimizer_states(checkpoint: Path, optimizer, scheduler, scaler, device) -> None:
    state_dir = checkpoint / runs.TRAINING_STATE
    # Under a distributed launcher on CPUs accelerate's device is "cpu:0", which torch.load cannot map
    # storages to (a resumed multi-process CPU run failed with "don't know how to restore data location").
    if torch.device(device).type == "cpu":
        device = "cpu"
    optimizer.load_state_dict(torch.load(state_dir / OPTIMIZER, map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(state_dir / SCHEDULER, weights_only=True))
    if scaler is not None and (state_dir / SCALER).is_file():
        scaler.load_state_dict(torch.load(state_dir / SCALER, weights_only=True))


# ----------------------------------------------------------------------------- the JSONL log


class RunLog:
    """RUN/log.jsonl: one JSON object per logged step, {"step": N, "train/loss": ..., ...}."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """On resume from `step`: drop the lines a killed run logged after its last checkpoint, so that the
        log reads as one uninterrupted run (the resumed run logs those steps again, with the same values)."""
        if not (self.enabled and self.path.is_file()):
            return
        # read_log drops a last line cut by the kill; RunLog.write wrote each record as json.dumps(record)
        kept = [json.dumps(record) + "\n" for record in runs.read_log(self.path) if record["step"] <= step]
        write_text_atomic(self.path, "".join(kept))

    def has_train_record(self, step: int) -> bool:
        """Whether the log holds training values logged at `step` (a run's last, partial interval)."""
        if not (self.enabled and self.path.is_file()):
            return False
        return any(r.get("step") == step and "train/loss" in r for r in runs.read_log(self.path))

    def start_fresh(self) -> None:
        if self.enabled and self.path.exists():
            self.path.unlink()

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _json_number(v) for k, v in values.items()}}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def _json_number(v):
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)  # JSON has no NaN / Infinity
    return v
