"""txkit.averaging and `txkit average`: real model folders written by save_pretrained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from txkit import runs
from txkit.averaging import average_checkpoints, last_checkpoints, load_weights
from txkit.errors import TxkitError
from txkit.modeling import TxkitConfig, TxkitForConditionalGeneration


def _config(**overrides) -> TxkitConfig:
    kw = dict(vocab_size=300, d_model=32, attention_heads=4, ffn_dim=64, encoder_layers=2, decoder_layers=2)
    return TxkitConfig(**{**kw, **overrides})


def _save_model(folder: Path, seed: int, **overrides) -> Path:
    torch.manual_seed(seed)
    model = TxkitForConditionalGeneration(_config(**overrides))
    model.generation_config.num_beams = 4
    model.save_pretrained(folder)
    _word_tokenizer(overrides.get("vocab_size", 300)).save(str(folder / "tokenizer.json"))  # the same in every one
    (folder / "notes.json").write_text(json.dumps({"seed": seed}))  # copied from the newest checkpoint
    return folder


def _word_tokenizer(size: int):
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({f"w{i}": i for i in range(size)}, unk_token="w3"))


def _run_cli(*args: str) -> None:
    code, out, err = run_cli(list(args))
    assert code == 0, out + err
    print(out, end="")


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run directory with three checkpoints (different weights), a half-written one and training state."""
    run = tmp_path / "run"
    for step, seed in ((100, 1), (200, 2), (300, 3)):
        folder = _save_model(run / runs.CHECKPOINTS / runs.checkpoint_name(step), seed)
        (folder / runs.TRAINING_STATE).mkdir()
        (folder / runs.TRAINING_STATE / "optimizer.pt").write_bytes(b"state")
    (run / runs.CHECKPOINTS / (runs.checkpoint_name(400) + ".tmp")).mkdir()
    return run


def test_averaging_copies_of_one_checkpoint_returns_it_unchanged(run_dir, tmp_path):
    one = run_dir / runs.CHECKPOINTS / runs.checkpoint_name(200)
    out = average_checkpoints([one, one, one], tmp_path / "avg")
    original, averaged = load_weights(one), load_weights(out)
    assert original.keys() == averaged.keys()
    for name in original:
        assert averaged[name].dtype == original[name].dtype
        assert torch.equal(averaged[name], original[name]), name  # bit for bit


def test_averaging_two_checkpoints_gives_their_mean(run_dir, tmp_path):
    a, b = (run_dir / runs.CHECKPOINTS / runs.checkpoint_name(s) for s in (100, 200))
    out = average_checkpoints([a, b], tmp_path / "avg")
    wa, wb, mean = load_weights(a), load_weights(b), load_weights(out)
    for name in wa:
        expected = (wa[name].double() + wb[name].double()) / 2
        assert torch.allclose(mean[name].double(), expected, rtol=0, atol=1e-7), name
    assert not torch.equal(wa["model.shared.weight"], wb["model.shared.weight"])
    # a standard model folder: loads with its tied weights, config and generation config from the newest
    model = TxkitForConditionalGeneration.from_pretrained(out)
    assert torch.equal(model.lm_head.weight, mean["model.shared.weight"])
    assert model.generation_config.num_beams == 4
    assert json.loads((out / "notes.json").read_text()) == {"seed": 2}
    assert not (out / runs.TRAINING_STATE).exists()
    assert json.loads((out / "averaging.json").read_text())["averaged"] == [str(a), str(b)]


def test_last_checkpoints_skips_unfinished_ones(run_dir):
    names = [p.name for p in last_checkpoints(run_dir, 2)]
    assert names == ["checkpoint-00000200", "checkpoint-00000300"]
    with pytest.raises(TxkitError, match="only 3"):
        last_checkpoints(run_dir, 5)
    assert len(last_checkpoints(run_dir, 5, strict=False)) == 3


def test_cli_average_last_n(run_dir, tmp_path, capsys):
    out = tmp_path / "model"
    _run_cli("average", "--last", "3", str(run_dir), "--out", str(out))
    assert "averaged 3 checkpoints" in capsys.readouterr().out
    ckpts = [load_weights(run_dir / runs.CHECKPOINTS / runs.checkpoint_name(s)) for s in (100, 200, 300)]
    averaged = load_weights(out)
    for name in averaged:
        expected = sum(c[name].double() for c in ckpts) / 3
        assert torch.allclose(averaged[name].double(), expected, atol=1e-7), name
    # running it again replaces the model folder
    _run_cli("average", str(run_dir / runs.CHECKPOINTS / runs.checkpoint_name(100)), "--out", str(out))
    assert torch.equal(load_weights(out)["model.shared.weight"], ckpts[0]["model.shared.weight"])
    assert not list(tmp_path.glob("model.*"))  # no temporary or old folder left behind


def test_mismatched_checkpoints_are_an_error(run_dir, tmp_path):
    other = _save_model(tmp_path / "wide", seed=1, d_model=64)
    with pytest.raises(TxkitError, match="\"d_model\" is 64 but 32"):
        average_checkpoints([run_dir / runs.CHECKPOINTS / runs.checkpoint_name(100), other], tmp_path / "avg")
    assert not (tmp_path / "avg").exists()


def test_refuses_to_overwrite_a_folder_that_is_not_a_model(run_dir, tmp_path, capsys):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "todo.txt").write_text("keep me")
    code, _, err = run_cli(["average", "--last", "2", str(run_dir), "--out", str(precious)], capsys)
    assert code == 2
    assert "refusing to overwrite" in err
    assert (precious / "todo.txt").read_text() == "keep me"
    shutil.rmtree(precious)
