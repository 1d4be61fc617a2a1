"""Parallel corpora: text -> `datasets.Dataset` -> token ids (filtered, cached) -> token-bucketed batches.

    load_parallel(spec, "en", "de")        a Dataset with string columns `src`, `tgt`
    tokenize_dataset(ds, src_tok, tgt_tok)  (Dataset with int columns `input_ids`, `labels`, FilterReport)

Batching the result is txkit.batching's job; reading plain text (UTF-8 checks, line counts) is txkit.textio's.

Both loading and tokenizing go through the `datasets` cache: a second run over the same files with
the same tokenizer reads the Arrow files written by the first instead of doing the work again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from txkit.corpus_spec import DESCRIPTION as CORPUS_SPEC_FORMATS
from txkit.corpus_spec import parse_corpus_spec
from txkit.errors import TxkitError
from txkit.textio import check_text_file, count_lines, iter_lines

CORPUS_FORMATS = CORPUS_SPEC_FORMATS
_READER_VERSION = "1"  # bump when a reader changes what it yields, to invalidate cached datasets
_TOKENIZE_VERSION = "1"  # same for the tokenization step

# --------------------------------------------------------------------------------------------------
# Loading parallel corpora
# --------------------------------------------------------------------------------------------------


def load_parallel(
    spec: str | Path,
    src_lang: str,
    tgt_lang: str,
    *,
    errors: str = "strict",
    hub_config: str | None = None,
    split: str = "train",
    cache_dir: str | Path | None = None,
):
    """Load a parallel corpus as a `datasets.Dataset` with string columns `src` and `tgt`.

    `spec` is one of:
      - a prefix `DIR/train`: the line-aligned files `DIR/train.<src_lang>` and `DIR/train.<tgt_lang>`;
      - a `.tsv` file: source TAB target per line; a first line naming the columns
        (`en<TAB>de` or `src<TAB>tgt`) is a header;
      - a `.jsonl` or `.parquet` file with a `translation` column of {lang: text} objects,
        columns named by language, or `src`/`tgt` columns;
      - `hub:OWNER/NAME`, a Hub dataset with a translation column (`hub:wmt/wmt14`,
        hub_config="de-en"), `split` choosing the split.
    Text is stripped of surrounding whitespace; empty pairs are kept here and counted by
    `tokenize_dataset`. The result is cached under `cache_dir` (default: the `datasets` cache),
    keyed on the files' paths, sizes and modification times.
    """
    parsed = parse_corpus_spec(spec)
    if parsed.is_hub:
        return _load_hub(parsed.hub_id, src_lang, tgt_lang, hub_config, split, cache_dir)
    path = parsed.path
    langs = (src_lang, tgt_lang)
    if parsed.kind == "tsv":
        path = check_text_file(path)
        return _from_generator(_generate_tsv, dict(path=str(path), langs=langs, errors=errors), [path], cache_dir)
    if parsed.kind == "jsonl":
        path = check_text_file(path)
        return _from_generator(_generate_jsonl, dict(path=str(path), langs=langs, errors=errors), [path], cache_dir)
    if parsed.kind == "parquet":
        if not path.is_file():
            raise TxkitError(f"{path}: no such file")
        return _load_parquet(path, src_lang, tgt_lang, cache_dir)

    src_path, tgt_path = parsed.files(src_lang, tgt_lang)
    if not (src_path.exists() and tgt_path.exists()):
        if path.is_file():
            raise TxkitError(f"{path}: unknown corpus format (expected {CORPUS_FORMATS})")
        if path.is_dir():
            raise TxkitError(f"{path}: is a directory; give a prefix such as {path}/train for {path}/train.{src_lang}")
        missing = src_path if not src_path.exists() else tgt_path
        raise TxkitError(f"{missing}: no such file")
    check_text_file(src_path)
    check_text_file(tgt_path)
    n_src, n_tgt = count_lines(src_path), count_lines(tgt_path)
    if n_src != n_tgt:
        raise TxkitError(f"{src_path} has {n_src} lines but {tgt_path} has {n_tgt} lines; parallel files must align")
    kwargs = dict(src_path=str(src_path), tgt_path=str(tgt_path), errors=errors)
    return _from_generator(_generate_text_pairs, kwargs, [src_path, tgt_path], cache_dir)


def _from_generator(generator, gen_kwargs: dict, files: list[Path], cache_dir):
    """`Dataset.from_generator`, cached on the files' identity, with our TxkitErrors unwrapped."""
    from datasets import Dataset, Features, Value
    from datasets.exceptions import DatasetGenerationError

    stamps = []
    for f in files:
        st = f.stat()
        stamps.append(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    key = json.dumps([generator.__name__, _READER_VERSION, stamps, gen_kwargs], sort_keys=True, default=str)
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:32]
    try:
        return Dataset.from_generator(
            generator,
            features=Features({"src": Value("string"), "tgt": Value("string")}),
            gen_kwargs=gen_kwargs,
            cache_dir=str(cache_dir) if cache_dir else None,
            fingerprint=fingerprint,
        )
    except DatasetGenerationError as exc:
        # datasets wraps errors raised inside the generator; a user error keeps its own message.
        cause = exc.__cause__ or exc.__context__
        while cause is not None and not isinstance(cause, TxkitError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise
    except ValueError:
        # datasets cannot make a dataset of zero rows ("corresponds to no data")
        if not _yields_nothing(generator, gen_kwargs):
            raise
        raise TxkitError(f"{' and '.join(map(str, files))}: no sentence pairs (the corpus is empty)") from None


def _yields_nothing(generator, gen_kwargs: dict) -> bool:
    return next(iter(generator(**gen_kwargs)), None) is None


def _generate_text_pairs(src_path: str, tgt_path: str, errors: str):
    for src, tgt in zip(iter_lines(src_path, errors), iter_lines(tgt_path, errors)):
        yield {"src": src.strip(), "tgt": tgt.strip()}


def _generate_tsv(path: str, langs: tuple[str, str], errors: str):
    order = (0, 1)
    for number, line in enumerate(iter_lines(path, errors), start=1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise TxkitError(f"{path} line {number}: expected 2 tab-separated columns (source, target), found {len(fields)}")
        if number == 1:
            header = [f.strip() for f in fields]
            if header in (list(langs), ["src", "tgt"]):
                continue
            if header == list(reversed(langs)):
                order = (1, 0)
                continue
        yield {"src": fields[order[0]].strip(), "tgt": fields[order[1]].strip()}


def _generate_jsonl(path: str, langs: tuple[str, str], errors: str):
    src_lang, tgt_lang = langs
    for number, line in enumerate(iter_lines(path, errors), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TxkitError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
        pair = obj.get("translation", obj) if isinstance(obj, dict) else None
        for keys in ((src_lang, tgt_lang), ("src", "tgt")):
            if isinstance(pair, dict) and all(isinstance(pair.get(k), str) for k in keys):
                yield {"src": pair[keys[0]].strip(), "tgt": pair[keys[1]].strip()}
                break
        else:
            raise TxkitError(
                f"{path} line {number}: no {src_lang}/{tgt_lang} text (expected a 'translation' object, "
                f"'{src_lang}' and '{tgt_lang}' keys, or 'src' and 'tgt' keys)"
            )


def _load_parquet(path: Path, src_lang: str, tgt_lang: str, cache_dir):
    from datasets import load_dataset

    try:
        ds = load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:  # pyarrow's many error types for a damaged file
        raise TxkitError(f"{path}: cannot read as Parquet ({_first_line(exc)})") from None
    return _select_pair_columns(ds, src_lang, tgt_lang, str(path))


def _load_hub(hub_id: str, src_lang: str, tgt_lang: str, hub_config, split: str, cache_dir):
    """A Hub dataset such as `wmt/wmt14` (config `de-en`), reduced to `src`/`tgt` columns."""
    from datasets import load_dataset

    try:
        ds = load_dataset(hub_id, hub_config, split=split, cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:  # offline, unknown id, unknown config or split: all user errors here
        where = f"hub:{hub_id}" + (f" (config {hub_config})" if hub_config else "") + f" split {split}"
        raise TxkitError(f"{where}: cannot load ({_first_line(exc)})") from None
    return _select_pair_columns(ds, src_lang, tgt_lang, f"hub:{hub_id}")


def _select_pair_columns(ds, src_lang: str, tgt_lang: str, name: str):
    """Rename a translation column, language columns or src/tgt columns to `src`/`tgt` (no copy)."""
    columns = ds.column_names
    if "translation" in columns:
        flat = ds.select_columns(["translation"]).flatten()  # columns translation.en, translation.de
        s, t = f"translation.{src_lang}", f"translation.{tgt_lang}"
        if s not in flat.column_names or t not in flat.column_names:
            found = ", ".join(c.split(".", 1)[1] for c in flat.column_names)
            raise TxkitError(f"{name}: the translation column has languages {found}, not {src_lang} and {tgt_lang}")
        return flat.select_columns([s, t]).rename_columns({s: "src", t: "tgt"})
    for s, t in ((src_lang, tgt_lang), ("src", "tgt")):
        if s in columns and t in columns:
            ds = ds.select_columns([s, t])
            return ds if (s, t) == ("src", "tgt") else ds.rename_columns({s: "src", t: "tgt"})
    raise TxkitError(
        f"{name}: no parallel text columns (expected 'translation', '{src_lang}' and '{tgt_lang}', or 'src' "
        f"and 'tgt'; found {', '.join(columns)})"
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# Tokenizing and filtering
# --------------------------------------------------------------------------------------------------


@dataclass
class FilterReport:
    """How many pairs each filter removed (each pair is counted by the first filter that drops it)."""

    total: int
    empty: int = 0
    too_long: int = 0
    bad_ratio: int = 0
    duplicates: int = 0
    max_len: int = 0
    max_ratio: float = 0.0
    dedup: bool = False

    @property
    def kept(self) -> int:
        return self.total - self.empty - self.too_long - self.bad_ratio - self.duplicates

    def __str__(self) -> str:
        parts = [
            f"{self.empty} empty",
            f"{self.too_long} longer than {self.max_len} tokens",
            f"{self.bad_ratio} with length ratio above {self.max_ratio:g}",
        ]
        if self.dedup:
            parts.append(f"{self.duplicates} duplicates")
        return f"{self.total} pairs: {', '.join(parts)} removed; {self.kept} kept"


def _encode_batch(batch: dict, src_tok, tgt_tok) -> dict:
    """Map function: texts -> ids, each followed by </s> (the tokenizers' post-processor adds it)."""
    src = [(text or "").strip() for text in batch["src"]]
    tgt = [(text or "").strip() for text in batch["tgt"]]
    return {
        "input_ids": [e.ids for e in src_tok.encode_batch_fast(src)],
        "labels": [e.ids for e in tgt_tok.encode_batch_fast(tgt)],
    }


def _tokenizer_hash(tok) -> str:
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()


def tokenize_dataset(
    ds,
    src_tok,
    tgt_tok=None,
    *,
    num_proc: int = 1,
    max_len: int = 256,
    max_ratio: float = 9.0,
    dedup: bool = False,
    name: str = "the corpus",
):
    """Tokenize a `src`/`tgt` dataset and filter it; returns (dataset, FilterReport).

    The result has int32 list columns `input_ids` (source subwords + </s>) and `labels` (target
    subwords + </s>). Tokenizing runs as `Dataset.map(batched=True, num_proc=...)` under a
    fingerprint made of the data's fingerprint and the tokenizers' contents, so a second call with
    the same data, tokenizers and `num_proc` reads the cached Arrow file instead of tokenizing again.
    (Filtering is recomputed each time from the cached lengths: numpy, a fraction of a second.)

    Filters, in order (as Moses clean-corpus-n and fairseq do):
      empty      a side with no subword;
      too long   a side longer than `max_len` tokens, </s> included;
      ratio      longer side / shorter side (subwords, </s> excluded) above `max_ratio`;
      duplicate  (with `dedup`) a (src, tgt) pair seen earlier in the corpus.
    A corpus with nothing left is a TxkitError, never a training run of zero steps.
    """
    from datasets import Features, List, Value

    tgt_tok = tgt_tok if tgt_tok is not None else src_tok
    missing = {"src", "tgt"} - set(ds.column_names)
    if missing:
        raise TxkitError(f"{name}: missing column(s) {', '.join(sorted(missing))}")
    key = "|".join([_TOKENIZE_VERSION, ds._fingerprint, _tokenizer_hash(src_tok), _tokenizer_hash(tgt_tok)])
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:32]
    ids = List(Value("int32"))
    tokenized = ds.map(
        _encode_batch,
        batched=True,
        batch_size=1000,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=ds.column_names,
        fn_kwargs=dict(src_tok=src_tok.backend_tokenizer, tgt_tok=tgt_tok.backend_tokenizer),
        features=Features({"input_ids": ids, "labels": ids}),
        new_fingerprint=fingerprint,
        desc="tokenizing",
    )

    src_len, tgt_len = column_lengths(tokenized, "input_ids"), column_lengths(tokenized, "labels")
    src_words, tgt_words = src_len - 1, tgt_len - 1  # without </s>
    empty = (src_words <= 0) | (tgt_words <= 0)
    too_long = ~empty & ((src_len > max_len) | (tgt_len > max_len))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(src_words, tgt_words) / np.minimum(src_words, tgt_words)
    bad_ratio = ~empty & ~too_long & (ratio > max_ratio)
    keep = ~(empty | too_long | bad_ratio)
    duplicates = np.zeros_like(keep)
    if dedup:
        duplicates = keep & ~_first_occurrences(ds)
        keep &= ~duplicates

    counts = [int(mask.sum()) for mask in (empty, too_long, bad_ratio, duplicates)]
    report = FilterReport(len(tokenized), *counts, max_len=max_len, max_ratio=max_ratio, dedup=dedup)
    if report.kept == 0:
        raise TxkitError(f"{name} is empty after filtering ({report})")
    if report.kept < report.total:
        tokenized = tokenized.select(np.flatnonzero(keep))
    return tokenized, report


def _first_occurrences(ds) -> np.ndarray:
    """Boolean mask: True at the first occurrence of each exact (src, tgt) pair (Arrow group-by)."""
    import pyarrow as pa

    table = ds.with_format("arrow")[:]
    table = pa.table({"s": table["src"], "t": table["tgt"], "i": pa.array(np.arange(len(ds)))})
    first = table.group_by(["s", "t"], use_threads=False).aggregate([("i", "min")])["i_min"]
    mask = np.zeros(len(ds), dtype=bool)
    mask[first.to_numpy()] = True
    return mask


def column_lengths(ds, column: str) -> np.ndarray:
    """Lengths of a list column, read from Arrow without building Python lists: int64 (N,)."""
    import pyarrow.compute as pc

    return pc.list_value_length(ds.with_format("arrow")[column]).to_numpy().astype(np.int64)
