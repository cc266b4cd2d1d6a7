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
            try:
                getattr(sub, method)(event)
            except Exception:
                log.exception("subscriber %s failed and was detached", type(sub).__name__)
                self.subscribers.remove(sub)

    def step(self, event: StepEvent) -> None:
        self._call("on_step", event)

    def episode(self, event: EpisodeEvent) -> None:
        self._call("on_episode", event)

    def close(self) -> None:
        for sub in self.subscribers:
            try:
                sub.close()
            except Exception:
                log.exception("subscriber %s failed to close", type(sub).__name__)
