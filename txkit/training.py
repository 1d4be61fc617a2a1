"""The training loop: one recipe in, a run directory of checkpoints, logs and the best model out.

Runs through `accelerate`, so the same code trains on one CPU, one GPU, several GPUs or several machines,
started as `txkit train ...`, `accelerate launch -m txkit train ...` or `torchrun ... -m txkit train ...`.

One update ("step") = `train.accumulation` batches on each of the W processes. Each process reads its own
shard of the epoch's batches (`TokenBatchSampler(num_shards=W, shard_index=rank)`; shard r takes batches
r, r+W, ...), so W processes with accumulation A see exactly the batches one process with accumulation
W*A sees, and reach the same weights (tests/test_distributed.py).

The loss of a step is the label-smoothed cross-entropy summed over every target token of the step, on
all processes and all accumulated batches, divided by the number N of those tokens, not a mean of
per-batch means: results do not depend on how a step is cut into batches. See `Trainer.train_step`.

Mid-training failures: a step whose loss (or, without fp16, gradient norm) is NaN or infinite is not
applied; it is reported with its step and batch shapes, counted in `train/skipped_steps`, and training
goes on (10 such steps in a row stop the run). fp16 overflow steps are skipped by the loss scaler, as
usual, and counted in `train/overflow_steps`. Running out of GPU memory is an error naming the step and
the batch shape (not a skip: one process skipping a batch would leave the others waiting for it).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from txkit import runs
from txkit.errors import TxkitError
from txkit.recipe import Recipe
from txkit.schedule import peak_flops, training_flops
from txkit.train_state import TrainState, new_interval

MAX_NONFINITE_IN_A_ROW = 10


@dataclass
class TrainResult:
    """What a call to `train` did."""

    run_dir: Path
    step: int  # updates applied in total (including before a resume)
    stop_reason: str  # max_steps | max_epochs | early_stopping | stop_after_steps
    last_checkpoint: Path | None = None
    best_dir: Path | None = None
    best_score: float | None = None
    val: dict = field(default_factory=dict)  # the last validation's metrics
    skipped_steps: int = 0


@dataclass
class TrainHooks:
    """What training needs from later stages, handed in so that the training stage imports none of them
    (txkit.pipeline.training_hooks() gives the ones `txkit train` and `txkit run` use).

    bleu: (hypotheses, references, the recipe's eval section) -> BLEU of the validation translations;
        None = validate by loss and perplexity only (no translating).
    model_folder_saved: called with each model folder written (checkpoints, RUN/best) before it gets its
        final name, e.g. to write its model card.
    """

    bleu: Callable[[list[str], list[str], Any], float] | None = None
    model_folder_saved: Callable[[Path], Any] | None = None


def train(
    recipe: Recipe,
    output_dir: str | os.PathLike,
    resume: bool | str | os.PathLike | None = None,
    hooks: TrainHooks | None = None,
) -> TrainResult:
    """Train a model as `recipe` says, in the run directory `output_dir`.

    Args:
        resume: True = continue from the latest complete checkpoint of `output_dir` (start fresh when there
            is none); a checkpoint path = continue from it; None/False = a new run (an error when
            `output_dir` already has checkpoints, so nothing is overwritten by mistake).
        hooks: validation BLEU and model cards (see TrainHooks); default: none.
    """
    from txkit.train_setup import build_trainer

    trainer = build_trainer(recipe, output_dir, resume, hooks)
    try:
        return trainer.fit()
    finally:
        trainer.close()


# ----------------------------------------------------------------------------- the trainer


@dataclass
class TrainComponents:
    """What a Trainer trains with, built before it (txkit.train_setup builds them from a recipe)."""

    model: Any  # prepared by the accelerator (DDP-wrapped on several processes)
    optimizer: Any  # prepared by the accelerator
    scheduler: Any  # the learning-rate schedule, on the unwrapped optimizer
    src_tok: Any
    tgt_tok: Any
    pairs: Any  # txkit.batching.TokenizedPairs of the training data
    sampler: Any  # txkit.batching.TokenBatchSampler over `pairs`, this process's shard
    valid_pairs: Any = None  # TokenizedPairs of the validation data, or None
    valid_batches: list | None = None  # this process's validation batches (lists of indices)
    valid_src: list = field(default_factory=list)  # validation sources and references, as text
    valid_refs: list = field(default_factory=list)
    tokenizer_dir: Path | None = None


class Trainer:
    """Trains built components: one update at a time (`train_step`), or the whole loop with validation,
    checkpoints and logs (`fit`). Its counters are a TrainState (`self.state`), saved in every checkpoint.

    `train()` is the entry point from a recipe; tests build a Trainer from hand-made components.
    """

    def __init__(
        self,
        recipe: Recipe,
        run_dir: str | os.PathLike,
        accelerator,
        components: TrainComponents,
        resume_from: Path | None = None,
        hooks: TrainHooks | None = None,
    ):
        """Train `components` (built by txkit.train_setup from a recipe, or by hand) in `run_dir`; the
        recipe's train section says how. `resume_from`: a checkpoint whose state to continue from."""
        from txkit import checkpointing as ckpt

        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.accelerator = accelerator
        self.resume_from = resume_from
        self.hooks = hooks or TrainHooks()
        self.log = ckpt.RunLog(self.run_dir / runs.LOG_FILE, enabled=accelerator.is_main_process)
        c = components
        self.model, self.optimizer, self.scheduler = c.model, c.optimizer, c.scheduler
        self.src_tok, self.tgt_tok, self.tokenizer_dir = c.src_tok, c.tgt_tok, c.tokenizer_dir
        self.pairs, self.sampler = c.pairs, c.sampler
        self.valid_pairs, self.valid_batches = c.valid_pairs, c.valid_batches
        self.valid_src, self.valid_refs = c.valid_src, c.valid_refs
        self.unwrapped = accelerator.unwrap_model(self.model)
        self.config = self.unwrapped.config
        self.n_params = sum(p.numel() for p in self.unwrapped.parameters())
        self.governor = None
        if accelerator.device.type == "cpu":
            from txkit.threads import ThreadGovernor, set_threads

            if recipe.train.mixed_precision != "bf16":
                # the thread count may change step by step (txkit/threads.py), so the LayerNorm gradients
                # must not depend on it
                from txkit.thread_stable import make_thread_stable

                make_thread_stable(self.unwrapped)
                self.governor = ThreadGovernor.create()
            else:
                # bf16 matrix products round differently with 1 and 2 threads at some shapes (measured: the
                # weights after 4 steps differ), so a bf16 run keeps one count (the user's, else torch's) and
                # stays exactly reproducible; with the count fixed, torch's own LayerNorm backward is
                # reproducible too, and faster than txkit.thread_stable's (5% of a tiny bf16 step)
                set_threads()
                # torch's fused CPU attention has a slow bf16 backward (README, Training on a CPU in bf16: 6x the
                # written-out attention's on the tiny model), so CPU bf16 training writes attention out; the same
                # arithmetic, and the config field is private (not saved with checkpoints).
                self.unwrapped.config._attn_implementation = "eager"
                if not _native_cpu_bf16():
                    self._info(
                        "warning: train.mixed_precision=bf16 on a CPU without bf16 instructions (AVX512-BF16 or "
                        "AMX): torch emulates them, which is likely slower than float32 (--set "
                        "train.mixed_precision=no)"
                    )
        self.ema = None  # the moving average of the weights (train.ema_decay), from the weights as they are now
        if recipe.train.ema_decay:
            from txkit.ema import WeightEMA

            self.ema = WeightEMA(self.unwrapped, recipe.train.ema_decay)
        self._setup_state()  # last: it restores the random number generators when resuming

    def _setup_state(self) -> None:
        import numpy as np
        import torch

        from txkit import checkpointing as ckpt

        acc, t = self.accelerator, self.recipe.train
        self.state = TrainState(accumulation=t.accumulation, world_size=acc.num_processes)
        self.nonfinite_in_a_row = 0
        # Dropout masks differ between processes (each sees other data); derived from (seed, rank).
        seed = int(np.random.SeedSequence([t.seed, acc.process_index]).generate_state(1)[0])
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        if self.resume_from is None:
            self.log.start_fresh()
            return
        saved = TrainState.from_checkpoint(self.resume_from)
        self.state.load_state_dict(saved.state_dict())
        ckpt.load_optimizer_states(self.resume_from, self.optimizer, self.scheduler, acc.scaler, acc.device)
        if saved.world_size != acc.num_processes:
            self._info(
                f"warning: resuming a run of {saved.world_size} processes on {acc.num_processes}: "
                "the batches (and so the weights) will differ from an uninterrupted run"
            )
        rank_state = ckpt.load_rank_state(self.resume_from, acc.process_index)
        if rank_state is None:
            rank_state = ckpt.load_rank_state(self.resume_from, 0)
            rank_state.pop("rng")  # keep this process's own seed
        else:
            ckpt.restore_rng(rank_state["rng"])  # last: nothing may draw random numbers after this
        self.sampler.load_state_dict(rank_state["sampler"])
        if self.ema is not None:
            self._restore_ema()
        self.log.truncate_after(self.state.step)
        if self.log.has_train_record(self.state.step):  # a finished run logged its last partial interval already
            self.state.interval = new_interval()
        self.state.accumulation, self.state.world_size = t.accumulation, acc.num_processes
        self._info(f"resumed from {self.resume_from} at step {self.state.step}")

    def _restore_ema(self) -> None:
        from txkit.ema import ema_folder

        folder = ema_folder(self.resume_from)
        if folder.is_dir():
            self.ema.load_folder(folder)
        else:  # a checkpoint of a run without EMA: the average starts from the resumed weights
            self._info(f"warning: {self.resume_from} has no EMA weights; train.ema_decay starts averaging now")

    # -- one update --------------------------------------------------------------------------------

    def _forward_sums(self, batch):
        """Forward one batch: (smoothed loss sum, nll sum) over its target tokens; the model as prepared."""
        device = self.accelerator.device
        out = self.model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            labels=batch["labels"].to(device),
            num_items_in_batch=1,  # sums: the step's normalisation happens in train_step
            return_logits=False,  # project only real target tokens onto the vocabulary
            use_cache=False,
        )
        return out.loss, out.nll_loss

    def train_step(self, micro_batches: list[list[int]]) -> bool:
        """One update from this process's `micro_batches` (lists of pair indices); False when skipped.

        Loss normalisation. Let N be the target tokens of the whole step (all W processes, all A batches)
        and l_pb the summed token losses of batch b on process p. The step's loss is L = sum_pb l_pb / N,
        so dL/dθ = sum_pb dl_pb/dθ / N. Each process backpropagates sum_b l_pb * W / N; DDP averages the
        gradients over processes (divides their sum by W), which gives exactly dL/dθ. N is all-reduced
        before the first backward; `no_sync` keeps DDP from all-reducing all but the last batch.
        """
        import torch

        acc, t = self.accelerator, self.recipe.train
        batches = [self.pairs.collate(idx, self.config.pad_token_id, t.pad_to_multiple_of) for idx in micro_batches]
        flops = 0.0
        if self.mfu_peak:
            lengths = [(self.pairs.src_lengths[i], self.pairs.tgt_lengths[i]) for i in micro_batches]
            flops = sum(training_flops(self.config, src, tgt) for src, tgt in lengths)
        counts = torch.tensor(
            [sum(b["num_tgt_tokens"] for b in batches), sum(b["num_src_tokens"] for b in batches), flops],
            dtype=torch.float64, device=acc.device,
        )  # fmt: skip
        n_tgt, n_src, flops = acc.reduce(counts, reduction="sum").tolist()  # the whole step's, all processes
        scale = acc.num_processes / max(n_tgt, 1.0)
        sums = torch.zeros(2, dtype=torch.float64, device=acc.device)  # smoothed loss, nll
        if self.governor is not None:
            self.governor.choose()
        started = time.perf_counter()
        self.model.train()
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            try:
                with contextlib.nullcontext() if last else acc.no_sync(self.model):
                    loss_sum, nll_sum = self._forward_sums(batch)
                    acc.backward(loss_sum * scale)
            except torch.OutOfMemoryError:
                raise TxkitError(
                    f"step {self.state.step + 1}: out of GPU memory on a batch of shape {_shapes(batch)} "
                    f"(train.max_tokens={t.max_tokens}); lower train.max_tokens and raise train.accumulation "
                    "to keep the tokens per step"
                ) from None
            sums += torch.stack([loss_sum.detach(), nll_sum.detach()]).double()
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), t.clip_norm if t.clip_norm > 0 else math.inf)
        loss_total, nll_total = acc.reduce(sums, reduction="sum").tolist()
        grad_norm = float(grad_norm)
        fp16 = t.mixed_precision == "fp16"
        if not math.isfinite(loss_total) or (not fp16 and not math.isfinite(grad_norm)):
            return self._skip_nonfinite(loss_total, grad_norm, batches)
        self.nonfinite_in_a_row = 0
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - started
        if self.governor is not None:
            self.governor.record(n_tgt, elapsed)
        if acc.optimizer_step_was_skipped:  # fp16 overflow: the scaler lowered the loss scale
            self.state.overflow_steps += 1
            return False
        self.scheduler.step()
        self.state.step += 1
        if self.ema is not None:
            self.ema.update(self.state.step)  # the step decides the warm-up of the decay
        added = dict(loss=loss_total, nll=nll_total, tgt=n_tgt, src=n_src, steps=1, seconds=elapsed, flops=flops)
        for key, value in added.items():
            self.state.interval[key] += value
        self.state.interval.update(grad_norm=grad_norm, lr=lr)
        self.state.tokens_src += int(n_src)
        self.state.tokens_tgt += int(n_tgt)
        self.state.train_seconds += elapsed
        return True

    def _skip_nonfinite(self, loss_total: float, grad_norm: float, batches) -> bool:
        self.optimizer.zero_grad(set_to_none=True)
        self.state.skipped_steps += 1
        self.nonfinite_in_a_row += 1
        what = f"loss {loss_total}" if not math.isfinite(loss_total) else f"gradient norm {grad_norm}"
        shapes = "; ".join(_shapes(b) for b in batches)
        print(
            f"warning: step {self.state.step + 1}: {what} on process {self.accelerator.process_index}'s batches "
            f"[{shapes}]; update skipped ({self.state.skipped_steps} skipped so far)",
            file=sys.stderr,
        )
        if self.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
            raise TxkitError(
                f"step {self.state.step + 1}: {MAX_NONFINITE_IN_A_ROW} updates in a row had a non-finite {what.split()[0]}; "
                "training diverged (lower train.lr, set train.clip_norm, or use bf16 instead of fp16)"
            )
        return False

    # -- the loop ----------------------------------------------------------------------------------

    def _batch_stream(self):
        """This process's batches, epoch after epoch (from the sampler's restored position)."""
        max_epochs = self.recipe.train.max_epochs
        while not max_epochs or self.sampler.epoch < max_epochs:
            yield from self.sampler

    def fit(self) -> TrainResult:
        from tqdm.auto import tqdm

        acc, t = self.accelerator, self.recipe.train
        stream = self._batch_stream()
        result = TrainResult(run_dir=self.run_dir, step=self.state.step, stop_reason="max_steps")
        last_save = time.monotonic()
        saved_at = evaluated_at = self.state.step if self.resume_from is not None else -1
        self.bar = tqdm(
            total=t.max_steps, initial=self.state.step, desc="train", unit="step", dynamic_ncols=True,
            disable=not acc.is_main_process, file=sys.stderr,
        )  # fmt: skip
        while self.state.step < t.max_steps:
            micro = list(itertools.islice(stream, t.accumulation))
            if not micro:
                result.stop_reason = "max_epochs"
                break
            if not self.train_step(micro):
                continue
            self.bar.update(1)
            if t.log_every_steps and self.state.step % t.log_every_steps == 0:
                self._log_train()
            if t.eval_every_steps and self.state.step % t.eval_every_steps == 0 and self.valid_batches is not None:
                result.val = self.validate()
                evaluated_at = self.state.step
            if (t.save_every_steps and self.state.step % t.save_every_steps == 0) or self._time_to_save(last_save):
                result.last_checkpoint = self.save()
                saved_at, last_save = self.state.step, time.monotonic()
            if t.patience and self.state.bad_evals >= t.patience:
                result.stop_reason = "early_stopping"
                self._info(f"early stopping at step {self.state.step}: val/{t.best_metric} did not improve in "
                           f"{t.patience} validations")  # fmt: skip
                break
            if t.stop_after_steps and self.state.step >= t.stop_after_steps:
                result.stop_reason = "stop_after_steps"  # as if killed here: no final validation or save
                break
        if result.stop_reason != "stop_after_steps":
            if self.state.interval["steps"]:
                self._log_train()
            if evaluated_at != self.state.step and self.valid_batches is not None:
                result.val = self.validate()
            if saved_at != self.state.step:
                result.last_checkpoint = self.save()
        self.bar.close()
        result.step = self.state.step
        result.skipped_steps = self.state.skipped_steps
        result.best_score = self.state.best_score
        if (self.run_dir / runs.BEST).is_dir():
            result.best_dir = self.run_dir / runs.BEST
        if result.last_checkpoint is None:
            result.last_checkpoint = runs.latest_checkpoint(self.run_dir)
        return result

    def _time_to_save(self, last_save: float) -> bool:
        """Every process must take the same decision: the main process's clock decides."""
        minutes = self.recipe.train.save_every_minutes
        if not minutes:
            return False
        due = (time.monotonic() - last_save) >= 60 * minutes
        if self.accelerator.num_processes > 1:
            import torch
            from accelerate.utils import broadcast

            flag = torch.tensor([float(due)], device=self.accelerator.device)
            due = bool(broadcast(flag, from_process=0).item())
        return due

    # -- logging, validation, checkpoints ----------------------------------------------------------

    @property
    def mfu_peak(self) -> float | None:
        if not hasattr(self, "_mfu_peak"):
            import torch

            self._mfu_peak = None
            if self.accelerator.device.type == "cuda":
                name = torch.cuda.get_device_name(self.accelerator.device)
                peak = peak_flops(name, self.recipe.train.mixed_precision)
                self._mfu_peak = peak * self.accelerator.num_processes if peak else None
        return self._mfu_peak

    def _record(self, values: dict) -> None:
        """Every logged value goes to RUN/log.jsonl and TensorBoard."""
        self.log.write(self.state.step, values)
        self.accelerator.log(values, step=self.state.step)

    def _log_train(self) -> None:
        iv = self.state.interval
        if not iv["steps"]:
            return
        seconds = max(iv["seconds"], 1e-9)
        values = {
            "train/loss": iv["loss"] / iv["tgt"],
            "train/nll_loss": iv["nll"] / iv["tgt"],
            "train/ppl": math.exp(min(iv["nll"] / iv["tgt"], 50.0)),
            "train/lr": iv["lr"],
            "train/grad_norm": iv["grad_norm"],
            "train/src_tok_per_s": iv["src"] / seconds,
            "train/tgt_tok_per_s": iv["tgt"] / seconds,
            "train/tgt_tok_per_step": iv["tgt"] / iv["steps"],
            "train/epoch": self.sampler.epoch + self.sampler.position / max(len(self.sampler), 1),
            "train/skipped_steps": self.state.skipped_steps,
            "train/overflow_steps": self.state.overflow_steps,
        }
        if self.governor is not None:  # the CPU thread count chosen for the steps now (txkit/threads.py)
            values["train/threads"] = self.governor.current
        if self.mfu_peak:
            values["train/mfu"] = iv["flops"] / seconds / self.mfu_peak
        self._record(values)
        self.bar.set_postfix(
            loss=f"{values['train/loss']:.3f}", lr=f"{iv['lr']:.2e}", tok_s=f"{values['train/tgt_tok_per_s']:.0f}",
            refresh=False,
        )  # fmt: skip
        self.state.interval = new_interval()

    def validate(self) -> dict:
        """Loss and perplexity on the validation set, and (with a `hooks.bleu`) BLEU of its translations
        decoded as `txkit translate` decodes (Translator + DecodeOptions from the recipe's eval section)."""
        # With train.ema_decay, validation (and RUN/best) sees the moving average, not the trained weights.
        with self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext():
            return self._validate()

    def _validate(self) -> dict:
        import torch
        from accelerate.utils import broadcast_object_list, gather_object

        from txkit.decoding import DecodeOptions, Translator

        acc, r = self.accelerator, self.recipe
        sums = torch.zeros(3, dtype=torch.float64, device=acc.device)  # smoothed loss, nll, tokens
        self.model.eval()
        with torch.no_grad():
            for idx in self.valid_batches:
                batch = self.valid_pairs.collate(idx, self.config.pad_token_id, r.train.pad_to_multiple_of)
                loss_sum, nll_sum = self._forward_sums(batch)
                sums += torch.stack([loss_sum.double(), nll_sum.double(), sums.new_tensor(batch["num_tgt_tokens"])])
        loss, nll, tokens = acc.reduce(sums, reduction="sum").tolist()
        metrics = {"val/loss": loss / tokens, "val/nll_loss": nll / tokens, "val/ppl": math.exp(min(nll / tokens, 50))}
        e = r.eval
        if self.hooks.bleu is not None:  # BLEU of the validation set translated as `txkit translate` does
            translator = Translator(self.unwrapped, self.src_tok, self.tgt_tok, DecodeOptions(**e.search_options()))
            started = time.perf_counter()
            with acc.split_between_processes(list(self.valid_src)) as part, acc.autocast():
                hyps = translator.translate(part)
            hyps = gather_object(hyps)
            bleu = [None]
            if acc.is_main_process and hyps:
                bleu[0] = self.hooks.bleu(hyps, list(self.valid_refs), e)
            if acc.num_processes > 1:
                broadcast_object_list(bleu, from_process=0)
            if bleu[0] is not None:
                metrics["val/bleu"] = bleu[0]
            metrics["val/decode_seconds"] = time.perf_counter() - started
        self.model.train()
        self._update_best(metrics)
        metrics["val/best"] = self.state.best_score
        self._record(metrics)
        shown = ", ".join(f"{k[4:]} {metrics[k]:.3f}" for k in ("val/loss", "val/ppl", "val/bleu") if k in metrics)
        self._info(f"step {self.state.step}: validation {shown}")
        return metrics

    def _update_best(self, metrics: dict) -> None:
        """Keep RUN/best at the best validation score so far; count validations without progress."""
        from txkit.checkpointing import save_best

        name = self.recipe.train.best_metric
        value = metrics.get(f"val/{name}")
        if value is None:  # BLEU without a decoded sentence: fall back to the loss
            name, value = "loss", metrics["val/loss"]
        higher_is_better = name == "bleu"
        best = self.state.best_score
        if best is None or (value > best if higher_is_better else value < best):
            self.state.best_score, self.state.best_step, self.state.bad_evals = value, self.state.step, 0
            if self.accelerator.is_main_process:
                save_best(self.run_dir, self.unwrapped, (self.src_tok, self.tgt_tok), {"step": self.state.step, **metrics},
                          on_model_folder=self.hooks.model_folder_saved)  # fmt: skip
        else:
            self.state.bad_evals += 1

    def save(self) -> Path:
        from txkit.checkpointing import save_checkpoint

        self.state.epoch = self.sampler.epoch
        trainer_state = self.state.state_dict()
        path = save_checkpoint(
            self.accelerator, self.run_dir, self.state.step, self.unwrapped, (self.src_tok, self.tgt_tok), self.optimizer,
            self.scheduler, trainer_state, {"sampler": self.sampler.state_dict()},
            keep_last=self.recipe.train.keep_last, on_model_folder=self.hooks.model_folder_saved, ema=self.ema,
        )  # fmt: skip
        self._info(f"step {self.state.step}: saved {path}")
        return path

    def _info(self, message: str) -> None:
        if self.accelerator.is_main_process:
            bar = getattr(self, "bar", None)
            if bar is not None and not bar.disable:
                bar.write(message, file=sys.stderr)
            else:
                print(message, file=sys.stderr)

    def close(self) -> None:
        self.accelerator.end_training()


# ----------------------------------------------------------------------------- helpers


def _shapes(batch: dict) -> str:
    return f"input_ids {tuple(batch['input_ids'].shape)}, labels {tuple(batch['labels'].shape)}"


def _native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (x86 AVX512-BF16 or AMX); True where torch cannot
    tell (other architectures, other torch builds), so that only a known emulation is warned about."""
    import platform

    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if platform.machine().lower() not in ("x86_64", "amd64") or None in checks:
        return True
    return any(check() for check in checks)
