"""`txkit serve MODEL [--host 127.0.0.1] [--port 8000]`: serve translations over HTTP.

    txkit serve runs/multi30k                       # http://127.0.0.1:8000: a page, /v1/translate, /metrics
    TXKIT_API_KEY=secret txkit serve user/model --host 0.0.0.0 --port 8080

The model loads once (GET /health answers 503 until it is ready); sentences of concurrent requests share the
decoder's batches. SIGTERM (or Ctrl-C) stops accepting connections, answers the requests in flight, then exits
(status 0 for SIGTERM). Bad options, a missing model or a port that is taken are one line and status 2 before
anything is served.
"""

from __future__ import annotations

import socket
from typing import Optional

import typer

from txkit.errors import TxkitError


def serve_command(
    model: str = typer.Argument(..., help="Run directory (its final, best or latest model), model folder or Hub id."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: str = typer.Option("8000", "--port", help="TCP port (0: any free port, printed at startup)."),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="TXKIT_API_KEY", show_envvar=True,
        help="Require this key on every endpoint but /health ('Authorization: Bearer KEY'). "
        "Prefer the environment variable: a command line is visible to other users.",
    ),  # fmt: skip
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", help="Largest request body (413 beyond)."),
    max_texts: int = typer.Option(64, "--max-texts", help="Most texts in one request (413 beyond)."),
    max_chars: int = typer.Option(2000, "--max-chars", help="Most characters in one text (413 beyond)."),
    max_beam_size: int = typer.Option(16, "--max-beam-size", help="Largest beam size or n-best a request may ask."),
    max_batch: int = typer.Option(64, "--max-batch", help="Most sentences the decoder searches at once."),
    no_batching: bool = typer.Option(
        False, "--no-batching", help="Search one sentence at a time (no cross-request batching; for comparison)."
    ),
    device: Optional[str] = typer.Option(
        None, "--device", help="cpu, cuda, cuda:1 (default: the GPU when there is one)."
    ),
    dtype: str = typer.Option("auto", "--dtype", help="auto, fp32, bf16, fp16 (auto: bf16/fp16 on GPU, fp32 on CPU)."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads (default: one per core, or $TXKIT_THREADS / $OMP_NUM_THREADS)."
    ),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn's log level: info logs every request."),
):
    """Serve translations over HTTP: POST /v1/translate, GET /health, GET /metrics and a page at /."""
    from txkit.runs import resolve_model

    port_number = _port(port)
    limits = {"--max-body-bytes": max_body_bytes, "--max-texts": max_texts, "--max-chars": max_chars,
              "--max-beam-size": max_beam_size, "--max-batch": max_batch}  # fmt: skip
    for name, value in limits.items():
        if value < 1:
            raise TxkitError(f"{name} {value}: must be at least 1")
    if api_key is not None and not api_key.strip():
        raise TxkitError("--api-key (or $TXKIT_API_KEY) is empty")
    if log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise TxkitError(f"--log-level {log_level}: choose critical, error, warning, info, debug or trace")
    model_path = resolve_model(model)
    from txkit.options import DTYPES

    if dtype not in DTYPES:
        raise TxkitError(f"--dtype {dtype}: unknown dtype (choose {', '.join(DTYPES)})")
    if device is not None:
        from txkit.decoding import check_device

        check_device(device)
    from pathlib import Path

    if Path(model_path).is_dir():  # every file checked now, not in the loading thread
        from txkit.modelfiles import check_model_folder

        check_model_folder(model_path)
    listener = _listen(host, port_number)

    import uvicorn

    from txkit.serving.app import ServeSettings, create_app
    from txkit.threads import set_threads

    set_threads(threads)
    settings = ServeSettings(
        model=model_path, api_key=api_key, max_body_bytes=max_body_bytes, max_texts=max_texts, max_chars=max_chars,
        max_beam_size=max_beam_size, max_batch=max_batch, batching=not no_batching, device=device, dtype=dtype,
    )  # fmt: skip
    fatal: list[str] = []

    def on_fatal(message: str) -> None:
        fatal.append(message)
        server.should_exit = True

    config = uvicorn.Config(create_app(settings, on_fatal), log_level=log_level, access_log=log_level == "info",
                            timeout_graceful_shutdown=None, server_header=False)  # fmt: skip
    server = uvicorn.Server(config)
    bound_host, bound_port = listener.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    typer.echo(f"txkit serve: {model_path} on http://{shown}:{bound_port} (GET /health says when it is ready)",
               err=True)  # fmt: skip
    import signal

    # uvicorn answers SIGTERM by finishing the requests in flight, then re-raises the signal into the handler
    # that was there before it: make that one a no-op, so a graceful stop exits with status 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run(sockets=[listener])
    if fatal:
        raise TxkitError(fatal[0])
    typer.echo("txkit serve: stopped", err=True)


def _port(text: str) -> int:
    if not text.strip().isdigit() or int(text) > 65535:
        raise TxkitError(f"--port {text}: expected a TCP port number from 0 to 65535")
    return int(text)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, made here so a taken port or unknown host is one clear line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise TxkitError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise TxkitError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def register(app: typer.Typer) -> None:
    app.command("serve", no_args_is_help=True)(serve_command)
