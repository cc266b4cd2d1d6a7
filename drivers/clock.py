"""One host clock (monotonic ns), an absolute-deadline rate keeper, and a simulated clock.

Every sample in the app carries a capture time from `Clock.now_ns()`. Loops pace themselves with
`Rate`, which computes deadlines as `start + k * period`, so small oversleeps never accumulate into drift
(unlike `time.sleep(dt)` pacing). `SimClock` has the same interface: `sleep_until` jumps time forward
instead of waiting, so the same loop code runs in lockstep with a simulator as fast as the CPU allows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

NS_PER_S = 1_000_000_000


class Clock(Protocol):
    def now_ns(self) -> int:
        """The current time in ns on the host's monotonic clock (or the simulated one)."""
        ...

    def sleep_until(self, deadline_ns: int) -> None:
        """Return at `deadline_ns` (at once if it has passed)."""
        ...


class WallClock:
    """`time.monotonic_ns()`, with a sleep that wakes early and spins the last stretch for precision."""

    # Linux wakes a sleeping thread up to ~100 µs late; waking this early and yielding keeps lateness low.
    spin_ns: int = 300_000

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def sleep_until(self, deadline_ns: int) -> None:
        while True:
            remaining = deadline_ns - time.monotonic_ns()
            if remaining <= 0:
                return
            if remaining > self.spin_ns:
                time.sleep((remaining - self.spin_ns) / NS_PER_S)
            else:
                time.sleep(0)  # yield the GIL while spinning the last fraction of a millisecond


class SimClock:
    """A clock that only moves when told: `sleep_until` jumps to the deadline, `advance` adds time."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now_ns = int(start_ns)

    def now_ns(self) -> int:
        return self._now_ns

    def sleep_until(self, deadline_ns: int) -> None:
        self._now_ns = max(self._now_ns, int(deadline_ns))

    def advance(self, dt_ns: int) -> None:
        if dt_ns < 0:
            raise ValueError(f"a simulated clock cannot go backwards (advance by {dt_ns} ns)")
        self._now_ns += int(dt_ns)


@dataclass(frozen=True)
class Tick:
    """One paced loop iteration: its index, its deadline, and how late the loop woke up for it."""

    index: int
    deadline_ns: int
    lateness_ns: int
    skipped: int  # ticks given up since the previous one because the loop overran them


class Rate:
    """Keep a loop on absolute deadlines `start + k * period`.

    `wait()` sleeps until the next deadline and returns a `Tick`. If the loop body overran one or more
    whole periods, the missed ticks are skipped (and counted) instead of being run back to back in a burst.
    """

    def __init__(self, clock: Clock, hz: float, start_ns: int | None = None) -> None:
        if not hz > 0:
            raise ValueError(f"a loop rate must be positive, got {hz} Hz")
        self.clock = clock
        self.period_ns = round(NS_PER_S / hz)
        self.start_ns = clock.now_ns() if start_ns is None else int(start_ns)
        self._k = 0
        self.skipped_total = 0

    def deadline(self, k: int) -> int:
        return self.start_ns + k * self.period_ns

    def wait(self) -> Tick:
        """Sleep to the next deadline; return the tick with its lateness (ns after the deadline)."""
        now = self.clock.now_ns()
        k = self._k
        skipped = 0
        behind = now - self.deadline(k)
        if behind >= self.period_ns:  # overran whole periods: skip them rather than burst
            skipped = behind // self.period_ns
            k += skipped
            self.skipped_total += skipped
        deadline = self.deadline(k)
        self.clock.sleep_until(deadline)
        woke = self.clock.now_ns()
        self._k = k + 1
        return Tick(index=k, deadline_ns=deadline, lateness_ns=max(0, woke - deadline), skipped=skipped)
