"""txkit.training on the CPU: a small recipe trains on a slice of Multi30k, checkpoints, validates,
resumes exactly after an interruption (a debugging stop and a real SIGKILL); schedules; errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from txkit import runs
from txkit.averaging import load_weights
from txkit.batching import TokenBatchSampler
from txkit.errors import TxkitError
from txkit.pipeline import training_hooks
from txkit.recipe import load_recipe
from txkit.schedule import build_optimizer, build_scheduler, learning_rate, training_flops
from txkit.train_setup import build_trainer
from txkit.training import Trainer, train

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "tests" / "recipes" / "tiny.yaml"


@pytest.fixture(scope="module")
def data_env(shared_data):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TXKIT_DATA", str(shared_data))
        yield shared_data


@pytest.fixture(scope="module")
def trained_run(data_env, tmp_path_factory):
    """The test recipe as written: 20 updates, builds its tokenizer, validates and saves every 10."""
    run_dir = tmp_path_factory.mktemp("train") / "run"
    result = train(load_recipe(RECIPE), run_dir, hooks=training_hooks())
    return run_dir, result


VARIANTS = {
    "plain": [],
    "ema": ["train.ema_decay=0.9"],
    # 60 pairs: about 4 updates an epoch, so the run crosses epochs and each gets its own BPE-dropout segmentation
    "bpe-dropout": ["tokenizer.dropout=0.1", "data.max_sentences=60"],
    # two corpora mixed 3:1 (txkit/mixing.py), 2 x 30 pairs: the run crosses epochs, each drawing its own pairs;
    # once more with BPE-dropout, whose epochs are segmented afresh from the drawn pairs
    "mixture": ["data.train=[{path: multi30k/train, weight: 3}, {path: multi30k/val, weight: 1}]",
                "data.max_sentences=30"],
    "mixture-bpe-dropout": ["data.train=[{path: multi30k/train, weight: 3}, {path: multi30k/val, weight: 1}]",
                            "data.max_sentences=30", "tokenizer.dropout=0.1"],
    # bf16 autocast on the CPU, with its written-out attention (txkit.training): resumes exactly too
    "bf16": ["train.mixed_precision=bf16"],
    # batches padded to their longest pair only (not to a multiple of 8): other batches, resumed exactly too
    "pad-1": ["train.pad_to_multiple_of=1"],
}


def _resume_overrides(tokenizer: Path, variant: str = "plain") -> list[str]:
    # dropout stays on (0.1): exact resumption needs the dropout RNG restored
    return [f"tokenizer.path={tokenizer}", "train.max_steps=12", "train.save_every_steps=4", "train.keep_last=0",
            "train.eval_every_steps=0", "train.log_every_steps=1"] + VARIANTS[variant]  # fmt: skip


@pytest.fixture(scope="module", params=list(VARIANTS))
def reference_run(trained_run, tmp_path_factory, request):
    """An uninterrupted 12-update run, the yardstick of the resume tests (plain, with weight EMA, with BPE-dropout)."""
    from accelerate.state import AcceleratorState

    tokenizer = trained_run[0] / "tokenizer"
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    AcceleratorState._reset_state()  # trained_run may have set up float32 just before, in this test's setup
    train(load_recipe(RECIPE, _resume_overrides(tokenizer, request.param)), run_dir)
    return run_dir, tokenizer, request.param


def _final_weights(run_dir: Path, step: int = 12) -> dict:
    """The trained weights of the checkpoint at `step`, and its EMA weights when it has them."""
    checkpoint = run_dir / runs.CHECKPOINTS / runs.checkpoint_name(step)
    weights = load_weights(checkpoint)
    ema = checkpoint / runs.TRAINING_STATE / runs.EMA_DIR
    if ema.is_dir():
        weights.update({f"ema/{name}": tensor for name, tensor in load_weights(ema).items()})
    return weights


def _assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs by {(a[name] - b[name]).abs().max().item()}"


def _train_records(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in runs.read_log(run_dir / runs.LOG_FILE) if "train/loss" in r}


# ----------------------------------------------------------------------------- a whole run


def test_small_recipe_trains_checkpoints_and_validates(trained_run):
    run_dir, result = trained_run
    assert result.step == 20 and result.stop_reason == "max_steps"
    records = runs.read_log(run_dir / runs.LOG_FILE)
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 4  # log_every_steps 5
    assert losses[-1] < losses[0] - 0.5, losses  # the loss falls
    for r in records:
        if "train/loss" in r:
            assert r["train/src_tok_per_s"] > 0 and r["train/tgt_tok_per_s"] > 0 and r["train/lr"] > 0
    validations = [r for r in records if "val/loss" in r]
    assert [r["step"] for r in validations] == [10, 20]
    assert validations[-1]["val/loss"] < validations[0]["val/loss"]
    for r in validations:  # (the BLEU itself: test_checkpoint_translates_like_txkit_translate)
        assert "val/bleu" in r and r["val/ppl"] == pytest.approx(math.exp(r["val/nll_loss"]))

    # keep_last 2 keeps both; a checkpoint is a full model folder plus the training state
    checkpoints = runs.list_checkpoints(run_dir)
    assert [c.name for c in checkpoints] == ["checkpoint-00000010", "checkpoint-00000020"]
    last = checkpoints[-1]
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (last / name).is_file(), name
    state = last / runs.TRAINING_STATE
    for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json", "rank-00000.pt"):
        assert (state / name).is_file(), name
    assert json.loads((state / "trainer_state.json").read_text())["step"] == 20
    generation = json.loads((last / "generation_config.json").read_text())
    assert generation["num_beams"] == 2 and generation["decoder_start_token_id"] == 0
    assert not list((run_dir / runs.CHECKPOINTS).glob("*.tmp"))
    # and carries a model card whose metadata parses and names the run's languages
    from huggingface_hub import ModelCard

    card = ModelCard.load(last / "README.md")
    assert "translation" in card.data.tags and "txkit" in card.data.tags
    assert card.data.language == ["en", "de"]

    # the tokenizer the recipe names did not exist: it was built first, in the run directory
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()
    assert not list(run_dir.glob("tokenizer.*"))  # no temporary folders left
    # the best checkpoint by BLEU, the resolved recipe, TensorBoard
    assert runs.is_model_dir(run_dir / runs.BEST) and result.best_dir == run_dir / runs.BEST
    assert load_recipe(run_dir / runs.RECIPE_FILE) == load_recipe(RECIPE)
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))


def test_checkpoint_translates_like_txkit_translate(trained_run, data_env, tmp_path, capsys):
    """Validation translates as `txkit translate` does: the BLEU logged at step 20 is sacreBLEU's score of what
    `txkit translate` outputs with that step's checkpoint for the validation sentences (recipe: the first
    40 of multi30k/val, beam 2, source + 10)."""
    import sacrebleu

    from txkit.decoding import translate_lines

    run_dir, _ = trained_run
    checkpoint = run_dir / runs.CHECKPOINTS / runs.checkpoint_name(20)
    sources = (data_env / "multi30k" / "val.en").read_text(encoding="utf-8").splitlines()[:40]
    refs = (data_env / "multi30k" / "val.de").read_text(encoding="utf-8").splitlines()[:40]
    (tmp_path / "val.en").write_text("\n".join(sources) + "\n", encoding="utf-8")
    args = ["translate", checkpoint, "-i", tmp_path / "val.en", "-o", tmp_path / "hyp.de", "-b", "2", "--max-len-b", "10"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    hyps = (tmp_path / "hyp.de").read_text(encoding="utf-8").splitlines()
    assert hyps == translate_lines(checkpoint, sources, beam_size=2, max_len_b=10)
    assert len(hyps) == 40  # (20 updates of this tiny model mostly end at once: see the next test for BLEU)
    (logged,) = [r["val/bleu"] for r in runs.read_log(run_dir / runs.LOG_FILE) if r["step"] == 20 and "val/bleu" in r]
    assert logged == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)


@pytest.mark.parametrize("lowercase", [False, True])
def test_validation_bleu_is_sacrebleus_with_the_recipes_case_and_tokenizer(data_env, lowercase):
    """The BLEU that training logs comes from the hook `txkit train` and `txkit run` hand it: sacreBLEU on the
    recipe's eval.lowercase and eval.tokenize (on real sentences, where case changes the score)."""
    import sacrebleu

    refs = (data_env / "multi30k" / "val.de").read_text(encoding="utf-8").splitlines()[:200]
    hyps = [" ".join(line.lower().split()[:-1]) if i % 3 else line for i, line in enumerate(refs)]
    section = load_recipe(RECIPE, [f"eval.lowercase={str(lowercase).lower()}", "eval.tokenize=intl"]).eval
    got = training_hooks().bleu(hyps, refs, section)
    assert got == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], lowercase=lowercase, tokenize="intl").score)
    assert 20 < got < 100 and got != pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], lowercase=not lowercase).score)


def test_existing_run_needs_resume(trained_run):
    run_dir, _ = trained_run
    with pytest.raises(TxkitError, match="--resume"):
        train(load_recipe(RECIPE), run_dir)


# ----------------------------------------------------------------------------- exact resumption


def test_stop_and_resume_gives_the_uninterrupted_run(reference_run, tmp_path):
    reference, tokenizer, variant = reference_run
    run_dir = tmp_path / "run"
    # stop after update 6; the last checkpoint is at 4, so updates 5 and 6 are done twice
    first = train(load_recipe(RECIPE, _resume_overrides(tokenizer, variant) + ["train.stop_after_steps=6"]), run_dir)
    assert first.stop_reason == "stop_after_steps" and runs.latest_checkpoint(run_dir).name == "checkpoint-00000004"
    assert max(_train_records(run_dir)) == 6
    second = train(load_recipe(RECIPE, _resume_overrides(tokenizer, variant)), run_dir, resume=True)
    assert second.step == 12
    final = _final_weights(run_dir)
    assert any(name.startswith("ema/") for name in final) == (variant == "ema")
    _assert_same_weights(final, _final_weights(reference))
    # the log reads as one run: same steps, same losses and learning rates
    mine, theirs = _train_records(run_dir), _train_records(reference)
    assert sorted(mine) == list(range(1, 13))
    if variant not in ("plain", "ema", "bf16", "pad-1"):  # the resumed part crossed epochs, segmented or drawn afresh
        assert mine[6]["train/epoch"] >= 1 and mine[12]["train/epoch"] >= 2
    for step in mine:
        assert mine[step]["train/loss"] == theirs[step]["train/loss"], step
        assert mine[step]["train/lr"] == theirs[step]["train/lr"], step


def test_killed_run_resumes_to_the_same_weights(reference_run, tmp_path):
    reference, tokenizer, variant = reference_run
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "txkit", "train", str(RECIPE), "-o", str(run_dir)]
    for item in _resume_overrides(tokenizer, variant):
        command += ["--set", item]
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = run_dir / runs.CHECKPOINTS / runs.checkpoint_name(4)
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert still_running, f"the run ended before it could be killed: {err.decode()[-2000:]}"
    latest = runs.latest_checkpoint(run_dir)
    assert latest is not None and runs.checkpoint_step(latest) < 12
    assert (latest / runs.TRAINING_STATE / "trainer_state.json").is_file()  # complete, never half-written

    result = train(load_recipe(RECIPE, _resume_overrides(tokenizer, variant)), run_dir, resume=True)
    assert result.step == 12
    final = _final_weights(run_dir)
    assert any(name.startswith("ema/") for name in final) == (variant == "ema")
    _assert_same_weights(final, _final_weights(reference))
    assert not list((run_dir / runs.CHECKPOINTS).glob("*.tmp"))


def test_ema_weights_follow_their_formula_and_are_what_validation_saw(reference_run):
    """The EMA run's checkpoints hold decay * previous + (1 - decay) * trained weights, and RUN/best (picked by
    the final validation, at step 12) is the EMA, not the trained weights."""
    reference, _, variant = reference_run
    if variant != "ema":
        pytest.skip("the EMA variant checks this")
    folder = reference / runs.CHECKPOINTS
    ema_at = {s: load_weights(folder / runs.checkpoint_name(s) / runs.TRAINING_STATE / runs.EMA_DIR) for s in (8, 12)}
    trained_12 = load_weights(folder / runs.checkpoint_name(12))
    best = load_weights(reference / runs.BEST)
    _assert_same_weights(best, ema_at[12])
    name = next(n for n in trained_12 if n.endswith("fc1.weight"))
    assert not torch.equal(ema_at[12][name], trained_12[name])
    # a share (the product of the decays of updates 9-12, each below 0.9 in the warm-up) of the EMA at step 8
    # carries over to step 12; the rest is a mix of the trained weights in between, so the EMA lies closer to
    # the trained weights at 12 than the EMA at 8 did
    assert (ema_at[12][name] - trained_12[name]).abs().mean() < (ema_at[8][name] - trained_12[name]).abs().mean()


@pytest.mark.parametrize("final_weights", ["ema", "trained"])
def test_txkit_run_averages_what_eval_final_weights_says(reference_run, tmp_path, final_weights):
    """txkit run's averaging stage on the EMA run: the mean of the last checkpoints' EMA weights (or of their
    trained weights with eval.final_weights: trained)."""
    import shutil

    from txkit.pipeline import RunMarkers, stage_average

    reference, tokenizer, variant = reference_run
    if variant != "ema":
        pytest.skip("the EMA variant checks this")
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    overrides = _resume_overrides(tokenizer, "ema") + ["eval.average_last=2", f"eval.final_weights={final_weights}"]
    run = RunMarkers(load_recipe(RECIPE, overrides), run_dir, echo=lambda _: None)
    run.fingerprints["train"] = "trained"
    stage_average(run)
    folder = run_dir / runs.CHECKPOINTS
    sub = (runs.TRAINING_STATE, runs.EMA_DIR) if final_weights == "ema" else ()
    a, b = (load_weights(folder.joinpath(runs.checkpoint_name(s), *sub)) for s in (8, 12))
    averaged = load_weights(run_dir / runs.FINAL_MODEL)
    assert averaged.keys() == a.keys()
    for name in a:
        expected = ((a[name].double() + b[name].double()) / 2).float()
        assert torch.equal(averaged[name], expected), name


def test_weight_ema_update_swap_and_reload(tmp_path):
    """WeightEMA on a tied txkit model: the update formula, a swap that gives the weights back bit for bit, and
    a reload from the model folder a checkpoint writes."""
    from txkit.ema import WeightEMA
    from txkit.modeling import TxkitConfig, TxkitForConditionalGeneration

    torch.manual_seed(0)
    model = TxkitForConditionalGeneration(TxkitConfig(vocab_size=50, d_model=16, attention_heads=2, ffn_dim=32,
                                                      encoder_layers=1, decoder_layers=1))  # fmt: skip
    ema = WeightEMA(model, 0.75)
    params = dict(model.named_parameters())
    # the decay warms up as Marian's: min(decay, (1 + t) / (10 + t)) at update t, the recipe's decay from t = 26
    assert [ema.decay_at(t) for t in (1, 8, 25, 26, 1000)] == [2 / 11, 0.5, 26 / 35, 0.75, 0.75]
    for step, decay in ((1, 2 / 11), (100, 0.75)):
        start = {n: p.detach().clone() for n, p in ema.shadow.items()}
        with torch.no_grad():
            for p in params.values():
                p.add_(1.0)
        ema.update(step)
        for n, p in params.items():
            assert torch.allclose(ema.shadow[n], decay * start[n] + (1 - decay) * p.detach(), atol=1e-6), (step, n)
    trained = {n: p.detach().clone() for n, p in params.items()}
    with ema.swapped_in():
        assert all(torch.equal(p, ema.shadow[n]) for n, p in params.items())
        model.save_pretrained(tmp_path / "ema")
    assert all(torch.equal(p, trained[n]) for n, p in params.items())
    again = WeightEMA(model, 0.75)
    again.load_folder(tmp_path / "ema")
    assert again.shadow.keys() == ema.shadow.keys()
    assert all(torch.equal(again.shadow[n], ema.shadow[n]) for n in ema.shadow)
    assert all(torch.equal(p, trained[n]) for n, p in params.items())


def test_early_stopping_after_patience_validations(trained_run, tmp_path):
    tokenizer = trained_run[0] / "tokenizer"
    # a learning rate too small to change any translation: BLEU stays put, so no validation after the
    # first improves on it, and the run stops after `patience` of them
    overrides = [f"tokenizer.path={tokenizer}", "train.lr=1e-9", "train.eval_every_steps=1", "train.patience=2",
                 "train.save_every_steps=0", "data.valid_max_sentences=10"]  # fmt: skip
    result = train(load_recipe(RECIPE, overrides), tmp_path / "run", hooks=training_hooks())
    assert result.stop_reason == "early_stopping" and result.step == 3
    best = json.loads((tmp_path / "run" / runs.BEST / "val_metrics.json").read_text())
    assert best["step"] == 1 and best["val/bleu"] == result.best_score
    assert runs.latest_checkpoint(tmp_path / "run").name == "checkpoint-00000003"  # the final state is saved


# ----------------------------------------------------------------------------- padding multiple


@pytest.mark.parametrize("multiple", [1, 8])
def test_batches_are_padded_to_the_recipes_multiple_and_fill_max_tokens(trained_run, tmp_path, multiple):
    """train.pad_to_multiple_of sets the width of every batch the model sees, in training and validation; the
    sampler packs by that width, so with 1 an epoch has fewer, fuller batches within the same max_tokens."""
    tokenizer = trained_run[0] / "tokenizer"
    overrides = [f"tokenizer.path={tokenizer}", f"train.pad_to_multiple_of={multiple}"]
    trainer = build_trainer(load_recipe(RECIPE, overrides), tmp_path / "run")
    try:
        seen = []  # (input_ids, labels) shapes and the batch's longest source and target
        hook = trainer.unwrapped.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append((kwargs["input_ids"].shape, kwargs["labels"].shape,
                                                      int(kwargs["attention_mask"].sum(1).max()),
                                                      int(kwargs["labels"].ne(-100).sum(1).max()))),
            with_kwargs=True,
        )  # fmt: skip
        batches = list(trainer.sampler)
        for idx in batches[:6]:
            assert trainer.train_step([idx])
        trainer.validate()
        hook.remove()
        assert len(seen) == 6 + len(trainer.valid_batches)
        for (b, s), (b2, t), longest_src, longest_tgt in seen:
            assert b == b2 and max(s, t) * b <= max(trainer.recipe.train.max_tokens, s, t)
            assert s == -(-longest_src // multiple) * multiple and t == -(-longest_tgt // multiple) * multiple
        if multiple == 1:
            assert any(s % 8 for (_, s), *_ in seen)  # widths that 8 would have rounded up
        # the epoch's batches hold every pair once; fewer of them when less of each batch is padding
        pairs = sorted(i for idx in batches for i in idx)
        assert pairs == list(range(len(trainer.pairs)))
        max_tokens = trainer.recipe.train.max_tokens
        eight = TokenBatchSampler(trainer.pairs.src_lengths, trainer.pairs.tgt_lengths, max_tokens, seed=1)
        assert (len(batches) < len(eight)) if multiple == 1 else (len(batches) == len(eight))
    finally:
        trainer.close()


def test_pad_to_multiple_of_below_one_is_a_recipe_error(capsys, tmp_path, data_env):
    err = _cli_error(capsys, RECIPE, "--set", "train.pad_to_multiple_of=0", "-o", tmp_path / "run")
    assert err == f"error: {RECIPE}: train.pad_to_multiple_of must be at least 1"


# ----------------------------------------------------------------------------- a non-finite step


def test_nan_step_is_skipped_and_counted(trained_run, tmp_path, capfd):
    tokenizer = trained_run[0] / "tokenizer"
    trainer = build_trainer(load_recipe(RECIPE, [f"tokenizer.path={tokenizer}", "model.dropout=0"]), tmp_path / "run")
    try:
        batches = list(trainer.sampler)[:2]
        assert trainer.train_step([batches[0]])
        weight = trainer.unwrapped.model.shared.weight
        before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters()}
        saved = weight.data[5, 0].item()
        weight.data[5, 0] = float("nan")  # every logit row now contains a NaN: the loss is NaN
        assert not trainer.train_step([batches[1]])
        err = capfd.readouterr().err
        assert "step 2: loss nan" in err and "input_ids (" in err and "skipped" in err
        assert trainer.state.skipped_steps == 1 and trainer.state.step == 1
        weight.data[5, 0] = saved
        for name, param in trainer.unwrapped.named_parameters():  # nothing was applied
            assert torch.equal(param, before[name]), name
        assert trainer.train_step([batches[1]]) and trainer.state.step == 2  # and training goes on
    finally:
        trainer.close()


# ----------------------------------------------------------------------------- schedule and FLOPs


def test_noam_schedule_gives_the_papers_values():
    # lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), d_model 512, warmup 4000
    assert learning_rate(1) == pytest.approx(512**-0.5 * 4000**-1.5)
    assert learning_rate(1000) == pytest.approx(1.746928e-4, rel=1e-6)
    assert learning_rate(4000) == pytest.approx(6.987712e-4, rel=1e-6)  # the peak
    assert learning_rate(16000) == pytest.approx(3.493856e-4, rel=1e-6)
    assert learning_rate(100000) == pytest.approx(1.397542e-4, rel=1e-6)
    assert learning_rate(4000, d_model=1024) == pytest.approx(4.941059e-4, rel=1e-6)
    # noam is inverse_sqrt with peak d^-0.5 * warmup^-0.5
    peak = 512**-0.5 * 4000**-0.5
    for step in (1, 100, 3999, 4000, 4001, 50000):
        assert learning_rate(step, "inverse_sqrt", lr=peak) == pytest.approx(learning_rate(step))


def test_decay_schedules_reach_min_lr():
    kw = dict(warmup_steps=10, lr=1e-3, min_lr=1e-5, max_steps=110)
    for name in ("linear", "cosine"):
        assert learning_rate(5, name, **kw) == pytest.approx(5e-4)
        assert learning_rate(10, name, **kw) == pytest.approx(1e-3)
        assert learning_rate(60, name, **kw) == pytest.approx((1e-3 + 1e-5) / 2)
        assert learning_rate(110, name, **kw) == pytest.approx(1e-5)
        assert learning_rate(500, name, **kw) == pytest.approx(1e-5)


def test_scheduler_gives_the_first_update_lr_of_step_one():
    model = torch.nn.Linear(4, 4)
    train_section = load_recipe(None).train
    optimizer = build_optimizer(model, train_section)
    scheduler = build_scheduler(optimizer, train_section, d_model=512)
    seen = []
    for _ in range(3):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([learning_rate(1), learning_rate(2), learning_rate(3)])
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-9


def test_training_flops_is_six_times_parameters_per_token():
    from txkit.modeling import TxkitConfig, TxkitForConditionalGeneration

    config = TxkitConfig(vocab_size=500, d_model=32, attention_heads=4, ffn_dim=64, encoder_layers=2, decoder_layers=3)
    params = sum(p.numel() for p in TxkitForConditionalGeneration(config).parameters())
    # one source and one target token: every parameter is used once per token pair, attention is one pair
    attention = 12 * 32 * (2 + 3 + 3)
    assert training_flops(config, [1], [1]) == 6 * params + attention


# ----------------------------------------------------------------------------- one-line errors


def _cli_error(capsys, *args) -> str:
    code, _, err = run_cli(["train", *args], capsys)
    assert code == 2
    err = err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_recipe_key_is_one_line(capsys, tmp_path, data_env):
    err = _cli_error(capsys, RECIPE, "--set", "train.max_stpes=3", "-o", tmp_path / "run")
    assert err == "error: --set: unknown key 'train.max_stpes' (did you mean 'train.max_steps'?)"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  warmup: 400\n")
    err = _cli_error(capsys, bad, "-o", tmp_path / "run")
    assert err == f"error: {bad}: unknown key 'train.warmup' (did you mean 'train.warmup_steps'?)"


def test_missing_data_file_is_one_line(capsys, tmp_path, data_env):
    err = _cli_error(capsys, RECIPE, "--set", "data.train=multi30k/trian", "-o", tmp_path / "run")
    assert err.startswith("error: data.train: data file not found: ")
    assert str(data_env / "multi30k" / "trian.en") in err and "TXKIT_DATA" in err
    assert not (tmp_path / "run").exists()


def test_unwritable_output_dir_is_one_line(capsys, tmp_path, data_env):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = _cli_error(capsys, RECIPE, "-o", blocker / "run")
    assert err.startswith(f"error: cannot write to output directory {blocker / 'run'}: ")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        err = _cli_error(capsys, RECIPE, "-o", locked / "run")
        assert "Permission denied" in err


# ----------------------------------------------------------------------------- the trainer on hand-made parts


def test_trainer_steps_on_hand_made_components_and_its_state_round_trips(tmp_path):
    """A Trainer built from a model, tokenizer stand-ins, a two-pair batch and an optimizer made here (no
    recipe file, no corpus): each step applies one update, counts its tokens, and the loss of a fixed batch
    falls; the state survives state_dict()/load_state_dict()."""
    from accelerate import Accelerator
    from datasets import Dataset

    from txkit.batching import TokenBatchSampler, TokenizedPairs
    from txkit.modeling import TxkitConfig, TxkitForConditionalGeneration
    from txkit.train_state import TrainState, new_interval
    from txkit.training import TrainComponents

    recipe = load_recipe(None, ["train.lr_schedule=inverse_sqrt", "train.lr=0.01", "train.warmup_steps=1",
                                "train.clip_norm=1.0"])  # fmt: skip
    torch.manual_seed(0)
    config = TxkitConfig(vocab_size=16, d_model=16, attention_heads=2, ffn_dim=32, encoder_layers=1,
                         decoder_layers=1, dropout=0.0, label_smoothing=0.0)  # fmt: skip
    model = TxkitForConditionalGeneration(config)
    pairs = TokenizedPairs(Dataset.from_dict({"input_ids": [[5, 6, 7, 2], [8, 9, 2]], "labels": [[10, 11, 2], [12, 2]]}))
    sampler = TokenBatchSampler(pairs.src_lengths, pairs.tgt_lengths, 64, seed=1, shuffle=False)
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, build_optimizer(model, recipe.train))
    scheduler = build_scheduler(optimizer.optimizer, recipe.train, config.d_model)
    components = TrainComponents(model=model, optimizer=optimizer, scheduler=scheduler, src_tok=None, tgt_tok=None,
                                 pairs=pairs, sampler=sampler)  # fmt: skip
    trainer = Trainer(recipe, tmp_path, accelerator, components)
    try:
        before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters()}
        losses = []
        for step in range(1, 31):
            assert trainer.train_step([[0, 1]])
            interval = trainer.state.interval
            losses.append(interval["loss"] / interval["tgt"])
            trainer.state.interval = new_interval()  # as the training log does after each line
            assert trainer.state.step == step and trainer.state.tokens_tgt == 5 * step  # 3 + 2 target tokens
        assert trainer.state.tokens_src == 7 * 30 and trainer.state.skipped_steps == 0
        assert any(not torch.equal(p, before[n]) for n, p in trainer.unwrapped.named_parameters())
        assert losses[-1] < 0.5 * losses[0], losses  # it learns the batch by heart
        restored = TrainState()
        restored.load_state_dict(trainer.state.state_dict())
        assert restored == trainer.state
    finally:
        trainer.close()


@pytest.mark.parametrize("beam_size", [1, 4])
def test_the_saved_generation_config_is_valid_for_any_beam(tokenizer_300, shared_data, tmp_path, beam_size):
    """eval.beam_size=1 (greedy) with the default alpha used to crash at the first checkpoint: transformers
    refuses to save a GenerationConfig with a length penalty and no beams."""
    from transformers import GenerationConfig

    os.environ["TXKIT_DATA"] = str(shared_data)
    recipe = load_recipe(None, [
        "model.preset=transformer-tiny", f"tokenizer.path={tokenizer_300}", "data.train=multi30k/train",
        "data.valid=", "data.max_sentences=50", f"eval.beam_size={beam_size}", "train.save_every_minutes=0",
    ])  # fmt: skip
    trainer = build_trainer(recipe, tmp_path / "run")
    try:
        saved = trainer.save()
    finally:
        trainer.close()
    config = GenerationConfig.from_pretrained(saved)
    assert config.num_beams == beam_size
    assert config.length_penalty == (0.6 if beam_size > 1 else GenerationConfig().length_penalty)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_cpu_bf16_training_writes_attention_out_and_saves_no_such_choice(tokenizer_300, data_env, tmp_path,
                                                                         monkeypatch, capfd, precision):
    """torch's fused CPU attention has a slow bf16 backward, so CPU bf16 training steps call the written-out
    attention instead (float32 keeps the fused one); the choice stays out of the checkpoint's config, so the
    saved model loads with the default attention. On a CPU without bf16 instructions (made so here) bf16
    training warns that it is emulated. Both train with the fused AdamW; only float32 (whose thread count may
    change) with the thread-count-independent LayerNorm backward."""
    import torch.nn.functional as F
    from transformers import AutoConfig

    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, check, lambda: False)
    calls = []
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or fused(*a, **k))
    recipe = load_recipe(None, [
        "model.preset=transformer-tiny", f"tokenizer.path={tokenizer_300}", "data.train=multi30k/train",
        "data.valid=", "data.max_sentences=200", "train.max_tokens=2000", "train.save_every_minutes=0",
        "train.log_every_steps=0", f"train.mixed_precision={precision}",
    ])  # fmt: skip
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # a count the user set turns the governor off anyway
    monkeypatch.delenv("TXKIT_THREADS", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a thread governor only exists with two threads or more
    if precision == "bf16":  # without a governor a count the user sets still applies
        torch.set_num_threads(1)
        monkeypatch.setenv("TXKIT_THREADS", "2")
    try:
        trainer = build_trainer(recipe, tmp_path / "run")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    try:
        # bf16 products are not thread-count independent: a bf16 run keeps its count (no governor), so it needs
        # no thread-count-independent LayerNorm backward (txkit.thread_stable) and keeps torch's faster one
        assert (trainer.governor is None) == (precision == "bf16")
        norms = [m for m in trainer.unwrapped.modules() if isinstance(m, torch.nn.LayerNorm)]
        assert norms and all(("forward" in vars(m)) == (precision == "no") for m in norms)
        # and on a CPU, torch's fused AdamW: one kernel instead of a Python loop over the parameters
        assert all(group["fused"] for group in trainer.optimizer.optimizer.param_groups)
        trainer.governor = None  # the steps below keep the suite's one thread
        assert trainer.train_step([next(iter(trainer.sampler))])
        assert bool(calls) == (precision == "no")
        saved = json.loads((trainer.save() / "config.json").read_text())
    finally:
        trainer.close()
    emulated = "warning: train.mixed_precision=bf16 on a CPU without bf16 instructions" in capfd.readouterr().err
    assert emulated == (precision == "bf16")
    assert not [key for key in saved if "attn_implementation" in key], saved
    loaded = AutoConfig.from_pretrained(tmp_path / "run" / runs.CHECKPOINTS / runs.checkpoint_name(1),
                                        trust_remote_code=True)
    assert loaded._attn_implementation != "eager"
