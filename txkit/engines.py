"""Decoding engines behind `txkit translate`: txkit's own search (txkit.decoding.Translator), optionally on
int8 weights, and CTranslate2 on a conversion of the same model; `choose_engine` picks one for `--engine auto`.

* `choose_engine`: `--engine auto` (the default) is CTranslate2 where it gives txkit's translations and is
  installed (one local model, the hf length-penalty form or alpha 0, float32 on the CPU, no sampling, no
  --max-sentences), else txkit's engine.
* `quantize_int8(model)`: dynamic int8 quantization of the model's linear layers (weights stored as int8,
  activations quantized per batch at run time), through torch's own `torch.ao.quantization.quantize_dynamic`
  (see its docstring for why that one).
* `CTranslate2Translator`: the `Translator` interface (translate, translate_nbest, translate_stream, ...)
  over `ctranslate2.Translator`. The model is converted once through txkit's own Marian export
  (txkit.export) and cached beside the model folder (`MODEL.ctranslate2/<weights hash>`; in the user cache
  when that cannot be written), so a retrained model is converted again and older conversions are removed;
  the conversion is written atomically. The options map one to one (beam size, length penalty, per-sentence
  length limit, n-best, token batch budget), except those CTranslate2 cannot honour exactly, which are
  refused (`check_ctranslate2_options`): the paper's GNMT length-penalty form, which it does not have;
  sampling, whose draws it cannot seed per sentence (`ctranslate2.set_random_seed` does not reseed its worker
  thread: measured), so that samples would depend on the rest of the input; and a sentence budget besides
  the token budget. Empty and overlong lines follow txkit's policies, because the lines are prepared by
  txkit's own `Translator._prepare`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from txkit.errors import TxkitError
from txkit.options import ENGINES, QUANTIZATIONS  # noqa: F401  (part of this module's API)

CT2_DIR_SUFFIX = ".ctranslate2"

# CTranslate2's beam search stops a sentence once beam_size x patience hypotheses have finished; transformers'
# heuristic (txkit's hf form) goes on while the best open hypothesis, normalised at its current length, still
# beats the worst of the beam_size finished ones. Neither search is exact, so the two can differ; patience 2 is
# the one that gives txkit's translations (README, Engines). Trained models, test2016, beam 4, alpha 0.6: the tiny
# en-de model of 9000 steps 1000 of 1000 at patience 2 (981 at CTranslate2's default of 1, txkit's the
# better-scored in all 19 that differed; alpha 1.0: 1000 against 967), the 10400-step en-de models of two seeds
# and en-fr 1000 / 999 / 1000 (989 / 985 / 967 at patience 1). It costs CTranslate2 12-18% of its speed, which
# stays above txkit's engine's. On the test suite's weak models (200 steps, five of them) both patiences differ on up
# to a few sentences in 200 (patience 1: 190-200, patience 2: 195-200 at alpha 1.0).
CT2_PATIENCE = 2


# ----------------------------------------------------------------------------- choosing


def choose_engine(options, model_paths) -> str:
    """The engine that translates: `options.engine`, or for `auto` CTranslate2 where it gives the translations
    txkit's own engine would give and is installed, else txkit. The rule (`--help` says the same): one local
    model folder, the hf length-penalty form or alpha 0, no sampling, float32 weights (--quantize none, --dtype
    auto/fp32), on the CPU, no --max-sentences (CTranslate2 batches by tokens or by sentences, not both).
    int8 is left out because the two engines quantize differently (other translations), and a GPU because
    txkit's engine then decodes in bf16/fp16."""
    if options.engine != "auto":
        return options.engine
    paths = [model_paths] if isinstance(model_paths, (str, Path)) else list(model_paths)
    if why_not_ctranslate2(options, paths) is not None:
        return "txkit"
    try:
        import ctranslate2  # noqa: F401
    except (ImportError, OSError):  # not installed, or a broken install: txkit's engine translates
        return "txkit"
    return "ctranslate2"


def why_not_ctranslate2(options, paths: list) -> str | None:
    """Why `--engine auto` keeps txkit's engine for these options and models (None: it need not)."""
    from txkit.decoding import resolve_device

    if len(paths) != 1:
        return "an ensemble"
    if not Path(paths[0]).is_dir():
        return "not a local model folder"
    if options.lp_form != "hf" and options.length_penalty != 0:
        return f"--lp-form {options.lp_form}"
    if options.sampling:
        return "--sample"
    if options.quantize != "none":
        return f"--quantize {options.quantize}"
    if options.dtype not in (None, "auto", "fp32"):
        return f"--dtype {options.dtype}"
    if options.max_sentences is not None:
        return "--max-sentences"
    if resolve_device(options.device) != "cpu":
        return "a GPU"
    from txkit.export import marian_blockers
    from txkit.modeling import TxkitConfig

    try:
        config, _ = TxkitConfig.get_config_dict(str(paths[0]))
    except (OSError, ValueError):
        return "no readable config.json"  # txkit's engine reports it
    if config.get("model_type") != TxkitConfig.model_type:
        return "not a txkit model"
    blockers = marian_blockers(TxkitConfig.from_dict(config))  # CTranslate2 reads the model as a Marian one
    return f"the Marian export cannot express {blockers[0]}" if blockers else None


def _load_ctranslate2(paths: list, options, threads: int | None):
    """A `CTranslate2Translator` for one local txkit model folder (converted first if need be)."""
    import json
    from types import SimpleNamespace

    from txkit.decoding import load_tokenizers_for
    from txkit.modelfiles import check_model_folder

    check_ctranslate2_options(options)
    if len(paths) != 1:
        raise TxkitError("--engine ctranslate2 translates with one model; ensembles need --engine txkit")
    model_path = paths[0]
    if not Path(model_path).is_dir():
        raise TxkitError(f"--engine ctranslate2: {model_path} is not a local model folder")
    check_model_folder(model_path)
    # the config's JSON, not TxkitConfig: importing txkit's modeling (transformers' model code) is most of the time
    # before the first translation (python -X importtime)
    config = SimpleNamespace(**json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8")))
    src_tok, tgt_tok = load_tokenizers_for(str(model_path))
    return CTranslate2Translator(model_path, src_tok, tgt_tok, options, config, threads)


def load_translator(model_paths, options, threads: int | None = None, governor=None):
    """The translator `options.engine` (`choose_engine` for auto) and `options.quantize` ask for, for MODEL (a
    resolved path or Hub id, or a list of them for an ensemble): txkit's `Translator` (on int8 linear layers with
    quantize int8), whose CPU thread count `governor` (txkit.threads.ThreadGovernor) may choose batch by batch, or
    a `CTranslate2Translator` running `threads` threads. The translator's `options.engine` names the engine."""
    import dataclasses

    paths = [model_paths] if isinstance(model_paths, (str, Path)) else list(model_paths)
    options.check()
    asked = options.engine
    options = dataclasses.replace(options, engine=choose_engine(options, paths))
    if options.engine == "ctranslate2":
        try:
            return _load_ctranslate2(paths, options, threads)
        except TxkitError:
            if asked != "auto":
                raise
            # auto never fails where txkit's engine would not (e.g. a conversion no place could hold): it
            # translates with txkit's engine, which reports any fault of the model itself
            options = dataclasses.replace(options, engine="txkit")
    from txkit.decoding import Translator
    from txkit.ensemble import load_ensemble

    if options.quantize == "int8" and options.dtype not in (None, "auto", "fp32"):
        raise TxkitError(f"--quantize int8: quantizes float32 weights; drop --dtype {options.dtype}")
    model, src_tok, tgt_tok = load_ensemble(paths, options.device, options.dtype)
    if options.quantize == "int8":
        model = quantize_int8(model)
    on_cpu = next(model.parameters()).device.type == "cpu"
    return Translator(model, src_tok, tgt_tok, options, governor=governor if on_cpu else None)


# ----------------------------------------------------------------------------- int8 on txkit's engine


def quantize_int8(model):
    """The model with its linear layers (attention, feed-forward, output projection) replaced by dynamically
    quantized int8 ones, for CPU inference; embeddings and LayerNorms stay float32.

    Why `torch.ao.quantization.quantize_dynamic`: it is what torch 2.13 itself offers for CPU int8 linear
    layers (fbgemm/onednn kernels). It warns that it is deprecated in favour of torchao, but torchao 0.18 (in a
    scratch venv, not a txkit dependency) was measured slower on CPU, on the tiny recipe's step-400 checkpoint
    (150 test2016 lines, 1 thread, txkit's search): `Int8DynamicActivationInt8WeightConfig` 2.0 sent/s,
    `Int8WeightOnlyConfig` 18-22, this 22-25, float32 24-25 (benchmarks/RESULTS.md). The warning is silenced;
    when torch removes it, torchao's CPU kernels are the place to look again."""
    import warnings

    import torch

    if next(model.parameters()).device.type != "cpu":
        raise TxkitError("--quantize int8: int8 dynamic quantization runs on the CPU only (use --device cpu)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


# ----------------------------------------------------------------------------- CTranslate2


def check_ctranslate2_options(options) -> None:
    """Refuse what CTranslate2 cannot do exactly as txkit's search does, naming the option."""
    if options.lp_form == "gnmt" and options.length_penalty != 0:
        raise TxkitError(
            "--lp-form gnmt: CTranslate2 has only the hf length-penalty form |Y|^alpha "
            "(use --lp-form hf, --length-penalty 0, or --engine txkit)"
        )
    if options.sampling:  # measured: set_random_seed does not reseed the worker thread's generator
        raise TxkitError(
            "--sample: CTranslate2 cannot seed each sentence's draws (they would depend on the rest of the "
            "input); use --engine txkit for sampling"
        )
    if options.device not in (None, "cpu") and not str(options.device).startswith("cuda"):
        raise TxkitError(f"--device {options.device}: CTranslate2 runs on cpu or cuda")
    if options.dtype not in (None, "auto", "fp32"):
        raise TxkitError(f"--dtype {options.dtype}: use --quantize int8 with --engine ctranslate2 (or fp32)")
    if options.max_sentences is not None:
        raise TxkitError(
            "--max-sentences: CTranslate2 batches by --max-tokens only (one budget per call); use --engine txkit"
        )


def weights_digest(model_dir: str | Path) -> str:
    """sha256 over the model's weight, config and tokenizer files (names and bytes), 16 hex digits."""
    digest = hashlib.sha256()
    folder = Path(model_dir)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"))
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def user_cache_dir() -> Path:
    """txkit's per-user cache: $TXKIT_CACHE, else $XDG_CACHE_HOME/txkit, else ~/.cache/txkit."""
    if os.environ.get("TXKIT_CACHE"):
        return Path(os.environ["TXKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "txkit"


def ctranslate2_homes(model_dir: Path) -> list[Path]:
    """Where a model's conversions may live, in order: `MODEL.ctranslate2` beside the model folder (not in a
    Hugging Face Hub cache, whose snapshots/ holds only revisions), then the user cache
    (`user_cache_dir()/ctranslate2/<hash of the model's path>`)."""
    in_hub_cache = model_dir.parent.name == "snapshots" and model_dir.parent.parent.name.startswith("models--")
    beside = [] if in_hub_cache else [model_dir.parent / (model_dir.name + CT2_DIR_SUFFIX)]
    return beside + [user_cache_dir() / "ctranslate2" / hashlib.sha256(str(model_dir).encode()).hexdigest()[:16]]


def ctranslate2_model(model_dir: str | Path) -> Path:
    """The CTranslate2 conversion of a txkit model folder, converting it first when there is none for these
    weights: `MODEL.ctranslate2/<digest>` beside the folder, or in the user cache when that cannot be written
    (a read-only folder, a Hub cache; `ctranslate2_homes`). A new conversion replaces older ones of the same
    model in the same place; a conversion found in either place is used, so the first sentence waits for a
    conversion only once per weights."""
    model_dir = Path(model_dir).resolve()
    digest = weights_digest(model_dir)
    homes = ctranslate2_homes(model_dir)
    for home in homes:
        if (home / digest / "model.bin").is_file():
            return home / digest
    for home in homes:
        if not _writable(home):
            continue
        try:
            return _convert(model_dir, home, digest)
        except PermissionError:
            continue
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
    places = " or ".join(map(str, homes))
    raise TxkitError(f"--engine ctranslate2: cannot write a conversion of {model_dir} to {places}")


def _writable(folder: Path) -> bool:
    """Whether txkit may write `folder` (or create it in its nearest existing parent): the process may, and the
    folder is not read-only by its mode bits (chmod a-w: root may write anyway, but the owner said no)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return os.access(existing, os.W_OK | os.X_OK) and bool(existing.stat().st_mode & 0o222)


def _convert(model_dir: Path, home: Path, digest: str) -> Path:
    """Convert into `home/digest` (through a temporary folder, renamed when complete); remove older ones."""
    import tempfile

    from txkit import atomic
    from txkit.export import convert_ctranslate2, export_marian

    target = home / digest
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".marian-", dir=home) as tmp:
        marian = export_marian(model_dir, Path(tmp) / "marian", verify=True)
        convert_ctranslate2(marian, target, overwrite=True)  # written to a temporary folder, then renamed
    for old in home.iterdir():  # conversions of earlier weights
        if old.is_dir() and old.name != target.name and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    atomic.clean_stale(target)
    return target


class CTranslate2Translator:
    """`txkit.decoding.Translator`'s interface over CTranslate2, for `txkit translate --engine ctranslate2`.

    Lines are prepared by txkit (tokenizer, empty lines, overlong policy, per-sentence limits) and their
    tokens handed to CTranslate2 as strings (the Marian export renumbers ids, not tokens). All sentences go to
    one `translate_batch` call, which sorts them by length into `max_tokens`-token batches; CTranslate2 has one
    `max_decoding_length` per call, so the few whose own, smaller length limit could have changed their result
    are searched again with it (`_search`). Beam search runs with patience `CT2_PATIENCE` (see there). Sampling
    is refused (`check_ctranslate2_options`)."""

    def __init__(self, model_dir: str | Path, src_tok, tgt_tok, options, config, threads: int | None = None):
        import ctranslate2

        check_ctranslate2_options(options)
        self.options = options
        self.src_tok, self.tgt_tok = src_tok, tgt_tok
        self.max_positions = getattr(config, "max_position_embeddings", None) or 1024
        self.overlong: list[int] = []
        # CTranslate2 reads and writes token strings (the Marian export renumbers ids, not tokens): id -> token
        # and token -> id tables, built once (the tokenizers' own lookups cost per token)
        self._source_names = src_tok.convert_ids_to_tokens(list(range(len(src_tok))))
        self._target_ids = tgt_tok.get_vocab()
        self.path = ctranslate2_model(model_dir)
        device = "cuda" if str(options.device or "cpu").startswith("cuda") else "cpu"
        compute_type = "int8" if options.quantize == "int8" else "float32"
        import torch

        threads = threads or torch.get_num_threads()
        # On the CPU, `threads` workers of one thread each (CTranslate2 shares the weights between them), not one
        # worker of `threads` OpenMP threads: CTranslate2's OpenMP calls bind to the OpenMP runtime torch has
        # loaded (LD_DEBUG=bindings), and once torch has run anything in parallel in the process (a `txkit run`
        # that trained, or just one matmul), a two-thread worker slows down, its threads put to sleep and woken
        # at every barrier: on transformer-small, 2 threads, 1000 sentences took 13.4 s instead of 8.7 s, sixteen
        # small searches 3.4 s instead of 0.8 s. Single-thread workers meet no barrier (8.2-8.7 s and 1.2-1.3 s
        # either way), and the searches `_search` repeats run side by side (0.6 s).
        self.workers = threads if device == "cpu" else 1
        self.translator = ctranslate2.Translator(
            str(self.path), device=device, compute_type=compute_type, inter_threads=self.workers,
            intra_threads=1 if device == "cpu" else threads,
        )  # fmt: skip

    # the Translator interface ----------------------------------------------------------------------

    def translate(self, lines: Sequence[str]) -> list[str]:
        return [hyps[0][0] for hyps in self.translate_nbest(lines)]

    def translate_nbest(self, lines: Sequence[str]) -> list[list[tuple[str, float]]]:
        self.overlong = []
        return self._translate(list(lines), 0)

    def translate_stream(self, lines: Iterable[str], chunk_lines: int | None = None) -> Iterator[str]:
        for hyps in self.translate_stream_nbest(lines, chunk_lines):
            yield hyps[0][0]

    def translate_stream_nbest(self, lines: Iterable[str], chunk_lines: int | None = None):
        from txkit.decoding import STREAM_CHUNK_LINES, _arrived_chunks

        self.overlong = []
        done = 0
        for chunk in _arrived_chunks(lines, chunk_lines or STREAM_CHUNK_LINES):
            yield from self._translate(chunk, done)
            done += len(chunk)

    # internals --------------------------------------------------------------------------------------

    def _prepare(self, lines: list[str], first_line: int):
        """txkit's own preparation of the lines (tokens, empty lines, overlong policy, per-sentence limits).

        A method that calls Translator's, not Translator's bound to this object as an attribute: that attribute
        made a reference cycle, so a dropped translator lived on, its CTranslate2 threads with it, until the
        garbage collector ran; and while a ctranslate2.Translator that has translated lives, torch's two-thread
        work in the process is slower (txkit's engine on the tiny model: 104 instead of 143 sentences/s), such as
        a student's training after its teacher translated (`txkit run` with distill.teacher)."""
        from txkit.decoding import Translator

        return Translator._prepare(self, lines, first_line)

    def _translate(self, lines: list[str], first_line: int) -> list[list[tuple[str, float]]]:
        from txkit.decoding import _one_line

        opts = self.options
        work = self._prepare(lines, first_line)
        self.overlong.extend(work.overlong)
        results = [[("", 0.0)] * opts.nbest for _ in lines]
        todo = [i for i, ids in enumerate(work.ids) if ids is not None]
        if not todo:
            return results
        names = self._source_names
        found = self._search([[names[t] for t in work.ids[i]] for i in todo], [work.max_lengths[i] for i in todo])
        # every hypothesis of every sentence in one decode call (one call per sentence cost more than the rest
        # of this method together); token strings -> ids through a dict, not the tokenizer's per-token lookup
        ids = self._target_ids
        hyps = [result.hypotheses[: opts.nbest] for result in found]
        unk = self.tgt_tok.unk_token_id
        texts = iter(self.tgt_tok.batch_decode([[ids.get(t, unk) for t in h] for hs in hyps for h in hs],
                                               skip_special_tokens=True))  # fmt: skip
        for i, result, hs in zip(todo, found, hyps):
            results[i] = [(_one_line(next(texts)), float(score)) for _, score in zip(hs, result.scores)]
        return results

    def _search(self, tokens: list[list[str]], limits: list[int]) -> list:
        """CTranslate2's results (hypotheses best first) for source `tokens`, each searched as if alone with its
        own output length limit `limits[j]`, in as few `translate_batch` calls as that allows.

        CTranslate2 takes one `max_decoding_length` per call, and one call per distinct limit fragments its
        length-sorted batches (measured 0.75-0.97x of one call). So all sentences are searched in one call with
        the largest limit L, and only those whose result could differ under their own limit l < L are searched
        again, one call per limit. Why the rest cannot differ: a search with limit l runs the very steps of one
        with limit L up to step l - 2 (the limit only forces every open hypothesis to finish at step l - 1), so
        the two differ only if the search is still running at step l - 1. With a length penalty CTranslate2
        stops a sentence once N = `beam_size` x `patience` hypotheses have finished; asked for all N best
        (`num_hypotheses`), a search that ran to step l - 1 had fewer than N finished by step l - 2, so
        one of the N it returns is at least l - 1 tokens long (one finished at step s has s tokens,
        </s> not counted). Greedy search has one hypothesis, finished at its </s>. So: searched again when a
        returned hypothesis has l - 1 tokens or more. Without a length penalty CTranslate2 stops a beam search
        when its top beam ends, which the results do not show: then every limit gets its own call."""
        opts = self.options
        beam = opts.beam_size > 1
        visible = not beam or opts.length_penalty != 0  # a search that ran on shows in its results (docstring)
        patience = CT2_PATIENCE if beam and opts.length_penalty != 0 else 1
        options = dict(
            beam_size=opts.beam_size, length_penalty=opts.length_penalty, return_scores=True, patience=patience,
            num_hypotheses=opts.beam_size * patience if beam and visible else opts.nbest, min_decoding_length=0,
            max_input_length=0, max_batch_size=opts.max_tokens, batch_type="tokens",
        )  # fmt: skip
        found: list = [None] * len(tokens)
        again = list(range(len(tokens)))
        if self.workers > 1:  # at least one batch per worker, where the budget would make fewer
            share = -(-sum(len(t) for t in tokens) // self.workers)
            options["max_batch_size"] = max(min(opts.max_tokens, share), max(len(t) for t in tokens))
        if visible:
            longest = max(limits)
            out = self.translator.translate_batch(tokens, max_decoding_length=longest, **options)
            again = []
            for j, result in enumerate(out):
                hyps = result.hypotheses
                if limits[j] < longest and (
                    len(hyps) < options["num_hypotheses"] or max(len(h) for h in hyps) >= limits[j] - 1
                ):  # fmt: skip
                    again.append(j)
                else:
                    found[j] = result
        groups: dict[int, list[int]] = {}  # length limit -> sentences
        for j in again:
            groups.setdefault(limits[j], []).append(j)
        # every limit's call submitted at once, so that the workers search them side by side
        pending = [(group, self.translator.translate_batch([tokens[j] for j in group], max_decoding_length=limit,
                                                           asynchronous=True, **options))
                   for limit, group in groups.items()]  # fmt: skip
        for group, out in pending:
            for j, result in zip(group, out):
                found[j] = result.result()
        return found
