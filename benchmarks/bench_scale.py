"""The data pipeline at WMT14 scale: tokenizer training, tokenization into the cache, the first step.

    nice -n 10 python benchmarks/bench_scale.py [--sizes 450000 4500000] [--work /tmp/txkit-scale]

WMT14 en-de has ~4.5M sentence pairs; the machine has no network and Multi30k holds 29k. So the corpus
is made from Multi30k en-de train: each pair joins 1-8 random Multi30k pairs (both sides the same ones),
as many as bring its English side closest to a length drawn from newstest2014's English sentence lengths, so the word
counts per pair follow news text (printed: mean, median and 95th percentile against newstest2014). Seeded:
the same corpus every time. It is written under --work (never the repository) and kept there: a second
run reuses it, and with it the datasets cache keyed on its files.

Each stage runs in a fresh Python process that goes through txkit's own code, as `txkit train` does with
the paper's recipe (recipes/wmt14-en-de/transformer-base.yaml, data.train pointed at the made corpus):

    tokenizer   txkit.recipe.build_recipe_tokenizer: the 37000-token joint BPE on both sides
    tokenize    txkit.recipe.load_corpus + txkit.data.tokenize_dataset: text -> Arrow ids in the datasets
                cache (a fresh cache), with the recipe's filters, data.num_proc processes
    first_step  txkit.training.Trainer (tokenizer, cached ids, batches, model, optimizer) and its first
                update; float32 (train.mixed_precision=no: bf16 on a CPU measures nothing a user runs)
    batching    (on request: --stages batching) txkit.batching alone on the cached ids: TokenizedPairs, the
                epoch's batches, the first batch collated; the memory it adds. With --reference-batching
                FILE it runs again with that version of batching.py, side by side, e.g. the version that
                copied the ids out of the cache:
                    git show c3e2a4d^:txkit/batching.py > /tmp/batching_before.py
                    python benchmarks/bench_scale.py --stages batching --reference-batching /tmp/batching_before.py

For each: wall time, CPU time (user + system, the process and its workers) and peak resident memory
(ru_maxrss of the process; of its largest worker when it has workers). Run at two sizes, the peak
memory of each stage shows what grows with the corpus: the ids stay in the memory-mapped Arrow cache
files, so what txkit itself holds grows by the per-pair lengths, sort order and filter masks (~90 bytes
a pair); RSS also counts the cache files' pages a process has read (see rss_anon_mb / rss_file_mb).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "wmt14-en-de" / "transformer-base.yaml"
STAGES = ("tokenizer", "tokenize", "first_step")
MAX_JOINED = 8  # at most this many Multi30k pairs in one made pair (newstest2014's longest ~100 words)


# ----------------------------------------------------------------------------- the corpus


def _words(lines: list[str]):
    import numpy as np

    return np.array([len(line.split()) for line in lines], dtype=np.int64)


def make_corpus(data: Path, pairs: int, out_prefix: Path, seed: int = 0) -> dict:
    """Write out_prefix.en / .de with `pairs` lines whose English word counts follow newstest2014's."""
    import numpy as np

    en = (data / "multi30k" / "train.en").read_text(encoding="utf-8").splitlines()
    de = (data / "multi30k" / "train.de").read_text(encoding="utf-8").splitlines()
    news = _words((data / "newstest2014" / "newstest2014.en").read_text(encoding="utf-8").splitlines())
    en_words = _words(en)
    rng = np.random.default_rng(seed)
    made = []
    chunk = 500_000
    with open(f"{out_prefix}.en", "w", encoding="utf-8") as f_en, open(f"{out_prefix}.de", "w", encoding="utf-8") as f_de:
        for start in range(0, pairs, chunk):
            n = min(chunk, pairs - start)
            wanted = rng.choice(news, size=n)  # (n,) a news sentence's length for each made pair
            picks = rng.integers(0, len(en), size=(n, MAX_JOINED))  # (n, MAX_JOINED) Multi30k pair ids
            reached = np.cumsum(en_words[picks], axis=1)  # (n, MAX_JOINED) words after joining 1, 2, ...
            k = np.abs(reached - wanted[:, None]).argmin(axis=1) + 1  # (n,) pairs joined: the closest length
            made.append(reached[np.arange(n), k - 1])
            f_en.writelines(" ".join(en[i] for i in row[:m]) + "\n" for row, m in zip(picks.tolist(), k.tolist()))
            f_de.writelines(" ".join(de[i] for i in row[:m]) + "\n" for row, m in zip(picks.tolist(), k.tolist()))
    made = np.concatenate(made)

    def stats(x):
        return {"mean": round(float(x.mean()), 1), "median": float(np.median(x)), "p95": float(np.percentile(x, 95))}

    return {"made_en_words": stats(made), "newstest2014_en_words": stats(news), "multi30k_en_words": stats(en_words)}


# ----------------------------------------------------------------------------- one stage (in its own process)


def _recipe(corpus: Path, work: Path, num_proc: int):
    from txkit.recipe import load_recipe

    overrides = [
        f"data.train={corpus}",
        "data.valid=",  # no validation set: not part of the data pipeline measured here
        f"data.num_proc={num_proc}",
        f"tokenizer.path={work / 'tokenizer'}",
        "train.mixed_precision=no",
        "train.max_steps=1",
        "train.save_every_minutes=0",
    ]
    return load_recipe(RECIPE, overrides)


def run_stage(stage: str, corpus: Path, work: Path, num_proc: int, batching_module: str | None = None) -> dict:
    recipe = _recipe(corpus, work, num_proc)
    info: dict = {}
    if stage == "tokenizer":
        from txkit.recipe import build_recipe_tokenizer
        from txkit.tokenization import load_tokenizers

        build_recipe_tokenizer(recipe, work / "tokenizer")
        info["vocab_size"] = len(load_tokenizers(work / "tokenizer")[0])
    elif stage == "tokenize":
        import math

        from txkit.data import tokenize_dataset
        from txkit.recipe import load_corpus
        from txkit.tokenization import load_tokenizers

        d = recipe.data
        src_tok, tgt_tok = load_tokenizers(work / "tokenizer")
        started = time.perf_counter()
        ds = load_corpus(recipe, d.train, "train")
        info["load_s"] = round(time.perf_counter() - started, 1)
        ids, report = tokenize_dataset(
            ds, src_tok, tgt_tok, num_proc=d.num_proc, max_len=d.max_len, max_ratio=d.max_ratio or math.inf,
            dedup=d.dedup, name="data.train",
        )  # fmt: skip
        info["filters"] = str(report)
        # memory-mapped: the dataset's table is backed by its cache files, not built in memory
        info["table"] = type(ids.data).__name__
        info["cache_files_mb"] = round(sum(os.path.getsize(f["filename"]) for f in ids.cache_files) / 2**20)
    elif stage == "batching":
        import importlib.util
        import itertools
        import math

        from txkit.data import tokenize_dataset
        from txkit.recipe import load_corpus
        from txkit.tokenization import load_tokenizers

        d = recipe.data
        src_tok, tgt_tok = load_tokenizers(work / "tokenizer")
        ids, _ = tokenize_dataset(load_corpus(recipe, d.train, "train"), src_tok, tgt_tok, num_proc=d.num_proc,
                                  max_len=d.max_len, max_ratio=d.max_ratio or math.inf, dedup=d.dedup)  # fmt: skip
        batching = importlib.import_module("txkit.batching")
        if batching_module:  # the reference: another version of txkit/batching.py, e.g. from git history
            spec = importlib.util.spec_from_file_location("reference_batching", batching_module)
            batching = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(batching)
        before = _rss_now_mb()
        started = time.perf_counter()
        pairs = batching.TokenizedPairs(ids)
        sampler = batching.TokenBatchSampler(pairs.src_lengths, pairs.tgt_lengths, recipe.train.max_tokens,
                                             seed=recipe.train.seed)  # fmt: skip
        first = next(itertools.islice(iter(sampler), 1))
        pairs.collate(first, src_tok.pad_token_id)
        info["build_s"] = round(time.perf_counter() - started, 1)
        info["rss_before_mb"] = before
        info["rss_added_mb"] = _maxrss_mb(resource.RUSAGE_SELF) - before
        # RSS counts the pages of the memory-mapped cache files a process has read (page cache the kernel
        # can drop) as well as its own memory: the split says which one grew
        info["rss_anon_mb"], info["rss_file_mb"] = _rss_now_mb("RssAnon:"), _rss_now_mb("RssFile:")
    elif stage == "first_step":
        import itertools

        from txkit.train_setup import build_trainer

        started = time.perf_counter()
        trainer = build_trainer(recipe, work / "run")
        info["setup_s"] = round(time.perf_counter() - started, 1)
        info["rss_after_setup_mb"] = _maxrss_mb(resource.RUSAGE_SELF)
        info["batches_per_epoch"] = len(trainer.sampler)
        started = time.perf_counter()
        micro = list(itertools.islice(trainer._batch_stream(), recipe.train.accumulation))
        assert trainer.train_step(micro), "the first step was skipped"
        info["step_s"] = round(time.perf_counter() - started, 1)
        info["step_pairs"] = sum(len(b) for b in micro)
        trainer.close()
    else:
        raise ValueError(stage)
    self_, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    info["cpu_s"] = round(self_.ru_utime + self_.ru_stime + children.ru_utime + children.ru_stime, 1)
    info["peak_rss_mb"] = _maxrss_mb(resource.RUSAGE_SELF)
    info["peak_rss_worker_mb"] = _maxrss_mb(resource.RUSAGE_CHILDREN)
    return info


def _rss_now_mb(field: str = "VmRSS:") -> int:
    with open("/proc/self/status") as fh:
        return next(round(int(line.split()[1]) / 1024) for line in fh if line.startswith(field))


def _maxrss_mb(who) -> int:
    return round(resource.getrusage(who).ru_maxrss / 1024)  # KiB on Linux


# ----------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TXKIT_SHARED_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--sizes", type=int, nargs="+", default=[450_000, 4_500_000], help="pairs in the made corpus")
    parser.add_argument("--work", type=Path, default=Path("/tmp/txkit-scale"), help="corpora, caches and runs")
    parser.add_argument("--num-proc", type=int, default=2, help="data.num_proc: processes tokenizing")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--reference-batching", type=Path,
                        help="with the batching stage: also run it with this txkit/batching.py (side by side)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batching-module", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.stage:
        print(json.dumps(run_stage(args.stage, args.corpus, args.work, args.num_proc, args.batching_module)))
        return

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}; command: {' '.join(sys.argv)}", flush=True)  # fmt: skip
    rows = []
    for size in args.sizes:
        work = args.work / f"{size}"
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / "corpus" / "train"
        corpus.parent.mkdir(exist_ok=True)
        done_file = work / "corpus" / "done.json"
        if done_file.is_file():  # the same seed makes the same corpus: keep it (and the caches keyed on its files)
            print(f"{size} pairs: corpus from an earlier run; {done_file.read_text().strip()}", flush=True)
        else:
            started = time.perf_counter()
            lengths = make_corpus(args.data, size, corpus)
            done_file.write_text(json.dumps(lengths) + "\n")
            print(f"{size} pairs: corpus written in {time.perf_counter() - started:.0f} s; {json.dumps(lengths)}", flush=True)
        env = {**os.environ, "HF_DATASETS_CACHE": str(work / "hf-cache"), "OMP_NUM_THREADS": "2",
               "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}  # fmt: skip
        runs = [(stage, None) for stage in args.stages.split(",")]
        if args.reference_batching and "batching" in args.stages.split(","):
            runs.append(("batching", args.reference_batching))
        for stage, reference in runs:
            command = [sys.executable, __file__, "--stage", stage, "--corpus", str(corpus), "--work", str(work),
                       "--num-proc", str(args.num_proc)]  # fmt: skip
            if reference:
                command += ["--batching-module", str(reference.resolve())]
                stage = "batching (reference)"
            started = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                sys.exit(f"{stage} at {size} pairs failed:\n{done.stderr[-3000:]}")
            info = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append((size, stage, wall, info))
            print(f"{size:>9} {stage:<10} wall {wall:8.1f} s  cpu {info['cpu_s']:8.1f} s  peak RSS "
                  f"{info['peak_rss_mb']:6d} MB (worker {info['peak_rss_worker_mb']} MB)  {json.dumps(info)}", flush=True)  # fmt: skip

    if len(args.sizes) >= 2:
        small, large = min(args.sizes), max(args.sizes)
        by = {(s, st): i for s, st, _, i in rows}
        print(f"\npeak RSS at {large} pairs / at {small} pairs ({large / small:.0f}x the pairs):")
        for stage in dict.fromkeys(st for _, st, _, _ in rows):
            a, b = by[(small, stage)], by[(large, stage)]
            print(f"  {stage:<10} {b['peak_rss_mb']} / {a['peak_rss_mb']} MB = {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x; "
                  f"per added pair: {(b['peak_rss_mb'] - a['peak_rss_mb']) * 2**20 / (large - small):.0f} bytes")  # fmt: skip


if __name__ == "__main__":
    main()
