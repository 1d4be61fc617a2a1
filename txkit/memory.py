"""Keep freed memory in the process instead of handing it back to the kernel after every large tensor.

torch's CPU tensors come from the C library's malloc. glibc serves a large request with a fresh mmap (first
above 128 KiB, then above the largest block freed so far, up to 32 MiB) and gives the top of its heap back to
the kernel whenever more than twice that lies free there. A training step allocates and frees tens of
megabytes of activations and logits, so each step maps fresh memory again, and every 4 KiB page of it costs a
page fault and the kernel zeroing it: on the 2-core machine ~10,200 faults a step of the tiny recipe, 13-15% of
its time (benchmarks/bench_malloc.py). Raising both thresholds to their largest keeps what a step frees for the
next one, which needs the same again: ~12 faults a step. The cost is that the process keeps its peak heap
until it exits, which a training run or a translation server reaches every batch anyway.

`mallopt` is glibc's own switch for this (the environment variables MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_ do the same, but only when set before the process starts). Replacement allocators
(jemalloc, tcmalloc) need LD_PRELOAD before start too. Elsewhere (macOS, Windows, musl) this does nothing.

TXKIT_KEEP_FREED_MEMORY=0 leaves malloc as it is. Light module: no torch import.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "TXKIT_KEEP_FREED_MEMORY"

# mallopt's parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above DEFAULT_MMAP_THRESHOLD_MAX: 4 MiB x sizeof(long), 32 MiB on 64-bit
MMAP_THRESHOLD = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the heap's top is given back only above 2 GiB free


def keep_freed_memory(environ=os.environ) -> bool:
    """Make glibc's malloc keep freed memory for reuse (see the module docstring). Returns whether it did:
    False off glibc, or when $TXKIT_KEEP_FREED_MEMORY is 0 / no / false / off; another value than those or
    1 / yes / true / on is a TxkitError."""
    value = environ.get(ENV, "").strip().lower()
    if value in ("0", "no", "false", "off"):
        return False
    if value not in ("", "1", "yes", "true", "on"):
        from txkit.errors import TxkitError

        raise TxkitError(f"{ENV}={environ[ENV]!r}: expected 1 (keep freed memory, the default) or 0")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # both at once: setting either one turns off glibc's moving thresholds, and a trim threshold alone would
    # leave every block above 128 KiB to mmap (2.2x the faults of the default, measured)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
