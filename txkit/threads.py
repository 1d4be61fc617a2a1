"""How many CPU threads torch uses: chosen step by step from measured speed, so that training and translation
keep their speed when another program shares the CPU, and lose nothing when it does not.

torch's CPU build runs each operator as an OpenMP parallel region, and GNU OpenMP's threads spin at the end
of a region waiting for the others. On an idle machine that is the fastest way to wait (the tiny model's
regions are short and many). But on a 2-core machine with one other CPU-bound process the thread that lost its
core holds every region up while its partner spins: training was 9x slower (5 s per step instead of 0.6 s).
Sleeping instead of spinning (`OMP_WAIT_POLICY=PASSIVE`) fixes that but gives up ~22% of the idle speed
(README, Performance; benchmarks/bench_contention.py). One thread fewer than the cores avoids the problem
without giving anything up next to a competitor, and is 0.55x on an idle machine. No fixed setting wins both,
so `ThreadGovernor` measures: it runs most steps with the count that is currently faster per token and, every
`probe_every` steps, one step with the other count, and switches when the other is clearly faster.

Changing the count mid-run is safe because txkit's training numerics do not depend on it
(txkit.thread_stable: bitwise the same result with 1 or 2 threads), and neither do the decoder's. A count the
user sets (`OMP_NUM_THREADS`, `TXKIT_THREADS`, `txkit translate --threads`) is used as it is, with no governor.

Light module: no torch import at module level (`prepare_environment` runs before torch loads).
"""

from __future__ import annotations

import os

THREADS_ENV = "TXKIT_THREADS"
_USER_COUNT_ENV = ("OMP_NUM_THREADS", THREADS_ENV)


def prepare_environment(environ=os.environ) -> dict:
    """$TXKIT_THREADS becomes OMP_NUM_THREADS (unless that is set). Must run before torch is imported, which
    reads OMP_NUM_THREADS once. Returns what it set. How OpenMP threads wait is left to OpenMP (and to the
    user's OMP_WAIT_POLICY / GOMP_SPINCOUNT): the governor handles a busy machine by the thread count."""
    changed = {}
    value = environ.get(THREADS_ENV, "").strip()
    if value.isdigit() and int(value) > 0 and "OMP_NUM_THREADS" not in environ:  # a bad value is reported later
        environ["OMP_NUM_THREADS"] = changed["OMP_NUM_THREADS"] = value
    return changed


def user_thread_count(explicit: int | None = None, environ=os.environ) -> int | None:
    """The count the user asked for (`explicit`, else $TXKIT_THREADS, else $OMP_NUM_THREADS), or None."""
    from txkit.errors import TxkitError

    if explicit is not None:
        value, name = explicit, "--threads"
    else:
        name = next((key for key in (THREADS_ENV, "OMP_NUM_THREADS") if environ.get(key, "").strip()), None)
        if name is None:
            return None
        try:
            value = int(environ[name])
        except ValueError:
            raise TxkitError(f"{name}={environ[name]!r}: expected a whole number of threads") from None
    if value < 1:
        raise TxkitError(f"{name}: the number of threads must be at least 1, not {value}")
    return value


def set_threads(explicit: int | None = None) -> int:
    """Set torch's intra-op thread count: `explicit` (a command's --threads), else $TXKIT_THREADS, else what
    torch chose (OMP_NUM_THREADS if set, else one per core it may run on). Returns the count in use."""
    import torch

    value = user_thread_count(explicit)
    if value is not None:
        torch.set_num_threads(value)
    return torch.get_num_threads()


class ThreadGovernor:
    """Picks torch's thread count for each unit of work (a training step, a decoding batch) from its speed.

    Two candidates: the full count n and n - 1 (one core left to one competing process). Most units run with
    the current choice; every `probe_every`-th runs with the other, and the choice moves to the other when its
    time per unit of work (per target token) is below `1 / margin` of the current one's. The current choice's
    time is smoothed (exponential average) so one odd batch does not make it look slow; a probe's replaces the
    other count's last one, which is stale. Two units in a row `alarm` times slower than the current count's
    average (a competitor arrived) bring the next probe forward. A wrong switch costs one probe interval: the
    next probe undoes it. The first `warmup` units are not counted (allocations, caches); the other count is
    first measured right after the first measured unit.

        governor = ThreadGovernor.create()      # None when the user fixed the count or there is one core
        with governor.unit(work=n_tokens):      # sets the count for this unit and times it
            step()
    """

    def __init__(
        self, full: int, probe_every: int = 24, margin: float = 1.15, warmup: int = 2, smoothing: float = 0.3,
        alarm: float = 1.4,
    ):
        if full < 2:
            raise ValueError("a governor needs at least 2 threads to choose from")
        self.counts = (full, full - 1)
        self.current = full
        self.probe_every = probe_every
        self.margin = margin
        self.warmup = warmup
        self.smoothing = smoothing
        self.alarm = alarm
        self.cost: dict[int, float | None] = {c: None for c in self.counts}  # seconds per unit of work
        self.slow_units = 0  # units in a row at least `alarm` times slower than the current count's average
        self.units = 0
        self.switches = 0
        self._running = full

    @classmethod
    def create(cls, explicit: int | None = None, **kwargs) -> "ThreadGovernor | None":
        """A governor over torch's current count, unless the user set a count (then it is applied) or torch
        has a single thread."""
        import torch

        if user_thread_count(explicit) is not None:
            set_threads(explicit)
            return None
        full = torch.get_num_threads()
        return cls(full, **kwargs) if full >= 2 else None

    def choose(self) -> int:
        """The count for the next unit, set in torch."""
        import torch

        other = self.counts[1] if self.current == self.counts[0] else self.counts[0]
        measured = self.units - self.warmup  # units recorded so far
        probe = self.cost[self.current] is not None and (
            self.cost[other] is None or (measured + 1) % self.probe_every == 0 or self.slow_units >= 2
        )
        count = other if probe else self.current
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)
        self._running = count
        return count

    def record(self, work: float, seconds: float) -> None:
        """The unit run with the chosen count did `work` (e.g. target tokens) in `seconds`."""
        self.units += 1
        if self.units <= self.warmup or work <= 0 or seconds <= 0:
            return
        count, cost = self._running, seconds / work
        if count == self.current:  # the current choice: smoothed over its recent units
            old = self.cost[count]
            self.slow_units = self.slow_units + 1 if old is not None and cost > self.alarm * old else 0
            if old is None or self.slow_units >= 2:  # the machine changed: the average is stale
                self.cost[count] = cost
            else:
                self.cost[count] = (1 - self.smoothing) * old + self.smoothing * cost
            return
        self.slow_units = 0
        self.cost[count] = cost  # a probe: its last measurement is stale, replace it
        if self.cost[self.current] is not None and cost * self.margin < self.cost[self.current]:
            self.current = count
            self.switches += 1

    def unit(self, work: float):
        """Context manager: choose the count, time the body, record it with `work`."""
        return _Unit(self, work)


class _Unit:
    def __init__(self, governor: ThreadGovernor, work: float):
        self.governor, self.work = governor, work

    def __enter__(self):
        import time

        self.governor.choose()
        self.started = time.perf_counter()
        return self

    def __exit__(self, kind, value, traceback):
        import time

        if kind is None:
            self.governor.record(self.work, time.perf_counter() - self.started)
        return False
