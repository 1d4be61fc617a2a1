"""`txkit serve` under load: cross-request batching against the same server without it, and against offline
`txkit translate` on the same sentences, in one run.

    python benchmarks/bench_serve.py --model /tmp/runs/tiny-ende/model --seconds 20 --threads 2

Steps, each in this order in one run:

  offline      the first --n sentences of newstest2014.en translated by `txkit translate`'s code path
               (`Translator.translate`: length-sorted batches of --max-tokens), in this process, timed without
               the model load; its translations are the expected answers below
  batching     `txkit serve MODEL` (a subprocess, --threads, --max-batch): for each client count (--clients,
               default 1 4 16 64), that many clients each send single sentences ({"text": ...}, one keep-alive
               connection per client, the next sentence as soon as the answer arrives) for --seconds; client k
               sends sentences k, k + C, k + 2C, ... of the --n. The clients are asyncio tasks in a process of
               their own (the load generator, `--client-process`), the same one for both servers
  no batching  the same with `txkit serve --no-batching` (the search takes one sentence at a time)

With 16 among the client counts, offline translation is also timed with batches of at most 16 sentences: 16
clients sending one sentence each never put more than 16 sentences in the server's search, so this is about
the most the server can reach there, whatever its HTTP side costs.

Prints, per server and client count: answered sentences/s, p50 and p99 latency, answers that differ from the
offline translation of their sentence (should be 0: a sentence's output does not depend on its batch) and
failed requests; then the ratios the issue sets goals for: batching / no batching at 16 clients (goal >= 5x)
and batching at 16 clients / offline (goal >= 0.8). The load generator shares the machine's cores with the
server; written as one event loop over raw HTTP/1.1 it takes little CPU (printed as "clients' CPU": the share
of one core the load generator used).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def offline(args, lines: list[str], max_sentences: int | None = None) -> tuple[list[str], float]:
    """`txkit translate`'s path on `lines`: (translations, sentences per second without the model load).
    With `max_sentences`, its batches hold at most that many sentences (the ceiling below)."""
    import torch

    from txkit.decoding import DecodeOptions, Translator, load_model

    torch.set_num_threads(args.threads)
    model, src_tok, tgt_tok = load_model(args.model, "cpu", "fp32")
    options = DecodeOptions(beam_size=args.beam_size, max_tokens=args.max_tokens, max_sentences=max_sentences)
    translator = Translator(model, src_tok, tgt_tok, options)
    translator.translate(lines[:16])  # warm-up
    started = time.perf_counter()
    out = translator.translate(lines)
    return out, len(lines) / (time.perf_counter() - started)


class Server:
    def __init__(self, args, *extra: str):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
        command = [sys.executable, "-m", "txkit", "serve", args.model, "--port", "0", "--threads", str(args.threads),
                   "--max-batch", str(args.max_batch), "--max-texts", "1000", "--device", "cpu", *extra]  # fmt: skip
        self.proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not found:
            raise SystemExit(line + self.proc.stderr.read())
        self.port = int(found.group(1))
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep the pipe drained
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("the server did not become ready")

    def request(self, method: str, path: str, body: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def load(server: Server, clients: int, seconds: float, lines: list[str], expected: list[str], beam_size: int) -> dict:
    """`clients` concurrent clients sending single sentences for `seconds`, in a process of their own
    (`_client_process`); their latencies, wrong answers and failures."""
    job = {"port": server.port, "clients": clients, "seconds": seconds, "lines": lines, "expected": expected,
           "beam_size": beam_size}  # fmt: skip
    done = subprocess.run([sys.executable, __file__, "--client-process"], input=json.dumps(job), text=True,
                          capture_output=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the load generator failed:\n{done.stderr}")
    return json.loads(done.stdout)


def _client_process() -> None:
    """The load generator (run as `bench_serve.py --client-process`, the job as JSON on stdin, the result as
    JSON on stdout): `clients` asyncio tasks in one event loop, each on its own keep-alive HTTP/1.1 connection
    written and read by hand over asyncio streams. In their own process and without a thread per client, the
    clients take little of the CPU the server needs (the earlier version ran 16-64 threads of http.client in the
    benchmark's process; on two cores they cost the server part of its throughput)."""
    import asyncio

    job = json.loads(sys.stdin.read())
    lines, expected, clients = job["lines"], job["expected"], job["clients"]
    latencies: list[float] = []
    counts = {"wrong": 0, "failed": 0}

    async def connect():
        return await asyncio.open_connection("127.0.0.1", job["port"])

    async def exchange(reader, writer, body: bytes) -> tuple[int, bytes]:
        writer.write(b"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(":", 1) for line in header_lines if ":" in line)
        length = next((int(v) for k, v in headers.items() if k.strip().lower() == "content-length"), None)
        if length is None:
            raise ValueError("no Content-Length in the answer")
        return int(status_line.split()[1]), await reader.readexactly(length)

    async def client(k: int, stop_at: float) -> None:
        reader, writer = await connect()
        index = k
        while time.perf_counter() < stop_at:
            i = index % len(lines)
            body = json.dumps({"text": lines[i], "beam_size": job["beam_size"]}).encode()
            sent = time.perf_counter()
            try:
                status, raw = await exchange(reader, writer, body)
                answer = json.loads(raw)
                ok = status == 200
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                writer.close()
                reader, writer = await connect()
                ok = False
            took = time.perf_counter() - sent
            if not ok:
                counts["failed"] += 1
            else:
                latencies.append(took)
                counts["wrong"] += answer["translation"] != expected[i]
            index += clients
        writer.close()

    async def run() -> float:
        began = time.perf_counter()
        await asyncio.gather(*(client(k, began + job["seconds"]) for k in range(clients)))
        return time.perf_counter() - began  # includes finishing the requests sent before the deadline

    elapsed = asyncio.run(run())
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")  # noqa: E731
    print(json.dumps({"sent/s": len(latencies) / elapsed, "answered": len(latencies), "p50": pick(0.5),
                      "p99": pick(0.99), "client cpu": time.process_time() / elapsed, **counts}))  # fmt: skip


def main() -> None:
    if sys.argv[1:] == ["--client-process"]:
        return _client_process()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder or run directory")
    parser.add_argument("--source", default=str(SHARED / "newstest2014" / "newstest2014.en"))
    parser.add_argument("--n", type=int, default=500, help="sentences of the source used")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=20.0, help="load time per client count")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of server and offline")
    parser.add_argument("--max-batch", type=int, default=64, help="txkit serve --max-batch")
    parser.add_argument("--max-tokens", type=int, default=4096, help="offline batch budget (txkit translate's)")
    parser.add_argument("--beam-size", type=int, default=4)
    args = parser.parse_args()

    from txkit.runs import resolve_model

    args.model = resolve_model(args.model)
    lines = Path(args.source).read_text(encoding="utf-8").splitlines()[: args.n]
    print(f"# bench_serve {time.strftime('%Y-%m-%d %H:%M')} | {platform.machine()} {os.cpu_count()} cores | "
          f"load average {os.getloadavg()[0]:.1f} | model {args.model} | {len(lines)} sentences of "
          f"{Path(args.source).name} | beam {args.beam_size} | threads {args.threads} | {args.seconds:g} s per cell",
          flush=True)  # fmt: skip
    expected, offline_rate = offline(args, lines)
    print(f"offline txkit translate: {offline_rate:.1f} sent/s", flush=True)
    ceiling = None
    if 16 in args.clients:  # 16 clients never have more than 16 sentences in the server's search
        ceiling = offline(args, lines, max_sentences=16)[1]
        print(f"offline txkit translate in batches of at most 16 sentences: {ceiling:.1f} sent/s", flush=True)

    results: dict = {}
    for name, extra in (("batching", ()), ("no batching", ("--no-batching",))):
        server = Server(args, *extra)
        try:
            load(server, 4, 2.0, lines, expected, args.beam_size)  # warm-up
            for clients in args.clients:
                row = load(server, clients, args.seconds, lines, expected, args.beam_size)
                results[name, clients] = row
                print(f"{name:>11} {clients:>3} clients: {row['sent/s']:7.1f} sent/s  p50 {row['p50'] * 1000:7.0f} ms  "
                      f"p99 {row['p99'] * 1000:7.0f} ms  answered {row['answered']:5d}  wrong {row['wrong']}  "
                      f"failed {row['failed']}  clients' CPU {row['client cpu']:.0%}", flush=True)  # fmt: skip
        finally:
            server.stop()

    print("\n| clients | batching sent/s | p50 / p99 ms | no batching sent/s | p50 / p99 ms | batching / no batching | "
          "batching / offline | wrong / failed |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for clients in args.clients:
        b, u = results["batching", clients], results["no batching", clients]
        print(f"| {clients} | {b['sent/s']:.1f} | {b['p50'] * 1000:.0f} / {b['p99'] * 1000:.0f} | {u['sent/s']:.1f} | "
              f"{u['p50'] * 1000:.0f} / {u['p99'] * 1000:.0f} | {b['sent/s'] / u['sent/s']:.2f}x | "
              f"{b['sent/s'] / offline_rate:.2f} | {b['wrong'] + u['wrong']} / {b['failed'] + u['failed']} |")  # fmt: skip
    print(f"\noffline txkit translate (same sentences, same threads): {offline_rate:.1f} sent/s")
    if 16 in args.clients:
        b, u = results["batching", 16], results["no batching", 16]
        print(f"goals at 16 clients: batching / no batching {b['sent/s'] / u['sent/s']:.2f}x (goal >= 5); "
              f"batching / offline {b['sent/s'] / offline_rate:.2f} (goal >= 0.8)")  # fmt: skip
        print(f"offline in batches of at most 16 sentences (what 16 clients can keep in the search at best): "
              f"{ceiling:.1f} sent/s = {ceiling / offline_rate:.2f} of offline; batching at 16 clients reaches "
              f"{b['sent/s'] / ceiling:.2f} of it")  # fmt: skip
    lost = sum(r["failed"] + r["wrong"] for r in results.values())
    print(f"requests lost or answered wrongly: {lost}")


if __name__ == "__main__":
    main()
