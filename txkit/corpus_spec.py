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


def _entry_path(source: str, key: str, entry: dict, valid, example: str) -> str:
    """A list entry's `path`, after refusing keys outside `valid` (both in one line naming `key`)."""
    unknown = [k for k in entry if k not in valid]
    if unknown:
        raise TxkitError(f"{source}: {key}.{unknown[0]}: unknown key (valid: {', '.join(valid)})")
    path = entry.get("path")
    if not isinstance(path, str) or not path.strip():
        raise TxkitError(f"{source}: {key}.path is required: the corpus spec (e.g. {example})")
    return path


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
        path = _entry_path(source, key, entry, _ENTRY_KEYS, "multi30k/train")
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


# ----------------------------------------------------------------------------- eval.test: directions

_TEST_KEYS = ("path", "tag", "src_lang", "tgt_lang")


@dataclass(frozen=True)
class EvalSet:
    """One test set `txkit run` translates and scores, in one direction.

    `name` names its stage markers and RUN/eval/<name>.json: the corpus's short name (test2016), followed by
    the direction (test2016.en-fr) when the recipe trains several directions. `tag` goes before every source
    sentence; `src_lang` / `tgt_lang` pick the files (PREFIX.SRC, PREFIX.TGT) and the references' language."""

    name: str
    path: str
    tag: str
    src_lang: str
    tgt_lang: str
    directional: bool = False  # the recipe trains several directions: the name and the markers carry this one

    @property
    def base(self) -> str:
        """The corpus's short name without the direction: RUN/translations/<base>.<tgt_lang>."""
        return parse_corpus_spec(self.path).name


def parse_tests(value, source: str = "recipe") -> list:
    """`eval.test` checked and normalised: a list of corpus spec strings, or of {path, tag, src_lang, tgt_lang}
    mappings (every key present) that name the direction to score. Errors name the key (`eval.test[1].tag`)."""
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise TxkitError(f"{source}: eval.test must be a list of corpus specs or {{path, tag, tgt_lang}} entries, "
                         f"not {value!r}")  # fmt: skip
    entries = []
    for i, entry in enumerate(value):
        key = f"eval.test[{i}]"
        if isinstance(entry, str):
            entries.append(entry)
            continue
        if not isinstance(entry, dict):
            raise TxkitError(f"{source}: {key} must be a corpus spec or a mapping such as "
                             f"{{path: multi30k/test2016, tag: \"<2fr>\", tgt_lang: fr}}, not {entry!r}")  # fmt: skip
        path = _entry_path(source, key, entry, _TEST_KEYS, "multi30k/test2016")
        normal = {"path": path}
        for name in ("tag", "src_lang", "tgt_lang"):
            text = entry.get(name) or ""
            if not isinstance(text, str) or (text and not _TAG.match(text)):
                raise TxkitError(f"{source}: {key}.{name} must be one token without spaces, not {text!r}")
            normal[name] = text
        entries.append(normal)
    return entries


def train_directions(recipe) -> list[tuple[str, str, str]]:
    """(source language, target language, tag) of every training corpus, each once, in recipe order."""
    found = [(*c.langs(recipe.data), c.tag) for c in train_corpora(recipe)]
    return list(dict.fromkeys(found))


def is_multidirectional(recipe) -> bool:
    """True when the training corpora go into more than one language pair (a multilingual model)."""
    return len({(s, t) for s, t, _ in train_directions(recipe)}) > 1


def _describe(directions) -> str:
    return ", ".join(f"{s}->{t}" + (f" {tag}" if tag else "") for s, t, tag in directions)


def eval_sets(recipe, source: str = "eval.test") -> list[EvalSet]:
    """The directions `txkit run` scores: a plain spec is scored in the recipe's direction (data.src_lang ->
    data.tgt_lang, data.eval_tag), or, when the recipe trains several language pairs, once in each of them with
    that pair's tag; a mapping names its direction by tag or target language. A direction the model is not trained
    for, or two tests of one name, is an error naming the entry."""
    d = recipe.data
    directions = train_directions(recipe)
    several = is_multidirectional(recipe)
    found: list[EvalSet] = []
    for i, entry in enumerate(recipe.eval.test):
        key = f"{source}[{i}]"
        if isinstance(entry, str):
            if not several:
                found.append(EvalSet(parse_corpus_spec(entry).name, entry, d.eval_tag, d.src_lang, d.tgt_lang))
                continue
            pairs = list(dict.fromkeys((s, t) for s, t, _ in directions))
            for s, t in pairs:
                tags = [tag for s2, t2, tag in directions if (s2, t2) == (s, t)]
                tag = d.eval_tag if d.eval_tag in tags else tags[0]
                found.append(_direction(entry, s, t, tag))
            continue
        tag, src, tgt = entry["tag"], entry["src_lang"], entry["tgt_lang"]
        match = [(s, t, g) for s, t, g in directions
                 if (not tag or g == tag) and (not src or s == src) and (not tgt or t == tgt)]  # fmt: skip
        if not match:
            pair = f"{src or d.src_lang}->{tgt}" if tgt else f"{src}->*" if src else ""
            wanted = " with tag ".join(x for x in (pair, tag) if x) if pair else f"the tag {tag}"
            raise TxkitError(f"{key}: the model is not trained for {wanted} (data.train's directions: "
                             f"{_describe(directions)})")  # fmt: skip
        # no tag named: the recipe's own (data.eval_tag) where it fits this direction, else the direction's tag
        s, t, g = next((m for m in match if not tag and m[2] == d.eval_tag), match[0])
        found.append(_direction(entry["path"], s, t, g) if several else
                     EvalSet(parse_corpus_spec(entry["path"]).name, entry["path"], g, s, t))  # fmt: skip
    names: dict[str, str] = {}
    for test in found:
        if test.name in names:
            raise TxkitError(f"{source}: {names[test.name]} and {test.path} would both be called {test.name}; "
                             "rename one")  # fmt: skip
        names[test.name] = test.path
    return found


def _direction(path: str, src: str, tgt: str, tag: str) -> EvalSet:
    return EvalSet(f"{parse_corpus_spec(path).name}.{src}-{tgt}", path, tag, src, tgt, directional=True)
