"""Corpus specs, the strings that name a parallel corpus (`data.train`, `data.valid`, `eval.test`, the CLI's
CORPUS): parsed here and nowhere else.

    DIR/NAME              a prefix: the line-aligned files DIR/NAME.<src> and DIR/NAME.<tgt>
    DIR/NAME.tsv          source TAB target per line
    DIR/NAME.jsonl        JSON objects per line
    DIR/NAME.parquet      a Parquet table
    hub:OWNER/NAME        a Hub dataset

`data.train` may also name several corpora, each with a weight and a source tag: `parse_train` checks that
form and `train_corpora` reads either form (the mixing itself is txkit.mixing's).

Light module (the standard library only): the recipe, the loaders, `txkit run` and the model card use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from txkit.errors import TxkitError

HUB_PREFIX = "hub:"
FILE_FORMATS = (".tsv", ".jsonl", ".parquet")  # a corpus in one file; any other spec is a prefix
DESCRIPTION = ".tsv, .jsonl, .parquet, a prefix DIR/NAME for DIR/NAME.<src> + DIR/NAME.<tgt>, or hub:OWNER/NAME"


@dataclass(frozen=True)
class CorpusSpec:
    """One parsed spec. `text` is the spec as given (relative or resolved against $TXKIT_DATA: resolving
    keeps the kind); `kind` is "prefix", "tsv", "jsonl", "parquet" or "hub"."""

    text: str
    kind: str

    @property
    def is_hub(self) -> bool:
        return self.kind == "hub"

    @property
    def hub_id(self) -> str:
        """OWNER/NAME of a `hub:` spec."""
        return self.text[len(HUB_PREFIX) :]

    @property
    def path(self) -> Path:
        """The prefix or the file (not for `hub:` specs)."""
        return Path(self.text)

    def files(self, src_lang: str, tgt_lang: str) -> list[Path]:
        """The local files the corpus reads: PREFIX.SRC and PREFIX.TGT, the one file, or none (hub:)."""
        if self.is_hub:
            return []
        if self.kind == "prefix":
            return [Path(f"{self.text}.{src_lang}"), Path(f"{self.text}.{tgt_lang}")]
        return [self.path]

    def target_file(self, tgt_lang: str) -> str:
        """Where the target side (the references of a test set) is read from: PREFIX.TGT for a prefix, the
        file itself for a one-file corpus, the spec for a Hub dataset."""
        if self.is_hub:
            return self.text
        return str(self.files("", tgt_lang)[-1])

    @property
    def name(self) -> str:
        """A short name: `multi30k/test2016` -> test2016, `x/newstest.tsv` -> newstest, `hub:wmt/wmt14` ->
        wmt14-test (names the translation and score files of a test set)."""
        if self.is_hub:
            return self.hub_id.split("/")[-1] + "-test"
        name = self.path.name
        return name[: -len(self.path.suffix)] if self.kind != "prefix" else name

    @property
    def collection(self) -> str:
        """What the corpus belongs to: the Hub dataset id, else its folder's name (multi30k), else its name."""
        if self.is_hub:
            return self.hub_id
        return self.path.parent.name or self.name


def parse_corpus_spec(spec: str | Path) -> CorpusSpec:
    """Parse a corpus spec; which kind it is depends only on its `hub:` prefix or its file suffix."""
    text = str(spec)
    if text.startswith(HUB_PREFIX):
        return CorpusSpec(text, "hub")
    suffix = Path(text).suffix.lower()
    return CorpusSpec(text, suffix[1:] if suffix in FILE_FORMATS else "prefix")


# ----------------------------------------------------------------------------- data.train: several corpora

_TAG = re.compile(r"^\S+$")  # a tag is one whitespace-free token, such as <2de> or <BT>
_ENTRY_KEYS = ("path", "weight", "tag", "src_lang", "tgt_lang")


@dataclass(frozen=True)
class TrainCorpus:
    """One training corpus: its spec (as `data.train`'s string form), its weight, its source tag ("" = none), and
    its language codes when they differ from data.src_lang / data.tgt_lang ("" = those; a multilingual recipe
    reads multi30k/train.de, .fr and .cs as three corpora)."""

    path: str
    weight: float = 1.0
    tag: str = ""
    src_lang: str = ""
    tgt_lang: str = ""

    def langs(self, data) -> tuple[str, str]:
        """(source, target) language codes of this corpus, given the recipe's data section."""
        return self.src_lang or data.src_lang, self.tgt_lang or data.tgt_lang


def parse_train(value, source: str = "recipe"):
    """`data.train` checked and normalised: a corpus spec string as is, or a list of {path, weight, tag} dicts
    (every key present). Errors name the key (`data.train[1].weight`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise TxkitError(f"{source}: data.train must be a corpus spec or a list of {{path, weight, tag}} entries, "
                         f"not {value!r}")  # fmt: skip
    entries, tags = [], set()
    for i, entry in enumerate(value):
        key = f"data.train[{i}]"
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise TxkitError(f"{source}: {key} must be a mapping such as {{path: multi30k/train, weight: 1}}, "
                             f"not {entry!r}")  # fmt: skip
        unknown = [k for k in entry if k not in _ENTRY_KEYS]
        if unknown:
            raise TxkitError(f"{source}: {key}.{unknown[0]}: unknown key (valid: {', '.join(_ENTRY_KEYS)})")
        path = entry.get("path")
        if not isinstance(path, str) or not path.strip():
            raise TxkitError(f"{source}: {key}.path is required: the corpus spec (e.g. multi30k/train)")
        weight = entry.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < float("inf"):
            raise TxkitError(f"{source}: {key}.weight must be a positive number, not {weight!r}")
        tag = entry.get("tag") or ""
        if not isinstance(tag, str) or (tag and not _TAG.match(tag)):
            raise TxkitError(f"{source}: {key}.tag must be one token without spaces, such as \"<2de>\", not {tag!r}")
        if tag in tags:
            raise TxkitError(f"{source}: {key}.tag {tag} is used by another corpus; each corpus has its own tag")
        if tag:
            tags.add(tag)
        langs = {k: entry.get(k) or "" for k in ("src_lang", "tgt_lang")}
        for name, lang in langs.items():
            if not isinstance(lang, str) or (lang and not _TAG.match(lang)):
                raise TxkitError(f"{source}: {key}.{name} must be a language code such as de, not {lang!r}")
        entries.append({"path": path, "weight": float(weight), "tag": tag, **langs})
    return entries


def train_corpora(recipe) -> list[TrainCorpus]:
    """The recipe's training corpora, for either form of `data.train`."""
    train = recipe.data.train
    if isinstance(train, str):
        return [TrainCorpus(train)] if train else []
    return [TrainCorpus(e["path"], float(e["weight"]), e["tag"], e.get("src_lang", ""), e.get("tgt_lang", ""))
            for e in train]  # fmt: skip


def train_tags(recipe) -> list[str]:
    """The source tags of the training corpora, in recipe order (each a special token of the tokenizer)."""
    return [c.tag for c in train_corpora(recipe) if c.tag]


def is_mixture(corpora: list[TrainCorpus]) -> bool:
    """True when the data path must mix: more than one corpus. One corpus (tagged or not) is read as always."""
    return len(corpora) > 1


def tag_text(tag: str, text: str) -> str:
    """The source text a tagged corpus trains on, and `txkit translate --tag` translates: "<2de> text"."""
    return f"{tag} {text}" if tag else text
