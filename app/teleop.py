"""The teleoperation session: leaders drive followers at `control.fps` on absolute deadlines.

Each tick: observe (joints + frames), read the leaders, send through the safety layer, publish a
`StepEvent` to the subscribers (Rerun, the recorder). In the simulator the scripted teleoperator is the
leader, each episode starts from a reset with the next seed, and success is read from the task.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from app.compose import Rig
from app.config import AppConfig
from app.events import EpisodeEvent, Publisher, StepEvent
from app.viz import Sink, open_sink
from drivers.clock import Clock, Rate, Tick
from drivers.errors import DeviceError
from drivers.robot import BimanualRobot, Observation
from drivers.sim.aloha import StageTracker

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


class TeleopSession:
    def __init__(
        self, rig: Rig, fps: float, publisher: Publisher | None = None, stop: threading.Event | None = None
    ) -> None:
        self.rig = rig
        self.fps = fps
        self.publisher = publisher or Publisher()
        self.stop = stop or threading.Event()

    def _tick(self, tick: Tick, tick_index: int, episode: int) -> StepEvent:
        return teleop_step(self.rig.robot, self.rig.clock, tick, tick_index, episode)

    def run(self, episodes: int, episode_seconds: float) -> TeleopReport:
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
                seed = None
                if sim is not None:
                    sim.reset(None if ep else sim.seed)
                    seed = sim.seed
                    if self.rig.teleop is not None:
                        self.rig.teleop.reset()
                    robot.rebase()
                self.publisher.episode(EpisodeEvent(ep, "start", clock.now_ns(), seed=seed))
                summary = EpisodeSummary(index=ep, ticks=0, seed=seed, max_stage=0 if sim else None)
                stages = StageTracker(sim) if sim is not None else None
                rate = Rate(clock, self.fps)
                for _ in range(ticks_per_episode):
                    if self.stop.is_set():
                        break
                    tick = rate.wait()
                    try:
                        event = self._tick(tick, tick_index, ep)
                    except DeviceError as e:
                        # A device failed mid-episode (a camera stopped, a stale sample): end the episode
                        # cleanly — subscribers get its end event and keep what they have — and stop.
                        log.error("episode %d ended: %s", ep, e)
                        summary.error = report.error = str(e)
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
            report.safety = robot.safety.counters.as_dict() if robot.safety else {}
            report.observations = dict(robot.observation_counters)
        report.ticks = tick_index
        report.wall_s = time.perf_counter() - wall0
        if lateness:
            lat = np.array(lateness) / 1e6
            report.lateness_ms = {
                "p50": float(np.percentile(lat, 50)),
                "p99": float(np.percentile(lat, 99)),
                "max": float(lat.max()),
            }
        report.section_ms = {k: float(np.mean(v)) for k, v in sections.items() if v}
        return report


# -- command line: `xr0 teleop` ---------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--episodes", type=int, default=1, help="episodes to run (sim: each from a new seed)")
    p.add_argument("--episode-seconds", type=float, default=None, help="length of one episode")
    p.add_argument("--rerun", default=None, help="off | spawn | web[:PORT] | FILE.rrd (default: viz.rerun)")


def run_teleop(
    config: AppConfig,
    episodes: int,
    episode_seconds: float | None,
    rerun: str,
    summary_path: Path | None = None,
) -> tuple[TeleopReport, Sink]:
    """Compose the rig and subscribers from config, run the session, always shut down cleanly."""
    from app.compose import build_rig
    from app.viz import RerunLogger

    sink, note = open_sink(rerun, "teleop")
    if note:
        log.warning("%s", note)
    rig = build_rig(config)
    publisher = Publisher()
    if sink.kind != "off":
        publisher.subscribers.append(RerunLogger(sink, config.viz, cameras=list(rig.robot.cameras)))
    seconds = episode_seconds
    if seconds is None:
        sim_seconds = config.robot.scripted.episode_seconds
        seconds = sim_seconds if rig.sim is not None else config.recording.episode_seconds
    try:
        report = TeleopSession(rig, config.control.fps, publisher).run(episodes, seconds)
    finally:
        publisher.close()
        rig.close()
    if summary_path is not None:
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(asdict(report), indent=2))
    return report, sink


def print_report(report: TeleopReport) -> None:
    for ep in report.episodes:
        verdict = {True: "success", False: "failure", None: "not judged"}[ep.success]
        seed = f" seed {ep.seed}" if ep.seed is not None else ""
        print(f"  episode {ep.index}{seed}: {ep.ticks} ticks, {verdict}")
    rate = report.ticks / report.wall_s if report.wall_s else 0.0
    print(
        f"  {report.ticks} ticks in {report.wall_s:.1f} s wall ({rate:.1f} ticks/s); safety: {report.safety}"
    )
    if report.lateness_ms:
        lat = report.lateness_ms
        print(f"  loop lateness p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms")
    obs = report.observations
    if obs.get("duplicated_frames") or obs.get("skewed"):
        print(f"  observations: {obs['duplicated_frames']} duplicated frame(s), {obs['skewed']} skewed")
    if report.success_rate is not None:
        print(f"  success rate: {report.success_rate:.0%}")
    if report.error:
        print(f"  stopped early: {report.error}")


def run(args, config: AppConfig) -> int:
    rerun = args.rerun if args.rerun is not None else config.viz.rerun
    report, sink = run_teleop(config, args.episodes, args.episode_seconds, rerun)
    print(f"teleop on robot {config.robot.type}:")
    print_report(report)
    if sink.path is not None:
        print(f"  Rerun recording: {sink.path}")
    return 1 if report.error else 0
