"""Shared fixtures and helpers: the real corpora in ../shared/data, one CPU thread, the CLI in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TXKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (Multi30k and newstest2014), read in place, never copied into the repo."""
    if not (SHARED_DATA / "multi30k" / "train.en").exists():
        pytest.fail(f"the shared corpora are missing: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _quiet_threads():
    import torch

    # The test models are tiny: a second thread buys little for them and costs much on a shared machine.
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the subprocesses the tests start
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    """accelerate keeps one process-wide AcceleratorState that refuses a second mixed precision; txkit's CLI
    trains once per process, the tests train many times in one, in float32 and in bf16. Forgotten after each
    test (and so before the next one's fixtures), as accelerate's own tests do; the process state is kept."""
    yield
    import sys

    if "accelerate.state" in sys.modules:
        sys.modules["accelerate.state"].AcceleratorState._reset_state()


def head(src: Path, dst: Path, n: int) -> Path:
    """The first n lines of a shared corpus file, written under a tmp folder (never the repo)."""
    import itertools

    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
        fout.writelines(itertools.islice(fin, n))
    return dst


def run_cli(args: list, capsys=None) -> tuple[int, str, str]:
    """Run `txkit ARGS` in-process through the real entry point; (exit code, stdout, stderr).

    The one CLI harness of the tests. With pytest's `capsys` the output is read from it; without (e.g. in a
    module-scoped fixture) it is captured by redirecting sys.stdout and sys.stderr.
    """
    import contextlib
    import io

    from txkit.cli import main

    def call() -> int:
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            return exc.code or 0
        return 0

    if capsys is not None:
        capsys.readouterr()  # only this command's output
        code = call()
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = call()
    return code, out.getvalue(), err.getvalue()


# ----------------------------------------------------------------------------- the one trained model

SMALL = dict(
    d_model=64, attention_heads=4, ffn_dim=256, encoder_layers=2, decoder_layers=2, max_position_embeddings=128
)
TRAIN_PAIRS = 6000
TRAIN_STEPS = 200


def train_small_model(out_dir: Path, data: Path, steps: int = TRAIN_STEPS, seed: int = 0) -> Path:
    """A joint BPE vocabulary (1000) and a 2+2-layer d_model 64 Transformer trained on Multi30k en-de
    (`seed`: its initialisation and batch order)."""
    import random
    import shutil

    import torch

    from txkit.modeling import TxkitConfig, TxkitForConditionalGeneration
    from txkit.tokenization import build_tokenizer, load_tokenizer

    m30k = data / "multi30k"
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build_tokenizer([m30k / "train.en", m30k / "train.de"], tmp, vocab_size=1000, show_progress=False, stats=False)
    tok = load_tokenizer(tmp)
    src = m30k.joinpath("train.en").read_text(encoding="utf-8").splitlines()[:TRAIN_PAIRS]
    tgt = m30k.joinpath("train.de").read_text(encoding="utf-8").splitlines()[:TRAIN_PAIRS]
    src_ids, tgt_ids = tok(src)["input_ids"], tok(tgt)["input_ids"]

    torch.manual_seed(seed)
    config = TxkitConfig(vocab_size=len(tok), dropout=0.0, **SMALL)
    model = TxkitForConditionalGeneration(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))
    batches = [order[i : i + 32] for i in range(0, len(order), 32)]  # ~450 source tokens each
    rng = random.Random(seed)

    def pad(seqs, value):
        longest = max(map(len, seqs))
        return torch.tensor([s + [value] * (longest - len(s)) for s in seqs])

    for _ in range(steps):
        batch = rng.choice(batches)
        x = pad([src_ids[i] for i in batch], config.pad_token_id)
        y = pad([tgt_ids[i] for i in batch], -100)
        loss = model(input_ids=x, attention_mask=x.ne(config.pad_token_id), labels=y).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, shared_data) -> Path:
    """The test suite's one trained model (decoding, export, sharing): trained once per session, in a folder
    of pytest's session temp dir."""
    folder = tmp_path_factory.getbasetemp() / "trained-model"
    if not (folder / "model.safetensors").is_file():
        train_small_model(folder, shared_data)
    return folder


@pytest.fixture(scope="session")
def tokenizer_300(shared_data, tmp_path_factory) -> Path:
    """A 1000-token joint BPE vocabulary learned from the first 300 Multi30k en-de training pairs (fast), as
    `txkit train` would build it for the small test recipes."""
    from txkit.tokenization import build_tokenizer

    folder = tmp_path_factory.mktemp("tok300")
    for lang in ("en", "de"):
        head(shared_data / "multi30k" / f"train.{lang}", folder / f"train.{lang}", 300)
    build_tokenizer([folder / "train.en", folder / "train.de"], folder / "tok", vocab_size=1000,
                    show_progress=False, stats=False)  # fmt: skip
    return folder / "tok"
