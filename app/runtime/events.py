"""What control loops publish to their subscribers (recorder, Rerun, metrics) — STYLE.md 9.

A loop calls `publish` once per tick from its own thread; subscribers must return at once (hand the
event to their own worker through a bounded queue) so that no subscriber can delay a tick.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from drivers.robot import Observation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkRecord:
    """A policy chunk as the runner received it (published once, on its arrival tick)."""

    chunk_id: int
    request_tick: int  # ks: the tick whose observation the policy saw; row 0 belongs to it
    arrival_tick: int  # ka: the tick it arrived by
    outcome: str  # on_time | late | late_discarded | expired (app/runtime/schedule.py) | rejected | error
    switch_index: int | None  # the row that took over at ka (None: not executed)
    prefix_length: int  # P rows that were committed before the request
    actions: np.ndarray | None  # (T, 14) absolute targets, prefix rows enforced; None if not spliced
    inference_ms: float  # the policy's answer time (wall clock, or modelled in lockstep)
    problem: str | None = None  # why the chunk was not used (outcome "rejected" or "error"); None if used

    # The names the Rerun view reads (app/viz/logger.py `on_chunk`).
    @property
    def tick_start(self) -> int:
        """The tick row 0 is executed on (async: the request's tick; sync: the arrival tick)."""
        return self.request_tick if self.switch_index is None else self.arrival_tick - self.switch_index

    @property
    def prefix_len(self) -> int:
        return self.prefix_length

    @property
    def delay_ticks(self) -> int:
        return self.arrival_tick - self.request_tick

    @property
    def latency_ms(self) -> float:
        return self.inference_ms


@dataclass(frozen=True)
class StepEvent:
    tick: int  # control tick index since the loop started
    deadline_ns: int  # when the tick was due (Clock.now_ns time base)
    lateness_ns: int  # how late the loop woke for it
    episode: int  # episode index within this session
    observation: Observation
    leader: np.ndarray | None  # (14,) the leader's raw command (teleop), or None
    leader_t_ns: int | None
    action: np.ndarray  # (14,) what was sent after the safety layer
    action_t_ns: int
    clamped: int  # joints clamped this tick
    rejected: bool  # the request was refused (non-finite) and the arms held
    timings_ms: dict[str, float] = field(default_factory=dict)  # loop sections: observe, leader, send
    # Policy loops only (None in teleop):
    planned: np.ndarray | None = None  # (14,) the action the plan asked for, before the safety layer
    chunk_id: int | None = None  # the chunk `planned` came from (None: the arms held)
    chunk_index: int | None = None  # its row in that chunk
    new_chunk: ChunkRecord | None = None  # set on the tick a new chunk was received
    hold: str | None = None  # why the arms held: waiting | starved | paused (app/runtime/runner.py)
    observation_stale: bool = False  # the observation was older than the bound: no inference on it


@dataclass(frozen=True)
class EpisodeEvent:
    episode: int
    kind: str  # "start" | "end"
    t_ns: int
    success: bool | None = None
    seed: int | None = None
    info: dict = field(default_factory=dict)


class Subscriber(Protocol):
    def on_step(self, event: StepEvent) -> None: ...

    def on_episode(self, event: EpisodeEvent) -> None: ...

    def close(self) -> None: ...


class Publisher:
    """Fans events out to subscribers; a subscriber that raises is reported once and detached."""

    def __init__(self, subscribers: list[Subscriber] | None = None) -> None:
        self.subscribers = list(subscribers or [])

    def _call(self, method: str, event: object) -> None:
        for sub in list(self.subscribers):
            handler = getattr(sub, method, None)
            if handler is None:  # optional hooks (on_chunk): not every subscriber wants every event
                continue
            try:
                handler(event)
            except Exception:
                log.exception("subscriber %s failed and was detached", type(sub).__name__)
                self.subscribers.remove(sub)

    def step(self, event: StepEvent) -> None:
        self._call("on_step", event)

    def episode(self, event: EpisodeEvent) -> None:
        self._call("on_episode", event)

    def chunk(self, event: object) -> None:
        """A policy chunk (runner only); delivered to subscribers that define `on_chunk`."""
        self._call("on_chunk", event)

    def close(self) -> None:
        for sub in self.subscribers:
            try:
                sub.close()
            except Exception:
                log.exception("subscriber %s failed to close", type(sub).__name__)
