"""The recipe's inputs made real: its corpora loaded as datasets, its tokenizer built.

Moved out of txkit.recipe so that the recipe schema, which every stage imports, stays light (the standard
library and yaml): this module is the one that reaches into txkit.data and txkit.tokenization.
"""

from __future__ import annotations

from pathlib import Path

from txkit.errors import TxkitError
from txkit.recipe import Recipe, corpus_files, resolve_data_path


def load_corpus(recipe: Recipe, spec: str, split: str = "train", langs: tuple[str, str] | None = None):
    """A corpus the recipe names (data.train, data.valid, an eval.test entry) as a `src`/`tgt` Dataset; `langs`:
    a data.train entry's own (source, target) codes, else data.src_lang and data.tgt_lang."""
    from txkit.data import load_parallel

    d = recipe.data
    src_lang, tgt_lang = langs or (d.src_lang, d.tgt_lang)
    try:
        return load_parallel(resolve_data_path(spec), src_lang, tgt_lang, hub_config=d.hub_config or None,
                             split=split)  # fmt: skip
    except TxkitError as exc:
        raise _utf8_only(exc) from None


def _utf8_only(exc: TxkitError) -> TxkitError:
    """data.py suggests the --errors option of the tokenizer commands; recipes have none: read UTF-8 only."""
    return TxkitError(str(exc).replace(
        "; use --errors replace to go on",
        "; training reads UTF-8 only: convert the file first (e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8)",
    ))  # fmt: skip


def build_recipe_tokenizer(recipe: Recipe, path: Path) -> None:
    """Build the tokenizer the recipe describes at `path` (built under a temporary name, swapped in whole).

    It learns from `tokenizer.files`, by default both sides of data.train; a corpus that is not a pair of
    text files (.tsv, .jsonl, .parquet, hub:), or its first `data.max_sentences` pairs, is written out as
    text first.
    """
    from txkit import atomic
    from txkit.corpus_spec import train_corpora, train_tags
    from txkit.tokenization import build_tokenizer

    t, d = recipe.tokenizer, recipe.data
    path.parent.mkdir(parents=True, exist_ok=True)
    text_dir = None
    files = [resolve_data_path(f) for f in t.files]
    # Several corpora: the vocabulary learns from all of them, unweighted (the weights are the sampler's); their
    # tags are special tokens, never in the text it learns from.
    spec_ids: dict[str, int] = {}  # one text file per corpus spec and language: a shared English side is written once
    for corpus in train_corpora(recipe) if not files else []:
        k = spec_ids.setdefault(corpus.path, len(spec_ids))
        src_lang, tgt_lang = corpus.langs(d)
        corpus_pair = corpus_files(corpus.path, src_lang, tgt_lang)
        if len(corpus_pair) != 2 or d.max_sentences:
            ds = load_corpus(recipe, corpus.path, "train", (src_lang, tgt_lang))
            if d.max_sentences:
                ds = ds.select(range(min(d.max_sentences, len(ds))))
            text_dir = text_dir or atomic.temp_dir(path)
            corpus_pair = [text_dir / f"train{k or ''}.{src_lang}", text_dir / f"train{k or ''}.{tgt_lang}"]
            for column, file in zip(("src", "tgt"), corpus_pair):
                file.write_text("".join(line.replace("\n", " ") + "\n" for line in ds[column]), encoding="utf-8")
        files += [f for f in corpus_pair if f not in files]  # en-de, en-fr, en-cs share train.en: learned once
    for f in files:
        if not Path(f).is_file():
            raise TxkitError(f"tokenizer.files: file not found: {f}")
    try:
        build_tokenizer(files, path, src_lang=d.src_lang, show_progress=False, stats=False, tags=train_tags(recipe),
                        **t.tokenizer_options())  # fmt: skip
    except TxkitError as exc:
        raise _utf8_only(exc) from None
    finally:
        if text_dir is not None:
            atomic.discard(text_dir)
