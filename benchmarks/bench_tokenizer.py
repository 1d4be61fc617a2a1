"""Time building a BPE vocabulary (the paper's 37k, joint) and tokenizing Multi30k train (en-de).

    python benchmarks/bench_tokenizer.py [--data ../shared/data] [--vocab-size 37000] [--num-proc 1]

Prints the build time, the tokenizing throughput through `txkit.data` (load + Dataset.map, a fresh
cache), the raw `tokenizers` encode throughput, the second (cached) run's time, and the round-trip
rate on the training files. Record the numbers with the hardware and date.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TXKIT_SHARED_DATA", repo.parent / "shared" / "data")))
    parser.add_argument("--vocab-size", type=int, default=37000)
    parser.add_argument("--model", default="bpe", choices=["bpe", "unigram"])
    parser.add_argument("--num-proc", type=int, default=1, help="processes for Dataset.map")
    args = parser.parse_args()

    from txkit.data import load_parallel, tokenize_dataset
    from txkit.textio import count_lines
    from txkit.tokenization import build_tokenizer, load_tokenizer

    prefix = args.data / "multi30k" / "train"
    files = [Path(f"{prefix}.en"), Path(f"{prefix}.de")]
    pairs = count_lines(files[0])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        report = build_tokenizer(
            files, tmp / "tok", vocab_size=args.vocab_size, model=args.model, show_progress=False, stats=False
        )
        build_s = time.perf_counter() - start
        tok = load_tokenizer(tmp / "tok")
        print(f"build {report.model} vocab_size={args.vocab_size} (got {len(tok)}) on {2 * pairs} lines: {build_s:.2f} s")

        start = time.perf_counter()
        ds = load_parallel(prefix, "en", "de", cache_dir=tmp / "cache")
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        tokenized, filters = tokenize_dataset(ds, tok, num_proc=args.num_proc)
        map_s = time.perf_counter() - start
        total = load_s + map_s
        print(f"load_parallel: {load_s:.2f} s ({pairs / load_s:,.0f} pairs/s)")
        print(f"tokenize_dataset (num_proc={args.num_proc}): {map_s:.2f} s ({pairs / map_s:,.0f} pairs/s)")
        print(f"load + tokenize: {total:.2f} s ({pairs / total:,.0f} pairs/s); {filters}")

        start = time.perf_counter()
        tokenize_dataset(load_parallel(prefix, "en", "de", cache_dir=tmp / "cache"), tok, num_proc=args.num_proc)
        print(f"second run (cached): {time.perf_counter() - start:.2f} s")

        texts = {lang: [line.strip() for line in open(f, encoding="utf-8")] for lang, f in zip(("en", "de"), files)}
        backend = tok.backend_tokenizer
        start = time.perf_counter()
        encoded = {lang: backend.encode_batch_fast(lines) for lang, lines in texts.items()}
        raw_s = time.perf_counter() - start
        print(f"raw tokenizers encode_batch_fast (en + de): {raw_s:.2f} s ({pairs / raw_s:,.0f} pairs/s)")
        for lang, lines in texts.items():
            decoded = backend.decode_batch([e.ids for e in encoded[lang]], skip_special_tokens=True)
            same = sum(a == b for a, b in zip(lines, decoded))
            tokens = sum(len(e.ids) - 1 for e in encoded[lang])
            print(f"{lang}: {tokens / len(lines):.2f} tokens/sentence, round trip {100 * same / len(lines):.3f}%")


if __name__ == "__main__":
    main()
