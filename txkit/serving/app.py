"""The HTTP side of `txkit serve`: a FastAPI application around the decoding worker (txkit.serving.engine).

    POST /v1/translate   {"text": "..."} or {"texts": [...]} plus `txkit translate`'s decoding options
    GET  /health         200 once the model is loaded (503 while it loads); never needs the API key
    GET  /metrics        Prometheus text format
    GET  /               a page to type text and see its translation (one static file, no external assets)

Every error is a JSON body {"error": "one line"} with its status: 400 (body not UTF-8 or not JSON), 401 (API
key), 404/405, 413 (body, texts per request or characters per text over the server's limits), 422 (wrong
fields, types or option values, worded as the CLI words them), 503 (still loading or shutting down). The
body is read in pieces and refused as soon as it passes the limit. A request whose client disconnects
drops its sentences from the queue and the search.

Middleware here is plain ASGI (not Starlette's BaseHTTPMiddleware, which hides the client's disconnect from
the endpoint).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from txkit.errors import TxkitError
from txkit.options import DecodeOptions
from txkit.serving.metrics import Metrics

log = logging.getLogger("txkit.serve")

API_KEY_ENV = "TXKIT_API_KEY"
_ENDPOINTS = ("/v1/translate", "/health", "/metrics", "/")


@dataclass
class ServeSettings:
    """What `txkit serve` was told (its command-line options)."""

    model: str  # resolved model folder or Hub id
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_texts: int = 64
    max_chars: int = 2000
    max_beam_size: int = 16
    max_batch: int = 64
    batching: bool = True
    device: str | None = None
    dtype: str | None = None


class TranslateRequest(BaseModel):
    """The body of POST /v1/translate: `text` or `texts`, and any of `txkit translate`'s decoding options
    (their defaults are the CLI's: the paper's beam search)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: Optional[str] = None
    texts: Optional[list[str]] = None
    beam_size: Optional[int] = None
    greedy: bool = False
    length_penalty: Optional[float] = None
    lp_form: Optional[str] = None
    max_len_a: Optional[float] = None
    max_len_b: Optional[int] = None
    nbest: Optional[int] = None
    sampling: bool = False
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    temperature: Optional[float] = None
    seed: Optional[int] = None
    overlong: Optional[str] = None

    def options(self) -> DecodeOptions:
        """The DecodeOptions of this request, checked as the CLI checks them (a TxkitError if impossible)."""
        given = {name: value for name, value in self.model_dump(exclude={"text", "texts", "greedy"}).items()
                 if value is not None}  # fmt: skip
        if self.greedy:
            given["beam_size"] = 1
        options = DecodeOptions(**given)
        options.check()
        return options


class ApiError(Exception):
    """An error answered as {"error": message} with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# ----------------------------------------------------------------------------- ASGI middleware


class ApiKeyCheck:
    """Every endpoint but /health needs the key: `Authorization: Bearer KEY`, or HTTP Basic with KEY as the
    password (what a browser sends for the page and its requests once the user typed it in the prompt).
    Compared in constant time: both sides are hashed first, so not even the length leaks."""

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.digest = hashlib.sha256(api_key.encode("utf-8")).digest() if api_key else None

    async def __call__(self, scope, receive, send):
        if self.digest is None or scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        given = _presented_key(dict(scope["headers"]).get(b"authorization", b""))
        if hmac.compare_digest(hashlib.sha256(given).digest(), self.digest):
            return await self.app(scope, receive, send)
        response = error_response(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                  {"WWW-Authenticate": 'Basic realm="txkit serve", charset="UTF-8"'})  # fmt: skip
        await response(scope, receive, send)


def _presented_key(header: bytes) -> bytes:
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() == b"bearer":
        return value.strip()
    if scheme.lower() == b"basic":
        try:
            return base64.b64decode(value.strip(), validate=True).partition(b":")[2]
        except ValueError:
            return b""
    return b""


class CountRequests:
    """txkit_requests{endpoint, code}: every answered request, endpoints outside the API counted as 'other'."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = scope["path"] if scope["path"] in _ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()


# ----------------------------------------------------------------------------- the application


def create_app(settings: ServeSettings, on_fatal: Callable[[str], None] = lambda message: None):
    """The ASGI application. The model loads in a thread at startup (/health says 503 until it is ready);
    a load failure calls `on_fatal(message)` (the CLI stops the server and prints it)."""
    metrics = Metrics()
    state: dict = {"engine": None, "stopping": False}

    def load() -> None:
        try:
            from transformers.utils import logging as hf_logging

            from txkit.decoding import load_model
            from txkit.serving.engine import Engine

            hf_logging.disable_progress_bar()
            model, src_tok, tgt_tok = load_model(settings.model, settings.device, settings.dtype)
            engine = Engine(model, src_tok, tgt_tok, settings.max_batch, settings.batching, metrics)
            engine.start()
            state["engine"] = engine
            log.info("model loaded: %s", settings.model)
        except TxkitError as exc:
            on_fatal(str(exc))
        except Exception as exc:  # noqa: BLE001  (reported in one line; the traceback goes to the log)
            log.exception("loading the model failed")
            on_fatal(f"{settings.model}: cannot load the model ({type(exc).__name__}: {exc})")

    async def lifespan(app):
        threading.Thread(target=load, name="txkit-load", daemon=True).start()
        yield
        state["stopping"] = True
        if state["engine"] is not None:  # uvicorn has answered every request in flight by now
            state["engine"].close()

    app = FastAPI(title="txkit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal_error(request, exc):  # the traceback goes to the server's log, never to the client
        return error_response(500, "internal server error")

    @app.get("/health")
    async def health():
        if state["engine"] is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ready", "model": settings.model}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    page = resources.files("txkit.serving").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.post("/v1/translate")
    async def translate(request: Request):
        started = time.perf_counter()
        metrics.in_progress.inc()
        try:
            return await _translate(request, settings, state, metrics)
        except ApiError as exc:
            return error_response(exc.status, exc.message)
        finally:
            metrics.in_progress.dec()
            metrics.latency.observe(time.perf_counter() - started)

    return ServerErrorFree(CountRequests(ApiKeyCheck(app, settings.api_key), metrics))


async def _translate(request: Request, settings: ServeSettings, state: dict, metrics: Metrics):
    engine = state["engine"]
    if engine is None:
        raise ApiError(503, "the model is still loading; GET /health says when it is ready")
    if state["stopping"]:
        raise ApiError(503, "the server is shutting down")
    body = await _read_body(request, settings.max_body_bytes)
    parsed = _parse(body, settings)
    texts = [parsed.text] if parsed.text is not None else parsed.texts
    options = _options(parsed, settings)

    loop = asyncio.get_running_loop()
    finished = loop.create_future()

    def on_done():  # called on the decoding worker's thread
        loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))

    try:
        job = engine.submit(texts, options, on_done)
    except RuntimeError:  # the worker has stopped: the server is shutting down
        raise ApiError(503, "the server is shutting down") from None
    watcher = asyncio.ensure_future(_watch_disconnect(request, engine, job, finished))
    try:
        await finished
    finally:
        watcher.cancel()
    if job.cancelled:
        raise ApiError(499, "the client closed the connection")  # nginx's code; nobody is left to read it
    if job.error:
        raise ApiError(500, job.error)
    metrics.source_tokens.inc(job.source_tokens)
    metrics.output_tokens.inc(job.output_tokens)
    answer: dict = {}
    if parsed.text is not None:
        answer["translation"], answer["score"] = job.results[0][0]
        if options.nbest > 1:
            answer["nbest"] = [{"text": text, "score": score} for text, score in job.results[0]]
    else:
        answer["translations"] = [hyps[0][0] for hyps in job.results]
        answer["scores"] = [hyps[0][1] for hyps in job.results]
        if options.nbest > 1:
            answer["nbest"] = [[{"text": t, "score": s} for t, s in hyps] for hyps in job.results]
    if job.overlong:
        answer["overlong"] = job.overlong  # 0-based indices of sources cut (or left empty) at the model's length
    return answer


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (Content-Length or not)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise ApiError(413, f"request body of {int(declared)} bytes is over this server's limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over this server's limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes, settings: ServeSettings) -> TranslateRequest:
    """The body as a TranslateRequest: 400 for bytes that are not UTF-8 JSON, 422 for wrong fields or types,
    413 for more texts or longer texts than the server takes."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})")
    if not isinstance(data, dict):
        raise ApiError(422, f"request body must be a JSON object, not {type(data).__name__}")
    try:
        parsed = TranslateRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        if first["type"] == "extra_forbidden":
            raise ApiError(422, f"unknown field {where!r}") from None
        raise ApiError(422, f"{where}: {first['msg']}") from None
    if (parsed.text is None) == (parsed.texts is None):
        raise ApiError(422, "give exactly one of 'text' (a string) or 'texts' (a list of strings)")
    texts = [parsed.text] if parsed.text is not None else parsed.texts
    if len(texts) > settings.max_texts:
        raise ApiError(413, f"{len(texts)} texts is over this server's limit of {settings.max_texts} per request")
    for i, one in enumerate(texts):
        if len(one) > settings.max_chars:
            where = "text" if parsed.text is not None else f"texts.{i}"
            raise ApiError(413, f"{where}: {len(one)} characters is over this server's limit of {settings.max_chars}")
    return parsed


def _options(parsed: TranslateRequest, settings: ServeSettings) -> DecodeOptions:
    try:
        options = parsed.options()
    except TxkitError as exc:
        raise ApiError(422, str(exc)) from None
    if options.beam_size > settings.max_beam_size or options.nbest > settings.max_beam_size:
        raise ApiError(422, f"beam_size and nbest can be at most {settings.max_beam_size} on this server")
    return options


async def _watch_disconnect(request: Request, engine, job, finished: asyncio.Future) -> None:
    """Wait for the client to go away (the body has been read: the next ASGI message is the disconnect);
    then drop the job's sentences and end the wait for them."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            dropped = engine.cancel(job)
            log.info("client went away: %d sentence(s) dropped", dropped)
            if not finished.done():
                finished.set_result(None)
            return


class ServerErrorFree:
    """The outermost layer: an exception that escaped everything else (a bug) is logged and answered as a
    JSON 500, never a traceback to the client."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watch(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            log.exception("unhandled error")
            if not started:
                await error_response(500, "internal server error")(scope, receive, send)
