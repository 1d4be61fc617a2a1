"""Subword vocabularies: train BPE or Unigram with `tokenizers`, save them as `PreTrainedTokenizerFast`.

The pipeline, SentencePiece style, chosen so that `decode(encode(s)) == s` for ordinary text:

    normalizer     NFKC (keeping no-break spaces, see `_normalizer`); lowercasing with `lowercase`
    pre-tokenizer  Metaspace: spaces become "▁" and start a new word ("a dog" -> "▁a", "▁dog"); with
                   `split_punctuation` runs of punctuation are words of their own ("▁dog." -> "▁dog", ".")
    model          BPE or Unigram over those words, with byte fallback ("☃" -> <0xE2> <0x98> <0x83>)
    post-processor appends "</s>": source = subwords + </s>, target (labels) = subwords + </s>
    decoder        byte fallback, then "▁" back to spaces (the first word's space is dropped)

Translations therefore come out as detokenized text, and BLEU is computed on it directly.
Lines are stripped of surrounding whitespace everywhere (training, statistics, `txkit.data`):
the decoder cannot tell " Un chien" from "Un chien", and neither matters to a translation.

Special tokens have fixed ids: <pad>=0, <s>=1, </s>=2, <unk>=3. The model reads them from the
tokenizer (`config_kwargs_from_tokenizer`), never from a second hard-coded copy.

Layout on disk: a joint vocabulary is one `PreTrainedTokenizerFast` folder (`tokenizer.json`,
`tokenizer_config.json`); separate vocabularies keep the source tokenizer in the folder and the
target tokenizer in its `target/` subfolder. `AutoTokenizer.from_pretrained(DIR)` loads the source
(or joint) one; `load_tokenizers(DIR)` loads both.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from txkit.errors import TxkitError
from txkit.options import NORMALIZATIONS, TOKENIZER_MODELS, TokenizerOptions
from txkit.textio import check_text_file, count_lines, iter_lines

# Position in this list = token id. Everything else (config, collate, decoding) reads the ids
# back from the tokenizer object.
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
# SentencePiece's byte-fallback pieces: a character outside the vocabulary is spelled as its UTF-8
# bytes instead of becoming <unk>. They are ordinary vocabulary entries (ids 4..259), so decoding
# with skip_special_tokens=True keeps them.
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
TARGET_SUBDIR = "target"  # separate vocabularies: the target tokenizer lives in DIR/target
METADATA_FILE = "txkit_tokenizer.json"  # how the vocabulary was built, for reproducibility

MODELS = TOKENIZER_MODELS
_DEFAULTS = TokenizerOptions()  # the one declaration of every default below
# No-break spaces: NFKC would turn them into plain spaces, so "Nummer\xa028" would decode as
# "Nummer 28". They are kept (as part of the word) so that text round-trips exactly.
_NO_BREAK_SPACES = "\u00a0\u202f\u2007"
_BATCH_LINES = 1000  # lines per batch handed to the trainer and to encode_batch


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def _normalizer(normalization: str, lowercase: bool = False):
    """The `tokenizers` normalizer for a normalization name (NFKC keeps no-break spaces), then lowercasing."""
    from tokenizers import normalizers

    if normalization not in NORMALIZATIONS:
        raise TxkitError(f"unknown normalization {normalization!r} (choose {', '.join(NORMALIZATIONS)})")
    if lowercase:
        unicode_form = _normalizer(normalization)
        return normalizers.Sequence([unicode_form, normalizers.Lowercase()] if unicode_form else [normalizers.Lowercase()])
    if normalization == "none":
        return None
    unicode_form = getattr(normalizers, normalization)()
    if normalization in ("NFC", "NFD"):
        return unicode_form
    # Compatibility forms: protect each no-break space behind a private-use character, which
    # NFKC/NFKD leave alone, and put it back afterwards.
    steps = []
    for i, space in enumerate(_NO_BREAK_SPACES):
        steps.append(normalizers.Replace(space, chr(0xE000 + i)))
    steps.append(unicode_form)
    for i, space in enumerate(_NO_BREAK_SPACES):
        steps.append(normalizers.Replace(chr(0xE000 + i), space))
    return normalizers.Sequence(steps)


# A run of punctuation and symbols (Unicode P and S, except the "▁" that Metaspace writes for a space), with
# the "▁" before it if there is one: "▁dog." -> "▁dog" "." and "▁(a" -> "▁(" "a", "▁..." stays whole.
_PUNCTUATION_RUN = r"▁?[[\p{P}\p{S}]&&[^▁]]+"


def _pre_tokenizer(split_punctuation: bool):
    """Metaspace ("a dog." -> "▁a" "▁dog."), then with `split_punctuation` runs of punctuation apart.

    Without the split, BPE merges the punctuation that ends nearly every sentence into the word before
    it: a vocabulary of 8000 on Multi30k en-de spends ~1200 entries on pairs such as "▁Zigarette." beside
    "▁Zigarette", and the two get unrelated embeddings. Moses tokenization before BPE (subword-nmt, the
    literature's Multi30k set-up) and SentencePiece's script boundaries keep them apart. The split pieces
    are substrings of the Metaspace word, so decoding still gives back the text exactly.
    """
    from tokenizers import Regex, pre_tokenizers

    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    if not split_punctuation:
        return metaspace
    return pre_tokenizers.Sequence([metaspace, pre_tokenizers.Split(Regex(_PUNCTUATION_RUN), behavior="isolated")])


def _line_batches(files: Sequence[Path], errors: str) -> Iterator[list[str]]:
    """Lines of `files` in batches of _BATCH_LINES: the trainer streams them, nothing is held."""
    batch: list[str] = []
    for path in files:
        for line in iter_lines(path, errors=errors):
            batch.append(line.strip())
            if len(batch) == _BATCH_LINES:
                yield batch
                batch = []
    if batch:
        yield batch


def train_tokenizer(
    files: Sequence[str | Path],
    *,
    vocab_size: int = _DEFAULTS.vocab_size,
    model: str = _DEFAULTS.model,
    min_frequency: int = _DEFAULTS.min_frequency,
    limit_alphabet: int = _DEFAULTS.limit_alphabet,
    normalization: str = _DEFAULTS.normalization,
    byte_fallback: bool = _DEFAULTS.byte_fallback,
    lowercase: bool = _DEFAULTS.lowercase,
    split_punctuation: bool = _DEFAULTS.split_punctuation,
    errors: str = "strict",
    show_progress: bool = True,
):
    """Train one subword vocabulary on plain-text `files` (streamed) and wrap it for transformers.

    Args:
        vocab_size: size of the vocabulary, special and byte tokens included.
        model: "bpe" (the paper's choice) or "unigram".
        min_frequency: BPE only: a pair must occur this often to be merged.
        limit_alphabet: BPE only: keep at most this many distinct characters; rarer ones are
            spelled as bytes (or become <unk> without byte fallback).
        normalization: "NFKC" (default), "NFC", "NFKD", "NFD" or "none".
        byte_fallback: spell characters outside the vocabulary as UTF-8 byte tokens.
        lowercase: lowercase the text after the Unicode normalization; decoding gives lowercase text.
        split_punctuation: pre-tokenize runs of punctuation and symbols apart from letters and digits
            (see `_pre_tokenizer`), so that no subword mixes the two.
        errors: "strict" stops at the first line that is not UTF-8; "replace" substitutes U+FFFD.

    Returns:
        a `PreTrainedTokenizerFast` (not yet saved).
    """
    from tokenizers import Tokenizer, decoders, models, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if model not in MODELS:
        raise TxkitError(f"unknown tokenizer model {model!r} (choose bpe or unigram)")
    files = [check_text_file(f) for f in files]
    if not files:
        raise TxkitError("no training files given for the tokenizer")
    for f in files:
        if not _has_text(f):
            raise TxkitError(f"{f}: empty training file (no line with text); a vocabulary needs sentences to learn from")
    reserved = len(SPECIAL_TOKENS) + (len(BYTE_TOKENS) if byte_fallback else 0)
    if vocab_size <= reserved + 10:
        raise TxkitError(f"vocab size {vocab_size} is too small: {reserved} ids are reserved for special tokens")
    # The byte tokens go in as "special" so that the trainer reserves ids 4..259 for them; they are
    # turned back into ordinary vocabulary entries below.
    trainer_tokens = SPECIAL_TOKENS + (BYTE_TOKENS if byte_fallback else [])
    if model == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=byte_fallback))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            limit_alphabet=limit_alphabet,
            special_tokens=trainer_tokens,
            show_progress=show_progress,
        )
    else:
        tokenizer = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=trainer_tokens, unk_token="<unk>", show_progress=show_progress
        )
    tokenizer.normalizer = _normalizer(normalization, lowercase)
    tokenizer.pre_tokenizer = _pre_tokenizer(split_punctuation)
    # Counting lines first costs a fast binary pass and gives the progress bar its total.
    length = sum(count_lines(f) for f in files) if show_progress else None
    tokenizer.train_from_iterator(_line_batches(files, errors), trainer=trainer, length=length)

    # Byte tokens: ordinary vocabulary entries, not special tokens; byte fallback on (the Unigram
    # trainer does not carry the flag over from the model it trains).
    spec = json.loads(tokenizer.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in SPECIAL_TOKENS]
    spec["model"]["byte_fallback"] = byte_fallback
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    for token_id, token in enumerate(trainer_tokens):
        assert tokenizer.token_to_id(token) == token_id, f"{token} did not get id {token_id}"

    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A $B </s>", special_tokens=[("</s>", SPECIAL_TOKENS.index("</s>"))]
    )
    tokenizer.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def split_by_language(files: Sequence[str | Path], src_lang: str | None = None) -> tuple[list[Path], list[Path]]:
    """Split `files` into (source, target) by their language suffix (`train.en`, `train.de`).

    The source language is `src_lang`, or else the first file's suffix. Exactly two languages
    must occur.
    """
    by_lang: dict[str, list[Path]] = {}
    for f in map(Path, files):
        lang = f.suffix.lstrip(".")
        if not lang:
            raise TxkitError(f"{f}: no language suffix (name files like train.en, train.de for --separate)")
        by_lang.setdefault(lang, []).append(f)
    if len(by_lang) != 2:
        found = ", ".join(sorted(by_lang)) or "none"
        raise TxkitError(f"separate vocabularies need files of exactly two languages, found: {found}")
    src_lang = src_lang or next(iter(by_lang))
    if src_lang not in by_lang:
        raise TxkitError(f"no file with the source language suffix .{src_lang} among {', '.join(map(str, files))}")
    (tgt_lang,) = set(by_lang) - {src_lang}
    return by_lang[src_lang], by_lang[tgt_lang]


def _has_text(path: Path) -> bool:
    """Whether a file holds at least one line that is not blank (stops reading at the first)."""
    with open(path, "rb") as fh:
        return any(line.strip() for line in fh)


def build_tokenizer(
    files: Sequence[str | Path],
    out_dir: str | Path,
    *,
    tgt_files: Sequence[str | Path] | None = None,
    vocab_size: int = _DEFAULTS.vocab_size,
    model: str = _DEFAULTS.model,
    joint: bool = _DEFAULTS.joint,
    src_lang: str | None = None,
    min_frequency: int = _DEFAULTS.min_frequency,
    limit_alphabet: int = _DEFAULTS.limit_alphabet,
    normalization: str = _DEFAULTS.normalization,
    byte_fallback: bool = _DEFAULTS.byte_fallback,
    lowercase: bool = _DEFAULTS.lowercase,
    split_punctuation: bool = _DEFAULTS.split_punctuation,
    errors: str = "strict",
    show_progress: bool = True,
    stats: bool = True,
    stats_lines: int = 100_000,
    tags: Sequence[str] = (),
) -> "TokenizerReport":
    """Train the vocabulary (joint, or one per side) on `files`, save it in `out_dir`, report on it.

    Joint (the default): one vocabulary trained on all `files`. Separate: the source vocabulary on
    `files` and the target one on `tgt_files`; without `tgt_files`, `files` are split by language
    suffix (`split_by_language`). The target tokenizer is saved in `out_dir/target`.
    The keywords of txkit.options.TokenizerOptions (the recipe's `tokenizer:` section) take their defaults
    from it. `tags` (a recipe's data.train tags such as <2de>) become special tokens of the source tokenizer,
    after the learned vocabulary: matched whole before normalization, never split, never learned from text.
    """
    from txkit import atomic

    out_dir = Path(out_dir)
    # Before the training: the output must be a folder txkit may replace, and none of the inputs.
    atomic.check_output_dir(out_dir, "--out", [("training file", f) for f in [*files, *(tgt_files or [])]])
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "tokenizer.json").is_file():
        raise TxkitError(f"--out {out_dir}: exists and is not a tokenizer folder; refusing to replace it")
    if tgt_files is not None:
        joint = False
    elif not joint:
        files, tgt_files = split_by_language(files, src_lang)
    settings = dict(
        vocab_size=vocab_size,
        model=model,
        min_frequency=min_frequency,
        limit_alphabet=limit_alphabet,
        normalization=normalization,
        byte_fallback=byte_fallback,
        lowercase=lowercase,
        split_punctuation=split_punctuation,
        errors=errors,
        show_progress=show_progress,
    )
    src_files = [check_text_file(f) for f in files]
    tgt_files = [check_text_file(f) for f in tgt_files] if tgt_files is not None else None
    if joint:
        src_tok = tgt_tok = train_tokenizer(src_files, **settings)
    else:
        src_tok = train_tokenizer(src_files, **settings)
        tgt_tok = train_tokenizer(tgt_files, **settings)
    if tags:
        add_tags(src_tok, tags)
    settings.pop("show_progress")
    metadata = dict(
        joint=joint,
        **settings,
        src_files=[str(f) for f in src_files],
        tgt_files=[str(f) for f in tgt_files] if tgt_files else None,
    )
    with atomic.building_dir(out_dir) as tmp:  # an existing tokenizer is replaced only by a complete one
        save_tokenizers(src_tok, tgt_tok, tmp)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")

    report = TokenizerReport(out_dir=str(out_dir), joint=joint, model=model)
    if stats:
        sides = [("joint", src_tok, src_files)] if joint else [("source", src_tok, src_files), ("target", tgt_tok, tgt_files)]
        for side, tok, side_files in sides:
            report.sides.append(tokenizer_stats(tok, side_files, side, max_lines=stats_lines, errors=errors))
    return report


def add_tags(tok, tags: Sequence[str]) -> None:
    """Add source tags as special tokens: ids after the vocabulary; the space after a tag belongs to it (rstrip),
    so "<2de> a dog" encodes as <2de> followed by exactly the ids of "a dog"."""
    from tokenizers import AddedToken

    added = [AddedToken(t, special=True, rstrip=True, normalized=False) for t in tags]
    tok.add_special_tokens({"additional_special_tokens": added})


# --------------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------------


def save_tokenizers(src_tok, tgt_tok, out_dir: str | Path) -> None:
    """Save the tokenizer(s) in `out_dir` (and `out_dir/target` when the vocabularies are separate).

    Use this when saving a model too, so that the model folder carries its tokenizer(s).
    """
    out_dir = Path(out_dir)
    src_tok.save_pretrained(out_dir)
    target_dir = out_dir / TARGET_SUBDIR
    if tgt_tok is not None and tgt_tok is not src_tok:
        tgt_tok.save_pretrained(target_dir)
    elif (target_dir / "tokenizer.json").is_file():
        shutil.rmtree(target_dir)  # a stale target tokenizer would make the folder read as separate


def _load(path: Path):
    from transformers import AutoTokenizer

    from txkit.modelfiles import check_tokenizer

    if not (path / "tokenizer.json").is_file():
        raise TxkitError(f"{path}: not a tokenizer folder (no tokenizer.json); build one with `txkit tokenizer build`")
    check_tokenizer(path)  # a cut or edited tokenizer.json: one line naming it, not a serde traceback
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TxkitError(f"{path}: cannot load the tokenizer ({first})") from None


def load_tokenizers(path: str | Path):
    """(source tokenizer, target tokenizer) from a folder; the same object twice when joint."""
    path = Path(path)
    src_tok = _load(path)
    if (path / TARGET_SUBDIR / "tokenizer.json").is_file():
        return src_tok, _load(path / TARGET_SUBDIR)
    return src_tok, src_tok


def load_tokenizer(path: str | Path):
    """The source (or joint) tokenizer of a folder, as `AutoTokenizer.from_pretrained` loads it."""
    return _load(Path(path))


def config_kwargs_from_tokenizer(src_tok, tgt_tok=None) -> dict:
    """The vocabulary fields of `TxkitConfig`, read from the tokenizer(s).

    `TxkitConfig.from_preset(name, **config_kwargs_from_tokenizer(src_tok, tgt_tok))`.
    `tgt_vocab_size` is None for a joint vocabulary (pass tgt_tok=None or the same object).
    """
    kwargs = dict(
        vocab_size=len(src_tok),
        tgt_vocab_size=None,
        pad_token_id=src_tok.pad_token_id,
        bos_token_id=src_tok.bos_token_id,
        eos_token_id=src_tok.eos_token_id,
        unk_token_id=src_tok.unk_token_id,
        # The decoder starts from <pad> (Marian convention); labels carry no <s>.
        decoder_start_token_id=src_tok.pad_token_id,
    )
    if tgt_tok is not None and tgt_tok is not src_tok:
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id"):
            if getattr(tgt_tok, name) != kwargs[name]:
                raise TxkitError(
                    f"source and target tokenizers disagree on {name}: {kwargs[name]} vs {getattr(tgt_tok, name)}"
                )
        kwargs["tgt_vocab_size"] = len(tgt_tok)
    return kwargs


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


@dataclass
class FileStats:
    """How one file tokenizes (on its first `lines` lines)."""

    path: str
    lines: int
    tokens: int  # subwords, without </s>
    unk: int  # <unk> tokens
    byte_tokens: int  # characters spelled as bytes
    round_trip: int  # lines with decode(encode(line)) == line

    @property
    def tokens_per_sentence(self) -> float:
        return self.tokens / max(self.lines, 1)

    @property
    def unk_rate(self) -> float:
        return self.unk / max(self.tokens, 1)

    @property
    def byte_rate(self) -> float:
        return self.byte_tokens / max(self.tokens, 1)

    @property
    def round_trip_rate(self) -> float:
        return self.round_trip / max(self.lines, 1)


@dataclass
class TokenizerStats:
    """What a user checks about one vocabulary: size, character coverage, per-file token counts."""

    side: str  # "joint", "source" or "target"
    vocab_size: int
    alphabet_size: int  # characters that are tokens of their own
    char_coverage: float  # share of the (non-space) characters of the text that the alphabet covers
    files: list[FileStats] = field(default_factory=list)


@dataclass
class TokenizerReport:
    """Result of `build_tokenizer`: where it was saved and the statistics of each vocabulary."""

    out_dir: str
    joint: bool
    model: str
    sides: list[TokenizerStats] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        """A plain-text table, as `txkit tokenizer build` prints it."""
        kind = "joint" if self.joint else "separate"
        lines = [f"{kind} {self.model.upper()} vocabulary saved to {self.out_dir}"]
        for side in self.sides:
            lines.append(format_stats(side))
        return "\n".join(lines)


def format_stats(stats: TokenizerStats) -> str:
    """A plain-text table of one vocabulary's statistics."""
    out = [
        f"{stats.side}: {stats.vocab_size} tokens; {stats.alphabet_size} characters cover "
        f"{100 * stats.char_coverage:.3f}% of the text",
        f"  {'file':<40} {'lines':>9} {'tokens/sent':>11} {'unk':>8} {'bytes':>8} {'round trip':>10}",
    ]
    for f in stats.files:
        name = f.path if len(f.path) <= 40 else "..." + f.path[-37:]
        out.append(
            f"  {name:<40} {f.lines:>9} {f.tokens_per_sentence:>11.2f} {100 * f.unk_rate:>7.3f}% "
            f"{100 * f.byte_rate:>7.3f}% {100 * f.round_trip_rate:>9.3f}%"
        )
    return "\n".join(out)


def _alphabet(tok) -> set[str]:
    """Characters that are vocabulary tokens on their own (with or without the word-start "▁")."""
    reserved = set(SPECIAL_TOKENS) | set(BYTE_TOKENS)
    chars = set()
    for token in tok.get_vocab():
        if token in reserved:
            continue
        piece = token[1:] if token.startswith("▁") and len(token) == 2 else token
        if len(piece) == 1:
            chars.add(piece)
    chars.discard("▁")
    return chars


def tokenizer_stats(
    tok,
    files: Iterable[str | Path],
    side: str = "joint",
    *,
    max_lines: int | None = 100_000,
    errors: str = "strict",
) -> TokenizerStats:
    """Vocabulary size, character coverage and, per file, tokens per sentence, <unk> and byte
    rates and the round-trip rate, on the first `max_lines` lines of each file."""
    backend = tok.backend_tokenizer
    unk_id = tok.unk_token_id
    vocab = tok.get_vocab()
    byte_ids = {vocab[t] for t in BYTE_TOKENS if t in vocab}
    normalize = backend.normalizer.normalize_str if backend.normalizer is not None else (lambda s: s)
    # A lowercasing tokenizer round-trips when it gives back the lowercased text.
    fold = str.lower if lowercases(tok) else (lambda s: s)
    alphabet = _alphabet(tok)
    char_counts: Counter[str] = Counter()
    result = TokenizerStats(side=side, vocab_size=len(tok), alphabet_size=len(alphabet), char_coverage=1.0)

    for path in files:
        fs = FileStats(path=str(path), lines=0, tokens=0, unk=0, byte_tokens=0, round_trip=0)
        for batch in _first_lines(Path(path), max_lines, errors):
            encodings = backend.encode_batch_fast(batch, add_special_tokens=False)
            ids = [e.ids for e in encodings]
            decoded = backend.decode_batch(ids, skip_special_tokens=True)
            fs.lines += len(batch)
            fs.round_trip += sum(fold(a) == b for a, b in zip(batch, decoded))
            for seq in ids:
                fs.tokens += len(seq)
                fs.unk += seq.count(unk_id)
                fs.byte_tokens += sum(i in byte_ids for i in seq)
            char_counts.update(normalize("\n".join(batch)))
        result.files.append(fs)

    # Spaces become "▁" and are always covered; count the other characters.
    total = sum(n for c, n in char_counts.items() if not c.isspace())
    covered = sum(n for c, n in char_counts.items() if not c.isspace() and c in alphabet)
    result.char_coverage = covered / total if total else 1.0
    return result


def _first_lines(path: Path, max_lines: int | None, errors: str) -> Iterator[list[str]]:
    batch: list[str] = []
    for n, line in enumerate(iter_lines(path, errors=errors)):
        if max_lines is not None and n >= max_lines:
            break
        batch.append(line.strip())
        if len(batch) == _BATCH_LINES:
            yield batch
            batch = []
    if batch:
        yield batch


def lowercases(tok) -> bool:
    """Whether the tokenizer lowercases its input (tokenizer.lowercase), so that it writes lowercase only."""
    normalizer = tok.backend_tokenizer.normalizer
    return normalizer is not None and normalizer.normalize_str("A") == "a"


def is_round_trip(tok, text: str) -> bool:
    """decode(encode(text)) == text (its lowercase for a lowercasing tokenizer), special tokens dropped."""
    decoded = tok.decode(tok(text)["input_ids"], skip_special_tokens=True)
    return decoded == (text.lower() if lowercases(tok) else text)

