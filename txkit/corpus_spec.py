"""Corpus specs, the strings that name a parallel corpus (`data.train`, `data.valid`, `eval.test`, the CLI's
CORPUS): parsed here and nowhere else.

    DIR/NAME              a prefix: the line-aligned files DIR/NAME.<src> and DIR/NAME.<tgt>
    DIR/NAME.tsv          source TAB target per line
    DIR/NAME.jsonl        JSON objects per line
    DIR/NAME.parquet      a Parquet table
    hub:OWNER/NAME        a Hub dataset

Light module (the standard library only): the recipe, the loaders, `txkit run` and the model card use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
