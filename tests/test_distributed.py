"""Data parallelism is real: two gloo processes under torchrun reach the weights of one process that
accumulates the same global batch, and not those of a run that sees only half of each step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from txkit import runs
from txkit.averaging import load_weights
from txkit.recipe import load_recipe
from txkit.training import train

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "tests" / "recipes" / "tiny.yaml"
STEPS = 6


@pytest.fixture(scope="module")
def tokenizer(tokenizer_300) -> Path:
    return tokenizer_300


def _even_batch_budget(shared_data: Path, tokenizer: Path) -> int:
    """A max_tokens that cuts the recipe's data into an even number of batches per epoch.

    The comparison needs the same batches: shard r of 2 takes batches r, r+2, ... of the epoch's batch
    list, which one process walks through in order; when the list is odd, the sampler splits a batch to
    even the shards out and the two runs would see different batches.
    """
    from txkit.batching import TokenBatchSampler, TokenizedPairs
    from txkit.data import load_parallel, tokenize_dataset
    from txkit.tokenization import load_tokenizers

    recipe = load_recipe(RECIPE)
    src_tok, tgt_tok = load_tokenizers(tokenizer)
    pairs = load_parallel(shared_data / "multi30k" / "train", "en", "de").select(range(recipe.data.max_sentences))
    ids = TokenizedPairs(tokenize_dataset(pairs, src_tok, tgt_tok, max_len=recipe.data.max_len)[0])
    for max_tokens in range(384, 1024, 32):
        if len(TokenBatchSampler(ids.src_lengths, ids.tgt_lengths, max_tokens, seed=recipe.train.seed)) % 2 == 0:
            return max_tokens
    raise AssertionError("no batch budget gives an even number of batches")


def _overrides(tokenizer: Path, accumulation: int, max_tokens: int) -> list[str]:
    # No dropout: each process draws its own masks, so with dropout the runs would differ by design.
    return [f"tokenizer.path={tokenizer}", "model.dropout=0", f"train.max_steps={STEPS}",
            f"train.max_tokens={max_tokens}", f"train.accumulation={accumulation}", "train.eval_every_steps=0",
            "train.save_every_steps=0", "train.ema_decay=0.8",  # the weight EMA is kept alike on every process
            "data.valid_max_sentences=8", "train.log_every_steps=2"]  # fmt: skip


def _weights(run_dir: Path) -> dict:
    """The final checkpoint's trained weights and (as ema/NAME) its moving average."""
    checkpoint = run_dir / runs.CHECKPOINTS / runs.checkpoint_name(STEPS)
    ema = load_weights(checkpoint / runs.TRAINING_STATE / runs.EMA_DIR)
    return {**load_weights(checkpoint), **{f"ema/{name}": tensor for name, tensor in ema.items()}}


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_two_processes_match_one_process_with_the_same_global_batch(shared_data, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("TXKIT_DATA", str(shared_data))
    max_tokens = _even_batch_budget(shared_data, tokenizer)
    two = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "txkit", "train", str(RECIPE), "-o", str(two)]  # fmt: skip
    for item in _overrides(tokenizer, 1, max_tokens):
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TXKIT_DATA": str(shared_data)}
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    state = two / runs.CHECKPOINTS / runs.checkpoint_name(STEPS) / runs.TRAINING_STATE
    assert json.loads((state / "trainer_state.json").read_text())["world_size"] == 2
    assert (state / "rank-00000.pt").is_file() and (state / "rank-00001.pt").is_file()
    assert done.stdout.count("stopped at step") == 1  # one summary, from the main process

    # The same global batch in one process (same thread count as each torchrun worker).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_recipe(RECIPE, _overrides(tokenizer, 2, max_tokens)), tmp_path / "one-acc2")
        train(load_recipe(RECIPE, _overrides(tokenizer, 1, max_tokens)), tmp_path / "one-acc1")
    finally:
        torch.set_num_threads(threads)
    two_w, same_batch, half_batch = _weights(two), _weights(tmp_path / "one-acc2"), _weights(tmp_path / "one-acc1")
    # Tolerance: the two runs do the same arithmetic up to an exact factor. One process backpropagates
    # l_b / N for each batch and sums the two gradients; each of two processes backpropagates l_b * 2 / N
    # and DDP sums the two gradients and halves the sum. Scaling by 2 is exact in floating point and a
    # sum of two terms does not depend on their order, so the weights agree to the bit (observed: 0.0).
    # 1e-6 leaves room for a BLAS that splits reductions differently, far below the 1e-2 scale at which
    # a different global batch moves the weights (the control below).
    assert _max_difference(two_w, same_batch) <= 1e-6  # the trained weights and their EMA
    name = next(k for k in two_w if k.endswith("fc1.weight") and not k.startswith("ema/"))
    assert (two_w[name] - two_w[f"ema/{name}"]).abs().max().item() > 1e-3  # the EMA is not the weights
    # Control: one process with one batch per step (half the global batch) ends somewhere else, so the
    # match above is no accident of a forgiving tolerance.
    assert _max_difference(two_w, half_batch) > 1e-3
    # and the per-step losses logged by the 2-process run are those of the 1-process run
    def losses(run):
        records = map(json.loads, (run / runs.LOG_FILE).read_text().splitlines())
        return [r["train/loss"] for r in records if "train/loss" in r]

    assert losses(two) == pytest.approx(losses(tmp_path / "one-acc2"), rel=1e-6)


MIXTURE = "data.train=[{path: multi30k/train, weight: 3}, {path: multi30k/val, weight: 1}]"


def _even_mixture_budget(shared_data: Path, tokenizer: Path, sentences: int, epochs: int) -> int:
    """As _even_batch_budget, for two corpora mixed 3:1: every epoch the runs touch has an even number of batches
    (each epoch draws other pairs, so its batch count can differ)."""
    import numpy as np

    from txkit.batching import TokenizedPairs
    from txkit.data import load_parallel, tokenize_dataset
    from txkit.mixing import Mixture, make_mixed_sampler
    from txkit.tokenization import load_tokenizers

    src_tok, tgt_tok = load_tokenizers(tokenizer)
    lengths, sizes = [], []
    for name in ("train", "val"):
        ds = load_parallel(shared_data / "multi30k" / name, "en", "de").select(range(sentences))
        ids = TokenizedPairs(tokenize_dataset(ds, src_tok, tgt_tok, max_len=64)[0])
        lengths.append((ids.src_lengths, ids.tgt_lengths))
        sizes.append(len(ids))
    src, tgt = (np.concatenate([side[k] for side in lengths]) for k in (0, 1))
    for max_tokens in range(384, 1024, 32):
        sampler = make_mixed_sampler(Mixture(sizes, [3, 1], seed=1), src, tgt, max_tokens, seed=1)
        counts = []
        for _ in range(epochs):
            counts.append(len(sampler))
            list(sampler)
        if all(c % 2 == 0 for c in counts):
            return max_tokens
    raise AssertionError("no batch budget gives an even number of batches in every epoch")


def test_two_processes_mixing_two_corpora_match_one_process(shared_data, tokenizer, tmp_path, monkeypatch):
    """Every process draws the same pairs of each corpus per epoch and takes its shard of their batches: two gloo
    processes reach the weights of one process accumulating the same global batch, across epochs."""
    monkeypatch.setenv("TXKIT_DATA", str(shared_data))
    sentences = 40  # 80 pairs: a few batches an epoch, so 6 steps of 2 batches cross epochs
    max_tokens = _even_mixture_budget(shared_data, tokenizer, sentences, epochs=6)
    extra = [MIXTURE, f"data.max_sentences={sentences}"]
    two = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "txkit", "train", str(RECIPE), "-o", str(two)]  # fmt: skip
    for item in _overrides(tokenizer, 1, max_tokens) + extra:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TXKIT_DATA": str(shared_data)}
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_recipe(RECIPE, _overrides(tokenizer, 2, max_tokens) + extra), tmp_path / "one-acc2")
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in (two / runs.LOG_FILE).read_text().splitlines()]
    assert max(r.get("train/epoch", 0) for r in records) >= 1  # the runs crossed into a second epoch's draw
    assert _max_difference(_weights(two), _weights(tmp_path / "one-acc2")) <= 1e-6
