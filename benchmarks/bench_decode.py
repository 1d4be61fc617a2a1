"""Decoding speed: txkit's batched search against `model.generate`, same model, same batches, one run.

    python benchmarks/bench_decode.py --preset transformer-small --n 200 --device cpu
    python benchmarks/bench_decode.py --model runs/wmt14-en-de --n 1000 --device cuda
    python benchmarks/bench_decode.py --marian exports/opus-mt-en-de     # any transformers seq2seq folder

Translates the first N sentences of newstest2014.en with beam search and prints sentences and target tokens
per second for three ways of decoding the same length-sorted batches (txkit's `length_sorted_batches`):

  generate         `model.generate(num_beams=B, length_penalty=0.6, max_new_tokens=longest source + 50)`
                   per batch (generate takes one length limit per batch; early_stopping=False, its default)
  txkit hf-form    txkit's search configured as generate is (Hugging Face length penalty, the same limit
                   per batch): the same translations, which the run checks and reports
  txkit paper      txkit's default: GNMT length penalty 0.6, limit = each sentence's source length + 50

Without --model, builds what it needs in --work-dir: a joint BPE tokenizer on Multi30k train (vocab 8000)
and a --preset model, randomly initialised or trained for --train-steps Adam updates on Multi30k en-de (a
random model never emits </s> early, so every sentence runs to its limit: the worst case for search).

With --marian, the "same translation" count is only meaningful when the model's generation config adds
nothing txkit's search does not do (Marian exports usually set forced_eos_token_id, which forces </s> at
the length limit in `generate`).

Results (2026-11-20, 2-core CPU shared with other jobs, --threads 1, fp32, --n 200, beam 4, alpha 0.6):

  model (sentences/s; speed-up over generate)      generate  txkit hf-form  txkit paper   hf-form = generate
  transformer-small, random init                   2.53      3.16 (1.25x)   3.97 (1.57x)  200/200
  transformer-small, 300 Adam steps (loss 6.5)     39.4      54.1 (1.37x)   28.2 (0.72x)  200/200
  d_model-64 2+2-layer model, vocab 4000,          15.5      49.0 (3.16x)   44.6 (2.87x)  200/200
    1500 steps on Multi30k (loss 2.5), --model

The paper search's exact stopping rule keeps a sentence open while an open hypothesis, normalised at the
length limit, could still win. With the 300-step model (outputs of ~4 tokens with low scores, limits ~70)
that takes 47 decoder steps where transformers' heuristic takes 20, for the same translations.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from txkit.decoding import DecodeOptions, Translator, length_sorted_batches, load_model  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


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


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - started


def run_generate(model, src_tok, tgt_tok, sources, batches, limits, beam, alpha):
    """generate per batch -> (texts, target tokens without </s>)."""
    texts, tokens = [None] * len(sources), 0
    special = {model.config.pad_token_id, model.config.eos_token_id, model.config.decoder_start_token_id}
    device = next(model.parameters()).device
    for batch, limit in zip(batches, limits):
        inputs = src_tok([sources[i] for i in batch], padding=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            out = model.generate(
                **inputs, num_beams=beam, length_penalty=alpha, max_new_tokens=limit, early_stopping=False,
                do_sample=False,
            )  # fmt: skip
        out = out[:, 1:].cpu()  # drop the decoder start token
        tokens += sum(int(t not in special) for t in out.flatten().tolist())
        for i, text in zip(batch, tgt_tok.batch_decode(out, skip_special_tokens=True)):
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="transformer-small", help="model preset when building a model")
    parser.add_argument("--model", help="a txkit model folder or run directory instead of building one")
    parser.add_argument("--marian", help="a MarianMTModel (or any transformers seq2seq) folder to compare on")
    parser.add_argument("--n", type=int, default=1000, help="first N sentences of newstest2014.en")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.6, help="length penalty alpha")
    parser.add_argument("--max-tokens", type=int, default=4096, help="batch budget in source tokens")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16, fp16")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--train-steps", type=int, default=0, help="briefly train the built model (0: random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default="/tmp/txkit-bench", help="where built tokenizer/models are cached")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.marian:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from txkit.decoding import resolve_device, resolve_dtype

        device = resolve_device(args.device)
        model = AutoModelForSeq2SeqLM.from_pretrained(args.marian, dtype=resolve_dtype(args.dtype, device))
        model = model.to(device).eval()
        src_tok = tgt_tok = AutoTokenizer.from_pretrained(args.marian)
        name = args.marian
    else:
        model_path = args.model or build_model(args)
        model, src_tok, tgt_tok = load_model(model_path, args.device, args.dtype)
        name = str(model_path)
    device = next(model.parameters()).device
    with open(SHARED / "newstest2014" / "newstest2014.en", encoding="utf-8") as f:
        sources = [line.rstrip("\n") for _, line in zip(range(args.n), f)]

    max_positions = model.config.max_position_embeddings
    lengths = [min(len(ids), max_positions) for ids in src_tok(sources)["input_ids"]]
    batches = length_sorted_batches(lengths, args.max_tokens)
    batch_limits = [min(max(lengths[i] for i in batch) + 50, max_positions) for batch in batches]
    hf = DecodeOptions(beam_size=args.beam, length_penalty=args.alpha, lp_form="hf")
    paper = DecodeOptions(beam_size=args.beam, length_penalty=args.alpha, lp_form="gnmt")

    # warm up each path on a small batch (allocator, kernels, lazy imports)
    warm = [batches[-1][:4]]
    run_generate(model, src_tok, tgt_tok, sources, warm, [8], args.beam, args.alpha)
    run_txkit(model, src_tok, tgt_tok, sources, warm, [8], hf)

    rows = []
    (gen_texts, gen_tokens), gen_s = timed(
        lambda: run_generate(model, src_tok, tgt_tok, sources, batches, batch_limits, args.beam, args.alpha)
    )
    rows.append(("generate", gen_tokens, gen_s))
    (hf_texts, hf_tokens), hf_s = timed(lambda: run_txkit(model, src_tok, tgt_tok, sources, batches, batch_limits, hf))
    rows.append(("txkit hf-form", hf_tokens, hf_s))
    (_, paper_tokens), paper_s = timed(lambda: run_txkit(model, src_tok, tgt_tok, sources, batches, None, paper))
    rows.append(("txkit paper", paper_tokens, paper_s))

    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"model {name}  device {device}  dtype {next(model.parameters()).dtype}  CPU threads {threads}")
    print(f"{len(sources)} sentences of newstest2014.en, beam {args.beam}, alpha {args.alpha}, "
          f"{len(batches)} batches of <= {args.max_tokens} source tokens")  # fmt: skip
    print(f"{'path':<15} {'seconds':>9} {'sent/s':>9} {'tgt tok/s':>10} {'tgt tokens':>11} {'speed-up':>9}")
    for path, tokens, seconds in rows:
        print(
            f"{path:<15} {seconds:>9.2f} {len(sources) / seconds:>9.2f} {tokens / seconds:>10.1f} "
            f"{tokens:>11} {gen_s / seconds:>8.2f}x"
        )
    same = sum(a == b for a, b in zip(gen_texts, hf_texts))
    print(f"txkit hf-form and generate give the same translation for {same}/{len(sources)} sentences")


if __name__ == "__main__":
    main()
