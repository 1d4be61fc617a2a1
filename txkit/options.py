"""Settings declared once: every allowed value, and the option dataclasses that the recipe, the library and
the command line all derive from.

    SearchOptions     how to search: the recipe's `eval` section, `DecodeOptions`, `txkit translate`'s
                      options and `txkit run`'s re-translation fingerprint are made from its fields, so a
                      new search key is one line here
    DecodeOptions     SearchOptions plus what only translating files needs (n-best, sampling, device, ...)
    TokenizerOptions  how to build a vocabulary: the recipe's `tokenizer` section, `build_tokenizer`'s
                      defaults and `txkit tokenizer build`'s options
    ScoreOptions      how translations are scored (txkit.evaluation), handed around as one object

Each field carries its help text (`setting(default, help)`), which the recipe documentation and the
command line show. Light module: the standard library only, so the recipe schema and `txkit --help` can
import it without torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Literal

from txkit.errors import TxkitError

# ----------------------------------------------------------------------------- allowed values

LP_FORMS = ("gnmt", "hf")  # length penalty: (5+|Y|)^a / 6^a (the paper), |Y|^a (transformers)
OVERLONG_POLICIES = ("truncate", "empty")  # sources longer than the model's positions
DTYPES = ("auto", "fp32", "bf16", "fp16")  # decoding precision
SCHEDULES = ("noam", "inverse_sqrt", "linear", "cosine")  # learning-rate schedules
MIXED_PRECISION = ("no", "bf16", "fp16")
BEST_METRICS = ("bleu", "loss", "ppl")  # validation metric that picks RUN/best
FINAL_WEIGHTS = ("ema", "trained")  # what txkit run averages into the final model when train.ema_decay is on
ACTIVATIONS = ("relu", "gelu")  # TxkitConfig.activation_function
TOKENIZER_MODELS = ("bpe", "unigram")
NORMALIZATIONS = ("NFKC", "NFC", "NFKD", "NFD", "none")
METRICS = ("bleu", "chrf", "ter", "bleu_tokenized")  # bleu_tokenized: the literature's, see ScoreOptions.moses_lang
BLEU_TOKENIZERS = ("13a", "intl", "none", "zh", "char")  # sacreBLEU's that need no extra package
ENGINES = ("auto", "txkit", "ctranslate2")  # what runs the search (txkit.engines.choose_engine)
QUANTIZATIONS = ("none", "int8")  # decoding weights: as trained, or int8 linear layers


def setting(default, help: str, **metadata):
    """A dataclass field with its default and the one-line help the documentation and CLI show."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def help_of(cls: type, name: str) -> str:
    """The help text of field `name` of an option dataclass."""
    return next(f.metadata["help"] for f in fields(cls) if f.name == name)


def default_of(cls: type, name: str):
    """The default of field `name` of an option dataclass."""
    f = next(f for f in fields(cls) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


# ----------------------------------------------------------------------------- search


@dataclass
class SearchOptions:
    """How translations are searched: the paper's beam search by default (beam 4, alpha 0.6, source + 50)."""

    beam_size: int = setting(4, "beam size (paper: 4); 1 = greedy search")
    length_penalty: float = setting(0.6, "GNMT length penalty alpha (paper: 0.6)")
    max_len_a: float = setting(1.0, "output length limit a * source length + b (paper: a=1)")
    max_len_b: int = setting(50, "output length limit a * source length + b (paper: b=50)")
    lp_form: Literal[LP_FORMS] = setting("gnmt", "length penalty form: gnmt (5+|Y|)^a/6^a (paper) or hf |Y|^a")
    max_tokens: int = setting(4096, "decoding batch budget in source tokens, padding included")

    def search_options(self) -> dict:
        """The SearchOptions fields of this object (also of a subclass such as the recipe's eval section)."""
        return {f.name: getattr(self, f.name) for f in fields(SearchOptions)}


@dataclass
class DecodeOptions(SearchOptions):
    """How `txkit translate` (and txkit.decoding's Translator) searches and batches."""

    nbest: int = setting(1, "hypotheses per sentence (<= beam size; with sampling, that many samples)")
    sampling: bool = setting(False, "ancestral sampling instead of search")
    top_k: int = setting(0, "sampling: keep the k most likely tokens (0 = all)")
    top_p: float = setting(1.0, "sampling: keep the smallest set of tokens whose probability reaches p")
    temperature: float = setting(1.0, "sampling: divide logits by this")
    seed: int = setting(0, "sampling: random seed")
    max_sentences: int | None = setting(None, "at most this many sentences per batch")
    device: str | None = setting(None, "load_model only: cpu, cuda, cuda:1 (default: the GPU when there is one)")
    dtype: str | None = setting(None, "load_model only: auto, fp32, bf16, fp16 (auto: bf16/fp16 on GPU, fp32 on CPU)")
    overlong: str = setting("truncate", "sources longer than the model's positions: truncate, or empty")
    engine: str = setting(
        "auto", "auto (CTranslate2 where it gives txkit's translations and is installed, else txkit), txkit (its "
        "own search) or ctranslate2 (a cached conversion; hf form only)"
    )
    quantize: str = setting("none", "none, or int8: linear layers in int8 (CPU; CTranslate2's int8 with ctranslate2)")

    def check(self) -> None:
        """Raise a TxkitError naming the first impossible option."""
        if self.beam_size < 1:
            raise TxkitError(f"beam size must be at least 1, not {self.beam_size}")
        if self.nbest < 1:
            raise TxkitError(f"nbest must be at least 1, not {self.nbest}")
        if not self.sampling and self.nbest > self.beam_size:
            raise TxkitError(f"nbest ({self.nbest}) cannot exceed the beam size ({self.beam_size})")
        if self.lp_form not in LP_FORMS:
            raise TxkitError(f"unknown length-penalty form {self.lp_form!r} (choose {' or '.join(LP_FORMS)})")
        if self.overlong not in OVERLONG_POLICIES:
            raise TxkitError(f"unknown overlong policy {self.overlong!r} (choose {' or '.join(OVERLONG_POLICIES)})")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise TxkitError(f"unknown dtype {self.dtype!r} (choose {', '.join(DTYPES)})")
        if self.max_tokens < 1 or (self.max_sentences is not None and self.max_sentences < 1):
            raise TxkitError("max_tokens and max_sentences must be positive")
        if self.engine not in ENGINES:
            choices = f"{', '.join(ENGINES[:-1])} or {ENGINES[-1]}"
            raise TxkitError(f"--engine {self.engine}: unknown engine (choose {choices})")
        if self.quantize not in QUANTIZATIONS:
            raise TxkitError(f"--quantize {self.quantize}: unknown quantization (choose {' or '.join(QUANTIZATIONS)})")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise TxkitError("sampling needs temperature > 0, 0 < top_p <= 1 and top_k >= 0")

    @classmethod
    def from_dict(cls, values: dict) -> "DecodeOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TxkitError(f"unknown decoding option(s): {', '.join(unknown)}")
        return cls(**values)


# ----------------------------------------------------------------------------- tokenizers


@dataclass
class TokenizerOptions:
    """How a subword vocabulary is built.

    The default size is the paper's en-de vocabulary, 37000, as every other default is the paper's (the
    recipe defaults describe its base model on WMT14); the Multi30k recipes set 8000, which a small corpus
    wants. It was 37000 in the recipe but 8000 in `build_tokenizer` and `txkit tokenizer build`.
    """

    vocab_size: int = setting(37000, "vocabulary size, special and byte tokens included (paper en-de: ~37000)")
    model: Literal[TOKENIZER_MODELS] = setting("bpe", "subword model: bpe (the paper) or unigram")
    joint: bool = setting(True, "one vocabulary shared by source and target (paper: true)")
    min_frequency: int = setting(2, "BPE: minimum pair frequency for a merge")
    limit_alphabet: int = setting(1000, "BPE: most distinct characters kept; rarer ones are spelled as bytes")
    normalization: str = setting("NFKC", "Unicode normalization: NFKC, NFC, NFKD, NFD or none")
    byte_fallback: bool = setting(True, "spell characters outside the vocabulary as UTF-8 bytes (no <unk>)")
    lowercase: bool = setting(
        False, "lowercase all text before segmenting it: the model reads and writes lowercase only (the Multi30k "
        "literature's set-up; cased scores then mean little)"
    )
    split_punctuation: bool = setting(
        False, "never merge punctuation and symbols with letters or digits (\"dog.\" is \"dog\" + \".\"), as Moses "
        "tokenization before BPE does"
    )

    def tokenizer_options(self) -> dict:
        """The TokenizerOptions fields of this object (also of the recipe's tokenizer section)."""
        return {f.name: getattr(self, f.name) for f in fields(TokenizerOptions)}


# ----------------------------------------------------------------------------- scores


@dataclass
class ScoreOptions:
    """How txkit.evaluation scores translations (sacreBLEU's defaults, 95% bootstrap intervals)."""

    metrics: tuple[str, ...] = setting(("bleu", "chrf"), "any of bleu, chrf, ter")
    lowercase: bool = setting(False, "case-insensitive BLEU and chrF (TER is always case-insensitive, as in sacreBLEU)")
    tokenize: str = setting("13a", "BLEU's tokenizer: 13a (WMT), intl, none, zh, char")
    chrf_word_order: int = setting(0, "0 for chrF, 2 for chrF++")
    bootstrap: int = setting(1000, "bootstrap samples for the intervals and the paired test; 0 = no interval")
    seed: int | None = setting(12345, "the resampling seed (sacreBLEU's default)")
    moses_lang: str | None = setting(
        None,
        "bleu_tokenized's Moses tokenizer language (the target language): the literature's BLEU on lowercased, "
        "Moses-tokenized text, a comparison figure, never the main score",
    )
