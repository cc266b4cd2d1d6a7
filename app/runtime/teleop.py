"""The teleoperation session: leaders drive followers at `control.fps` on absolute deadlines.

Each tick (`teleop_step`): observe (joints + frames), read the leaders, send through the safety layer,
publish a `StepEvent` to the subscribers (Rerun, the recorder). In the simulator the scripted teleoperator
is the leader, each episode starts from a reset with the next seed, and success is read from the task.
With a keyboard and a console (app/runtime/terminal.py) the operator has keys (KEYS: pause, e-stop, quit)
and a status line; Ctrl-C ends the open episode cleanly and the report is still returned.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from app.runtime.episodes import percentiles, reset_world
from app.runtime.events import EpisodeEvent, Publisher, StepEvent
from app.runtime.priority import loop_priority
from app.runtime.rig import Rig
from drivers.clock import Clock, Rate, SimClock, Tick
from drivers.errors import DeviceError
from drivers.robot import BimanualRobot, Observation
from drivers.sim.aloha import StageTracker

if TYPE_CHECKING:
    from app.runtime.terminal import Console, Keyboard

log = logging.getLogger(__name__)


@dataclass
class EpisodeSummary:
    index: int
    ticks: int
    seed: int | None = None
    success: bool | None = None  # None where nobody judged it (hardware without a mark)
    max_stage: int | None = None  # simulator task stage reached (0..4)
    error: str | None = None  # why the episode ended early (a device failed), if it did


@dataclass
class TeleopReport:
    episodes: list[EpisodeSummary] = field(default_factory=list)
    ticks: int = 0
    skipped_ticks: int = 0
    wall_s: float = 0.0
    lateness_ms: dict[str, float] = field(default_factory=dict)
    section_ms: dict[str, float] = field(default_factory=dict)  # mean time per loop section
    safety: dict[str, int] = field(default_factory=dict)
    observations: dict[str, int] = field(default_factory=dict)  # observation quality counters
    error: str | None = None  # the device error that ended the session early, if any
    stopped_by: str = "done"  # done | quit | e-stop | interrupted | error
    loop_priority: str = "normal"  # what the control thread got from the OS (app/runtime/priority.py)
    paused_ticks: int = 0  # ticks the followers held while the operator paused

    @property
    def success_rate(self) -> float | None:
        judged = [e.success for e in self.episodes if e.success is not None]
        return sum(judged) / len(judged) if judged else None


def teleop_step(
    robot: BimanualRobot,
    clock: Clock,
    tick: Tick,
    tick_index: int,
    episode: int,
    obs: Observation | None = None,
) -> StepEvent:
    """One teleoperation tick: observe (unless `obs` is given), read the leaders, send the leaders'
    command through the safety layer; the event carries what was sent and each section's time."""
    t0 = time.perf_counter()
    if obs is None:
        obs = robot.observe()
    t1 = time.perf_counter()
    leader = robot.leader_action()
    t2 = time.perf_counter()
    cmd = robot.send_action(leader.action)
    t3 = time.perf_counter()
    return StepEvent(
        tick=tick_index,
        deadline_ns=tick.deadline_ns,
        lateness_ns=tick.lateness_ns,
        episode=episode,
        observation=obs,
        leader=leader.action,
        leader_t_ns=leader.t_ns,
        action=cmd.action,
        action_t_ns=clock.now_ns(),
        clamped=int(cmd.clamped.sum()),
        rejected=cmd.rejected,
        timings_ms={"observe": (t1 - t0) * 1e3, "leader": (t2 - t1) * 1e3, "send": (t3 - t2) * 1e3},
    )


# The operator's keys (read by the shared terminal component, app/runtime/terminal.py).
KEYS = {b"p": "pause", b" ": "pause", b"e": "estop", b"q": "quit", b"\x1b": "quit"}
HELP = "keys: p/SPACE pause (the followers hold; again: resume) · e e-stop (hold and stop) · q/Esc quit"
STATUS_EVERY_TICKS = 15  # the status line is redrawn twice a second at 30 Hz


class TeleopSession:
    def __init__(
        self,
        rig: Rig,
        fps: float,
        publisher: Publisher | None = None,
        stop: threading.Event | None = None,
        keyboard: Keyboard | None = None,
        console: Console | None = None,
        priority: str = "off",
    ) -> None:
        """`keyboard` (app.runtime.terminal.Keyboard with KEYS) and `console` (app.runtime.terminal.Console): the
        operator's keys and status line; without them the session runs on its own. `priority`
        (runtime.loop_priority): what the control thread asks the OS for (app/runtime/priority.py)."""
        self.priority = priority
        self.rig = rig
        self.fps = fps
        self.publisher = publisher or Publisher()
        self.stop = stop or threading.Event()
        self.keyboard, self.console = keyboard, console
        self.paused = False
        self.stopped_by = "done"

    def _keys(self) -> None:
        for command in self.keyboard.poll() if self.keyboard is not None else ():
            if command == "pause":
                self.paused = not self.paused
            elif command == "estop":
                self.rig.robot.hold()  # at once: the followers keep their last command
                self.stopped_by = "e-stop"
                self.stop.set()
            elif command == "quit":
                self.stopped_by = "quit"
                self.stop.set()

    def _status(self, ep: int, episodes: int, ticks: int, total: int, report: TeleopReport) -> None:
        if self.console is None:
            return
        safety = self.rig.robot.safety
        clamps = safety.counters.clamped_limit + safety.counters.clamped_delta if safety is not None else 0
        state = "PAUSED (followers hold)" if self.paused else "following the leaders"
        self.console.status(
            f"episode {ep + 1}/{episodes} · {ticks / self.fps:5.1f}/{total / self.fps:.0f} s · {state} · "
            f"clamps {clamps} · skipped ticks {report.skipped_ticks}"
        )

    def _tick(self, tick: Tick, tick_index: int, episode: int) -> StepEvent:
        return teleop_step(self.rig.robot, self.rig.clock, tick, tick_index, episode)

    def run(self, episodes: int, episode_seconds: float) -> TeleopReport:
        with loop_priority(self.priority, isinstance(self.rig.clock, SimClock)) as got:
            report = self._run(episodes, episode_seconds)
        report.loop_priority = got
        return report

    def _run(self, episodes: int, episode_seconds: float) -> TeleopReport:
        """Run `episodes` episodes of `episode_seconds` each (or until `stop` is set)."""
        robot, clock, sim = self.rig.robot, self.rig.clock, self.rig.sim
        report = TeleopReport()
        lateness: list[int] = []
        sections: dict[str, list[float]] = {"observe": [], "leader": [], "send": []}
        ticks_per_episode = max(1, round(episode_seconds * self.fps))
        wall0 = time.perf_counter()
        tick_index = 0
        with robot:
            for ep in range(episodes):
                if self.stop.is_set():
                    break
                seed = reset_world(self.rig, None if ep or sim is None else sim.seed)
                self.publisher.episode(EpisodeEvent(ep, "start", clock.now_ns(), seed=seed))
                summary = EpisodeSummary(index=ep, ticks=0, seed=seed, max_stage=0 if sim else None)
                stages = StageTracker(sim) if sim is not None else None
                rate = Rate(clock, self.fps)
                for k in range(ticks_per_episode):
                    try:  # Ctrl-C anywhere in a tick ends the episode cleanly (below), then the summary
                        self._keys()
                        if self.stop.is_set():
                            break
                        if k % STATUS_EVERY_TICKS == 0:
                            self._status(ep, episodes, k, ticks_per_episode, report)
                        tick = rate.wait()
                        if self.paused:
                            robot.hold()  # the leaders are not followed; nothing is published
                            report.paused_ticks += 1
                            continue
                        event = self._tick(tick, tick_index, ep)
                    except DeviceError as e:
                        # A device failed mid-episode (a camera stopped, a stale sample): end the episode
                        # cleanly — subscribers get its end event and keep what they have — and stop.
                        log.error("episode %d ended: %s", ep, e)
                        summary.error = report.error = str(e)
                        self.stopped_by = "error"
                        self.stop.set()
                        break
                    except KeyboardInterrupt:  # Ctrl-C: end the episode cleanly, then the summary
                        self.stopped_by = "interrupted"
                        self.stop.set()
                        break
                    for k, v in event.timings_ms.items():
                        sections[k].append(v)
                    lateness.append(tick.lateness_ns)
                    self.publisher.step(event)
                    tick_index += 1
                    summary.ticks += 1
                    if stages is not None:
                        stages.update()
                report.skipped_ticks += rate.skipped_total
                if stages is not None:  # done at any tick (the one rule, drivers/sim/aloha.py)
                    summary.success, summary.max_stage = stages.success, stages.max_stage
                report.episodes.append(summary)
                info = {"error": summary.error} if summary.error else {}
                self.publisher.episode(
                    EpisodeEvent(ep, "end", clock.now_ns(), success=summary.success, seed=seed, info=info)
                )
                log.info("episode %d: %d ticks, success=%s", ep, summary.ticks, summary.success)
            if self.console is not None:
                self.console.clear_status()
            report.safety = robot.safety.counters.as_dict() if robot.safety else {}
            report.observations = dict(robot.observation_counters)
        report.ticks = tick_index
        report.stopped_by = self.stopped_by
        report.wall_s = time.perf_counter() - wall0
        report.lateness_ms = percentiles(lateness, 1e-6)
        report.section_ms = {k: float(np.mean(v)) for k, v in sections.items() if v}
        return report
