"""Read several chains at once: each on its own port and thread, instead of one after the other.

`BimanualRobot` reads its arms one by one (left follower, right follower, then the leaders). With a
`ReadGroup` the first of those reads starts a *round*: it reads its own chain on the calling thread while
worker threads read every other active member's chain, so a tick costs one chain's bus time, not four.
The other arms' samples wait in the group and are handed out when those arms are read, provided they
are younger than `max_age_ms` (so a sample never serves two ticks). An arm counts as active — worth
reading ahead — if it was read within the last second; arms nobody reads (the leaders during a policy
rollout) drop out of the rounds by themselves. A read that failed in a worker is raised when its own arm
is read, so the error still names the right arm.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

ACTIVE_NS = 1_000_000_000


class ReadGroup:
    def __init__(self, max_age_ms: float = 25.0) -> None:
        self.max_age_ns = int(max_age_ms * 1e6)
        self._members: dict[str, object] = {}
        self._pending: dict[str, tuple[int, object]] = {}  # name -> (taken at, sample or exception)
        self._last_read: dict[str, int] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.rounds = 0
        self.prefetched = 0  # samples handed out from a round

    def add(self, arm) -> None:
        self._members[arm.name] = arm

    def read(self, arm):
        now = time.monotonic_ns()
        with self._lock:
            self._last_read[arm.name] = now
            hit = self._pending.pop(arm.name, None)
        if hit is not None and now - hit[0] <= self.max_age_ns:
            self.prefetched += 1
            if isinstance(hit[1], BaseException):
                raise hit[1]
            return hit[1]
        with self._lock:
            self._pending.clear()
            others = [
                m
                for name, m in self._members.items()
                if name != arm.name
                and m.is_connected
                and now - self._last_read.get(name, -ACTIVE_NS) < ACTIVE_NS
            ]
        if not others:
            return arm._read_now()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=max(1, len(self._members) - 1), thread_name_prefix="dxl-read"
            )
        self.rounds += 1
        futures = [(m, self._pool.submit(m._read_now)) for m in others]
        try:
            return arm._read_now()
        finally:
            for m, future in futures:
                try:
                    result: object = future.result()
                except BaseException as e:  # noqa: BLE001 - handed to that arm's own read
                    result = e
                with self._lock:
                    self._pending[m.name] = (now, result)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
