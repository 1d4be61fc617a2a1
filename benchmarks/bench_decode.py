"""Decoding speed: txkit's search against `generate` and CTranslate2 on the same model and batches, one run.

    python benchmarks/bench_decode.py --model /tmp/runs/tiny-ende/model --n 500 --threads 1
    python benchmarks/bench_decode.py --preset transformer-tiny --train-steps 400 --n 200 --threads 1
    python benchmarks/bench_decode.py --marian exports/opus-mt-en-de     # any Marian folder
    python benchmarks/bench_decode.py --model MODEL --profile prof.txt   # torch profiler over txkit's search
    python benchmarks/bench_decode.py --model MODEL --engines --threads 1,2 --source multi30k/test2016.en

With --engines, the table of engines x threads x precision x model instead (`engines_table`), as markdown:

    python benchmarks/bench_decode.py --engines --model MODEL_A --model MODEL_B --threads 1,2 --latency 3

for each model, txkit's own engine (`txkit translate --engine txkit`'s Translator; int8 = `--quantize int8`),
`--engine ctranslate2` through txkit, and CTranslate2 called directly the way its documentation recommends
(tokenizers' batch encode to token strings, one `translate_batch` over all sentences, which sorts them by
length into --max-tokens token batches, one length limit: the longest source + 50; detokenized with tokenizers'
batch decode; beam search with `patience=txkit.engines.CT2_PATIENCE`, as txkit's CTranslate2 engine runs it;
--ct2-patience N times the direct calls at another patience), all in the hf length-penalty form (the one
CTranslate2 has), at each --threads count, float32 and int8: sentences/s, target tokens/s, BLEU against the
reference (sacreBLEU) and how many translations equal txkit's. `--precisions fp32,int8,bf16` adds txkit's engine
with bf16 weights and compute (`--dtype bf16`; fast where the CPU has AVX512-BF16 or AMX), compared with
CTranslate2's int8 (it has no bf16 on a CPU) and, in "= txkit", with txkit's float32 translations at the same
thread count (list fp32 before bf16). --latency N adds the first sentence's latency of `txkit translate` reading
one sentence on standard input (a fresh process: start, model load, first line out; best of N) for the default engine choice and each
engine, with the CTranslate2 conversion cached, and once for the first call on a never-converted copy of the
model (the conversion included). Defaults: 1000 lines of Multi30k test2016.en, one round (--repeat). In each
cell txkit's engine runs its rounds before the cell's CTranslate2 is loaded, then the two CTranslate2 paths
alternate (a live ctranslate2.Translator that has translated slows torch's threads, see engine_rows).

Translates the first N sentences of newstest2014.en with beam search and prints sentences and target tokens
per second for four ways of decoding the same length-sorted batches (txkit's `length_sorted_batches`):

  txkit paper      txkit's default: GNMT length penalty, limit = each sentence's source length + 50
  txkit hf-form    txkit's search configured as generate is (Hugging Face length penalty |Y|^alpha, one
                   limit per batch = its longest source + 50): the same translations as generate
  generate         `MarianMTModel.generate(num_beams, length_penalty, max_new_tokens=limit)` on the Marian
                   export of the same weights (`txkit.export.export_marian`), per batch
  ct2 fp32         CTranslate2 on the converted export (`txkit.export.convert_ctranslate2`), float32,
                   `translate_batch(beam_size, length_penalty, patience, max_decoding_length=limit)` per batch, all
                   submitted at once to --threads one-thread workers (on a GPU: one worker)

The paths run in rounds (--repeat), each round in a rotated order, so a change in the machine's load hits all
alike; each path's time is its best round (the least disturbed one), the median is printed beside it.

Without --model, builds what it needs in --work-dir: a joint BPE tokenizer on Multi30k train (vocab 8000)
and a --preset model, randomly initialised or trained for --train-steps Adam updates on Multi30k en-de (a
random model never emits </s> early, so every sentence runs to its limit: the worst case for search).
Exports are cached in --work-dir too. The measurements and their history are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import statistics
import sys
import time
import weakref
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from txkit.decoding import DecodeOptions, Translator, length_sorted_batches, load_model  # noqa: E402
from txkit.engines import CT2_PATIENCE  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
PATHS = ("txkit paper", "txkit hf-form", "generate", "ct2 fp32")


# ----------------------------------------------------------------------------- models


def build_model(args) -> Path:
    """Tokenizer on Multi30k train + a preset model (random or briefly trained), cached in --work-dir."""
    from txkit.modeling import TxkitConfig, TxkitForConditionalGeneration
    from txkit.tokenization import build_tokenizer, config_kwargs_from_tokenizer, load_tokenizer, save_tokenizers

    work = Path(args.work_dir)
    tok_dir = work / "tokenizer-multi30k-8000"
    if not (tok_dir / "tokenizer.json").is_file():
        files = [SHARED / "multi30k" / "train.en", SHARED / "multi30k" / "train.de"]
        build_tokenizer(files, tok_dir, vocab_size=8000, show_progress=False, stats=False)
    model_dir = work / f"{args.preset}-steps{args.train_steps}-seed{args.seed}"
    if (model_dir / "config.json").is_file():
        return model_dir
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(args.seed)
    model = TxkitForConditionalGeneration(TxkitConfig.from_preset(args.preset, **config_kwargs_from_tokenizer(tok)))
    if args.train_steps:
        train_briefly(model, tok, args.train_steps, args.seed)
    model.save_pretrained(model_dir)
    save_tokenizers(tok, tok, model_dir)
    return model_dir


def train_briefly(model, tok, steps: int, seed: int) -> None:
    src = (SHARED / "multi30k" / "train.en").read_text(encoding="utf-8").splitlines()
    tgt = (SHARED / "multi30k" / "train.de").read_text(encoding="utf-8").splitlines()
    rng = random.Random(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    model.train()
    started = time.perf_counter()
    for step in range(1, steps + 1):
        idx = rng.sample(range(len(src)), 64)
        inputs = tok([src[i] for i in idx], padding=True, return_tensors="pt")
        labels = tok([tgt[i] for i in idx], padding=True, return_tensors="pt")["input_ids"]
        loss = model(**inputs, labels=labels.masked_fill(labels.eq(tok.pad_token_id), -100)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps:
            seconds = time.perf_counter() - started
            print(f"  train step {step}/{steps}: loss {loss.item():.3f} ({seconds:.0f} s)", flush=True)
    model.eval()


def exports(model_path: str, work_dir: str) -> tuple[Path, Path]:
    """The Marian export and its CTranslate2 conversion of a txkit model, cached by the weights' content."""
    from txkit.export import convert_ctranslate2, export_marian

    weights = sorted(Path(model_path).glob("*.safetensors")) or sorted(Path(model_path).glob("*.bin"))
    digest = hashlib.sha1(b"".join(w.read_bytes() for w in weights)).hexdigest()[:12]
    base = Path(work_dir) / "exports" / digest
    marian, ct2 = base / "marian", base / "ct2-fp32"
    if not (marian / "config.json").is_file():
        export_marian(model_path, marian, overwrite=True)
    if not (ct2 / "model.bin").is_file():
        convert_ctranslate2(marian, ct2, overwrite=True)
    return marian, ct2


# ----------------------------------------------------------------------------- the four paths


def run_generate(model, tok, sources, batches, limits, beam, alpha):
    """generate per batch -> (texts, target tokens without </s>)."""
    texts, tokens = [None] * len(sources), 0
    special = {model.config.pad_token_id, model.config.eos_token_id, model.config.decoder_start_token_id}
    device = next(model.parameters()).device
    for batch, limit in zip(batches, limits):
        inputs = tok([sources[i] for i in batch], padding=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            out = model.generate(
                **inputs, num_beams=beam, length_penalty=alpha, max_new_tokens=limit, early_stopping=False,
                do_sample=False,
            )  # fmt: skip
        out = out[:, 1:].cpu()  # drop the decoder start token
        tokens += sum(int(t not in special) for t in out.flatten().tolist())
        for i, text in zip(batch, tok.batch_decode(out, skip_special_tokens=True)):
            texts[i] = text
    return texts, tokens


def run_txkit(model, src_tok, tgt_tok, sources, batches, limits, options: DecodeOptions):
    """txkit's search on the same batches; `limits` None = the options' per-sentence limits."""
    texts, tokens = [None] * len(sources), 0
    for batch, limit in zip(batches, limits or [None] * len(batches)):
        opts = options if limit is None else DecodeOptions(**{**vars(options), "max_len_a": 0.0, "max_len_b": limit})
        opts.max_tokens = 10**9  # the batch is given: keep it whole
        translator = Translator(model, src_tok, tgt_tok, opts)
        hyps = translator.translate_hypotheses([sources[i] for i in batch])
        tokens += sum(len(h[0].tokens) for h in hyps)
        for i, h in zip(batch, hyps):
            texts[i] = translator.detokenize(h)[0][0]
    return texts, tokens


def run_ct2(translator, tok, sources, batches, limits, beam, alpha, patience):
    """CTranslate2 per batch, on the tokens of the (renumbered) Marian tokenizer."""
    texts, tokens = [None] * len(sources), 0
    submitted = []  # every batch submitted at once: the workers take them in turn
    for batch, limit in zip(batches, limits):
        ids = tok([sources[i] for i in batch])["input_ids"]
        source_tokens = [tok.convert_ids_to_tokens(x) for x in ids]
        submitted.append(translator.translate_batch(
            source_tokens, beam_size=beam, length_penalty=alpha, max_decoding_length=limit, patience=patience,
            max_batch_size=len(batch), return_scores=False, asynchronous=True,
        ))  # fmt: skip
    for batch, results in zip(batches, submitted):
        out = [tok.convert_tokens_to_ids(r.result().hypotheses[0]) for r in results]
        tokens += sum(len(x) for x in out)
        for i, text in zip(batch, tok.batch_decode(out, skip_special_tokens=True)):
            texts[i] = text
    return texts, tokens


def profile_txkit(run, out_path: str) -> None:
    """One txkit run under the torch profiler; the operator table (self CPU time) goes to `out_path`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        run()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
    Path(out_path).write_text(table + "\n", encoding="utf-8")
    print(table)


# ----------------------------------------------------------------------------- engines x threads x precision

ENGINE_ROWS = ("txkit", "txkit --engine ctranslate2", "ctranslate2 direct")


def engines_table(args, model_paths: list[str]) -> None:
    """The engines side by side for every model (module docstring, --engines); prints a markdown table."""
    import ctranslate2

    from txkit.runs import resolve_model

    source = Path(args.source) if Path(args.source).is_absolute() else SHARED / args.source
    reference = Path(args.reference) if args.reference else source.with_suffix("." + args.target_lang)
    with open(source, encoding="utf-8") as f:
        sources = [line.rstrip("\n") for _, line in zip(range(args.n), f)]
    with open(reference, encoding="utf-8") as f:
        refs = [line.rstrip("\n") for _, line in zip(range(args.n), f)]
    threads_list = [int(t) for t in str(args.threads).split(",")]
    rows, latencies = [], []
    started = time.perf_counter()
    for model_path in model_paths:
        resolved = resolve_model(model_path)
        # a run's model folder is RUN/model: the run's folder names it (two runs' rows must not share a label)
        path = Path(model_path)
        name = path.name if path.name != "model" else "/".join(path.resolve().parts[-2:])
        name = name if path.exists() else model_path
        rows += engine_rows(args, resolved, name, sources, refs, threads_list)
        if args.latency:
            latencies += first_sentence_latency(resolved, name, sources[0], threads_list[0], args.latency)
    print(f"\n{len(sources)} sentences of {source.name} (BLEU against {reference.name}, sacreBLEU), beam {args.beam}, "
          f"alpha {args.alpha} (hf form, the one CTranslate2 has), CTranslate2 direct with patience {args.ct2_patience}, "
          f"--max-tokens {args.max_tokens}, best of "
          f"{args.repeat} round(s); {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, ctranslate2 {ctranslate2.__version__}; "
          f"{time.perf_counter() - started:.0f} s\n")  # fmt: skip
    print("| model | engine | threads | precision | sent/s | tgt tok/s | BLEU | = txkit | vs CTranslate2 direct |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    direct = {(r["model"], r["threads"], r["precision"]): r["sps"] for r in rows if r["engine"] == ENGINE_ROWS[2]}
    for r in rows:
        # bf16 (txkit alone) against CTranslate2's fastest CPU precision, int8, where the table has it
        against = "int8" if r["precision"] == "bf16" else r["precision"]
        known = direct.get((r["model"], r["threads"], against))
        ratio = f"{r['sps'] / known:.2f}x" + (" (vs int8)" if against != r["precision"] else "") if known else "-"
        same = "-" if r["same"] is None else f"{r['same']}/{len(sources)}"
        print(f"| {r['model']} | {r['engine']} | {r['threads']} | {r['precision']} | {r['sps']:.1f} | {r['tps']:.0f} | "
              f"{r['bleu']:.2f} | {same} | {ratio} |")  # fmt: skip
    if latencies:
        print(f"\nFirst sentence's latency: seconds from starting `txkit translate MODEL --threads {threads_list[0]}` "
              f"(a fresh process, one sentence on standard input) to its first output line, "
              f"best of {args.latency}\n")  # fmt: skip
        print("| model | txkit translate options | engine | conversion | seconds |")
        print("| --- | --- | --- | --- | ---: |")
        for model, options, engine, conversion, seconds in latencies:
            print(f"| {model} | {options} | {engine} | {conversion} | {seconds:.2f} |")


def engine_rows(args, model_path: str, name: str, sources, refs, threads_list) -> list[dict]:
    """Each engine at each thread count and precision on one model: a dict per row (speed, BLEU, agreement)."""
    from txkit.engines import ctranslate2_model, load_translator

    ctranslate2_model(model_path)  # converted (and cached) before any timing
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        fp32 = None  # txkit's float32 translations at this thread count, for the bf16 row's "= txkit"
        for precision in args.precisions:
            quantize = "int8" if precision == "int8" else "none"
            base = dict(beam_size=args.beam, length_penalty=args.alpha, lp_form="hf", max_tokens=args.max_tokens,
                        quantize=quantize)  # fmt: skip
            dtype = "bf16" if precision == "bf16" else "fp32"
            ours = load_translator(model_path, DecodeOptions(**base, engine="txkit", dtype=dtype), threads)
            times: dict[str, list] = {engine: [] for engine in ENGINE_ROWS}
            outputs = {}

            def timed(engine: str, run) -> None:
                started = time.perf_counter()
                outputs[engine] = run()
                times[engine].append(time.perf_counter() - started)

            # txkit's engine first, before this cell's CTranslate2 exists: a ctranslate2.Translator that has
            # translated slows torch's OpenMP work in the process while it lives (the tiny model at 2 threads:
            # 104 instead of 143-170 sentences/s); the previous cell's is gone (deleted below)
            ours.translate(sources[:8])  # warm-up: allocator, kernels
            for _ in range(args.repeat):
                timed(ENGINE_ROWS[0], lambda ours=ours: ours.translate(sources))
            if precision == "fp32":
                fp32 = outputs[ENGINE_ROWS[0]]
            if precision == "bf16":  # CTranslate2 computes in float32 or int8 on a CPU: txkit's row alone, its
                # "= txkit" counted against txkit's float32 translations
                rows.append(_row(name, ENGINE_ROWS[0], threads, precision, times, outputs, ours, refs, fp32))
                print(f"  {name}: txkit, {threads} thread(s), bf16: {min(times[ENGINE_ROWS[0]]):.2f} s", flush=True)
                del ours, timed
                continue
            theirs = load_translator(model_path, DecodeOptions(**base, engine="ctranslate2"), threads)
            # CTranslate2 called directly on the very ctranslate2.Translator that `theirs` holds: the same model,
            # compute type and `threads` workers of one thread each (CTranslate2's documented setting for
            # throughput on the CPU; txkit.engines.CTranslate2Translator says why not one worker of `threads`
            # OpenMP threads: in a process where torch has run, such as this one, that is up to 2x slower).
            direct = theirs.translator
            # what a user of CTranslate2 calls: tokenizers' batch encode and decode
            encoder, decoder = ours.src_tok.backend_tokenizer, ours.tgt_tok.backend_tokenizer
            vocab = ours.tgt_tok.get_vocab()

            def run_direct(lines, direct=direct, encoder=encoder, decoder=decoder, vocab=vocab):
                tokens = [e.tokens for e in encoder.encode_batch(lines)]
                limit = max(len(t) for t in tokens) + 50
                out = direct.translate_batch(tokens, beam_size=args.beam, length_penalty=args.alpha, patience=args.ct2_patience,
                                             max_decoding_length=limit, max_batch_size=args.max_tokens,
                                             batch_type="tokens", min_decoding_length=0)  # fmt: skip
                return decoder.decode_batch([[vocab[t] for t in r.hypotheses[0]] for r in out])

            paths = {ENGINE_ROWS[1]: lambda theirs=theirs: theirs.translate(sources),
                     ENGINE_ROWS[2]: lambda run_direct=run_direct: run_direct(sources)}  # fmt: skip
            for warm_up in (theirs.translate, run_direct):
                warm_up(sources[:8])
            for round_ in range(args.repeat):  # the two CTranslate2 paths in rotated order
                names = list(paths)
                names = names[round_ % len(names) :] + names[: round_ % len(names)]
                for engine in names:
                    timed(engine, paths[engine])
            for engine in ENGINE_ROWS:
                rows.append(_row(name, engine, threads, precision, times, outputs, ours, refs))
                print(f"  {name}: {engine}, {threads} thread(s), {precision}: {min(times[engine]):.2f} s", flush=True)
            gone = weakref.ref(direct)
            del paths, run_direct, warm_up, ours, theirs, direct, timed  # this cell's ctranslate2.Translator with them
            assert gone() is None, "a ctranslate2.Translator outlived its cell (it would slow the next cell's torch)"
    return rows


def _row(name, engine, threads, precision, times, outputs, ours, refs, baseline=None) -> dict:
    """One engine's row of the table: its best round's speed, BLEU and agreement with txkit's translations (those
    of this precision, or `baseline`; bf16 without float32 ones: None)."""
    import sacrebleu

    seconds = min(times[engine])
    tokens = sum(len(ids) for ids in ours.tgt_tok(outputs[engine], add_special_tokens=False)["input_ids"])
    return dict(
        model=name, engine=engine, threads=threads, precision=precision, sps=len(outputs[engine]) / seconds,
        tps=tokens / seconds, bleu=sacrebleu.corpus_bleu(outputs[engine], [refs]).score,
        same=None if precision == "bf16" and baseline is None
        else sum(a == b for a, b in zip(outputs[engine], outputs[ENGINE_ROWS[0]] if baseline is None else baseline)),
    )  # fmt: skip


def first_sentence_latency(model_path: str, name: str, sentence: str, threads: int, tries: int) -> list[tuple]:
    """Seconds from starting `txkit translate MODEL` (a fresh process) to its first output line, one sentence on
    standard input kept open: per engine and precision with the conversion cached (best of `tries`), and the
    first call of `--engine ctranslate2` on a copy of the model (the conversion included; once)."""
    import shutil
    import subprocess
    import tempfile

    from txkit.engines import choose_engine

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}

    def once(model: str, extra: list[str]) -> float:
        started = time.perf_counter()
        command = [sys.executable, "-m", "txkit", "translate", model, "--threads", str(threads), *extra]
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=env)  # fmt: skip
        proc.stdin.write(sentence.encode("utf-8") + b"\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        seconds = time.perf_counter() - started
        proc.stdin.close()
        proc.wait()
        if not line:
            raise SystemExit(f"txkit translate {model} {' '.join(extra)}: no output (exit {proc.returncode})")
        return seconds

    rows = []
    choices = ([], ["--lp-form", "hf"], ["--lp-form", "hf", "--engine", "txkit"],
               ["--lp-form", "hf", "--engine", "txkit", "--quantize", "int8"],
               ["--lp-form", "hf", "--engine", "ctranslate2", "--quantize", "int8"])  # fmt: skip
    for extra in choices:
        options = DecodeOptions(
            lp_form="hf" if "hf" in extra else "gnmt", quantize="int8" if "int8" in extra else "none",
            engine=extra[extra.index("--engine") + 1] if "--engine" in extra else "auto",
        )  # fmt: skip
        engine = choose_engine(options, [model_path])
        seconds = min(once(model_path, extra) for _ in range(tries))
        conversion = "cached" if engine == "ctranslate2" else "-"
        rows.append((name, " ".join(extra) or "(defaults)", engine, conversion, seconds))
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:  # a model never converted: the first call
        copy = Path(tmp) / Path(model_path).name
        shutil.copytree(model_path, copy)
        seconds = once(str(copy), ["--lp-form", "hf"])
        rows.append((name, "--lp-form hf (first call)", "ctranslate2", "converted", seconds))
    return rows


# ----------------------------------------------------------------------------- main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="transformer-small", help="model preset when building a model")
    parser.add_argument("--model", action="append", default=[],
                        help="a txkit model folder or run directory instead of building one (--engines: repeat the "
                        "option, or a comma-separated list, for several models)")
    parser.add_argument("--marian", help="a MarianMTModel folder instead of a txkit model (txkit searches it too)")
    parser.add_argument("--n", type=int,
                        help="first N sentences (default 500 of newstest2014.en; --engines: 1000 of --source)")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.6, help="length penalty alpha")
    parser.add_argument("--max-tokens", type=int, default=4096, help="batch budget in source tokens")
    parser.add_argument("--threads", default="1", help="CPU threads for torch and CTranslate2 (--engines: a list, 1,2)")
    parser.add_argument("--engines", action="store_true", help="the engines x threads x precision table instead")
    parser.add_argument("--precisions", default="fp32,int8",
                        help="--engines: fp32, int8 and/or bf16 (txkit alone: CTranslate2 has no bf16 on a CPU)")
    parser.add_argument("--source", default="multi30k/test2016.en", help="--engines: source file (in shared data)")
    parser.add_argument("--reference", help="--engines: reference file (default: the source's with --target-lang)")
    parser.add_argument("--target-lang", default="de")
    parser.add_argument("--latency", type=int, default=0, metavar="N",
                        help="--engines: also the first sentence's latency, best of N fresh processes")
    parser.add_argument("--repeat", type=int, help="rounds of all paths, the best counts (default 3; --engines 1)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of: {', '.join(PATHS)}")
    parser.add_argument("--profile", metavar="FILE", help="profile one txkit paper run; write the table to FILE")
    parser.add_argument("--train-steps", type=int, default=0, help="briefly train the built model (0: random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ct2-patience", type=int, default=CT2_PATIENCE,
                        help="patience of the direct CTranslate2 calls (default: txkit.engines.CT2_PATIENCE, as "
                             "txkit's CTranslate2 engine; 1 is CTranslate2's own default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: every path runs there")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="weights and compute")
    parser.add_argument("--work-dir", default="/tmp/txkit-bench", help="where built tokenizer/models are cached")
    args = parser.parse_args(argv)
    models = [m for option in args.model for m in option.split(",") if m]
    args.repeat = args.repeat or (1 if args.engines else 3)
    args.n = args.n or (1000 if args.engines else 500)
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if any(p not in ("fp32", "int8", "bf16") for p in args.precisions):
        parser.error(f"--precisions {','.join(args.precisions)}: choose from fp32, int8, bf16")
    if args.engines:
        engines_table(args, models or [str(build_model(args))])
        return
    if len(models) > 1:
        parser.error("several --model: only with --engines")
    args.model = models[0] if models else None
    args.threads = int(args.threads)
    torch.set_num_threads(args.threads)
    paths = [p.strip() for p in args.paths.split(",")]
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        parser.error(f"unknown path(s) {unknown}; choose from {PATHS}")

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    if args.marian:  # a foreign model: txkit's search drives it through `forward`
        marian_dir, ct2_dir = Path(args.marian), Path(args.work_dir) / "exports" / Path(args.marian).name / "ct2-fp32"
        if "ct2 fp32" in paths and not (ct2_dir / "model.bin").is_file():
            from txkit.export import convert_ctranslate2

            convert_ctranslate2(marian_dir, ct2_dir, overwrite=True)
        model = AutoModelForSeq2SeqLM.from_pretrained(marian_dir, dtype=torch.float32).eval()
        src_tok = tgt_tok = AutoTokenizer.from_pretrained(marian_dir)
        name = str(marian_dir)
    else:
        model_path = args.model or build_model(args)
        model, src_tok, tgt_tok = load_model(model_path, args.device, args.dtype)
        from txkit.runs import resolve_model

        marian_dir, ct2_dir = exports(resolve_model(model_path), args.work_dir)
        name = str(model_path)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    marian = AutoModelForSeq2SeqLM.from_pretrained(marian_dir, dtype=torch_dtype).eval().to(args.device)
    marian_tok = AutoTokenizer.from_pretrained(marian_dir)
    ct2 = None
    if "ct2 fp32" in paths:
        import ctranslate2

        ct2 = ctranslate2.Translator(
            str(ct2_dir),
            device="cuda" if args.device.startswith("cuda") else "cpu",
            # on the CPU --threads workers of one thread each (see txkit.engines.CTranslate2Translator)
            inter_threads=1 if args.device.startswith("cuda") else args.threads,
            intra_threads=args.threads if args.device.startswith("cuda") else 1,
            compute_type={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[args.dtype],
        )

    with open(SHARED / "newstest2014" / "newstest2014.en", encoding="utf-8") as f:
        sources = [line.rstrip("\n") for _, line in zip(range(args.n), f)]
    max_positions = model.config.max_position_embeddings
    lengths = [min(len(ids), max_positions) for ids in src_tok(sources)["input_ids"]]
    batches = length_sorted_batches(lengths, args.max_tokens)
    limits = [min(max(lengths[i] for i in batch) + 50, max_positions) for batch in batches]
    hf = DecodeOptions(beam_size=args.beam, length_penalty=args.alpha, lp_form="hf")
    paper = DecodeOptions(beam_size=args.beam, length_penalty=args.alpha, lp_form="gnmt")
    runs = {
        "txkit paper": lambda b, lim: run_txkit(model, src_tok, tgt_tok, sources, b, None, paper),
        "txkit hf-form": lambda b, lim: run_txkit(model, src_tok, tgt_tok, sources, b, lim, hf),
        "generate": lambda b, lim: run_generate(marian, marian_tok, sources, b, lim, args.beam, args.alpha),
        "ct2 fp32": lambda b, lim: run_ct2(ct2, marian_tok, sources, b, lim, args.beam, args.alpha, args.ct2_patience),
    }
    runs = {p: runs[p] for p in paths}

    # warm up each path on a small batch (allocator, kernels, lazy imports)
    for run in runs.values():
        run([batches[-1][:4]], [8])
    if args.profile:
        with torch.inference_mode():
            profile_txkit(lambda: runs[paths[0]](batches, limits), args.profile)
        return

    times: dict[str, list[float]] = {p: [] for p in runs}
    outputs: dict[str, tuple[list[str], int]] = {}
    for round_ in range(args.repeat):
        order = paths[round_ % len(paths) :] + paths[: round_ % len(paths)]
        for path in order:
            started = time.perf_counter()
            outputs[path] = runs[path](batches, limits)
            times[path].append(time.perf_counter() - started)

    cpu = platform.processor() or platform.machine()
    print(f"model {name}  ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"vocabulary {model.config.vocab_size})")  # fmt: skip
    print(f"{cpu}, {os.cpu_count()} CPUs, {args.threads} thread(s), fp32, torch {torch.__version__}")
    print(f"{len(sources)} sentences of newstest2014.en, beam {args.beam}, alpha {args.alpha}, "
          f"{len(batches)} batches of <= {args.max_tokens} source tokens, best of {args.repeat} rounds")  # fmt: skip
    base = {p: min(times[p]) for p in runs}
    header = f"{'path':<14} {'best s':>8} {'median s':>9} {'sent/s':>8} {'tgt tok/s':>10} {'tgt tokens':>11}"
    extra = [ref for ref in ("generate", "ct2 fp32") if ref in runs]
    print(header + "".join(f" {'vs ' + ref:>13}" for ref in extra))
    for path in runs:
        seconds, tokens = base[path], outputs[path][1]
        line = (f"{path:<14} {seconds:>8.2f} {statistics.median(times[path]):>9.2f} {len(sources) / seconds:>8.2f} "
                f"{tokens / seconds:>10.1f} {tokens:>11}")  # fmt: skip
        print(line + "".join(f" {base[ref] / seconds:>12.2f}x" for ref in extra))
    if "generate" in outputs:
        for path in runs:
            if path != "generate":
                same = sum(a == b for a, b in zip(outputs["generate"][0], outputs[path][0]))
                print(f"{path} gives generate's translation for {same}/{len(sources)} sentences")


if __name__ == "__main__":
    main()
