"""The server's decoding worker: one thread owns the model and searches the sentences of every waiting request
together, through `Translator.search_continuous`.

A request's lines become `Pending` sentences (tokenized in the caller's thread) in a queue per set of decoding
options: one search call uses one set of options, so sentences are grouped by them and the worker serves one
group per call, the group whose oldest sentence has waited longest first. While a call runs, `feed` hands the
search the group's sentences as they arrive (up to the room the search has), so sentences of concurrent
requests share the decoder's batches; it stops feeding a group once another group has waited since before the
call began, so no group starves. A sentence's result does not depend on its batch: sampling seeds come from its
line number within its own request (`Pending.line`), never from its place in the batch.

With `batching=False` the worker searches one sentence at a time: the reference the benchmark compares with.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from txkit.decoding import Pending, Translator
from txkit.options import DecodeOptions

log = logging.getLogger("txkit.serve")

_TRANSLATORS_KEPT = 64  # distinct option sets whose Translator is kept (each is a few references, no tensors)


@dataclass(eq=False)
class Job:
    """One request's sentences and, as they finish, their results (per line: [(text, score)] best first).

    `on_done` is called once, from the worker thread (or from `submit` when no line needs a search), when
    every line has its result or the job failed (`error` set)."""

    options: DecodeOptions
    on_done: Callable[[], None]
    results: list = field(default_factory=list)
    items: list = field(default_factory=list)  # its Pending sentences (lines that need a search)
    remaining: int = 0
    overlong: list = field(default_factory=list)  # 0-based lines whose source exceeded the model's positions
    source_tokens: int = 0
    output_tokens: int = 0
    cancelled: bool = False
    error: str | None = None
    finished: bool = False


class Engine:
    """Queues requests' sentences and decodes them on one worker thread (see the module docstring).

    Args:
        model, src_tok, tgt_tok: the loaded model and its tokenizers (`txkit.decoding.load_model`).
        max_batch: most sentences in the search at once (the `room` handed to `feed`).
        batching: False = one sentence at a time, no sentences of different requests share a batch.
        metrics: a `txkit.serving.metrics.Metrics` (or None) updated as sentences move.
    """

    def __init__(self, model, src_tok, tgt_tok, max_batch: int = 64, batching: bool = True, metrics=None):
        self.model, self.src_tok, self.tgt_tok = model, src_tok, tgt_tok
        self.max_batch = max_batch
        self.batching = batching
        self.metrics = metrics
        self._cond = threading.Condition()
        self._queues: dict[tuple, collections.deque] = {}  # options key -> deque of (arrival time, Pending)
        self._in_search: set[Pending] = set()
        self._translators: collections.OrderedDict[tuple, Translator] = collections.OrderedDict()
        self._closing = False
        # One tokenizer object serves the request threads (encode) and the worker (decode); encoding may
        # reconfigure it (truncation, padding), which its Rust side refuses while another thread uses it.
        self._tokenizer_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="txkit-decoder", daemon=True)

    # the request side (any thread) --------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, lines: list[str], options: DecodeOptions, on_done: Callable[[], None]) -> Job:
        """Queue `lines` for translation with `options` (already checked); returns the Job at once."""
        job = Job(options=options, on_done=on_done)
        job.results = [[("", 0.0)] * options.nbest for _ in lines]  # empty lines keep this result
        tokenizer = Translator(self.model, self.src_tok, self.tgt_tok, options)  # cheap: no tensors
        with self._tokenizer_lock:
            items = tokenizer.pending(lines, first_line=0)  # line numbers within the request: its sampling seeds
        job.overlong = list(tokenizer.overlong)
        for item in items:
            if item is not None:
                job.results[item.key] = _NOT_DONE
                item.key = (job, item.key)
                job.items.append(item)
                job.source_tokens += len(item.ids)
        job.remaining = len(job.items)
        if not job.items:
            self._finish(job)
            return job
        key = _options_key(options)
        now = time.monotonic()
        with self._cond:
            if self._closing:
                raise RuntimeError("the decoding worker has stopped")
            self._queues.setdefault(key, collections.deque()).extend((now, item) for item in job.items)
            self._set_queue_depth()
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> int:
        """Drop a job's unfinished sentences (its client went away): queued ones leave the queue, searched
        ones leave the search at its next step. Returns how many were dropped."""
        with self._cond:
            if job.finished or job.cancelled:
                return 0
            job.cancelled = True
            dropped = 0
            for item in job.items:
                if not item.cancelled and job.results[item.key[1]] is _NOT_DONE:
                    item.cancelled = True
                    dropped += 1
            for key, queue in list(self._queues.items()):
                kept = collections.deque(entry for entry in queue if not entry[1].cancelled)
                if kept:
                    self._queues[key] = kept
                else:
                    del self._queues[key]
            self._in_search = {item for item in self._in_search if not item.cancelled}
            self._set_queue_depth()
        if self.metrics is not None:
            self.metrics.sentences_cancelled.inc(dropped)
        return dropped

    def queue_depth(self) -> int:
        """Sentences waiting for the search (not yet in it)."""
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def close(self) -> None:
        """Finish every queued sentence, then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    # the worker ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queues and not self._closing:
                    self._cond.wait()
                if not self._queues:
                    return  # closing and nothing left
                key = min(self._queues, key=lambda k: self._queues[k][0][0])  # the longest-waiting group
            translator = self._translator(key)
            call = {"began": time.monotonic(), "fed": False}
            try:
                translator.search_continuous(
                    lambda room: self._feed(key, room, call), lambda item, hyps: self._done(translator, item, hyps)
                )
            except Exception as exc:  # a bug or out of memory: fail the searched requests, keep serving
                log.exception("decoding failed")
                with self._cond:
                    failed = {item.key[0] for item in self._in_search}
                    self._in_search.clear()
                for job in failed:
                    job.error = f"decoding failed: {type(exc).__name__}"
                    with self._cond:
                        for item in job.items:
                            item.cancelled = True
                    self._finish(job)

    def _feed(self, key: tuple, room: int, call: dict) -> list[Pending]:
        """Up to `room` waiting sentences of group `key` for the running search ([] = none for now). After
        its first sentences, a call stops taking more once another group has waited since before it began."""
        with self._cond:
            self._in_search = {item for item in self._in_search if not item.cancelled}
            if not self.batching:
                if self._in_search:
                    return []
                room = 1
            room = min(room, self.max_batch - len(self._in_search))
            queue = self._queues.get(key)
            others_waiting = call["fed"] and any(q[0][0] < call["began"] for k, q in self._queues.items() if k != key)
            if not queue or room <= 0 or others_waiting:
                return []
            arrived = []
            while queue and len(arrived) < room:
                item = queue.popleft()[1]
                if not item.cancelled:
                    arrived.append(item)
            if not queue:
                del self._queues[key]
            if not arrived:
                self._set_queue_depth()
                return []
            self._in_search.update(arrived)
            call["fed"] = True
            self._set_queue_depth()
            if self.metrics is not None:
                self.metrics.batch_sentences.observe(len(self._in_search))
            return arrived

    def _done(self, translator: Translator, item: Pending, hyps) -> None:
        job, line = item.key
        with self._tokenizer_lock:
            result = translator.detokenize(hyps)
        with self._cond:
            self._in_search.discard(item)
            if job.cancelled or job.finished:
                return
            job.results[line] = result
            job.output_tokens += sum(len(h.tokens) for h in hyps[:1])
            job.remaining -= 1
            last = job.remaining == 0
        if self.metrics is not None:
            self.metrics.sentences.inc()
        if last:
            self._finish(job)

    def _finish(self, job: Job) -> None:
        with self._cond:
            if job.finished:
                return
            job.finished = True
        job.on_done()

    def _translator(self, key: tuple) -> Translator:
        translator = self._translators.pop(key, None)
        if translator is None:
            options = DecodeOptions(**dict(key))
            options.max_sentences = self.max_batch
            translator = Translator(self.model, self.src_tok, self.tgt_tok, options)
        self._translators[key] = translator
        while len(self._translators) > _TRANSLATORS_KEPT:
            self._translators.popitem(last=False)
        return translator

    def _set_queue_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(sum(len(q) for q in self._queues.values()))


class _NotDone:
    """Marks a line whose result has not arrived (compared by identity)."""


_NOT_DONE = _NotDone()


def _options_key(options: DecodeOptions) -> tuple:
    """A hashable key for a set of decoding options: requests with equal keys are searched together."""
    return tuple(sorted(dataclasses.asdict(options).items()))
