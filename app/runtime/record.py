"""The recording loop of `xr0 record`: the teleop tick plus what an operator needs.

Keys (next, re-record, discard, success/failure, pause, quit), a live status line, cues at episode
start and end, an unrecorded reset phase between episodes (hardware), and clean endings: Ctrl-C, a
quit key, a recorder alarm or a device error end the open episode as `recording.on_interrupt` says —
the recorder commits or discards it, never leaves it half-written. Stale observations skip a tick
(counted, a visible gap in `tick`); one that lasts half a second ends the session.
"""

from __future__ import annotations

import collections
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from app.runtime import terminal as keys
from app.runtime.episodes import percentiles, reset_world
from app.runtime.events import EpisodeEvent, Publisher
from app.runtime.priority import loop_priority
from app.runtime.rig import Rig
from app.runtime.teleop import teleop_step
from drivers.clock import Rate, SimClock, Tick
from drivers.errors import StaleSampleError
from drivers.sim.aloha import StageTracker

if TYPE_CHECKING:
    from recording.recorder import Recorder

log = logging.getLogger(__name__)


@dataclass
class RecordReport:
    episodes: list[dict[str, Any]] = field(default_factory=list)
    ticks: int = 0
    wall_s: float = 0.0
    stale_ticks: int = 0
    lateness_ms: dict[str, float] = field(default_factory=dict)
    alarms: list[str] = field(default_factory=list)
    quit: bool = False
    loop_priority: str = "normal"  # what the control thread got from the OS (app/runtime/priority.py)


WRITER_LAG_WARN_S = 1.0  # steps not yet on disk beyond this (s) are shown as BEHIND, with one warning
COMMIT_TIMEOUT_S = 60.0  # the longest an episode's commit is waited for before it is reported not saved


class RecordSession:
    def __init__(
        self,
        rig: Rig,
        fps: float,
        on_interrupt: str,
        recorder: Recorder,
        publisher: Publisher,
        task: str,
        keyboard: keys.Keyboard,
        console: keys.Console,
        interrupt: threading.Event | None = None,
        first_seed: int | None = None,
        priority: str = "off",
    ) -> None:
        """`first_seed`: the simulator seed of the first episode (default: the sim's current seed).
        `priority` (runtime.loop_priority): what the control thread asks the OS for (app/runtime/priority.py)."""
        self.priority = priority
        self.rig, self.recorder, self.publisher = rig, recorder, publisher
        self.on_interrupt = on_interrupt  # recording.on_interrupt: commit | discard the open episode
        self.first_seed = first_seed
        self.task, self.keyboard, self.console = task, keyboard, console
        self.interrupt = interrupt or threading.Event()
        self.fps = fps
        self.lockstep = isinstance(rig.clock, SimClock)
        self.paused = False
        self.quit = False
        self.report = RecordReport()
        self._tick = 0
        self._stale_run = 0
        self._open = False  # an episode start was published and its end not yet
        self._lateness: collections.deque[int] = collections.deque(maxlen=300)
        self._walls: collections.deque[float] = collections.deque(maxlen=int(self.fps) + 1)
        self._status_at = 0.0
        self._disk_at = 0.0
        self._free = float("nan")
        self._lag_warned = False  # one warning per session when the writer falls behind

    # -- one control tick: observe, read the leaders, send through the safety layer, publish -----------------
    def tick(self, rate: Rate, episode: int, limit: int | None = None) -> Tick | None:
        """One tick; None (and nothing done) once the rate's deadlines reach `limit` ticks."""
        tick = rate.wait()
        if limit is not None and tick.index >= limit:
            return None
        robot, clock = self.rig.robot, self.rig.clock
        self._tick += tick.skipped  # ticks the loop overran count, so that `tick` shows the gap
        try:
            obs = robot.observe()
        except StaleSampleError as e:
            # A late frame or joint read: hold, skip the tick (a visible gap in `tick`), count it; a device
            # that stays stale for half a second ends the episode like any other device error.
            self.report.stale_ticks += 1
            self._stale_run += 1
            robot.hold()
            log.warning("tick %d skipped: %s", self._tick, e)
            if self._stale_run > self.fps / 2:
                raise
            self._tick += 1
            return tick
        self._stale_run = 0
        event = teleop_step(robot, clock, tick, self._tick, episode, obs)
        self._lateness.append(tick.lateness_ns)
        self._walls.append(time.perf_counter())
        self.publisher.step(event)
        self._tick += 1
        self.report.ticks += 1
        return tick

    def _idle_tick(self, rate: Rate) -> None:
        """An unrecorded tick (reset phase, pause): the followers keep mirroring the leaders."""
        self.tick(rate, -1)
        if self.lockstep:
            time.sleep(1.0 / self.fps)  # a simulated clock would otherwise spin through the pause

    # -- the session -------------------------------------------------------------------------------------------
    def run(self, episodes: int, seconds: float, reset_seconds: float) -> RecordReport:
        with loop_priority(self.priority, isinstance(self.rig.clock, SimClock)) as got:
            report = self._run(episodes, seconds, reset_seconds)
        report.loop_priority = got
        return report

    def _run(self, episodes: int, seconds: float, reset_seconds: float) -> RecordReport:
        rig = self.rig
        wall0 = time.perf_counter()
        kept = attempt = 0
        rerecord = False
        self.console.cue(f"recording {episodes} episode(s) of {seconds:g} s: {self.task!r}")
        if self.keyboard.active:
            self.console.cue(keys.HELP)
        try:
            while kept < episodes and not self.quit:
                self._pause_gate()
                if self.quit:
                    break
                if rig.sim is not None:
                    if attempt == 0:
                        reset_world(rig, rig.sim.seed if self.first_seed is None else self.first_seed)
                    else:
                        reset_world(rig, rig.sim.seed if rerecord else None)
                outcome = self._episode(kept, episodes, seconds)
                attempt += 1
                rerecord = outcome == keys.RERECORD
                kept += outcome in ("done", keys.NEXT) or (
                    outcome in (keys.QUIT, "alarm") and self.on_interrupt == "commit"
                )
                if self.recorder.error is not None:
                    break
                if rig.sim is None and reset_seconds > 0 and kept < episodes and not self.quit:
                    self._reset_phase(reset_seconds)
        finally:
            if self._open:  # the loop failed mid-episode: end it per on_interrupt
                commit = self.on_interrupt == "commit"
                self._end_episode(None, {"discard": not commit, "interrupted": True, "outcome": "error"})
            self.console.clear_status()
        self.report.wall_s = time.perf_counter() - wall0
        self.report.lateness_ms = percentiles(self._lateness, 1e-6)  # the last 300 ticks
        self.report.quit = self.quit
        return self.report

    def _end_episode(self, success: bool | None, info: dict[str, Any]) -> None:
        self.publisher.episode(EpisodeEvent(-1, "end", self.rig.clock.now_ns(), success=success, info=info))
        self._open = False

    def _episode(self, number: int, total: int, seconds: float) -> str:
        rig, rec = self.rig, self.recorder
        seed = rig.sim.seed if rig.sim is not None else None
        index = rec.next_index
        self.console.cue(
            f"● episode {index} ({number + 1}/{total}) recording"
            + (f", seed {seed}" if seed is not None else ""),
            bell=True,
        )
        info = {"task": self.task, "sim_task": rig.sim.config.task if rig.sim is not None else None}
        if rig.sim is not None:  # privileged, for the ladder's diagnostic model only (docs/eval.md)
            info["object_start"] = [round(float(v), 6) for v in rig.sim.object_start()]
        self.publisher.episode(EpisodeEvent(index, "start", rig.clock.now_ns(), seed=seed, info=info))
        self._open = True
        rate = Rate(rig.clock, self.fps)
        n_ticks = max(1, round(seconds * self.fps))
        stages = StageTracker(rig.sim) if rig.sim is not None else None
        mark: bool | None = None
        outcome = "done"
        while outcome == "done":
            for command in self.keyboard.poll():
                if command in (keys.SUCCESS, keys.FAILURE):
                    mark = command == keys.SUCCESS
                elif command == keys.PAUSE:
                    self.paused = not self.paused
                elif command in (keys.NEXT, keys.RERECORD, keys.DISCARD, keys.QUIT):
                    outcome = command
                    break
            if self.interrupt.is_set():
                outcome = keys.QUIT
            elif rec.alarm is not None:
                outcome = "alarm"
                self.report.alarms.append(rec.alarm)
            elif rec.error is not None:
                outcome = "error"
            if outcome != "done":
                break
            tick = self.tick(rate, index, n_ticks)
            if tick is None:
                break
            if stages is not None:
                stages.update()
            self._status(index, number, total, (tick.index + 1) / self.fps, seconds)
        self.quit = self.quit or outcome == keys.QUIT
        source = "operator" if mark is not None else ("sim" if stages is not None else None)
        # The simulator's verdict: stage 4 at any tick of the episode (the one rule, drivers/sim/aloha.py).
        success = mark if mark is not None else (stages.success if stages is not None else None)
        on_interrupt_commit = self.on_interrupt == "commit"
        commit = outcome in ("done", keys.NEXT) or (outcome in (keys.QUIT, "alarm") and on_interrupt_commit)
        info = {
            "discard": not commit,
            "outcome": outcome,
            "interrupted": outcome in (keys.QUIT, "alarm", "error"),
            "success_source": source,
        }
        if stages is not None:
            info["max_stage"] = stages.max_stage
        results_before = len(rec.results)
        self._end_episode(success, info)
        verdict = {True: "success", False: "failure", None: "not judged"}[success]
        if commit:  # "kept" only once the writer says it is committed: a crash before that can still lose it
            self.console.cue(f"… episode {index} saving")
        result = rec.wait_result(index, results_before, timeout=COMMIT_TIMEOUT_S)
        kept = result is not None and result.status == "committed"
        if kept:
            self.console.cue(
                f"■ episode {index} kept ({verdict}, {outcome}, {result.length} steps)", bell=True
            )
        elif result is not None and result.status == "discarded":
            self.console.cue(f"✗ episode {index} discarded ({outcome})", bell=True)
        else:  # asked to commit, or to discard, and the writer did neither (it failed or was killed)
            why = rec.error or (
                f"the writer answered {result.status}" if result else "no answer from the writer"
            )
            self.console.cue(
                f"✗ episode {index} NOT saved ({why}); {rec.written_steps} steps reached the disk and "
                "`dataset repair` recovers them",
                bell=True,
            )
        self.report.episodes.append(
            {
                "index": index,
                "seed": seed,
                "outcome": outcome,
                "kept": kept,
                "success": success,
                "status": result.status if result is not None else "not confirmed",
                "length": result.length if result is not None else None,
                "attrs": dict(result.attrs) if result is not None else {},
                "on_disk_steps": rec.written_steps,
            }
        )
        return outcome

    def _pause_gate(self) -> None:
        if not self.paused:
            return
        self.console.cue("paused — press p to record the next episode, q to quit")
        rate = Rate(self.rig.clock, self.fps)
        while self.paused and not self.quit and not self.interrupt.is_set():
            for command in self.keyboard.poll():
                if command == keys.PAUSE:
                    self.paused = False
                elif command == keys.QUIT:
                    self.quit = True
            self._idle_tick(rate)
        self.quit = self.quit or self.interrupt.is_set()

    def _reset_phase(self, seconds: float) -> None:
        """Unrecorded time to reset the scene; s/f still mark the episode just recorded."""
        last = self.report.episodes[-1] if self.report.episodes else None
        self.console.cue(f"reset the scene — next episode in {seconds:g} s (→ to start now)")
        rate = Rate(self.rig.clock, self.fps)
        deadline = self.rig.clock.now_ns() + round(seconds * 1e9)
        while self.rig.clock.now_ns() < deadline and not self.quit and not self.interrupt.is_set():
            for command in self.keyboard.poll():
                if command in (keys.SUCCESS, keys.FAILURE) and last is not None and last["kept"]:
                    last["success"] = command == keys.SUCCESS
                    self.recorder.mark(
                        last["index"], {"success": last["success"], "success_source": "operator"}
                    )
                    self.console.cue(
                        f"episode {last['index']} marked {'success' if last['success'] else 'failure'}"
                    )
                elif command == keys.NEXT:
                    deadline = 0
                elif command == keys.PAUSE:
                    self.paused = not self.paused
                elif command == keys.QUIT:
                    self.quit = True
            self._idle_tick(rate)
        self.quit = self.quit or self.interrupt.is_set()

    def _status(self, index: int, number: int, total: int, elapsed: float, seconds: float) -> None:
        now = time.perf_counter()
        if not self.console.live or now - self._status_at < 0.25:
            return
        self._status_at = now
        if now - self._disk_at > 2.0:
            self._free = shutil.disk_usage(self.recorder.path).free / 1e9
            self._disk_at = now
        walls = self._walls
        rate = (len(walls) - 1) / (walls[-1] - walls[0]) if len(walls) > 1 and walls[-1] > walls[0] else 0.0
        p99 = float(np.percentile(np.array(self._lateness) / 1e6, 99)) if self._lateness else 0.0
        rec = self.recorder
        lag_s = max(0, rec.steps_in_episode - rec.written_steps) / self.fps  # what a crash now would lose
        behind = lag_s > WRITER_LAG_WARN_S
        if behind and not self._lag_warned:
            self._lag_warned = True
            self.console.cue(
                f"warning: the writer is {lag_s:.1f} s behind (a crash now loses that much of episode {index}); "
                "the disk or CPU is busy"
            )
        self.console.status(
            f"● ep {index} ({number + 1}/{total}) {elapsed:5.1f}/{seconds:g} s │ {rate:5.1f} Hz, late p99 {p99:4.1f} ms │ "
            f"queue {rec.queue_depth}/{rec.queue_size}, on disk −{lag_s:.1f} s{' BEHIND' if behind else ''} │ "
            f"dropped {rec.refused_steps} stale {self.report.stale_ticks} │ "
            f"disk {self._free:.1f} GB free" + (" │ PAUSE after this episode" if self.paused else "")
        )
