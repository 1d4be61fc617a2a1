"""txkit.recipe: YAML -> typed sections, overrides, one-line errors, data paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from txkit.errors import TxkitError
from txkit.recipe import (
    STABLE_KEYS,
    Recipe,
    all_keys,
    describe_keys,
    load_recipe,
    resolve_data_path,
    resolve_tokenizer_path,
)

REPO = Path(__file__).resolve().parents[1]
TEST_RECIPE = REPO / "tests" / "recipes" / "tiny.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_papers():
    r = load_recipe(None)
    assert r.model.preset == "transformer-base" and r.model.config_overrides() == {}
    assert (r.train.lr_schedule, r.train.warmup_steps) == ("noam", 4000)
    assert (r.train.adam_betas, r.train.adam_eps) == ((0.9, 0.98), 1e-9)
    assert (r.eval.beam_size, r.eval.length_penalty, r.eval.max_len_a, r.eval.max_len_b) == (4, 0.6, 1.0, 50)
    assert r.train.save_every_minutes == 10 and r.eval.average_last == 5
    assert r.tokenizer.joint and r.tokenizer.vocab_size == 37000


def test_every_key_has_a_default_and_help():
    rows = describe_keys()
    assert [row[0] for row in rows] == all_keys()
    for key, type_name, _default, help_text in rows:
        assert help_text and type_name, key
    assert {key.split(".")[0] for key in all_keys()} == {"model", "tokenizer", "data", "train", "eval", "distill"}


def test_keys_scripts_rely_on_keep_their_names():
    assert set(STABLE_KEYS) == {"train.max_steps", "train.max_tokens", "train.save_every_steps",
                                "train.eval_every_steps", "train.seed"}  # fmt: skip
    assert set(STABLE_KEYS) <= set(all_keys())


def test_file_then_overrides(tmp_path):
    path = _write(tmp_path, "model:\n  preset: transformer-small\n  dropout: 0.2\ntrain:\n  max_steps: 1000\n"
                            "data:\n  train: multi30k/train\n")
    r = load_recipe(path, ["train.max_steps=300", "train.lr=1e-4", "train.adam_betas=[0.9, 0.997]",
                           "data.src_lang=no", "data.tgt_lang=de", "eval.test=multi30k/test2016",
                           "model.d_model=null", "train.mixed_precision=bf16"])  # fmt: skip
    assert r.train.max_steps == 300  # the command line wins over the file
    assert r.train.lr == 1e-4 and isinstance(r.train.lr, float)  # "1e-4" is a string to PyYAML
    assert r.train.adam_betas == (0.9, 0.997)
    assert r.data.src_lang == "no"  # not YAML's boolean false
    assert r.eval.test == ["multi30k/test2016"]
    assert r.model.config_overrides() == {"dropout": 0.2}
    assert r.train.mixed_precision == "bf16"
    assert r.source == str(path)


def test_resolved_recipe_round_trips(tmp_path):
    r = load_recipe(TEST_RECIPE, ["train.max_steps=7", "eval.test=[multi30k/test2016, newstest2014/newstest2014]"])
    text = r.to_yaml(header="a comment\nover two lines")
    assert text.startswith("# a comment\n# over two lines\n")
    again = load_recipe(_write(tmp_path, text))
    assert again == r and isinstance(again, Recipe)


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  max_stpes: 10\n", "unknown key 'train.max_stpes' (did you mean 'train.max_steps'?)"),
        ("trian:\n  max_steps: 10\n", "unknown section 'trian' (did you mean 'train'?)"),
        ("train:\n  max_steps: ten\n", "train.max_steps must be an integer, not 'ten'"),
        ("train:\n  mixed_precision: fp8\n", "train.mixed_precision must be one of no, bf16, fp16, not 'fp8'"),
        ("train:\n  adam_betas: 0.9\n", "train.adam_betas must be a list of 2 values, not 0.9"),
        ("data:\n  dedup: maybe\n", "data.dedup must be true or false, not 'maybe'"),
        ("train: [1, 2]\n", "section 'train' must be a mapping"),
        ("- train\n", "a recipe is a mapping of sections"),
        ("train:\n  keep_last: 2\n", "train.keep_last (2) must be at least eval.average_last (5)"),
        ("model:\n  preset: transformer-huge\n", "model.preset must be one of transformer-base"),
    ],
)
def test_bad_recipes_name_the_file_and_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(TxkitError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_overrides():
    with pytest.raises(TxkitError) as info:
        load_recipe(None, ["train.warmup=100"])
    assert str(info.value) == "--set: unknown key 'train.warmup' (did you mean 'train.warmup_steps'?)"
    with pytest.raises(TxkitError, match="expected section.key=value"):
        load_recipe(None, ["train.max_steps"])
    with pytest.raises(TxkitError, match="train.max_steps must be an integer"):
        load_recipe(None, ["train.max_steps=1.5"])


def test_invalid_yaml_names_the_line(tmp_path):
    path = _write(tmp_path, "train:\n  max_steps: 10\n  lr: [1,\n")
    with pytest.raises(TxkitError, match=r"recipe.yaml: line \d+: not valid YAML"):
        load_recipe(path)
    with pytest.raises(TxkitError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_data_paths_resolve_against_txkit_data(monkeypatch, tmp_path):
    monkeypatch.setenv("TXKIT_DATA", "../shared/data")
    assert resolve_data_path("multi30k/train") == Path("../shared/data/multi30k/train")
    assert resolve_data_path("/abs/corpus.tsv") == Path("/abs/corpus.tsv")
    assert resolve_data_path("hub:wmt/wmt14") == "hub:wmt/wmt14"
    monkeypatch.delenv("TXKIT_DATA")
    assert resolve_data_path("multi30k/train") == Path("data/multi30k/train")
    r = load_recipe(None)
    assert resolve_tokenizer_path(r, tmp_path) == tmp_path / "tokenizer"
    r.tokenizer.path = "/elsewhere/tok"
    assert resolve_tokenizer_path(r, tmp_path) == Path("/elsewhere/tok")


def test_recipes_in_the_repository_load():
    found = sorted((REPO / "recipes").rglob("*.yaml")) + [TEST_RECIPE]
    for path in found:
        load_recipe(path)


def test_cli_lists_every_key(capsys):
    from conftest import run_cli

    code, out, _ = run_cli(["train", "--list-keys"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == all_keys()
    assert any(line.startswith("train.max_steps") and "100000" in line for line in lines)


def test_tokenizer_section_reaches_the_tokenizer_it_builds(monkeypatch, tmp_path, shared_data):
    import json

    from txkit.prepare import build_recipe_tokenizer

    monkeypatch.setenv("TXKIT_DATA", str(shared_data))
    overrides = [
        "data.max_sentences=300", "tokenizer.vocab_size=400", "tokenizer.normalization=NFC",
        "tokenizer.byte_fallback=false", "tokenizer.limit_alphabet=80",
    ]  # fmt: skip
    build_recipe_tokenizer(load_recipe(None, overrides), tmp_path / "tok")
    spec = json.loads((tmp_path / "tok" / "tokenizer.json").read_text(encoding="utf-8"))
    assert spec["model"]["byte_fallback"] is False
    assert "NFC" in json.dumps(spec["normalizer"]) and "NFKC" not in json.dumps(spec["normalizer"])


def test_preset_names_are_the_models_presets():
    """The recipe reads the preset names from configuration_txkit.py without importing it."""
    from txkit.modeling import PRESETS
    from txkit.recipe import preset_names

    assert preset_names() == list(PRESETS)


def test_reading_a_recipe_imports_neither_torch_nor_transformers():
    """The schema that every stage imports is light: the standard library and yaml."""
    import subprocess
    import sys

    code = (
        "import sys; from txkit.recipe import load_recipe, describe_keys; describe_keys(); "
        "load_recipe('recipes/multi30k-en-de/transformer-tiny.yaml', ['train.max_steps=5']); "
        "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'tokenizers', 'numpy') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == ""
