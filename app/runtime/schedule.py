"""The chunk scheduler: which action runs at which control tick, and when to ask for the next chunk.

Pure bookkeeping — no clock, no threads, no robot — so that every rule below is tested tick by tick and
the same code runs against the wall clock and in lockstep with the simulator (DESIGN.md §6).

Time is counted in control ticks k (one every 1/fps). A chunk C answers a request made at tick ks: its
row 0 belongs to tick ks (the tick whose observation the policy saw), row i to tick ks+i.

- **async** (action prefixing). When the unexecuted remainder of the current chunk falls to the trigger
  threshold, the request at tick ks carries the prefix C[ks−k0 … ks−k0+P−1]: the P actions the robot will
  execute from ks on, whatever the policy answers. The answer arrives at tick ka and takes over at row
  d = ka − ks (the realised delay). Its first P rows are overwritten with the prefix, so for d ≤ P the
  actions of ticks ka … ks+P−1 stay exactly what was committed. P is the delay estimate in ticks (a
  high quantile of recent delays), at least 1 and at most the trained maximum; the threshold is the
  estimate plus `trigger_margin` ticks, so a chunk a little later than expected still arrives before
  the plan runs dry. Where the plan is shorter than P (start of an episode, after a starvation) the
  prefix is padded with the action the arms hold.
- **late chunks** (d > P: the robot already executed actions the prefix did not cover). `accept`
  (default) splices the chunk in at row d and counts it; the step at the switch is measured. `discard`
  drops it and asks again at once — unless the prefix could not cover the expected delay in the first
  place (estimate > P, i.e. the policy is slower than its trained maximum prefix), where discarding
  would starve the robot forever; such chunks are accepted and counted as late.
  A chunk arriving after all its rows are in the past (d ≥ T) is dropped (`expired`).
- **async-naive**: the same trigger, no prefix; the fresh chunk takes over at row d (its first d
  rows are in the past). Kept as the baseline whose switch discontinuities the prefix removes.
- **sync**: run a chunk to its end, then ask; the arms hold while the policy thinks; the answer starts at
  row 0 on the tick it arrives.
- **starvation**: a tick with no planned action. The runner holds the last command and counts it.

Committed actions never change: every action executed at tick ks+i (i < P) equals the prefix row i that
was sent, and the tests check exactly that.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

Mode = Literal["sync", "async", "async-naive"]
MODES: tuple[str, ...] = ("sync", "async", "async-naive")
LatePolicy = Literal["accept", "discard"]


class DelayEstimator:
    """Inference delay (ms from a request's tick deadline to its answer) as a high quantile over a window
    of recent measurements — robust to one slow outlier long ago, unlike an all-time maximum."""

    def __init__(
        self, period_ns: int, window: int = 20, quantile: float = 0.95, initial_ms: float = 100.0
    ) -> None:
        if window < 1:
            raise ValueError(f"the delay window must hold at least 1 measurement, got {window}")
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"the delay quantile must be in (0, 1], got {quantile}")
        self.period_ns = int(period_ns)
        self.quantile = quantile
        self.initial_ms = float(initial_ms)
        self._recent: deque[float] = deque(maxlen=window)

    def record(self, delay_ms: float) -> None:
        self._recent.append(float(delay_ms))

    @property
    def measured(self) -> int:
        return len(self._recent)

    def estimate_ms(self) -> float:
        if not self._recent:
            return self.initial_ms
        return float(np.quantile(np.fromiter(self._recent, float), self.quantile))

    def ticks(self) -> int:
        """The estimate in whole control ticks (at least 1: an answer is never usable in its own tick)."""
        est_ns = round(self.estimate_ms() * 1e6)
        return max(1, math.ceil(est_ns / self.period_ns))


@dataclass(frozen=True)
class Request:
    id: int  # also the id of the chunk that answers it
    epoch: int  # answers to an older epoch (before a reset or pause) are dropped
    tick: int  # ks: the tick whose observation is sent; row 0 of the answer belongs to it
    deadline_ns: int  # the deadline of tick ks (delays are measured from it)
    prefix: np.ndarray  # (P, 14) committed actions for ticks ks … ks+P−1 (P = 0 in sync and async-naive)
    expected_delay: int  # the delay estimate in ticks when the request was made


@dataclass(frozen=True)
class Planned:
    action: np.ndarray  # (14,) absolute target for this tick
    chunk_id: int
    index: int  # row of the chunk


@dataclass(frozen=True)
class Switch:
    """What became of an answered request."""

    request: Request
    arrival_tick: int  # ka: the first tick the answer could be used in
    outcome: str  # on_time | late | late_discarded | expired | stale_epoch
    index: int | None = None  # row that took over at ka, when it was spliced in
    actions: np.ndarray | None = None  # the chunk as it will be executed (prefix rows enforced)
    prefix_error: float = 0.0  # largest |row − prefix| the policy returned in its prefix rows

    @property
    def delay(self) -> int:
        return self.arrival_tick - self.request.tick

    @property
    def spliced(self) -> bool:
        return self.index is not None


@dataclass
class SchedulerCounters:
    requests: int = 0
    on_time: int = 0  # spliced within the prefix (async), or any spliced chunk (sync, async-naive)
    late: int = 0  # async: arrived after its prefix ran out, spliced in (reported discontinuity)
    late_discarded: int = 0  # async with late_chunks=discard: dropped and asked again
    expired: int = 0  # arrived after every one of its rows was in the past
    stale_epoch: int = 0  # answered a request from before a reset or pause
    failed: int = 0  # the policy raised, or the runner rejected the chunk

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class ChunkScheduler:
    def __init__(
        self,
        mode: Mode,
        chunk_length: int,
        max_prefix: int,
        estimator: DelayEstimator,
        trigger_margin: int = 2,
        late_chunks: LatePolicy = "accept",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if chunk_length < 2:
            raise ValueError(f"a chunk needs at least 2 actions, got chunk_length {chunk_length}")
        if mode == "async" and not 1 <= max_prefix < chunk_length:
            raise ValueError(
                f"async mode needs a prefix of 1 … {chunk_length - 1} actions, got max_prefix {max_prefix}"
            )
        if late_chunks not in ("accept", "discard"):
            raise ValueError(f"late_chunks must be accept or discard, got {late_chunks!r}")
        self.mode = mode
        self.chunk_length = chunk_length
        self.max_prefix = max_prefix
        self.estimator = estimator
        self.trigger_margin = max(0, int(trigger_margin))
        self.late_chunks = late_chunks
        self.counters = SchedulerCounters()
        self.epoch = 0
        self.pending: Request | None = None
        self._next_id = 0
        self._chunk: np.ndarray | None = None  # (T, 14) the chunk being executed
        self._chunk_id = -1
        self._start = 0  # the tick its row 0 belongs to

    # -- the plan --------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the plan and any request in flight (new episode, pause): the next answer is dropped."""
        self.epoch += 1
        self.pending = None
        self._chunk = None
        self._chunk_id = -1

    @property
    def has_plan(self) -> bool:
        return self._chunk is not None

    def planned(self, k: int) -> Planned | None:
        """The action for tick k, or None if the plan has none (the arms hold)."""
        if self._chunk is None:
            return None
        i = k - self._start
        if not 0 <= i < len(self._chunk):
            return None
        return Planned(self._chunk[i], self._chunk_id, i)

    def remaining(self, k: int) -> int:
        """Planned actions for ticks k, k+1, … (tick k's own included)."""
        if self._chunk is None:
            return 0
        return max(0, min(len(self._chunk), self._start + len(self._chunk) - k))

    # -- when to ask, and with which prefix ------------------------------------------------------------------
    def prefix_length(self) -> int:
        if self.mode != "async":
            return 0
        return min(self.max_prefix, self.estimator.ticks())

    def threshold(self) -> int:
        """Ask when at most this many planned actions remain (sync: when none remain)."""
        if self.mode == "sync":
            return 0
        return min(self.chunk_length - 1, self.estimator.ticks() + self.trigger_margin)

    def due(self, k: int) -> bool:
        return self.pending is None and self.remaining(k) <= self.threshold()

    def request(self, k: int, deadline_ns: int, hold: np.ndarray) -> Request:
        """Make the request of tick k (whose action was just sent): prefix = the next P planned actions,
        padded with the last of them — or with `hold`, the command the arms hold, if none is planned."""
        if self.pending is not None:
            raise RuntimeError(f"request {self.pending.id} is still in flight; one request at a time")
        p = self.prefix_length()
        rows: list[np.ndarray] = []
        for i in range(p):
            planned = self.planned(k + i)
            rows.append(planned.action if planned is not None else (rows[-1] if rows else hold))
        prefix = np.array(rows, dtype=np.float64).reshape(p, len(hold))
        req = Request(self._next_id, self.epoch, k, int(deadline_ns), prefix, self.estimator.ticks())
        self._next_id += 1
        self.pending = req
        self.counters.requests += 1
        return req

    # -- answers ------------------------------------------------------------------------------------------------
    def fail(self, request: Request) -> None:
        """The request produced no usable chunk (policy error, rejected chunk): ask again when due."""
        if request is self.pending:
            self.pending = None
        self.counters.failed += 1

    def receive(self, request: Request, actions: np.ndarray, k: int) -> Switch:
        """The answer to `request` is available at tick k, before tick k's action is chosen."""
        if request is not self.pending or request.epoch != self.epoch:
            self.counters.stale_epoch += 1
            return Switch(request, k, "stale_epoch")
        self.pending = None
        t = self.chunk_length
        actions = np.array(actions, dtype=np.float64)
        if actions.shape[0] != t:
            raise ValueError(f"a chunk must have {t} rows, got {actions.shape[0]}")
        p = len(request.prefix)
        prefix_error = 0.0
        if p:
            prefix_error = float(np.max(np.abs(actions[:p] - request.prefix)))
            actions[:p] = request.prefix  # committed actions never change
        d = k - request.tick
        if self.mode == "sync":
            self._splice(request, actions, start=k)
            self.counters.on_time += 1
            return Switch(request, k, "on_time", 0, actions, prefix_error)
        if d >= t:
            self.counters.expired += 1
            return Switch(request, k, "expired", prefix_error=prefix_error)
        late = self.mode == "async" and d > p
        if late and self.late_chunks == "discard" and request.expected_delay <= p:
            self.counters.late_discarded += 1
            return Switch(request, k, "late_discarded", prefix_error=prefix_error)
        self._splice(request, actions, start=request.tick)
        if late:
            self.counters.late += 1
        else:
            self.counters.on_time += 1
        return Switch(request, k, "late" if late else "on_time", d, actions, prefix_error)

    def _splice(self, request: Request, actions: np.ndarray, start: int) -> None:
        self._chunk = actions
        self._chunk_id = request.id
        self._start = start
