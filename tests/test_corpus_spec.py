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
