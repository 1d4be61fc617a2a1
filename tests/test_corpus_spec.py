"""txkit.corpus_spec: the one parser of corpus specs (recipe keys, CLI arguments)."""

from __future__ import annotations

from pathlib import Path

import pytest

from txkit.corpus_spec import parse_corpus_spec


@pytest.mark.parametrize(
    "spec, kind, files, target, name, collection",
    [
        ("multi30k/test2016", "prefix", ["multi30k/test2016.en", "multi30k/test2016.de"], "multi30k/test2016.de",
         "test2016", "multi30k"),
        ("wmt/newstest.tsv", "tsv", ["wmt/newstest.tsv"], "wmt/newstest.tsv", "newstest", "wmt"),
        ("x/pairs.JSONL", "jsonl", ["x/pairs.JSONL"], "x/pairs.JSONL", "pairs", "x"),
        ("x/pairs.parquet", "parquet", ["x/pairs.parquet"], "x/pairs.parquet", "pairs", "x"),
        ("corpus.v2", "prefix", ["corpus.v2.en", "corpus.v2.de"], "corpus.v2.de", "corpus.v2", "corpus.v2"),
        ("hub:wmt/wmt14", "hub", [], "hub:wmt/wmt14", "wmt14-test", "wmt/wmt14"),
    ],
)  # fmt: skip
def test_every_kind_of_spec(spec, kind, files, target, name, collection):
    parsed = parse_corpus_spec(spec)
    assert parsed.kind == kind
    assert parsed.files("en", "de") == [Path(f) for f in files]
    assert parsed.target_file("de") == target  # a .tsv test set's references are the .tsv, not "....tsv.de"
    assert parsed.name == name
    assert parsed.collection == collection


# ----------------------------------------------------------------------------- eval.test: the directions scored

XX = ['data.train=[{path: multi30k/train, tag: "<2de>", tgt_lang: de}, {path: multi30k/train, tag: "<BT>", '
      'tgt_lang: de}, {path: multi30k/train, tag: "<2fr>", tgt_lang: fr}]', "data.eval_tag=<2de>"]  # fmt: skip


def _directions(overrides) -> list[tuple]:
    from txkit.corpus_spec import eval_sets
    from txkit.recipe import load_recipe

    return [(t.name, t.tag, t.src_lang, t.tgt_lang) for t in eval_sets(load_recipe(None, overrides))]


def test_a_bilingual_recipe_scores_its_test_sets_under_their_names():
    assert _directions(["eval.test=[multi30k/test2016, x/news.tsv]"]) == [
        ("test2016", "", "en", "de"), ("news", "", "en", "de")]  # fmt: skip
    # a back-translation tag does not make a second direction: the test set is scored once, untagged
    bt = ['data.train=[{path: multi30k/train}, {path: bt/mono, tag: "<BT>"}]', "eval.test=[multi30k/test2016]"]
    assert _directions(bt) == [("test2016", "", "en", "de")]


def test_a_multilingual_recipe_scores_every_language_pair_with_its_tag():
    # two en->de corpora (<2de>, <BT>): one direction, with data.eval_tag's tag
    assert _directions([*XX, "eval.test=[multi30k/test2016]"]) == [
        ("test2016.en-de", "<2de>", "en", "de"), ("test2016.en-fr", "<2fr>", "en", "fr")]  # fmt: skip
    # an entry names one direction, by tag or by language
    assert _directions([*XX, 'eval.test=[{path: multi30k/test2016, tag: "<BT>"}, {path: x/t, tgt_lang: fr}]']) == [
        ("test2016.en-de", "<BT>", "en", "de"), ("t.en-fr", "<2fr>", "en", "fr")]  # fmt: skip


def test_eval_test_entries_survive_the_saved_recipe(tmp_path):
    """RUN/recipe.yaml keeps a direction entry as it was given (every key filled in)."""
    from txkit.recipe import load_recipe

    recipe = load_recipe(None, [*XX, 'eval.test=[multi30k/test2016, {path: x/t, tag: "<2fr>"}]'])
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml(), encoding="utf-8")
    again = load_recipe(path)
    assert again.eval.test == ["multi30k/test2016", {"path": "x/t", "tag": "<2fr>", "src_lang": "", "tgt_lang": ""}]
    assert again == recipe


@pytest.mark.parametrize("entry, message", [
    ("{path: x/t, tag: <2es>}", r"eval\.test\[0\]: the model is not trained for the tag <2es>"),
    ("{path: x/t, tgt_lang: es}", r"eval\.test\[0\]: the model is not trained for en->es"),
    ("{path: x/t, tgt_lang: fr, tag: <2de>}", r"not trained for en->fr with tag <2de> \(data\.train's directions: "
                                               r"en->de <2de>, en->de <BT>, en->fr <2fr>\)"),
    ("{tag: <2de>}", r"eval\.test\[0\]\.path is required"),
    ("{path: x/t, lang: fr}", r"eval\.test\[0\]\.lang: unknown key \(valid: path, tag, src_lang, tgt_lang\)"),
    ("{path: x/t, tag: <2 de>}", r"eval\.test\[0\]\.tag must be one token without spaces"),
    ("[x/t, x/t]", r"eval\.test: x/t and x/t would both be called t\.en-de; rename one"),
])  # fmt: skip
def test_a_direction_the_model_does_not_train_is_an_error_naming_the_entry(entry, message):
    from txkit.errors import TxkitError
    from txkit.recipe import load_recipe

    value = entry if entry.startswith("[") else f"[{entry}]"
    with pytest.raises(TxkitError, match=message):
        load_recipe(None, [*XX, f"eval.test={value}"])
