"""txkit.mixing: several training corpora mixed by weight, with source tags (data.train as a list).

Proportions and streams on the Mixture itself; batches, shards and resumption on the batch sampler; tags on a
tokenizer built by a recipe from Multi30k; and the single-corpus path against the batches it always gave.
(Exact resumption of whole training runs with two corpora: tests/test_training.py, variant "mixture".)
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from txkit.batching import TokenBatchSampler
from txkit.errors import TxkitError
from txkit.mixing import Mixture, make_mixed_sampler, parse_train, train_corpora
from txkit.recipe import load_recipe

SIZES, WEIGHTS = [3000, 300, 30], [1.0, 2.0, 1.0]


def _lengths(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = sum(SIZES)
    return rng.integers(4, 40, n), rng.integers(4, 40, n)


def _sampler(seed: int = 5, **kwargs):
    src, tgt = _lengths()
    return make_mixed_sampler(Mixture(SIZES, WEIGHTS, seed), src, tgt, max_tokens=256, seed=seed, **kwargs)


def _corpus_counts(mixture: Mixture, indices) -> list[int]:
    return np.bincount(mixture.corpus_of(indices), minlength=len(SIZES)).tolist()


# ----------------------------------------------------------------------------- the recipe form


def test_data_train_keeps_a_string_and_fills_list_entries():
    assert parse_train("multi30k/train") == "multi30k/train"
    entries = parse_train([{"path": "a"}, {"path": "b", "weight": 3, "tag": "<2de>", "tgt_lang": "fr"}, "c"])
    none = {"src_lang": "", "tgt_lang": ""}
    assert entries == [{"path": "a", "weight": 1.0, "tag": "", **none},
                       {"path": "b", "weight": 3.0, "tag": "<2de>", "src_lang": "", "tgt_lang": "fr"},
                       {"path": "c", "weight": 1.0, "tag": "", **none}]  # fmt: skip
    recipe = load_recipe(None, ['data.train=[{path: multi30k/train, weight: 2, tag: "<2de>"}, {path: multi30k/val}]'])
    assert [(c.path, c.weight, c.tag) for c in train_corpora(recipe)] == [
        ("multi30k/train", 2.0, "<2de>"), ("multi30k/val", 1.0, "")]  # fmt: skip
    # the resolved recipe (saved with every run) reads back to the same corpora
    assert load_recipe(None, [f"data.train={recipe.to_dict()['data']['train']}"]).data.train == recipe.data.train
    # a plain string stays a string: the run fingerprint (txkit/pipeline.py) of a finished run is unchanged
    assert load_recipe(None, ["data.train=multi30k/train"]).flat()["data.train"] == "multi30k/train"


@pytest.mark.parametrize("bad", [[{"path": "a", "weight": 0}], [{"path": "a", "weight": "x"}], [{"weight": 1}],
                                 [{"path": "a", "tag": "<t>"}, {"path": "b", "tag": "<t>"}], []])  # fmt: skip
def test_bad_entries_are_errors(bad):
    with pytest.raises(TxkitError, match=r"data\.train"):
        parse_train(bad)


# ----------------------------------------------------------------------------- proportions


def test_each_epoch_draws_pairs_in_proportion_to_the_weights_exactly():
    mixture = Mixture(SIZES, WEIGHTS, seed=1)
    total = sum(SIZES)
    assert sum(mixture.counts) == total  # an epoch holds as many pairs as the corpora together
    for count, weight in zip(mixture.counts, WEIGHTS):
        assert abs(count - total * weight / sum(WEIGHTS)) < 1  # whatever the corpus's size
    for epoch in range(3):
        assert _corpus_counts(mixture, mixture.draw(epoch)) == mixture.counts.tolist()


def test_draws_are_deterministic_given_the_seed():
    a, b, c = Mixture(SIZES, WEIGHTS, 1), Mixture(SIZES, WEIGHTS, 1), Mixture(SIZES, WEIGHTS, 2)
    assert np.array_equal(a.draw(4), b.draw(4))
    assert not np.array_equal(a.draw(4), c.draw(4))
    assert not np.array_equal(a.draw(0), a.draw(1))


def test_each_corpus_is_read_as_a_stream_of_shuffled_passes():
    mixture = Mixture(SIZES, WEIGHTS, seed=3)
    # up-weighted (300 pairs, 1665 drawn an epoch): every pair 5 or 6 times, none 4 or 7
    small = [i for i in mixture.draw(0) if 3000 <= i < 3300]
    assert set(Counter(small).values()) <= {5, 6} and len(set(small)) == 300
    # down-weighted (3000 pairs, 832 an epoch): epochs 0-2 show 2496 different pairs, none twice
    big = np.concatenate([[i for i in mixture.draw(e) if i < 3000] for e in range(3)])
    assert len(big) == len(set(big.tolist())) == 3 * mixture.counts[0]


# ----------------------------------------------------------------------------- batches


def test_batches_hold_the_epochs_draw_within_the_token_budget():
    sampler = _sampler()
    src, tgt = _lengths()
    for epoch in range(2):
        batches = list(sampler)
        drawn = np.concatenate(batches)
        assert sorted(drawn.tolist()) == sorted(sampler.mixture.draw(epoch).tolist())
        for batch in batches:
            width = math.ceil(max(max(src[i], tgt[i]) for i in batch) / 8) * 8
            assert len(batch) * width <= 256


def test_the_share_per_step_follows_the_weights_from_the_first_steps():
    """Batches hold pairs of similar length, but their order is random: the first quarter of an epoch's steps
    already carries the weights' shares (1:2:1) to within a few points."""
    sampler = _sampler()
    batches = list(sampler)
    first = np.concatenate(batches[: len(batches) // 4])
    shares = np.array(_corpus_counts(sampler.mixture, first)) / len(first)
    assert np.allclose(shares, np.array(WEIGHTS) / sum(WEIGHTS), atol=0.05), shares


def test_shards_split_the_epochs_draw_between_them():
    whole = sorted(np.concatenate(list(_sampler())).tolist())
    shards = [list(_sampler(num_shards=2, shard_index=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    assert sorted(np.concatenate(shards[0] + shards[1]).tolist()) == whole


def test_a_restored_sampler_continues_where_the_saved_one_was():
    reference = _sampler()
    expected = [b for _ in range(2) for b in reference]
    first = _sampler()
    taken = []
    for batch in first:
        taken.append(batch)
        if len(taken) == 7:
            break
    state = first.state_dict()
    resumed = _sampler()
    resumed.load_state_dict(state)
    assert state["epoch"] == 0 and state["position"] == 7
    assert taken + list(resumed) + list(resumed) == expected  # the rest of epoch 0, then epoch 1


# ----------------------------------------------------------------------------- runs on Multi30k


@pytest.fixture(scope="module")
def data_env(shared_data):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TXKIT_DATA", str(shared_data))
        yield shared_data


def _setup(tmp_path, overrides):
    """The TrainingSetup of the test recipe (tokenizer and data built, no model)."""
    from pathlib import Path

    from txkit.train_setup import TrainingSetup

    recipe = load_recipe(Path(__file__).parent / "recipes" / "tiny.yaml", overrides)
    setup = TrainingSetup(recipe, tmp_path / "run")
    setup._setup_tokenizer()
    setup._setup_data()
    return setup


def _epoch(setup) -> list[list[int]]:
    return [list(b) for b in setup.sampler]


TAGGED = ['data.train=[{path: multi30k/train, weight: 2, tag: "<2de>"}, {path: multi30k/val, tag: "<BT>"}]',
          "data.max_sentences=100", "tokenizer.vocab_size=500"]  # fmt: skip


def test_tags_are_whole_special_tokens_before_every_source_sentence(data_env, tmp_path):
    from txkit.subword_sampling import BPEDropout, sentence_rng

    setup = _setup(tmp_path, TAGGED)
    tok = setup.src_tok
    tags = {tag: tok.get_added_vocab()[tag] for tag in ("<2de>", "<BT>")}
    assert set(tags.values()) == {500, 501}  # after the learned vocabulary
    text = "Two young, White males are outside near many bushes."
    plain = tok(text)["input_ids"]
    for tag, tag_id in tags.items():
        assert tok(f"{tag} {text}")["input_ids"] == [tag_id] + plain  # never split, the text segmented as without
        dropout = BPEDropout(tok, 0.0)
        assert dropout.encode(f"{tag} {text}") == [tag_id] + plain  # BPE-dropout's segmentation agrees
        sampled = BPEDropout(tok, 0.5).encode(f"{tag} {text}", sentence_rng(1, 0, 0, 0))
        assert sampled[0] == tag_id and sampled != [tag_id] + plain
    # every training source sentence starts with its corpus's tag, and no other token is a tag
    pairs = setup.pairs
    corpus = setup.sampler.mixture.corpus_of(np.arange(len(pairs)))
    for i in range(len(pairs)):
        ids = pairs[i]["input_ids"]
        assert ids[0] == (tags["<2de>"], tags["<BT>"])[corpus[i]]
        assert not set(ids[1:]) & set(tags.values())


def test_an_epoch_of_tagged_corpora_draws_by_weight(data_env, tmp_path):
    setup = _setup(tmp_path, TAGGED)
    first = setup.pairs
    counts = Counter()
    for batch in _epoch(setup):
        counts.update(first[i]["input_ids"][0] for i in batch)
    assert counts[500] == setup.sampler.mixture.counts[0]
    assert counts[501] == setup.sampler.mixture.counts[1]
    assert abs(counts[500] / (counts[500] + counts[501]) - 2 / 3) < 0.01


def test_a_single_corpus_gives_the_batches_it_always_gave(data_env, tmp_path):
    """The string form goes the way it always went (TokenBatchSampler over the corpus as loaded and filtered);
    a one-entry list without a tag is the same corpus, and gives the same batches."""
    from txkit.batching import TokenizedPairs
    from txkit.data import load_parallel, tokenize_dataset

    base = ["tokenizer.vocab_size=500", "data.max_sentences=200"]
    plain = _setup(tmp_path / "a", base)
    assert type(plain.sampler) is TokenBatchSampler
    listed = _setup(tmp_path / "b", base + ["data.train=[{path: multi30k/train, weight: 5}]"])
    assert type(listed.sampler) is TokenBatchSampler
    ds = load_parallel(data_env / "multi30k" / "train", "en", "de").select(range(200))
    ids, _ = tokenize_dataset(ds, plain.src_tok, plain.tgt_tok, max_len=64, max_ratio=9.0)
    pairs = TokenizedPairs(ids)
    direct = TokenBatchSampler(pairs.src_lengths, pairs.tgt_lengths, 384, seed=1)
    expected = [[list(pairs[i]["input_ids"]) for i in b] for b in direct]
    for setup in (plain, listed):
        assert [[list(setup.pairs[i]["input_ids"]) for i in b] for b in _epoch(setup)] == expected


def test_the_multilingual_recipe_builds_its_tagged_joint_vocabulary_and_trains(data_env, tmp_path, capsys):
    """recipes/multi30k-en-xx/transformer-tiny.yaml, cut to a few sentences and two steps: its tokenizer has the
    three tags, each corpus reads its own target language, and the first steps train and validate."""
    from pathlib import Path

    from conftest import run_cli
    from txkit.tokenization import load_tokenizers

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "multi30k-en-xx" / "transformer-tiny.yaml"
    run = tmp_path / "run"
    small = ["data.max_sentences=40", "tokenizer.vocab_size=800", "data.valid_max_sentences=8", "train.max_steps=2",
             "train.warmup_steps=1", "train.save_every_steps=2", "train.eval_every_steps=2", "train.keep_last=0",
             "eval.beam_size=2"]  # fmt: skip
    args = ["train", str(recipe), "-o", str(run)] + [a for item in small for a in ("--set", item)]
    code, out, err = run_cli(args, capsys)
    assert code == 0, out + err
    src_tok, tgt_tok = load_tokenizers(run / "tokenizer")
    assert src_tok is tgt_tok  # one joint vocabulary
    tags = src_tok.get_added_vocab()
    assert {"<2de>", "<2fr>", "<2cs>"} <= set(tags)
    # the vocabulary learned from each corpus's own target side, and from the shared English side once
    import json

    from txkit.tokenization import METADATA_FILE

    learned = json.loads((run / "tokenizer" / METADATA_FILE).read_text())["src_files"]
    assert sorted(Path(f).suffix for f in learned) == [".cs", ".de", ".en", ".fr"]
    assert "data.train[2] multi30k/train <2cs>: " in err and "13333 pairs per epoch" not in err
    assert (run / "checkpoints" / "checkpoint-00000002").is_dir()
    # txkit translate --tag: the tag goes before every non-empty line, as if the user had typed it
    source = tmp_path / "in.en"
    source.write_text("A man rides a bike.\n\nTwo dogs play in the snow.\n", encoding="utf-8")
    tagged = tmp_path / "tagged.en"
    tagged.write_text("<2fr> A man rides a bike.\n\n<2fr> Two dogs play in the snow.\n", encoding="utf-8")
    outputs = {}
    for name, extra in (("tag", ["--tag", "<2fr>", "-i", str(source)]), ("typed", ["-i", str(tagged)]),
                        ("none", ["-i", str(source)]), ("target-lang", ["--target-lang", "fr", "-i", str(source)])):  # fmt: skip
        code, out, err = run_cli(["translate", str(run), "--beam-size", "2", *extra], capsys)
        assert code == 0, err
        outputs[name] = out.splitlines()
    assert outputs["tag"] == outputs["typed"] and outputs["tag"][1] == ""
    assert outputs["tag"] != outputs["none"]  # the tag reaches the model
    # --target-lang reads the run's recipe.yaml: data.train's corpus into fr has the tag <2fr>, and so on
    assert outputs["target-lang"] == outputs["tag"]
    from txkit.cli.translate import direction_tag
    from txkit.runs import resolve_model

    assert [direction_tag(lang, resolve_model(run)) for lang in ("de", "fr", "cs")] == ["<2de>", "<2fr>", "<2cs>"]


def test_a_tagged_empty_source_is_still_dropped_as_empty(tokenizer_300):
    """The tag goes before text only: an empty source stays empty, and the filter drops its pair."""
    from datasets import Dataset

    from txkit.data import tokenize_dataset
    from txkit.mixing import tag_dataset
    from txkit.tokenization import add_tags, load_tokenizers

    tok, _ = load_tokenizers(tokenizer_300)
    add_tags(tok, ["<2de>"])
    ds = tag_dataset(Dataset.from_dict({"src": ["", "A dog runs."], "tgt": ["Ein Hund.", "Ein Hund rennt."]}), "<2de>")
    assert ds["src"] == ["", "<2de> A dog runs."]
    ids, report = tokenize_dataset(ds, tok, tok)
    assert report.empty == 1 and report.kept == 1
    assert ids["input_ids"][0][0] == tok.get_added_vocab()["<2de>"]


def test_trained_directions_reads_txkit_recipes_and_ignores_other_yaml(tmp_path):
    """runs.trained_directions (distillation's teacher check, translate --target-lang): every corpus's (source,
    target, tag) from a txkit recipe.yaml; None, not a crash, for a recipe.yaml of some other shape."""
    from txkit.runs import trained_directions

    cases = {
        "data:\n  src_lang: en\n  tgt_lang: de\n  train: multi30k/train\n": [("en", "de", "")],
        "data:\n  src_lang: en\n  tgt_lang: de\n  train:\n    - {path: a, tag: '<2fr>', tgt_lang: fr}\n    - {path: b}\n":
            [("en", "fr", "<2fr>"), ("en", "de", "")],
        "data: just a string\n": None,
        "- a list\n": None,
        "data: [unclosed\n": None,
    }  # fmt: skip
    for text, expected in cases.items():
        (tmp_path / "recipe.yaml").write_text(text, encoding="utf-8")
        assert trained_directions(tmp_path) == expected, text
