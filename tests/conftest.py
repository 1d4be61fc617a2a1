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


def head(src: Path, dst: Path, n: int) -> Path:
    """The first n lines of a shared corpus file, written under a tmp folder (never the repo)."""
    import itertools

    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
        fout.writelines(itertools.islice(fin, n))
    return dst


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `txkit ARGS` in-process through the real entry point; (exit code, stdout, stderr)."""
    from txkit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err
