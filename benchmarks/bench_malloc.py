"""The bf16 CPU training step with glibc's default malloc against txkit's (txkit.memory: freed memory kept for the
next step instead of given back to the kernel), side by side.

    python benchmarks/bench_malloc.py [--recipe recipes/multi30k-en-de/transformer-tiny.yaml] [--steps 200]
                                      [--block 10] [--warmup 20] [--sentences 29000] [--data ../shared/data]

malloc's settings belong to a process and cannot be undone, so each setting gets a process of its own: two
workers build the same trainer (same recipe, seed and batches) and take turns, `--block` steps at a time, while
the other waits, so that a change in the machine's load hits both alike and they never compete for the cores.
Prints, for each, the median seconds a step, target tokens per second, page faults a step and peak memory
(resident set); then the ratio. Record the numbers with the hardware and date.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SETTINGS = ("default", "txkit")


def worker(args) -> None:
    """One setting's process: steps the batches the parent names, answers with times and fault counts."""
    if args.worker == "txkit":
        from txkit.memory import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("txkit.memory did nothing here (not glibc?)")
    import contextlib
    import io
    import resource
    import tempfile
    import time

    from txkit.recipe import load_recipe
    from txkit.train_setup import build_trainer

    os.environ["TXKIT_DATA"] = str(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(args.recipe, [
            f"tokenizer.path={tmp}/tok", "data.valid=", f"data.max_sentences={args.sentences}",
            "train.mixed_precision=bf16", "train.save_every_minutes=0", "train.log_every_steps=0",
        ])  # fmt: skip
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            trainer = build_trainer(recipe, Path(tmp) / "run")
        batches = []
        while len(batches) < args.warmup + args.steps:  # the next epoch when one is not enough
            batches += list(trainer.sampler)
        tgt_lengths = trainer.pairs.tgt_lengths
        print(json.dumps({"ready": True}), flush=True)
        try:
            for line in sys.stdin:  # "first last": step batches[first:last]
                first, last = map(int, line.split())
                times, faults, tokens = [], [], []
                for batch in batches[first:last]:
                    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    start = time.perf_counter()
                    assert trainer.train_step([batch])
                    times.append(time.perf_counter() - start)
                    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
                    tokens.append(int(tgt_lengths[batch].sum()))
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                print(json.dumps({"times": times, "faults": faults, "tokens": tokens, "peak": peak}), flush=True)
        finally:
            trainer.close()


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TXKIT_SHARED_DATA", repo.parent / "shared" / "data")))
    parser.add_argument("--recipe", type=Path, default=repo / "recipes" / "multi30k-en-de" / "transformer-tiny.yaml")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per setting")
    parser.add_argument("--block", type=int, default=10, help="steps one setting takes before the other's turn")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    parser.add_argument("--sentences", type=int, default=29000,
                        help="training pairs to batch and learn BPE from (29000: all of Multi30k, as a run batches)")
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_precision import cpu_description

    print(cpu_description())
    command = [sys.executable, __file__, "--data", str(args.data), "--recipe", str(args.recipe), "--steps",
               str(args.steps), "--warmup", str(args.warmup), "--sentences", str(args.sentences)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TXKIT_KEEP_FREED_MEMORY"}
    workers = {s: subprocess.Popen(command + ["--worker", s], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                   env=env) for s in SETTINGS}  # fmt: skip

    def ask(setting: str, line: str | None) -> dict:
        proc = workers[setting]
        if line is not None:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
        answer = proc.stdout.readline()
        if not answer:
            raise SystemExit(f"the {setting} worker stopped (exit {proc.wait()})")
        return json.loads(answer)

    results = {s: {"times": [], "faults": [], "tokens": [], "peak": 0} for s in SETTINGS}
    try:
        for setting in SETTINGS:
            ask(setting, None)  # built: one at a time would be fairer, but building does not count
        for setting in SETTINGS:
            ask(setting, f"0 {args.warmup}")
        for first in range(args.warmup, args.warmup + args.steps, args.block):
            last = min(first + args.block, args.warmup + args.steps)
            for setting in SETTINGS if (first // args.block) % 2 == 0 else SETTINGS[::-1]:
                answer = ask(setting, f"{first} {last}")
                for key in ("times", "faults", "tokens"):
                    results[setting][key] += answer[key]
                results[setting]["peak"] = answer["peak"]
    finally:
        for proc in workers.values():
            proc.stdin.close()
            proc.wait()

    print(f"{args.recipe.name}: {args.steps} timed steps each, in turns of {args.block}")
    print(f"{'malloc':>8} {'median s':>9} {'tgt tok/s':>10} {'faults/step':>12} {'peak RSS':>9}")
    for setting, r in results.items():
        print(f"{setting:>8} {statistics.median(r['times']):9.4f} {sum(r['tokens']) / sum(r['times']):10,.0f} "
              f"{statistics.median(r['faults']):12,.0f} {r['peak'] / 2**30:7.2f} GiB")
    default, kept = (statistics.median(results[s]["times"]) for s in SETTINGS)
    print(f"txkit against default: {kept / default:.3f}x the seconds a step ({default / kept:.2f}x the speed)")


if __name__ == "__main__":
    main()
