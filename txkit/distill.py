"""Sequence-level distillation (Kim and Rush, 2016) as a stage of `txkit run`: a teacher translates the sources
of data.train, and the student (the recipe's model) trains on the teacher's translations instead of, or mixed
with, the original targets. The Firefox Translations pipeline makes its small students this way.

    distill:
      teacher: runs/multi30k-en-de/transformer-tiny/model    # a model folder or run directory
      beam_size: 4                                           # the teacher's search (SearchOptions' keys)
      lp_form: hf
      original_weight: 0                                     # >0: the original targets too, mixed by weight

    resolve_teacher(spec)                 the teacher's model folder, checked: it exists and is a txkit model
    plan(recipe, teacher)                 which corpora it translates, in which of its directions (its tag)
    translation_key(recipe, teacher, ..)  what the translations depend on, as a digest: the cache key
    translate_corpora(...)                RUN/distill/<key>/train<i>.<src>, .<tgt>: written in chunks that
                                          survive an interruption, then swapped in whole
    distilled_recipe(recipe, folder, ..)  the recipe the student trains with: data.train on those files

The cache: RUN/distill/<key>/ holds the translations made with the teacher's weights (engines.weights_digest:
its weight, config and tokenizer files), the distill search keys and engine, and the source text (a digest of
each corpus's source file, its languages and data.max_sentences). The same key is reused, whatever the path the
teacher is found at; a new key (a retrained teacher, another beam) translates again and the old folder is
removed once the new one is complete. The student's own vocabulary is built from the original data.train,
so it does not depend on the teacher.

Before translating, the teacher is checked against the corpus: the languages it was trained for (the recipe.yaml
saved with it) must include each corpus's direction, and its tokenizer must encode the corpus's source text
(a large share of <unk> or byte-fallback tokens means another language or script).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from txkit import atomic, runs
from txkit.corpus_spec import TrainCorpus, parse_corpus_spec, tag_text, train_corpora
from txkit.errors import TxkitError

CHECK_LINES = 2000  # source sentences whose tokens the vocabulary check counts
MAX_UNKNOWN_SHARE = 0.10  # more of their tokens than this unknown (<unk> or bytes): the teacher cannot read them
CHUNK_LINES = 2000  # sentences translated and saved at a time: an interrupted stage resumes from the last chunk
COMPLETE = "distill.json"  # written last into RUN/distill/<key>/: what it holds and how it was made
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-F]{2}>$")


@dataclass(frozen=True)
class DistillCorpus:
    """One data.train corpus the teacher translates: its index, itself, its languages and the teacher's tag for
    that direction ("" for a bilingual teacher)."""

    index: int
    corpus: TrainCorpus
    src_lang: str
    tgt_lang: str
    teacher_tag: str


# ----------------------------------------------------------------------------- the teacher


def resolve_teacher(spec: str) -> Path:
    """distill.teacher as a local model folder (a run directory's final, best or latest model), checked before
    anything loads it: a one-line error naming the key and the path otherwise."""
    from txkit.modelfiles import check_model_folder

    path = Path(spec).expanduser()
    if not path.exists():
        raise TxkitError(f"distill.teacher {spec}: no such model folder or run directory (train the teacher first, "
                         "or name it with --set distill.teacher=PATH)")  # fmt: skip
    try:
        folder = Path(runs.resolve_model(path))
        config = check_model_folder(folder)
    except TxkitError as exc:
        raise TxkitError(f"distill.teacher {spec}: {exc}") from None
    if config.get("model_type", "txkit") != "txkit" or not (folder / "tokenizer.json").is_file():
        kind = config.get("model_type", "txkit")
        what = f"a {kind} model" if kind != "txkit" else "no tokenizer.json"
        raise TxkitError(f"distill.teacher {spec}: not a txkit translation model ({what})")
    return folder


def plan(recipe, teacher: Path, spec: str | None = None) -> list[DistillCorpus]:
    """The corpora the teacher translates, each in one of the teacher's directions: the same tag as the
    corpus's if the teacher has it, else its untagged direction, else its first for that language pair."""
    spec = spec or recipe.distill.teacher
    known = runs.trained_directions(teacher)
    found = []
    for i, corpus in enumerate(train_corpora(recipe)):
        src, tgt = corpus.langs(recipe.data)
        tag = ""
        if known is not None:
            same = [t for s, g, t in known if (s, g) == (src, tgt)]
            if not same:
                trained = ", ".join(f"{s}->{g}" + (f" {t}" if t else "") for s, g, t in known)
                raise TxkitError(f"distill.teacher {spec}: it was trained for {trained}, not data.train[{i}]'s "
                                 f"{src}->{tgt} (its recipe.yaml)")  # fmt: skip
            tag = corpus.tag if corpus.tag in same else "" if "" in same else same[0]
        found.append(DistillCorpus(i, corpus, src, tgt, tag))
    return found


# ----------------------------------------------------------------------------- the cache key


def _source_digest(recipe, item: DistillCorpus) -> str:
    """What a corpus's source text is: the bytes of its source file (or its one file), or a Hub spec's name."""
    from txkit.recipe import resolve_data_path

    parsed = parse_corpus_spec(resolve_data_path(item.corpus.path))
    digest = hashlib.sha256(f"{item.corpus.path}|{item.src_lang}|{item.tgt_lang}".encode())
    if parsed.is_hub:
        digest.update(f"|{recipe.data.hub_config}".encode())
        return digest.hexdigest()[:16]
    files = parsed.files(item.src_lang, item.tgt_lang)[:1]
    for path in files:
        try:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise TxkitError(f"data.train[{item.index}]: cannot read {path} ({exc.strerror or exc})") from None
    return digest.hexdigest()[:16]


def translation_key(recipe, teacher: Path, corpora: list[DistillCorpus]) -> tuple[str, dict]:
    """(16-digit key, what it digests): the teacher's weights, the search, the engine and the source text."""
    from txkit.engines import weights_digest

    d = recipe.distill
    inputs = {
        "teacher": weights_digest(teacher),
        "search": d.search_options(),
        "engine": d.engine,
        "quantize": d.quantize,
        "max_sentences": recipe.data.max_sentences,
        "corpora": [
            {"path": c.corpus.path, "src_lang": c.src_lang, "tgt_lang": c.tgt_lang, "tag": c.teacher_tag,
             "source": _source_digest(recipe, c)}
            for c in corpora
        ],
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    return key, inputs


# ----------------------------------------------------------------------------- translating


def check_vocabulary(src_tok, sources: list[str], spec: str, index: int) -> None:
    """The teacher's tokenizer must read the corpus: few of its tokens unknown (<unk>, or characters spelled as
    bytes by byte fallback) on the first CHECK_LINES sentences."""
    sample = [s for s in sources[:CHECK_LINES] if s.strip()]
    if not sample:
        return
    backend = src_tok.backend_tokenizer
    unknown_ids = {i for t, i in src_tok.get_vocab().items() if _BYTE_TOKEN.match(t)} | {src_tok.unk_token_id}
    total = unknown = 0
    for encoding in backend.encode_batch(sample, add_special_tokens=False):
        total += len(encoding.ids)
        unknown += sum(i in unknown_ids for i in encoding.ids)
    share = unknown / max(total, 1)
    if share > MAX_UNKNOWN_SHARE:
        raise TxkitError(
            f"distill.teacher {spec}: its vocabulary cannot encode data.train[{index}]'s source text: {share:.0%} of "
            f"the tokens of its first {len(sample)} sentences are unknown (<unk> or byte fallback); is the teacher "
            "trained on this language?"
        )


def _load_sources(recipe, item: DistillCorpus) -> list[str]:
    from txkit.prepare import load_corpus

    ds = load_corpus(recipe, item.corpus.path, "train", (item.src_lang, item.tgt_lang))
    if recipe.data.max_sentences:
        ds = ds.select(range(min(recipe.data.max_sentences, len(ds))))
    return [s.replace("\n", " ") for s in ds["src"]]


def translate_corpora(recipe, teacher: Path, corpora: list[DistillCorpus], folder: Path,
                      echo: Callable[[str], None] = print, spec: str | None = None) -> dict:  # fmt: skip
    """The teacher's translations of every corpus's sources into `folder` (train<i>.<src>, train<i>.<tgt>, and
    COMPLETE last), built in `folder`.partial/ chunk by chunk (an interrupted stage keeps its finished chunks)
    and swapped in whole. Returns what COMPLETE records."""
    from txkit.decoding import DecodeOptions
    from txkit.engines import load_translator

    d, spec = recipe.distill, spec or recipe.distill.teacher
    sources = {c.index: _load_sources(recipe, c) for c in corpora}
    options = DecodeOptions(**d.search_options(), engine=d.engine, quantize=d.quantize)
    translator = None
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    record = {"teacher": str(teacher), "corpora": []}
    for c in corpora:
        lines, done, started = sources[c.index], 0, time.monotonic()
        for first in range(0, len(lines), CHUNK_LINES):
            chunk_file = partial / f"train{c.index}-{first // CHUNK_LINES:05d}.{c.tgt_lang}"
            if chunk_file.is_file():  # translated before an interruption
                continue
            if translator is None:
                translator = load_translator(teacher, options)
            if done == 0:  # before the corpus's first chunk: can the teacher read it at all?
                check_vocabulary(translator.src_tok, lines, spec, c.index)
            chunk = [tag_text(c.teacher_tag, s) if s.strip() else s for s in lines[first : first + CHUNK_LINES]]
            atomic.write_text(chunk_file, "".join(h + "\n" for h in translator.translate(chunk)))
            done += len(chunk)
            rate = done / max(time.monotonic() - started, 1e-9)
            echo(f"     data.train[{c.index}]: {first + len(chunk)}/{len(lines)} sentences ({rate:.1f} sentences/s)")
        record["corpora"].append({"index": c.index, "path": c.corpus.path, "lines": len(lines),
                                  "teacher_tag": c.teacher_tag})  # fmt: skip
    with atomic.building_dir(folder) as tmp:
        for c in corpora:
            lines = sources[c.index]
            chunks = sorted(partial.glob(f"train{c.index}-*.{c.tgt_lang}"))
            hyps = [h for f in chunks for h in f.read_text(encoding="utf-8").split("\n")[:-1]]
            if len(hyps) != len(lines):  # a chunk of another run's corpus: never train on misaligned pairs
                raise TxkitError(f"{partial}: {len(hyps)} translations for {len(lines)} sentences of "
                                 f"data.train[{c.index}]; delete that folder and run again")  # fmt: skip
            (tmp / f"train{c.index}.{c.src_lang}").write_text("".join(s + "\n" for s in lines), encoding="utf-8")
            (tmp / f"train{c.index}.{c.tgt_lang}").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
        (tmp / COMPLETE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(partial, ignore_errors=True)
    return record


def prune(folder: Path) -> list[Path]:
    """Remove the other keys' translations beside `folder` (a changed teacher or search made them stale)."""
    removed = []
    for other in folder.parent.iterdir():
        if other.is_dir() and other.name != folder.name and re.fullmatch(r"[0-9a-f]{16}(\.partial)?", other.name):
            shutil.rmtree(other, ignore_errors=True)
            removed.append(other)
    return removed


# ----------------------------------------------------------------------------- the student's recipe


def distilled_recipe(recipe, folder: Path, corpora: list[DistillCorpus]):
    """The recipe the student trains with: each corpus's teacher translations (its weight and tag), and with
    distill.original_weight > 0 the original corpus too, at its weight times original_weight."""
    derived = copy.deepcopy(recipe)
    entries = [{"path": str(folder / f"train{c.index}"), "weight": c.corpus.weight, "tag": c.corpus.tag,
                "src_lang": c.corpus.src_lang, "tgt_lang": c.corpus.tgt_lang} for c in corpora]  # fmt: skip
    w = recipe.distill.original_weight
    if w > 0:
        entries += [{"path": c.corpus.path, "weight": c.corpus.weight * w, "tag": c.corpus.tag,
                     "src_lang": c.corpus.src_lang, "tgt_lang": c.corpus.tgt_lang} for c in corpora]  # fmt: skip
    # one untagged corpus in the string form, read as such (txkit.corpus_spec.is_mixture)
    one = len(entries) == 1 and not entries[0]["tag"] and not entries[0]["src_lang"] and not entries[0]["tgt_lang"]
    derived.data.train = entries[0]["path"] if one else entries
    # RUN/recipe.yaml is then what the student trained on, reproducible by `txkit train` (which refuses a recipe
    # that still names a teacher); the teacher is recorded in RUN/distill/<key>/distill.json and the run's marker
    derived.distill.teacher = ""
    return derived
