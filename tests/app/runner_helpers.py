"""Shared set-up of the runner tests: a small simulated rig, the scripted chunk policy, an event log, and
the runner's invariants checked on what really ran."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.compose.config import AppConfig, load_config
from app.compose.rig import build_sim_rig
from app.runtime.events import Publisher, StepEvent
from app.runtime.rollout import RolloutSession
from app.runtime.runner import PolicyRunner
from app.runtime.scripted import ScriptedChunkPolicy
from drivers.clock import SimClock

SMALL = """
cameras:
  cam_high: {type: sim, width: 32, height: 24}
control: {sim_timing: lockstep}
"""


def small_config(tmp_path: Path, extra: str = "", **policy) -> AppConfig:
    p = tmp_path / "config.yaml"
    p.write_text(SMALL + extra)
    cfg = load_config(p)
    return replace(cfg, policy=replace(cfg.policy, **policy)) if policy else cfg


class EventLog:
    """A subscriber that keeps every event (tests only: it holds every observation)."""

    def __init__(self) -> None:
        self.steps: list[StepEvent] = []
        self.episodes = []
        self.chunks = []
        self.lock = threading.Lock()

    def on_step(self, e: StepEvent) -> None:
        with self.lock:
            self.steps.append(e)

    def on_episode(self, e) -> None:
        self.episodes.append(e)

    def on_chunk(self, c) -> None:
        self.chunks.append(c)

    def close(self) -> None:
        pass

    def by_tick(self) -> dict[int, StepEvent]:
        return {e.tick: e for e in self.steps}


def scripted_session(cfg: AppConfig, cameras=(), make_policy=None, episode_seconds=20.0):
    """Rig, runner, session and event log around the scripted policy (or `make_policy(scripted)`)."""
    rig = build_sim_rig(cfg, list(cameras))
    sleep = not isinstance(rig.clock, SimClock)
    policy = ScriptedChunkPolicy(rig.teleop, cfg.policy.scripted, cfg.control.fps, sleep=sleep)
    if make_policy is not None:
        policy = make_policy(policy)
    log = EventLog()
    pub = Publisher([log])
    if hasattr(policy, "on_step"):
        pub.subscribers.append(policy)
    runner = PolicyRunner(rig.robot, rig.clock, policy, cfg.policy, cfg.control.fps, pub)
    session = RolloutSession(rig, runner, cfg.control.fps, pub, episode_seconds)
    return rig, runner, session, log


def check_commitments(runner: PolicyRunner, log: EventLog) -> int:
    """Every prefix row sent with a request is what ran on its tick, whatever the policy answered, and every
    spliced chunk took over at row (arrival − request tick). Returns how many prefix rows were checked."""
    steps = log.by_tick()
    checked = 0
    for sw in runner.switches:
        req = sw.request
        if sw.outcome == "stale_epoch":
            continue
        for i, row in enumerate(req.prefix):
            e = steps.get(req.tick + i)
            if e is None or e.episode != steps[req.tick].episode:
                continue
            ran = e.planned if e.planned is not None else e.action
            assert np.array_equal(ran, row), f"tick {e.tick}: committed action changed (request {req.id})"
            checked += 1
        if sw.spliced:
            e = steps[sw.arrival_tick]
            assert e.new_chunk is not None and e.new_chunk.chunk_id == req.id
            if runner.scheduler.mode == "sync":
                assert sw.index == 0
            else:
                assert sw.index == sw.arrival_tick - req.tick
            if e.chunk_id == req.id:
                assert e.chunk_index == sw.index
                assert np.array_equal(e.planned, sw.actions[sw.index])
    return checked
