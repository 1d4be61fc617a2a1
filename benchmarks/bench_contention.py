"""Training throughput on an idle CPU and next to one competing CPU-bound process, for torch's default thread
policy (spinning OpenMP threads) and txkit's (`txkit/threads.py`), side by side in one run.

    OMP_NUM_THREADS= python benchmarks/bench_contention.py [--preset transformer-tiny] [--max-tokens 4096]
                                                           [--steps 10] [--warmup 2] [--sentences 3000]

Each measurement is a fresh process (OpenMP reads its wait policy once, when torch loads it) that times
`Trainer.train_step`, the step `txkit train` runs, on the same batches as benchmarks/bench_train.py (whose
step timer it imports). "busy" runs start one competing process (`while True: pass`, one core) before the
measurement and stop it after. Rounds alternate policy and load so that drift in the machine's load hits
every cell alike; each cell keeps its best round. Goal (issue 14): busy costs at most 2x of idle, and the
new idle speed is within 10% of the old one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Environment each policy's process starts with (on top of the caller's, less the OpenMP settings).
_OPENMP_KEYS = ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "TXKIT_THREADS")
POLICIES = {
    "before (torch default: 2 spinning threads)": {"policy": "default"},
    "one thread": {"policy": "default", "env": {"OMP_NUM_THREADS": "1"}},
    "spin 10k": {"policy": "default", "env": {"GOMP_SPINCOUNT": "10000"}},
    "spin 100k": {"policy": "default", "env": {"GOMP_SPINCOUNT": "100000"}},
    "txkit (threads.py)": {"policy": "txkit"},
}


def worker(args) -> None:
    """One measurement: prints {"tgt_tok_s": ..., "threads": ...} as the last line."""
    if os.environ.get("BENCH_POLICY") == "txkit":
        from txkit.threads import prepare_environment

        prepare_environment()  # what the `txkit` entry point does before torch is imported
    import torch

    sys.path.insert(0, str(HERE))
    from bench_train import timed_steps  # the same step timer as the reference benchmark

    from txkit.recipe import load_recipe
    from txkit.threads import set_threads
    from txkit.train_setup import build_trainer

    threads = set_threads() if os.environ.get("BENCH_POLICY") == "txkit" else torch.get_num_threads()
    os.environ["TXKIT_DATA"] = str(args.data)
    recipe = load_recipe(None, [
        f"model.preset={args.preset}", f"tokenizer.path={args.tok}", f"tokenizer.vocab_size={args.vocab_size}",
        "data.train=multi30k/train", "data.valid=", f"data.max_sentences={args.sentences}", "data.max_len=128",
        f"train.max_tokens={args.max_tokens}", "train.save_every_minutes=0", "train.log_every_steps=0",
    ])  # fmt: skip
    with tempfile.TemporaryDirectory() as run:
        trainer = build_trainer(recipe, Path(run) / "run")
        n = args.warmup + args.steps
        batches = list(trainer.sampler)
        batches = (batches * (n // len(batches) + 1))[:n]
        tgt_tokens = sum(int(trainer.pairs.tgt_lengths[b].sum()) for b in batches[args.warmup :])
        times = timed_steps(lambda b: trainer.train_step([b]), batches, lambda: None)
        trainer.close()
    seconds = sum(times[args.warmup :])
    print(json.dumps({"tgt_tok_s": tgt_tokens / seconds, "s_per_step": seconds / args.steps, "threads": threads}))


def measure(args, name: str, busy: bool) -> dict:
    spec = POLICIES[name]
    env = {k: v for k, v in os.environ.items() if k not in _OPENMP_KEYS}
    env.update(spec.get("env", {}))
    env["BENCH_POLICY"] = spec["policy"]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, __file__, "--worker", "--tok", str(args.tok), "--data", str(args.data),
               "--preset", args.preset, "--max-tokens", str(args.max_tokens), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--sentences", str(args.sentences), "--vocab-size", str(args.vocab_size)]  # fmt: skip
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(0.5 if busy else 0)  # let the competitor take its core
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    if done.returncode != 0:
        raise SystemExit(f"worker failed ({name}, busy={busy}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TXKIT_SHARED_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--preset", default="transformer-tiny")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=2, help="measurements per cell; the best is kept")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated names of POLICIES")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tok", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    names = [n for n in POLICIES if n in args.policies.split(",")]
    print(f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}; {args.preset}, max_tokens "
          f"{args.max_tokens}, {args.steps} timed steps after {args.warmup}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        args.tok = Path(tmp) / "tok"  # built by the first worker, reused by the others
        best: dict[tuple[str, bool], dict] = {}
        for round_ in range(args.rounds):
            for busy in (False, True):
                for name in names:
                    result = measure(args, name, busy)
                    key = (name, busy)
                    if key not in best or result["tgt_tok_s"] > best[key]["tgt_tok_s"]:
                        best[key] = result
                    print(f"  round {round_ + 1} {'busy' if busy else 'idle'} {name}: "
                          f"{result['tgt_tok_s']:,.0f} tgt tok/s ({result['threads']} threads)", flush=True)  # fmt: skip
    print(f"\n{'policy':44} {'idle tok/s':>11} {'busy tok/s':>11} {'busy cost':>10} {'idle vs before':>15}")
    before_idle = best.get((names[0], False), {}).get("tgt_tok_s")
    for name in names:
        idle, busy = best[(name, False)]["tgt_tok_s"], best[(name, True)]["tgt_tok_s"]
        relative = f"{idle / before_idle:.2f}" if before_idle else ""
        print(f"{name:44} {idle:11,.0f} {busy:11,.0f} {idle / busy:9.2f}x {relative:>15}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
