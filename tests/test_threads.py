"""The CPU thread count: training and decoding give bitwise the same results with 1 and 2 threads (so
txkit.threads.ThreadGovernor may change the count at any step), the governor's choices, and user settings."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from txkit.decoding import DecodeOptions, Translator, load_model
from txkit.errors import TxkitError
from txkit.recipe import load_recipe
from txkit.threads import ThreadGovernor, prepare_environment, user_thread_count
from txkit.train_setup import build_trainer


@pytest.fixture
def threads():
    """Sets torch's thread count inside a test and restores the suite's afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _trained_state(tokenizer: Path, data: Path, run: Path, pattern: list[int], set_threads) -> str:
    """Train len(pattern) steps, step i with pattern[i] threads; a hash of every weight and optimizer moment."""
    os.environ["TXKIT_DATA"] = str(data)
    recipe = load_recipe(None, [
        "model.preset=transformer-tiny", f"tokenizer.path={tokenizer}", "data.train=multi30k/train",
        "data.valid=", "data.max_sentences=600", "data.max_len=128", "train.max_tokens=3000",
        "train.clip_norm=1.0", "train.save_every_minutes=0", "train.log_every_steps=0",
    ])  # fmt: skip
    trainer = build_trainer(recipe, run)
    try:
        batches = list(trainer.sampler)
        assert len(batches) >= len(pattern)
        for count, batch in zip(pattern, batches):
            set_threads(count)
            assert trainer.train_step([batch])
        digest = hashlib.sha256()
        for _, tensor in sorted(trainer.unwrapped.state_dict().items()):
            digest.update(tensor.detach().contiguous().numpy().tobytes())
        for state in trainer.optimizer.optimizer.state.values():
            for value in state.values():
                digest.update(torch.as_tensor(value).detach().contiguous().numpy().tobytes())
        return digest.hexdigest()
    finally:
        trainer.close()


def test_training_steps_do_not_depend_on_the_thread_count(tokenizer_300, shared_data, tmp_path, threads):
    """Steps with 1 thread, with 2, and switching every step end bitwise equal (weights and Adam moments):
    the governor may switch at any step without changing the run. Without txkit.thread_stable the
    LayerNorm gradients differ between 1 and 2 threads and this fails."""
    one = _trained_state(tokenizer_300, shared_data, tmp_path / "one", [1, 1, 1, 1], threads)
    two = _trained_state(tokenizer_300, shared_data, tmp_path / "two", [2, 2, 2, 2], threads)
    mixed = _trained_state(tokenizer_300, shared_data, tmp_path / "mixed", [2, 1, 2, 1], threads)
    assert one == two == mixed


def test_importing_txkit_asks_mkl_for_thread_count_independent_products():
    """MKL splits a matrix product's summed dimension between threads on some CPUs (an Intel Xeon with AMX: the
    two tests around this one fail there without it); `import txkit` sets its strict reproducibility mode
    before MKL's first call, and leaves a mode the user chose."""
    import subprocess
    import sys

    code = "import os, txkit; print(os.environ['MKL_CBWR'])"
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "AUTO,STRICT"  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], env={**env, "MKL_CBWR": "COMPATIBLE"}, capture_output=True,
                          text=True, check=True).stdout.strip() == "COMPATIBLE"  # fmt: skip


def test_thread_stable_layer_norm_is_layer_norm(threads):
    """The replacement has nn.LayerNorm's forward and input gradient bitwise, and its weight and bias
    gradients up to the order of summation, with any thread count; its own gradients are the same bits
    with 1 and 2 threads."""
    from txkit.thread_stable import make_thread_stable

    torch.manual_seed(0)
    plain = torch.nn.LayerNorm(64)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-0.5, 0.5)
    stable = torch.nn.LayerNorm(64)
    stable.load_state_dict(plain.state_dict())
    assert make_thread_stable(stable) == 1 and make_thread_stable(stable) == 0  # once only
    x = torch.randn(37, 29, 64) * 3 + 1
    grad = torch.randn(37, 29, 64)

    def run(module, count):
        threads(count)
        module.zero_grad()
        xi = x.clone().requires_grad_(True)
        out = module(xi)
        out.backward(grad)
        return out.detach(), xi.grad, module.weight.grad.clone(), module.bias.grad.clone()

    reference = run(plain, 1)
    one, two = run(stable, 1), run(stable, 2)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert torch.equal(one[0], reference[0]) and torch.equal(one[1], reference[1])
    torch.testing.assert_close(one[2:], reference[2:], rtol=1e-5, atol=1e-4)
    assert sorted(stable.state_dict()) == sorted(plain.state_dict())


def test_translations_do_not_depend_on_the_thread_count(trained_model, shared_data, threads):
    model, src_tok, tgt_tok = load_model(trained_model, device="cpu")
    lines = (shared_data / "multi30k" / "test2016.en").read_text(encoding="utf-8").splitlines()[:24]
    found = []
    for count in (1, 2):
        threads(count)
        found.append(Translator(model, src_tok, tgt_tok, DecodeOptions(nbest=2)).translate_hypotheses(lines))
    for one, two in zip(*found):  # the same translations; scores within float rounding (row-wise reductions
        assert [h.tokens for h in one] == [h.tokens for h in two]  # over the vocabulary split by thread)
        assert [h.score for h in one] == pytest.approx([h.score for h in two], abs=1e-5)


def test_translator_with_a_governor_gives_the_same_translations(trained_model, shared_data, threads):
    model, src_tok, tgt_tok = load_model(trained_model, device="cpu")
    lines = (shared_data / "multi30k" / "test2016.en").read_text(encoding="utf-8").splitlines()[:40]
    threads(1)
    plain = Translator(model, src_tok, tgt_tok, DecodeOptions(max_sentences=4)).translate_hypotheses(lines)
    governor = ThreadGovernor(2, probe_every=2, warmup=0)
    governed = Translator(model, src_tok, tgt_tok, DecodeOptions(max_sentences=4), governor=governor)
    for one, two in zip(governed.translate_hypotheses(lines), plain):
        assert [h.tokens for h in one] == [h.tokens for h in two]
    assert governor.units == 10 and governor.cost[1] is not None and governor.cost[2] is not None


class _Machine:
    """A simulated CPU: seconds per token for each thread count, idle or next to a competitor."""

    SPEED = {False: {2: 1 / 3670, 1: 1 / 2028}, True: {2: 1 / 1240, 1: 1 / 1997}}  # README's measurements

    def __init__(self):
        self.busy = False

    def run(self, governor: ThreadGovernor, steps: int, tokens: int = 3000) -> list[int]:
        counts = []
        for _ in range(steps):
            count = governor.choose()
            governor.record(tokens, tokens * self.SPEED[self.busy][count])
            counts.append(count)
        return counts


def test_governor_follows_the_machine(threads):
    """Idle: two threads; a competitor arrives: one thread within three steps; it leaves: two again within a
    probe interval. Probes cost one unit in `probe_every`."""
    machine, governor = _Machine(), ThreadGovernor(2, probe_every=24, warmup=2)
    counts = machine.run(governor, 100)
    assert counts[:2] == [2, 2] and counts[3] == 1  # warm-up, first measurement, first probe
    assert governor.current == 2 and counts[50:].count(2) >= 96 // 2 - 4
    machine.busy = True  # 2 spinning threads become 3x slower: probed after two slow steps, not 24
    counts = machine.run(governor, 100)
    assert governor.current == 1 and counts[3:].count(1) >= 97 - 4
    machine.busy = False
    counts = machine.run(governor, 100)
    assert governor.current == 2 and counts[30:].count(2) >= 70 - 4
    assert governor.switches == 2


def test_governor_needs_a_clear_gain_to_switch(threads):
    governor = ThreadGovernor(2, probe_every=4, warmup=0, margin=1.15)
    for _ in range(40):  # the other count only 10% faster: no switch
        count = governor.choose()
        governor.record(100, 1.0 if count == 2 else 0.9)
    assert governor.current == 2 and governor.switches == 0


def test_a_user_set_count_turns_the_governor_off(threads, monkeypatch):
    monkeypatch.setenv("TXKIT_THREADS", "1")
    assert ThreadGovernor.create() is None and torch.get_num_threads() == 1
    monkeypatch.delenv("TXKIT_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads(2)
    governor = ThreadGovernor.create()
    assert governor is not None and governor.counts == (2, 1)
    assert ThreadGovernor.create(explicit=1) is None and torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "two")
    with pytest.raises(TxkitError, match="OMP_NUM_THREADS='two'"):
        user_thread_count()


def test_prepare_environment_maps_txkit_threads_and_leaves_the_wait_policy():
    env = {"TXKIT_THREADS": "3"}
    assert prepare_environment(env) == {"OMP_NUM_THREADS": "3"} and "OMP_WAIT_POLICY" not in env
    env = {"TXKIT_THREADS": "3", "OMP_NUM_THREADS": "2"}
    assert prepare_environment(env) == {} and env["OMP_NUM_THREADS"] == "2"
    env = {"TXKIT_THREADS": "abc"}  # not handed to OpenMP (which would complain on its own); reported by txkit
    assert prepare_environment(env) == {} and "OMP_NUM_THREADS" not in env
