"""Translate lines of text: model loading, length-sorted batches under a token budget, files and streams.

The stage between the model and the scores: text lines in, text lines out, one output line per input line
in input order. Sentences are sorted by length into batches bounded by a token budget (so speed does not
depend on the input's order), searched with txkit.search, and put back in input order.

Policies (documented here because the CLI and the training loop share them):

* An empty (or all-whitespace) input line gives an empty output line without running the model.
* A source longer than the model's `max_position_embeddings` tokens is reported (`Translator.overlong`) and,
  with `overlong="truncate"` (default), cut to its first max_positions - 1 tokens plus </s>; its output is
  capped at max_positions tokens like every other. `overlong="empty"` outputs an empty line instead.
* The output length limit is `max_len_a * source tokens + max_len_b` (paper: source + 50; source tokens
  and output tokens both count </s>), capped at max_positions.
* Output text never contains a line break: any the detokenizer produces becomes a space.
* Sampling draws each sentence from its own random stream, seeded from (seed, line number, sample), so
  a seed gives the same translations whatever the batch composition or the chunking of a stream.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

import torch

from txkit.errors import TxkitError
from txkit.options import DTYPES, DecodeOptions  # noqa: F401  (DecodeOptions: part of this module's API)
from txkit.search import Hypothesis, beam_search_continuous, token_search_continuous
from txkit.step_decoder import step_decoder
from txkit.textio import decode_lines

STREAM_CHUNK_LINES = 2000  # most lines translated together when streaming
_CONTINUOUS_ROOM = 64  # search_continuous: sentences taken at once when max_sentences is not set
_STREAM_WAIT_S = 0.01  # a stream chunk closes when no line arrived for this long


# ----------------------------------------------------------------------------- devices and models


def resolve_device(device: str | None = None) -> str:
    """The device to decode on: the given one (checked to exist), else the GPU when there is one, else the CPU."""
    if device:
        return check_device(device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str, option: str = "--device") -> str:
    """`device` if this machine has it; otherwise a TxkitError saying what there is."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise TxkitError(f"{option} {device}: unknown device (use cpu, cuda or cuda:N)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise TxkitError(f"{option} {device}: this machine has no CUDA GPU (or torch was built without CUDA); "
                             "use --device cpu")  # fmt: skip
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise TxkitError(f"{option} {device}: there is no such GPU (this machine has {torch.cuda.device_count()})")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise TxkitError(f"{option} {device}: MPS is not available on this machine; use --device cpu")
    elif parsed.type != "cpu":
        raise TxkitError(f"{option} {device}: unsupported device type {parsed.type!r} (use cpu or cuda)")
    return device


def resolve_dtype(dtype: str | None, device: str):
    """torch dtype for a name; "auto"/None = bf16 (or fp16 without bf16 support) on GPU, fp32 on CPU."""
    if dtype in (None, "auto"):
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype not in names:
        raise TxkitError(f"unknown dtype {dtype!r} (choose {', '.join(DTYPES)})")
    return names[dtype]


def load_tokenizers_for(model_path: str):
    """(source, target) tokenizers saved with a model (txkit's layout, else one AutoTokenizer for both)."""
    from transformers import AutoTokenizer

    if Path(model_path).is_dir():
        from txkit.tokenization import load_tokenizers

        return load_tokenizers(model_path)
    tok = AutoTokenizer.from_pretrained(model_path)
    return tok, tok


def load_model(path_or_id: str | Path, device: str | None = None, dtype: str | None = None):
    """Load MODEL (a model folder, a run directory's final/best/latest model, or a Hub id) for translation.

    Returns:
        (model in eval mode on `device`, source tokenizer, target tokenizer)
    """
    from transformers import AutoModelForSeq2SeqLM

    import txkit.modeling  # noqa: F401  (registers txkit's model with the Auto classes)
    from txkit.runs import resolve_model

    resolved = resolve_model(path_or_id)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if Path(resolved).is_dir():  # a local folder: every file checked before torch reads it
        from txkit.modelfiles import check_model_folder

        check_model_folder(resolved)
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(resolved, dtype=torch_dtype)
        src_tok, tgt_tok = load_tokenizers_for(resolved)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TxkitError(f"{resolved}: cannot load the model or its tokenizer ({first_line})") from None
    return model.to(device).eval(), src_tok, tgt_tok


def _unwrap(model):
    """The plain model inside DDP / accelerate / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# ----------------------------------------------------------------------------- batching


def length_sorted_batches(lengths: Sequence[int], max_tokens: int, max_sentences: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first: a batch's padded size
    (sentences x longest) stays within `max_tokens` (a longer sentence gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        full = current and (
            (len(current) + 1) * longest > max_tokens or (max_sentences is not None and len(current) >= max_sentences)
        )
        if full:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _one_line(text: str) -> str:
    """Replace line breaks (anything str.splitlines splits on) by spaces, so one output stays one line."""
    parts = text.splitlines()
    return " ".join(parts) if len(parts) > 1 or text.endswith(("\n", "\r")) else text


def _sentence_seed(seed: int, line: int, sample: int) -> int:
    return ((seed * 1_000_003 + line) * 1_009 + sample) % (2**63 - 1)


# ----------------------------------------------------------------------------- the translator


@dataclass(eq=False)
class Pending:
    """One sentence handed to `Translator.search_continuous`: its source ids, its output limit and the line
    number its sampling seeds derive from. `key` is the caller's handle; setting `cancelled` (from any
    thread) drops the sentence from the search at the next step without a result (a server's client that
    went away)."""

    ids: list[int]  # source token ids, </s> included
    max_length: int  # most output tokens, </s> included
    line: int = 0  # line number for sampling seeds: the same line gives the same samples in any batch
    key: object = None
    cancelled: bool = False


@dataclass
class _Work:
    """The tokenized sentences of one call, in input order."""

    ids: list[list[int] | None]  # None = empty line or skipped overlong line
    max_lengths: list[int]
    first_line: int  # line number (0-based) of ids[0] in the whole input, for seeds and reports
    overlong: list[int] = field(default_factory=list)


class Translator:
    """Translates lines with a loaded model. Works on a model in train mode too (it switches to eval for the
    call and back) and on the plain module inside an accelerate/DDP wrapper.

        translator = Translator(model, src_tok, tgt_tok, DecodeOptions(beam_size=4))
        translator.translate(["A man rides a bike."])  # -> ["Ein Mann fährt Fahrrad."]

    `overlong` lists the 0-based line numbers whose source exceeded the model's positions in the last call
    (for streams: counted from the stream's start).
    """

    def __init__(self, model, src_tok, tgt_tok=None, options: DecodeOptions | None = None, governor=None):
        self.model = _unwrap(model)
        self.governor = governor  # a txkit.threads.ThreadGovernor choosing the CPU thread count per batch
        self.src_tok = src_tok
        self.tgt_tok = tgt_tok if tgt_tok is not None else src_tok
        self.options = options or DecodeOptions()
        self.options.check()
        config = self.model.config
        self.max_positions = getattr(config, "max_position_embeddings", None) or 1024
        self.eos_token_id = config.eos_token_id
        self.pad_token_id = config.pad_token_id if config.pad_token_id is not None else src_tok.pad_token_id
        self.overlong: list[int] = []

    # public API ---------------------------------------------------------------------------------

    def translate(self, lines: Sequence[str]) -> list[str]:
        """One translation per line, in input order."""
        return [hyps[0][0] for hyps in self.translate_nbest(lines)]

    def translate_nbest(self, lines: Sequence[str]) -> list[list[tuple[str, float]]]:
        """Per line, `options.nbest` (translation, score) pairs, best first. The score is
        sum log p / lp(|Y|) in the chosen length-penalty form; an empty line gives ("", 0.0)."""
        return [self.detokenize(hyps) for hyps in self.translate_hypotheses(lines)]

    def translate_hypotheses(self, lines: Sequence[str]) -> list[list[Hypothesis]]:
        """Per line, its `options.nbest` search results (target token ids, score, sum log p), best first."""
        self.overlong = []
        return self._translate(list(lines), first_line=0)

    def translate_stream(self, lines: Iterable[str], chunk_lines: int = STREAM_CHUNK_LINES) -> Iterator[str]:
        """Translate lines as they arrive: each chunk is what has arrived so far (at least one line, so an
        interactive user gets each answer right away; a file streams in chunks of up to `chunk_lines`)."""
        for hyps in self.translate_stream_nbest(lines, chunk_lines):
            yield hyps[0][0]

    def translate_stream_nbest(
        self, lines: Iterable[str], chunk_lines: int = STREAM_CHUNK_LINES
    ) -> Iterator[list[tuple[str, float]]]:
        """`translate_stream` with the n-best lists of `translate_nbest`."""
        self.overlong = []
        done = 0
        for chunk in _arrived_chunks(lines, chunk_lines):
            for hyps in self._translate(chunk, first_line=done):
                yield self.detokenize(hyps)
            done += len(chunk)

    def pending(self, lines: Sequence[str], first_line: int = 0) -> list[Pending | None]:
        """The lines as `Pending` sentences for `search_continuous` (key = index in `lines`); None for a
        line that needs no search (empty, or overlong with overlong="empty"), whose result is empty."""
        work = self._prepare(list(lines), first_line)
        self.overlong.extend(work.overlong)
        return [
            None if ids is None else Pending(ids, work.max_lengths[i], first_line + i, key=i)
            for i, ids in enumerate(work.ids)
        ]

    def search_continuous(
        self,
        feed: Callable[[int], list[Pending]],
        done: Callable[[Pending, list[Hypothesis]], None],
        room: int | None = None,
    ) -> None:
        """Search sentences as they arrive. `feed(room)` returns up to `room` waiting sentences without
        blocking ([] when none wait); `done(pending, hyps)` receives each finished sentence's hypotheses,
        best first, in the order sentences finish. Returns once `feed` gives nothing and no sentence is
        left in the search. A sentence's result does not depend on what else is searched with it.

        Continuous batching: `feed` is asked again at every step while fewer than `room` sentences (default
        `options.max_sentences`, else 64) are searched, and the sentences it gives join the search at once
        (their encoder states computed, the rows of finished ones reused), so the batch stays full while
        input waits. A model whose step decoder cannot take sentences mid-search (not txkit's) is searched
        one fed batch at a time."""
        room = room or self.options.max_sentences or _CONTINUOUS_ROOM
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                while True:
                    arrived = feed(room)
                    if not arrived:
                        return
                    batch = [p for p in arrived if not p.cancelled]
                    if not batch:
                        continue
                    decoder = self._decoder(batch)
                    if not hasattr(decoder, "add"):
                        for item, hyps in zip(batch, self._search(batch, decoder)):
                            if not item.cancelled:
                                done(item, hyps)
                        continue
                    self._search(batch, decoder, feed=feed, done=done, room=room)
                    return
        finally:
            self.model.train(was_training)

    # internals ----------------------------------------------------------------------------------

    def detokenize(self, hyps: list[Hypothesis]) -> list[tuple[str, float]]:
        """(text, score) of each hypothesis: target tokens decoded to one line of text."""
        texts = self.tgt_tok.batch_decode([h.tokens for h in hyps], skip_special_tokens=True)
        return [(_one_line(text), h.score) for text, h in zip(texts, hyps)]

    def _translate(self, lines: list[str], first_line: int) -> list[list[Hypothesis]]:
        """Search the lines in length-sorted batches under the token budget, each batch to its end.

        Not through `search_continuous`: on a tiny-recipe checkpoint (step 200), translating the first 300 and
        600 lines of Multi30k test2016 that way (the batch refilled as sentences finish, under the same
        budget) took 1.04-1.44x the time of these batches in four runs on the shared machine
        (benchmarks/RESULTS.md): a joining sentence widens every row's self-attention window to the oldest
        sentence's, and each join or leave copies the whole cache, while the batches' tail costs little when
        the sentences of a batch have similar lengths."""
        opts = self.options
        items = self.pending(lines, first_line)
        results = [[Hypothesis(0.0, [], 0.0)] * opts.nbest for _ in lines]
        todo = [item for item in items if item is not None]
        if not todo:
            return results
        batches = length_sorted_batches([len(item.ids) for item in todo], opts.max_tokens, opts.max_sentences)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for batch in batches:
                    chosen = [todo[j] for j in batch]
                    with self._governed(sum(len(item.ids) for item in chosen)):
                        found = self._search(chosen)
                    for item, hyps in zip(chosen, found):
                        results[item.key] = hyps
        finally:
            self.model.train(was_training)
        return results

    def _governed(self, work: int):
        """The governor's timed unit for a batch of `work` source tokens (nothing without a governor)."""
        return self.governor.unit(work) if self.governor is not None else contextlib.nullcontext()

    def _prepare(self, lines: list[str], first_line: int) -> _Work:
        """Tokenize; mark empty lines; apply the overlong policy; per-sentence output limits."""
        opts = self.options
        texts = [line.rstrip("\r\n") for line in lines]
        nonempty = [i for i, text in enumerate(texts) if text.strip()]
        encoded = self.src_tok([texts[i] for i in nonempty], add_special_tokens=True)["input_ids"] if nonempty else []
        work = _Work(ids=[None] * len(lines), max_lengths=[0] * len(lines), first_line=first_line)
        limit = self.max_positions
        for i, ids in zip(nonempty, encoded):
            n_source = len(ids)
            if n_source > limit:
                work.overlong.append(first_line + i)
                if opts.overlong == "empty":
                    continue
                ids = ids[: limit - 1] + [ids[-1]]  # keep the closing </s>
            work.ids[i] = ids
            work.max_lengths[i] = max(1, min(int(opts.max_len_a * n_source + opts.max_len_b), limit))
        return work

    def _decoder(self, items: list[Pending]):
        """A step decoder over a first batch of sentences (their encoder states computed)."""
        device = next(self.model.parameters()).device
        sources = [item.ids for item in items]
        longest = max(len(ids) for ids in sources)
        input_ids = torch.full((len(sources), longest), self.pad_token_id, dtype=torch.long)  # (B, S)
        attention_mask = torch.zeros((len(sources), longest), dtype=torch.long)
        for row, ids in enumerate(sources):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        return step_decoder(self.model, input_ids.to(device), attention_mask.to(device))

    def _search(self, items: list[Pending], decoder=None, feed=None, done=None, room: int = 0):
        """Search a batch of sentences; per sentence, its hypotheses best first. With `feed`, continuous
        batching: more sentences join from `feed`, and every result goes to `done` instead."""
        opts = self.options
        decoder = decoder if decoder is not None else self._decoder(items)
        results: list = [None] * len(items)
        index = {id(item): i for i, item in enumerate(items)}
        if done is None:
            def done(item, hyps):  # noqa: E306
                results[index[id(item)]] = hyps
        if opts.sampling:
            token_search_continuous(
                decoder, items, feed, done, self.eos_token_id,
                sampling=dict(top_k=opts.top_k, top_p=opts.top_p, temperature=opts.temperature),
                seeds=lambda item: [_sentence_seed(opts.seed, item.line, s) for s in range(opts.nbest)],
                num_samples=opts.nbest, alpha=opts.length_penalty, lp_form=opts.lp_form, room=room,
            )  # fmt: skip
        elif opts.beam_size == 1:
            token_search_continuous(decoder, items, feed, done, self.eos_token_id, alpha=opts.length_penalty,
                                    lp_form=opts.lp_form, room=room)  # fmt: skip
        else:
            beam_search_continuous(
                decoder, items, feed, done, self.eos_token_id, beam_size=opts.beam_size, alpha=opts.length_penalty,
                lp_form=opts.lp_form, nbest=opts.nbest, room=room,
            )  # fmt: skip
        return results


def translate_lines(model_path: str | Path, lines: Sequence[str], **options) -> list[str]:
    """Load MODEL and translate `lines` with DecodeOptions(**options); one output per line."""
    opts = DecodeOptions.from_dict(options)
    model, src_tok, tgt_tok = load_model(model_path, opts.device, opts.dtype)
    return Translator(model, src_tok, tgt_tok, opts).translate(lines)


# ----------------------------------------------------------------------------- reading streams


def iter_text_lines(stream: IO[bytes], name: str) -> Iterator[str]:
    """Lines of a binary stream (file or standard input) decoded as UTF-8, line endings removed; read line
    by line, so a pipe is translated as it streams."""
    return decode_lines(iter(stream.readline, b""), name)


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


def _arrived_chunks(lines: Iterable[str], max_lines: int) -> Iterator[list[str]]:
    """Group lines into chunks of what has arrived: a reader thread pulls `lines`; a chunk closes at
    `max_lines` or when no new line came for a moment (an interactive user waiting for the answer)."""
    pending: queue.Queue = queue.Queue(maxsize=4 * max_lines)

    def read():
        try:
            for line in lines:
                pending.put(line)
            pending.put(_END)
        except BaseException as exc:  # handed to the consumer, raised there after the lines before it
            pending.put(_Failure(exc))

    threading.Thread(target=read, name="txkit-reader", daemon=True).start()
    while True:
        item = pending.get()
        chunk: list[str] = []
        while isinstance(item, str):
            chunk.append(item)
            if len(chunk) >= max_lines:
                item = None
                break
            try:
                item = pending.get(timeout=_STREAM_WAIT_S)
            except queue.Empty:
                item = None
        if chunk:
            yield chunk
        if item is _END:
            return
        if isinstance(item, _Failure):
            raise item.exc
