"""`txkit serve` under load: cross-request batching against the same server without it, and against offline
`txkit translate` on the same sentences, in one run.

    python benchmarks/bench_serve.py --model /tmp/runs/tiny-ende/model --seconds 20 --threads 2

Steps, each in this order in one run:

  offline      the first --n sentences of newstest2014.en translated by `txkit translate`'s code path
               (`Translator.translate`: length-sorted batches of --max-tokens), in this process, timed without
               the model load; its translations are the expected answers below
  batching     `txkit serve MODEL` (a subprocess, --threads, --max-batch): for each client count (--clients,
               default 1 4 16 64), that many client threads each send single sentences ({"text": ...}, one
               keep-alive connection per client, the next sentence as soon as the answer arrives) for --seconds;
               client k sends sentences k, k + C, k + 2C, ... of the --n
  no batching  the same with `txkit serve --no-batching` (the search takes one sentence at a time)

Prints, per server and client count: answered sentences/s, p50 and p99 latency, answers that differ from the
offline translation of their sentence (should be 0: a sentence's output does not depend on its batch) and
failed requests; then the ratios the issue sets goals for: batching / no batching at 16 clients (goal >= 5x)
and batching at 16 clients / offline (goal >= 0.8). The clients run in this process's threads and share the
CPU with the server: on a small machine they cost the server some of its throughput.
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


def offline(args, lines: list[str]) -> tuple[list[str], float]:
    """`txkit translate`'s path on `lines`: (translations, sentences per second without the model load)."""
    import torch

    from txkit.decoding import DecodeOptions, Translator, load_model

    torch.set_num_threads(args.threads)
    model, src_tok, tgt_tok = load_model(args.model, "cpu", "fp32")
    translator = Translator(model, src_tok, tgt_tok, DecodeOptions(beam_size=args.beam_size, max_tokens=args.max_tokens))
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
    """`clients` threads sending single sentences for `seconds`; latencies, wrong answers, failures."""
    latencies: list[float] = []
    wrong = failed = 0
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        nonlocal wrong, failed
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        index = k
        start.wait()
        while time.perf_counter() < stop_at[0]:
            i = index % len(lines)
            body = json.dumps({"text": lines[i], "beam_size": beam_size})
            sent = time.perf_counter()
            try:
                conn.request("POST", "/v1/translate", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                answer = json.loads(response.read())
                ok = response.status == 200
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
                ok, answer = False, None
            took = time.perf_counter() - sent
            with lock:
                if not ok:
                    failed += 1
                else:
                    latencies.append(took)
                    wrong += answer["translation"] != expected[i]
            index += clients
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began  # includes finishing the requests sent before the deadline
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")  # noqa: E731
    return {"sent/s": len(latencies) / elapsed, "answered": len(latencies), "p50": pick(0.5), "p99": pick(0.99),
            "wrong": wrong, "failed": failed}  # fmt: skip


def main() -> None:
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
                      f"failed {row['failed']}", flush=True)  # fmt: skip
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
    lost = sum(r["failed"] + r["wrong"] for r in results.values())
    print(f"requests lost or answered wrongly: {lost}")


if __name__ == "__main__":
    main()
