"""Two machines, played on one: README's two-node `accelerate launch` command, started once per node.

Each "node" is its own process group (the launcher and its worker, as on a machine of its own) with its
own working directory; the nodes meet at 127.0.0.1 and share one run directory (README asks for a shared
filesystem). The run reaches the weights of one process accumulating the same batches; a node killed
with SIGKILL mid-run, and both relaunched with --resume, end on the uninterrupted run's weights, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from txkit import runs
from txkit.averaging import load_weights
from txkit.recipe import load_recipe
from txkit.training import train

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "tests" / "recipes" / "tiny.yaml"
LAUNCH_CONFIG = REPO / "recipes" / "launch" / "2node-8gpu.yml"
STEPS = 12
SAVE_EVERY = 2
TIMEOUT = 300  # seconds any launch may take on a loaded 2-core machine; nothing waits longer


@pytest.fixture(scope="module")
def tokenizer(tokenizer_300) -> Path:
    return tokenizer_300


@pytest.fixture(scope="module")
def max_tokens(shared_data, tokenizer) -> int:
    """A batch budget that cuts the data into an even number of batches per epoch, so that node r's
    shard (batches r, r+2, ...) holds exactly the batches one accumulating process takes as its r-th."""
    from txkit.batching import TokenBatchSampler, TokenizedPairs
    from txkit.data import load_parallel, tokenize_dataset
    from txkit.tokenization import load_tokenizers

    recipe = load_recipe(RECIPE)
    src_tok, tgt_tok = load_tokenizers(tokenizer)
    pairs = load_parallel(shared_data / "multi30k" / "train", "en", "de").select(range(recipe.data.max_sentences))
    ids = TokenizedPairs(tokenize_dataset(pairs, src_tok, tgt_tok, max_len=recipe.data.max_len)[0])
    for budget in range(384, 1024, 32):
        if len(TokenBatchSampler(ids.src_lengths, ids.tgt_lengths, budget, seed=recipe.train.seed)) % 2 == 0:
            return budget
    raise AssertionError("no batch budget gives an even number of batches")


def _overrides(tokenizer: Path, max_tokens: int, accumulation: int = 1) -> list[str]:
    # No dropout: each process draws its own masks, so with dropout one process would differ by design.
    # No validation: not what is tested here, and it would cost most of the run's time.
    return [f"tokenizer.path={tokenizer}", "model.dropout=0", f"train.max_steps={STEPS}",
            f"train.max_tokens={max_tokens}", f"train.accumulation={accumulation}", "train.eval_every_steps=0",
            f"train.save_every_steps={SAVE_EVERY}", "train.keep_last=0", "data.valid=", "train.log_every_steps=1"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(rank: int, port: int, run_dir: Path, overrides: list[str], home: Path, shared_data: Path):
    """README's two-node command for node `rank`, as that node would run it (1 process per node here)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH_CONFIG),
               "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(port),
               "-m", "txkit", "train", str(RECIPE), "--output-dir", str(run_dir), "--resume"]  # fmt: skip
    for item in overrides:
        command += ["--set", item]
    cwd = home / f"node{rank}"
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TXKIT_DATA": str(shared_data), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
    out = open(cwd / "launch.log", "ab")
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    return proc


def _kill_node(proc) -> None:
    """SIGKILL everything the node runs, as a machine going down: the launcher's process group and its
    workers, which torchrun starts in sessions of their own (so killing the group alone leaves them)."""
    import psutil

    try:
        workers = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    for worker in workers:
        try:
            worker.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    psutil.wait_procs(workers, timeout=30)


def _run_nodes(run_dir: Path, overrides: list[str], home: Path, shared_data: Path) -> None:
    port = _free_port()
    nodes = [_launch(rank, port, run_dir, overrides, home, shared_data) for rank in (0, 1)]
    try:
        for proc in nodes:
            proc.wait(timeout=TIMEOUT)
    finally:
        for proc in nodes:
            if proc.poll() is None:
                _kill_node(proc)
    for rank, proc in enumerate(nodes):
        assert proc.returncode == 0, (home / f"node{rank}" / "launch.log").read_text()[-3000:]


def _weights(run_dir: Path, step: int = STEPS) -> dict:
    return load_weights(run_dir / runs.CHECKPOINTS / runs.checkpoint_name(step))


def _losses(run_dir: Path) -> list[float]:
    return [r["train/loss"] for r in map(json.loads, (run_dir / runs.LOG_FILE).read_text().splitlines()) if "train/loss" in r]


@pytest.fixture(scope="module")
def two_nodes(shared_data, tokenizer, max_tokens, tmp_path_factory) -> Path:
    """An uninterrupted two-node run: the yardstick of both tests."""
    home = tmp_path_factory.mktemp("two-nodes")
    _run_nodes(home / "run", _overrides(tokenizer, max_tokens), home, shared_data)
    return home / "run"


def test_two_nodes_match_one_process_accumulating_the_same_batches(two_nodes, tokenizer, max_tokens, tmp_path, monkeypatch, shared_data):
    state = two_nodes / runs.CHECKPOINTS / runs.checkpoint_name(STEPS) / runs.TRAINING_STATE
    assert json.loads((state / "trainer_state.json").read_text())["world_size"] == 2
    # one shared run directory: node 1's process wrote its own rank file next to node 0's, and only
    # node 0's main process wrote the rest (node 1's working directory got nothing but its log)
    assert sorted(p.name for p in state.iterdir()) == sorted(
        ["trainer_state.json", "optimizer.pt", "scheduler.pt", "rank-00000.pt", "rank-00001.pt"]
    )
    assert [p.name for p in (two_nodes.parent / "node1").iterdir()] == ["launch.log"]
    # node 1's process is its node's local main process, not the main process: it neither reports nor logs
    # (a doubled log.jsonl would also fail the loss comparison below)
    node0, node1 = ((two_nodes.parent / f"node{r}" / "launch.log").read_text() for r in (0, 1))
    assert "saved" in node0 and "stopped at step" in node0
    assert "saved" not in node1 and "stopped at step" not in node1

    monkeypatch.setenv("TXKIT_DATA", str(shared_data))
    train(load_recipe(RECIPE, _overrides(tokenizer, max_tokens, accumulation=2)), tmp_path / "one")
    one, two = _weights(tmp_path / "one"), _weights(two_nodes)
    assert one.keys() == two.keys()
    # Bit-identical, as with two processes on one node (tests/test_distributed.py says why the
    # arithmetic is the same); the nodes only change how the processes find each other.
    for name in one:
        assert torch.equal(one[name], two[name]), f"{name} differs by {(one[name] - two[name]).abs().max().item()}"
    assert _losses(two_nodes) == _losses(tmp_path / "one")


def test_a_node_killed_mid_run_resumes_to_the_same_weights(two_nodes, tokenizer, max_tokens, tmp_path, shared_data):
    run_dir = tmp_path / "run"
    overrides = _overrides(tokenizer, max_tokens)
    port = _free_port()
    nodes = [_launch(rank, port, run_dir, overrides, tmp_path, shared_data) for rank in (0, 1)]
    try:
        first = run_dir / runs.CHECKPOINTS / runs.checkpoint_name(2 * SAVE_EVERY)
        deadline = time.monotonic() + TIMEOUT
        while not first.exists() and all(p.poll() is None for p in nodes) and time.monotonic() < deadline:
            time.sleep(0.01)
        running = [p.poll() is None for p in nodes]
        _kill_node(nodes[1])  # node 1 goes down mid-run
        # Node 0 is left waiting on a collective with a dead peer: gloo fails it, or we end it.
        try:
            nodes[0].wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    finally:
        for proc in nodes:
            if proc.poll() is None:
                _kill_node(proc)
    log = (tmp_path / "node0" / "launch.log").read_text()
    assert all(running), f"a node ended before the kill: {log[-3000:]}"
    latest = runs.latest_checkpoint(run_dir)
    assert latest is not None and runs.checkpoint_step(latest) < STEPS, latest
    assert (latest / runs.TRAINING_STATE / "rank-00001.pt").is_file()  # complete: both nodes' parts

    _run_nodes(run_dir, overrides, tmp_path, shared_data)  # both relaunched, the same command
    assert f"resumed from {latest}" in (tmp_path / "node0" / "launch.log").read_text()
    mine, theirs = _weights(run_dir), _weights(two_nodes)
    for name in theirs:
        assert torch.equal(mine[name], theirs[name]), f"{name} differs by {(mine[name] - theirs[name]).abs().max().item()}"
    assert _losses(run_dir) == _losses(two_nodes)
    assert not list((run_dir / runs.CHECKPOINTS).glob("*.tmp"))


def test_fsdp_launch_config_is_refused_in_one_line(tokenizer, tmp_path, shared_data):
    # txkit's checkpoints and validation need the whole model on each process; under these configs a
    # GPU run would fail or hang at its first checkpoint, and on CPUs accelerate silently trains with DDP.
    port = str(_free_port())
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "recipes" / "launch" / "1node-8gpu-fsdp.yml"),
               "--num_processes", "2", "--num_machines", "1", "--machine_rank", "0", "--main_process_ip", "127.0.0.1",
               "--main_process_port", port, "-m", "txkit", "train", str(RECIPE), "--output-dir", str(tmp_path / "run"),
               "--set", f"tokenizer.path={tokenizer}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TXKIT_DATA": str(shared_data),
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: FSDP launch configs")]
    assert len(lines) == 2, done.stderr[-3000:]  # one line from each process, no traceback of txkit's
    assert "[rank0]: Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written
