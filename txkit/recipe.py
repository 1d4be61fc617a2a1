"""Recipes: one YAML file per experiment, read into typed dataclasses, with command-line overrides. The
schema only: loading the recipe's corpora and building its tokenizer is txkit.prepare's job.

A recipe has six sections, `model`, `tokenizer`, `data`, `train`, `eval` and `distill` (off unless it names a
teacher). Every key has a default (the paper's value where the paper gives one) and a help text, both declared
below; a recipe only writes what differs. `txkit train RECIPE --set train.max_steps=300` overrides any key. A key that does
not exist is an error naming the closest valid one, so a typo never silently falls back to a default.

Paths:
    * data paths (`data.train`, `data.valid`, `eval.test`, `tokenizer.files`) that are relative resolve
      against the environment variable TXKIT_DATA (default `./data`), so one recipe runs on any machine;
    * `tokenizer.path`, when relative, resolves against the run directory.

Light at import time (yaml and the standard library); torch, datasets and tokenizers load only in the
functions that need them.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from txkit.corpus_spec import parse_corpus_spec
from txkit.errors import TxkitError
from txkit.options import (
    ACTIVATIONS,
    BEST_METRICS,
    FINAL_WEIGHTS,
    BLEU_TOKENIZERS,
    ENGINES,
    MIXED_PRECISION,
    QUANTIZATIONS,
    SCHEDULES,
    SearchOptions,
    TokenizerOptions,
    setting,
)

DATA_ENV = "TXKIT_DATA"
DEFAULT_DATA_DIR = "./data"


_key = setting  # a recipe key: its default and the one-line help shown in the documentation


# ----------------------------------------------------------------------------- sections


@dataclass
class ModelSection:
    """The architecture: a preset of TxkitConfig, with any of its fields overridden (null = the preset's)."""

    preset: str = _key("transformer-base", "transformer-base | transformer-big | transformer-small | transformer-tiny")
    d_model: int | None = _key(None, "model width d_model")
    encoder_layers: int | None = _key(None, "encoder layers N")
    decoder_layers: int | None = _key(None, "decoder layers N")
    attention_heads: int | None = _key(None, "attention heads h")
    ffn_dim: int | None = _key(None, "feed-forward inner size d_ff")
    dropout: float | None = _key(None, "residual / embedding dropout P_drop")
    attention_dropout: float | None = _key(None, "dropout on attention probabilities (paper: 0)")
    activation_dropout: float | None = _key(None, "dropout after the FFN activation (paper: 0)")
    activation_function: Literal[ACTIVATIONS] | None = _key(None, "FFN activation (paper: relu)")
    normalize_before: bool | None = _key(None, "pre-norm residual blocks (paper: false, post-norm)")
    label_smoothing: float | None = _key(None, "eps_ls of the training loss (paper: 0.1)")
    max_position_embeddings: int | None = _key(None, "longest sequence the sinusoidal table covers")

    def config_overrides(self) -> dict:
        """The TxkitConfig fields this section sets (everything but the preset, None = keep the preset's)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "preset" and getattr(self, f.name) is not None}


@dataclass
class TokenizerSection(TokenizerOptions):
    """The subword vocabulary (the options of txkit.options.TokenizerOptions, then where it lives and what it
    learns from); built from the training data before training when `path` does not exist."""

    path: str = _key("tokenizer", "tokenizer folder; relative = inside the run directory; built if missing")
    files: list[str] = _key([], "text files to learn it from; empty = both sides of data.train (max_sentences of it)")
    dropout: float = _key(
        0.0, "BPE-dropout probability on the training data (Provilkov et al. 2020 use 0.1): a fresh segmentation "
        "each epoch, seeded by train.seed; validation and test keep the deterministic one; 0 = off (BPE only)"
    )


@dataclass
class DataSection:
    """Corpora and filtering. Corpus specs are relative to $TXKIT_DATA unless absolute."""

    train: str | list = _key(
        "multi30k/train", "training corpus: prefix DIR/NAME (files NAME.SRC, NAME.TGT), .tsv, .jsonl, .parquet, "
        "hub:ID; or several, mixed by weight: a list of {path, weight, tag, src_lang, tgt_lang} (txkit/mixing.py)"
    )
    valid: str = _key("multi30k/val", "validation corpus (same form); empty = no validation")
    src_lang: str = _key("en", "source language code (the file suffix)")
    tgt_lang: str = _key("de", "target language code (the file suffix)")
    max_len: int = _key(256, "drop training pairs with more subword tokens than this on either side")
    max_ratio: float = _key(9.0, "drop training pairs whose length ratio exceeds this (Moses: 9); 0 = keep all")
    dedup: bool = _key(False, "drop repeated training pairs")
    num_proc: int = _key(1, "processes for tokenizing the corpus")
    hub_config: str = _key("", "config of `hub:OWNER/NAME` corpora, e.g. de-en for hub:wmt/wmt14")
    max_sentences: int = _key(0, "use only the first N training pairs; 0 = all")
    valid_max_sentences: int = _key(0, "use only the first N validation pairs (loss and BLEU); 0 = all")
    eval_tag: str = _key(
        "", "source tag before every validation and test sentence: the direction a multilingual recipe validates "
        "and `txkit run` scores (a data.train corpus's tag, e.g. <2de>); empty = none"
    )


@dataclass
class TrainSection:
    """Optimisation, checkpoints, validation and logging. The defaults are the paper's base model."""

    max_steps: int = _key(100000, "number of parameter updates (paper base: 100k, big: 300k)")
    max_epochs: int = _key(0, "stop after this many passes over the data; 0 = no limit")
    max_tokens: int = _key(4096, "tokens per batch per process (max of source and target, padding included)")
    pad_to_multiple_of: int = _key(
        8, "pad each batch's source and target length up to a multiple of this: 8 suits GPU matrix units; 1 fits "
        "~20% more Multi30k tokens into max_tokens, for a ~7% longer bf16 CPU step (benchmarks/bench_padding.py)"
    )
    accumulation: int = _key(1, "batches accumulated per update (fairseq's update_freq)")
    lr_schedule: Literal[SCHEDULES] = _key(
        "noam", "noam = the paper's d_model^-0.5*min(step^-0.5, step*warmup^-1.5); others warm up to `lr`"
    )
    warmup_steps: int = _key(4000, "linear warmup steps (paper: 4000)")
    lr: float = _key(5e-4, "peak learning rate of inverse_sqrt, linear and cosine")
    lr_scale: float = _key(1.0, "noam only: multiplier on the paper's formula")
    min_lr: float = _key(0.0, "linear and cosine: the learning rate reached at max_steps")
    adam_betas: tuple[float, float] = _key((0.9, 0.98), "Adam beta1, beta2 (paper: 0.9, 0.98)")
    adam_eps: float = _key(1e-9, "Adam epsilon (paper: 1e-9)")
    weight_decay: float = _key(0.0, "decoupled weight decay (AdamW); 0 = plain Adam as in the paper")
    clip_norm: float = _key(0.0, "clip the gradient norm to this; 0 = no clipping")
    mixed_precision: Literal[MIXED_PRECISION] = _key("no", "bf16, or fp16 with dynamic loss scaling")
    save_every_steps: int = _key(0, "write a checkpoint every N updates; 0 = off")
    save_every_minutes: float = _key(10.0, "write a checkpoint every N minutes (paper: 10); 0 = off")
    keep_last: int = _key(5, "keep only the last K checkpoints; 0 = keep all")
    eval_every_steps: int = _key(1000, "validate every N updates (and at the end); 0 = only at the end")
    best_metric: Literal[BEST_METRICS] = _key("bleu", "validation metric that picks RUN/best")
    patience: int = _key(0, "stop after N validations without a better best_metric; 0 = never")
    seed: int = _key(1, "seed of initialisation, dropout and batch order")
    log_every_steps: int = _key(100, "log training loss, learning rate and throughput every N updates")
    stop_after_steps: int = _key(0, "debugging: stop after N updates as if interrupted (no final save); 0 = off")
    ema_decay: float | None = _key(
        None, "keep an exponential moving average of the weights with this decay, e.g. 0.999 (at update t the decay is "
        "min(decay, (1 + t) / (10 + t)), as Marian's), used for validation and RUN/best (see eval.final_weights); "
        "null or 0 = off (the paper: off)"
    )


@dataclass
class EvalSection(SearchOptions):
    """Decoding for validation BLEU and for `txkit run`'s test sets (the search keys are txkit.options'
    SearchOptions: the paper's beam search by default), then scoring and the final model."""

    lowercase: bool = _key(False, "case-insensitive BLEU")
    tokenize: Literal[BLEU_TOKENIZERS] = _key("13a", "sacreBLEU tokenizer for BLEU: 13a, intl, none, zh, char")
    average_last: int = _key(5, "checkpoints averaged into the final model (paper base: 5, big: 20)")
    final_weights: Literal[FINAL_WEIGHTS] = _key(
        "ema", "with train.ema_decay on: average the last checkpoints' EMA weights (ema) or their trained weights "
        "(trained); without EMA the trained weights are averaged"
    )
    test: list = _key(
        [], "test corpora (same form as data.valid) that `txkit run` scores; a multilingual recipe scores each in "
        "every direction it trains, or an entry {path, tag, tgt_lang} names one direction (txkit.corpus_spec)"
    )
    engine: Literal[ENGINES] = _key("auto", "what translates the test sets: auto (CTranslate2 where it gives txkit's "
                                    "translations and is installed, as txkit translate), txkit or ctranslate2 (needs "
                                    "lp_form hf); validation during training always uses txkit's search")
    quantize: Literal[QUANTIZATIONS] = _key("none", "test-set translation in int8 (CPU): none or int8")


@dataclass
class DistillSection(SearchOptions):
    """Sequence-level distillation (Kim and Rush, 2016), a stage of `txkit run` (txkit/distill.py): the teacher
    translates the sources of data.train with these search keys (SearchOptions') and the student, the recipe's
    model, trains on its translations. Off while `teacher` is empty."""

    teacher: str = _key(
        "", "teacher: a model folder or run directory (relative to the working directory) whose translations of "
        "data.train's sources the student trains on; empty = no distillation"
    )
    original_weight: float = _key(
        0.0, "weight of each corpus's original targets beside the teacher's translations of it (weight 1), mixed "
        "as data.train's weights are; 0 = the teacher's translations only"
    )
    engine: Literal[ENGINES] = _key(
        "auto", "what runs the teacher's search (txkit.engines; auto: CTranslate2 where it gives txkit's translations)"
    )
    quantize: Literal[QUANTIZATIONS] = _key("none", "the teacher's weights: none, or int8 linear layers (CPU)")


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "tokenizer": TokenizerSection,
    "data": DataSection,
    "train": TrainSection,
    "eval": EvalSection,
    "distill": DistillSection,
}

# Names that scripts rely on; renaming one is a breaking change (tests/test_recipe.py pins them).
STABLE_KEYS = ("train.max_steps", "train.max_tokens", "train.save_every_steps", "train.eval_every_steps", "train.seed")


@dataclass
class Recipe:
    """A whole recipe: one attribute per section."""

    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    distill: DistillSection = field(default_factory=DistillSection)
    source: str = field(default="recipe", compare=False, repr=False)  # the file it was read from

    def to_dict(self) -> dict:
        """Every key of every section, tuples as lists (YAML-friendly)."""
        out = {}
        for name in SECTIONS:
            section = getattr(self, name)
            out[name] = {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
        return out

    def to_yaml(self, header: str = "") -> str:
        """The resolved recipe as YAML; `load_recipe` reads it back to an equal Recipe."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True)
        if header:
            text = "".join(f"# {line}\n" for line in header.splitlines()) + text
        return text

    def flat(self) -> dict:
        """{"section.key": value} for every key."""
        return {f"{section}.{k}": v for section, keys in self.to_dict().items() for k, v in keys.items()}

    def get(self, key: str) -> Any:
        section, name = key.split(".", 1)
        return getattr(getattr(self, section), name)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


# ----------------------------------------------------------------------------- keys and values


def all_keys() -> list[str]:
    """Every valid `section.key`."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def describe_keys() -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every key, for documentation and `txkit train --help`."""
    rows = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{section}.{f.name}", _type_name(hints[f.name]), _plain(default), f.metadata["help"]))
    return rows


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "|".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple):
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _unknown(source: str, what: str, name: str, choices: list[str]) -> TxkitError:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(choices)})" if len(choices) <= 6 else ""
    return TxkitError(f"{source}: unknown {what} '{name}'{hint}")


def _convert(value: Any, tp, key: str, source: str, raw: str | None = None) -> Any:
    """Check `value` against the dataclass type `tp` and convert it (int -> float, list -> tuple, ...).

    `raw` is the text of a command-line override: strings are taken verbatim from it, so that
    `--set data.src_lang=no` stays "no" instead of YAML's boolean false.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def bad(expected: str) -> TxkitError:
        return TxkitError(f"{source}: {key} must be {expected}, not {value!r}")

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key, source, raw)
    if origin is Literal:
        text = raw if raw is not None else value
        if text not in args:
            choices = [str(a) for a in args]
            close = difflib.get_close_matches(str(text), choices, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise TxkitError(f"{source}: {key} must be one of {', '.join(choices)}, not {text!r}{hint}")
        return text
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):  # "1e5" or "100_000"
            try:
                number = float(value.replace("_", ""))
                if number.is_integer():
                    return int(number)
            except ValueError:
                pass
        raise bad("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise bad("a number")
    if tp is str:
        if raw is not None:
            return raw
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad("a string (quote it)")
    if origin is list:
        if raw is not None and not raw.lstrip().startswith("["):
            value = [raw] if raw else []  # --set eval.test=multi30k/test2016
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise bad("a list")
        return [_convert(v, args[0], key, source) for v in value]
    if origin is tuple:
        if isinstance(value, str) and raw is not None:  # --set train.adam_betas=0.9,0.98
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad(f"a list of {len(args)} values")
        return tuple(_convert(v, a, key, source) for v, a in zip(value, args))
    raise TypeError(f"recipe key {key} has an unsupported type {tp}")  # a bug in this file


def _set(recipe: Recipe, key: str, value: Any, source: str, raw: str | None = None) -> None:
    if "." not in key:
        raise _unknown(source, "key", key, all_keys())
    if key not in all_keys():
        raise _unknown(source, "key", key, all_keys())
    section_name, name = key.split(".", 1)
    section = getattr(recipe, section_name)
    if key == "data.train":  # a string, or a list of {path, weight, tag} mappings: txkit.mixing checks it
        from txkit.corpus_spec import parse_train

        if raw is not None and not raw.lstrip().startswith(("[", "{")):
            value = raw  # --set data.train=multi30k/train: verbatim
        section.train = parse_train("" if value is None else value, source)
        return
    if key == "eval.test":  # corpus specs, or {path, tag, tgt_lang} mappings naming a direction (txkit.corpus_spec)
        from txkit.corpus_spec import parse_tests

        if raw is not None and not raw.lstrip().startswith(("[", "{")):
            value = [raw] if raw else []  # --set eval.test=multi30k/test2016: verbatim
        section.test = parse_tests(value, source)
        return
    hints = typing.get_type_hints(type(section))
    setattr(section, name, _convert(value, hints[name], key, source, raw))


# ----------------------------------------------------------------------------- loading


def load_recipe(path: str | os.PathLike | None, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read a recipe file (None = all defaults) and apply `section.key=value` overrides in order.

    Raises:
        TxkitError: a missing or malformed file, an unknown section or key (naming the closest valid
            one), a value of the wrong type, or an inconsistent combination.
    """
    recipe = Recipe()
    if path is not None:
        path = Path(path)
        source = str(path)
        recipe.source = source
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TxkitError(f"recipe not found: {path}") from None
        except (IsADirectoryError, UnicodeDecodeError, OSError) as exc:
            raise TxkitError(f"cannot read recipe {path}: {exc}") from None
        try:
            tree = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise TxkitError(f"{path}:{where}: not valid YAML: {problem}") from None
        if tree is None or tree == {}:
            raise TxkitError(
                f"{path}: the recipe is empty (nothing but comments); a recipe names at least its data "
                "(data.train) and usually its model, tokenizer and train settings"
            )
        if not isinstance(tree, dict):
            raise TxkitError(f"{path}: a recipe is a mapping of sections ({', '.join(SECTIONS)})")
        for section_name, body in tree.items():
            if section_name not in SECTIONS:
                raise _unknown(source, "section", str(section_name), list(SECTIONS))
            if body is None:
                continue
            if not isinstance(body, dict):
                raise TxkitError(f"{path}: section '{section_name}' must be a mapping of keys to values")
            for name, value in body.items():
                _set(recipe, f"{section_name}.{name}", value, source)
    for item in overrides:
        if "=" not in item:
            raise TxkitError(f"--set {item}: expected section.key=value, e.g. train.max_steps=300")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        _set(recipe, key, value, "--set", raw=raw)
    validate(recipe)
    if path is not None:
        names_data = isinstance(tree.get("data"), dict) and tree["data"].get("train") is not None
        names_data = names_data or any(item.split("=", 1)[0].strip() == "data.train" for item in overrides)
        if not names_data:
            raise TxkitError(
                f"{path}: the recipe does not say what to train on: set data.train (in its data section, "
                "or with --set data.train=...)"
            )
    return recipe


def validate(recipe: Recipe) -> None:
    """Checks across keys that no single type can express."""
    from_where = recipe.source
    t = recipe.train

    def need(ok: bool, message: str):
        if not ok:
            raise TxkitError(f"{from_where}: {message}")

    for key in ("max_steps", "max_tokens", "pad_to_multiple_of", "accumulation"):
        need(getattr(t, key) >= 1, f"train.{key} must be at least 1")
    for key in ("max_epochs", "warmup_steps", "save_every_steps", "keep_last", "eval_every_steps", "patience",
                "stop_after_steps", "log_every_steps"):
        need(getattr(t, key) >= 0, f"train.{key} must not be negative")
    need(t.lr_schedule == "noam" or t.lr > 0, "train.lr must be positive")
    need(t.warmup_steps > 0 or t.lr_schedule != "noam", "train.warmup_steps must be positive for the noam schedule")
    need(all(0 <= b < 1 for b in t.adam_betas), "train.adam_betas must lie in [0, 1)")
    need(t.keep_last == 0 or t.keep_last >= recipe.eval.average_last,
         f"train.keep_last ({t.keep_last}) must be at least eval.average_last ({recipe.eval.average_last}) "
         "so the checkpoints to average are kept")
    need(recipe.eval.beam_size >= 1, "eval.beam_size must be at least 1")
    need(recipe.eval.engine != "ctranslate2" or recipe.eval.lp_form == "hf" or recipe.eval.length_penalty == 0,
         "eval.engine ctranslate2 needs eval.lp_form hf (CTranslate2 has no gnmt length-penalty form)")
    need(recipe.data.src_lang != recipe.data.tgt_lang or recipe.data.src_lang == "",
         "data.src_lang and data.tgt_lang must differ")
    need(bool(recipe.data.train), "data.train is required")
    from txkit.corpus_spec import train_tags

    need(not recipe.data.eval_tag or recipe.data.eval_tag in train_tags(recipe),
         f"data.eval_tag {recipe.data.eval_tag} is not the tag of any data.train corpus "
         f"(their tags: {', '.join(train_tags(recipe)) or 'none'})")
    from txkit.corpus_spec import eval_sets

    try:
        eval_sets(recipe)  # every eval.test direction is one the model trains
    except TxkitError as exc:
        raise TxkitError(f"{from_where}: {exc}") from None
    need(recipe.tokenizer.vocab_size >= 16, "tokenizer.vocab_size is too small")
    dist = recipe.distill
    need(0 <= dist.original_weight < float("inf"),
         f"distill.original_weight must be a number of at least 0, not {dist.original_weight}")
    need(dist.beam_size >= 1, "distill.beam_size must be at least 1")
    need(dist.engine != "ctranslate2" or dist.lp_form == "hf" or dist.length_penalty == 0,
         "distill.engine ctranslate2 needs distill.lp_form hf (CTranslate2 has no gnmt length-penalty form)")
    presets = preset_names()
    need(recipe.model.preset in presets,
         f"model.preset must be one of {', '.join(presets)}, not {recipe.model.preset!r}")
    need(0 <= recipe.tokenizer.dropout < 1, f"tokenizer.dropout must lie in [0, 1), not {recipe.tokenizer.dropout}")
    need(recipe.tokenizer.dropout == 0 or recipe.tokenizer.model == "bpe",
         "tokenizer.dropout needs tokenizer.model: bpe (the tokenizers library cannot sample unigram segmentations)")
    need(t.ema_decay is None or t.ema_decay == 0 or 0 < t.ema_decay < 1,
         f"train.ema_decay must lie in (0, 1) (or be null or 0 for off), not {t.ema_decay}")
    for key in ("dropout", "attention_dropout", "activation_dropout", "label_smoothing"):
        value = getattr(recipe.model, key)
        need(value is None or 0 <= value < 1, f"model.{key} must lie in [0, 1)")


def preset_names() -> list[str]:
    """The names of TxkitConfig's presets, read from their one declaration (`PRESETS` in
    txkit/modeling/configuration_txkit.py) without importing it: that module imports transformers and torch
    (seconds), which reading a recipe must not cost. tests/test_recipe.py checks it against the import."""
    import ast

    source = Path(__file__).parent / "modeling" / "configuration_txkit.py"
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "PRESETS":
            return [key.value for key in node.value.keys]
    raise RuntimeError(f"{source}: no PRESETS dict")  # a bug: the presets moved


# ----------------------------------------------------------------------------- paths


def data_root() -> Path:
    """$TXKIT_DATA, or ./data when unset."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


def resolve_data_path(path: str | os.PathLike) -> Path | str:
    """An absolute path as is; a relative one under $TXKIT_DATA (`~` expanded); `hub:` specs unchanged."""
    if parse_corpus_spec(path).is_hub:
        return str(path)
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else data_root() / p


def resolve_tokenizer_path(recipe: Recipe, run_dir: str | os.PathLike) -> Path:
    """tokenizer.path: absolute as is, relative inside the run directory."""
    p = Path(os.path.expanduser(recipe.tokenizer.path))
    return p if p.is_absolute() else Path(run_dir) / p


def corpus_files(spec: str, src_lang: str, tgt_lang: str) -> list[Path]:
    """The files a local corpus spec reads (a prefix: PREFIX.SRC and PREFIX.TGT); [] for `hub:` specs."""
    return parse_corpus_spec(resolve_data_path(spec)).files(src_lang, tgt_lang)


def check_data_files(recipe: Recipe) -> None:
    """Every local file of data.train and data.valid exists: checked before anything is built or loaded."""
    d = recipe.data
    from txkit.corpus_spec import train_corpora

    specs = [("data.train" if isinstance(d.train, str) else f"data.train[{i}].path", c.path)
             for i, c in enumerate(train_corpora(recipe))] + [("data.valid", d.valid)]  # fmt: skip
    langs = [c.langs(d) for c in train_corpora(recipe)] + [(d.src_lang, d.tgt_lang)]
    for (key, spec), (src_lang, tgt_lang) in zip(specs, langs):
        for f in corpus_files(spec, src_lang, tgt_lang) if spec else []:
            if not f.is_file():
                root = os.environ.get(DATA_ENV) or f"{DEFAULT_DATA_DIR} ({DATA_ENV} unset)"
                raise TxkitError(f"{key}: data file not found: {f} (relative paths resolve against {DATA_ENV}={root})")
