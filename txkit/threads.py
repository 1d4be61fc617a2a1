"""How torch's CPU threads wait, and how many there are: chosen so that training and translation keep their
speed when another program shares the CPU.

torch's CPU build runs each operator as an OpenMP parallel region. By default GNU OpenMP's threads spin
at the end of a region waiting for the others, so on a 2-core machine with one other CPU-bound process
the thread that lost its core holds every region up while its partner burns the remaining core spinning:
training was 9x slower. With `OMP_WAIT_POLICY=PASSIVE` waiting threads sleep instead and give their core
to whoever needs it; on an idle machine this costs little because txkit's regions are large (figures in
README, Performance, measured by benchmarks/bench_contention.py).

The wait policy is read once, when torch loads its OpenMP library, so `prepare_environment` must run
before torch is imported: the CLI entry point calls it (and child processes inherit it). A setting the
user made (OMP_WAIT_POLICY, GOMP_SPINCOUNT, KMP_BLOCKTIME) is left alone; so is the thread count
(OMP_NUM_THREADS, or `TXKIT_THREADS` / `--threads` where a command has it).

Light module: no torch import at module level.
"""

from __future__ import annotations

import os

THREADS_ENV = "TXKIT_THREADS"
# Settings this module makes when the user made none (GNU OpenMP reads the first; Intel's the second).
_WAIT_SETTINGS = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def prepare_environment(environ=os.environ) -> dict:
    """Make OpenMP threads sleep rather than spin while they wait, unless the user chose otherwise.

    Must run before torch is imported; $TXKIT_THREADS becomes OMP_NUM_THREADS unless that is set. Returns what
    it set."""
    changed = {}
    if environ.get(THREADS_ENV) and "OMP_NUM_THREADS" not in environ:
        environ["OMP_NUM_THREADS"] = changed["OMP_NUM_THREADS"] = environ[THREADS_ENV].strip()
    if "GOMP_SPINCOUNT" in environ:  # a user who tunes the spin count has chosen how threads wait
        return changed
    for key, value in _WAIT_SETTINGS.items():
        if key not in environ:
            environ[key] = value
            changed[key] = value
    return changed


def set_threads(explicit: int | None = None) -> int:
    """Set torch's intra-op thread count: `explicit` (a command's --threads), else $TXKIT_THREADS, else what
    torch chose (OMP_NUM_THREADS if set, else one per core it may run on). Returns the count in use."""
    import torch

    from txkit.errors import TxkitError

    value = explicit
    if value is None and os.environ.get(THREADS_ENV):
        raw = os.environ[THREADS_ENV]
        try:
            value = int(raw)
        except ValueError:
            raise TxkitError(f"{THREADS_ENV}={raw!r}: expected a whole number of threads") from None
    if value is not None:
        if value < 1:
            raise TxkitError(f"the number of threads must be at least 1, not {value}")
        torch.set_num_threads(value)
    return torch.get_num_threads()
