"""The rollout session: a policy on a rig, episode after episode, at `control.fps`.

In the simulator each episode ends by itself — success at the first tick the task is done (stage 4,
`StageTracker`), failure after `episode_seconds` — and the world resets with the next seed (from
`first_seed`; the command starts at the held-out `EVAL_SEED_START`). On hardware the operator marks success
or failure with a key (the policy keeps going). `Terminal` gives the keys (KEYS) and a live status line;
`RolloutReport` holds what the summary prints: throughput overall and per minute, success rate, inference
latency, the delay distribution, late chunks, starvations, clamps, loop lateness and the longest stall.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from app.runtime.episodes import percentiles, reset_world
from app.runtime.events import EpisodeEvent, Publisher
from app.runtime.priority import loop_priority
from app.runtime.rig import Rig
from app.runtime.runner import PolicyRunner
from drivers.clock import Clock, Rate, SimClock, Tick
from drivers.sim.aloha import StageTracker

log = logging.getLogger(__name__)
KEYS = {
    b"s": "success",
    b"f": "failure",
    b"p": "pause",
    b"e": "estop",
    b" ": "estop",
    b"q": "quit",
    b"\x1b": "quit",
}
HELP = "keys: s success · f failure · p pause/resume · e/SPACE e-stop · q/Esc quit"


@dataclass
class EpisodeOutcome:
    index: int
    start_tick: int
    end_tick: int
    seed: int | None = None
    success: bool | None = None  # None: not judged (cut short by the end of the rollout)
    reason: str = ""  # success | timeout | operator | end of rollout | e-stop
    max_stage: int | None = None  # simulator: the highest task stage reached (0..4)


@dataclass
class RolloutReport:
    mode: str
    policy: str
    robot: str
    episodes: list[EpisodeOutcome] = field(default_factory=list)
    ticks: int = 0  # control ticks the rollout spanned
    control_s: float = 0.0  # control time (simulated time in lockstep)
    wall_s: float = 0.0
    stopped_by: str = "duration"  # duration | quit | e-stop | interrupted
    loop_priority: str = "normal"  # what the control thread got from the OS (app/runtime/priority.py)
    tasks: int = 0
    tasks_per_min: float = 0.0
    tasks_per_minute_bucket: list[int] = field(default_factory=list)
    success_rate: float | None = None
    inference_ms: dict[str, float] = field(default_factory=dict)
    delay_ticks: dict[int, int] = field(default_factory=dict)  # realised delay -> chunks
    chunks: dict[str, int] = field(default_factory=dict)  # scheduler counters
    runner: dict[str, float] = field(default_factory=dict)  # starvations, stalls, rejects, …
    safety: dict[str, int] = field(default_factory=dict)
    lateness_ms: dict[str, float] = field(default_factory=dict)
    latency_samples_ms: list[float] = field(default_factory=list)  # every chunk's inference time

    def success_times_s(self, fps: float) -> list[float]:
        """Control time (s) at which each successful episode ended — the throughput events."""
        return [e.end_tick / fps for e in self.episodes if e.success]


class Pacer(Protocol):
    """What paces the loop, made as `pacer(clock, fps)`: `Rate`, or another pacing to compare with
    (app/bench/loop.py)."""

    def wait(self) -> Tick: ...


class RolloutSession:
    """Episodes of a policy on a rig: judging (sim: automatic; keys: the operator), resets, the summary."""

    def __init__(
        self,
        rig: Rig,
        runner: PolicyRunner,
        fps: float,
        publisher: Publisher,
        episode_seconds: float | None = None,
        pacer: Callable[[Clock, float], Pacer] = Rate,
        first_seed: int | None = None,
        priority: str = "off",
    ) -> None:
        """`first_seed`: the simulator seed of the first episode (default: the sim's current seed).
        `priority` (runtime.loop_priority): what the control thread asks the OS for while it runs
        (app/runtime/priority.py); the report says what it got."""
        self.priority = priority
        self.rig = rig
        self.first_seed = first_seed
        self.stages = StageTracker(rig.sim) if rig.sim is not None else None
        self.runner = runner
        self.fps = fps
        self.publisher = publisher
        self.episode_ticks = None if episode_seconds is None else max(1, round(episode_seconds * fps))
        self.pacer = pacer
        self.episodes: list[EpisodeOutcome] = []
        self.stopped_by = "duration"
        self._commands: list[str] = []
        self._lock = threading.Lock()
        self._current: EpisodeOutcome | None = None
        self.success_ticks: list[int] = []  # the tick of each success (the status line and the summary)

    # -- operator commands (any thread) -----------------------------------------------------------------------
    def press(self, command: str) -> None:
        if command == "estop":
            self.runner.estop()  # at once: the next tick holds, whatever the loop is doing
        elif command == "pause":
            self.runner.resume() if self.runner.paused else self.runner.pause()
        else:
            with self._lock:
                self._commands.append(command)

    def _take_commands(self) -> list[str]:
        with self._lock:
            out, self._commands = self._commands, []
        return out

    # -- the loop ------------------------------------------------------------------------------------------------
    def run(self, duration_s: float) -> RolloutReport:
        with loop_priority(self.priority, isinstance(self.rig.clock, SimClock)) as got:
            report = self._run(duration_s)
        report.loop_priority = got
        return report

    def _run(self, duration_s: float) -> RolloutReport:
        rig, runner = self.rig, self.runner
        total_ticks = max(1, round(duration_s * self.fps))
        wall0 = time.perf_counter()
        last_tick = -1
        with rig.robot, runner:
            self._begin(0, 0)
            rate = self.pacer(rig.clock, self.fps)
            try:
                while True:
                    tick = rate.wait()
                    if tick.index >= total_ticks:
                        break
                    last_tick = tick.index
                    runner.step(tick)
                    if runner.estopped:
                        self.stopped_by = "e-stop"
                        break
                    verdict, quit_ = self._verdict(tick.index)
                    if verdict is not None:
                        self._end(tick.index, *verdict)
                        self._begin(len(self.episodes), tick.index + 1)
                    if quit_:
                        self.stopped_by = "quit"
                        break
            except KeyboardInterrupt:
                self.stopped_by = "interrupted"
            finally:
                reason = {"duration": "end of rollout"}.get(self.stopped_by, self.stopped_by)
                self._end(max(last_tick, 0), None, reason)
        return self._report(last_tick + 1, time.perf_counter() - wall0)

    def _begin(self, index: int, tick: int) -> None:
        rig = self.rig
        seed = None
        if rig.sim is not None:
            self.runner.restart(index)  # no inference may overlap the world's reset
            first = rig.sim.seed if self.first_seed is None else self.first_seed
            seed = reset_world(rig, None if index else first)
            self.stages.reset()
        else:
            self.runner.episode = index  # hardware: an episode boundary; the policy goes on
        self._current = EpisodeOutcome(index, tick, tick, seed)
        self.publisher.episode(EpisodeEvent(index, "start", rig.clock.now_ns(), seed=seed))

    def _end(self, tick: int, success: bool | None, reason: str) -> None:
        ep = self._current
        if ep is None:
            return
        ep.end_tick, ep.success, ep.reason = tick, success, reason
        if success:
            self.success_ticks.append(tick)
        self.episodes.append(ep)
        self._current = None
        info = {"reason": reason}
        if self.stages is not None:
            ep.max_stage = info["max_stage"] = self.stages.max_stage
        self.publisher.episode(
            EpisodeEvent(ep.index, "end", self.rig.clock.now_ns(), success=success, seed=ep.seed, info=info)
        )
        log.info("episode %d: %s after %d ticks", ep.index, reason, ep.end_tick - ep.start_tick + 1)

    def _verdict(self, k: int) -> tuple[tuple[bool, str] | None, bool]:
        """((success, reason) if the episode ends at tick k, quit?)."""
        verdict, quit_ = None, False
        for command in self._take_commands():
            if command == "success":
                verdict = (True, "operator")
            elif command == "failure":
                verdict = (False, "operator")
            elif command == "quit":
                quit_ = True
        sim = self.rig.sim
        if sim is not None:
            self.stages.update()
        if verdict is None and sim is not None and self.stages.success:
            verdict = (True, "success")  # the first tick at stage 4 ends the episode
        ep = self._current
        if (
            verdict is None
            and sim is not None
            and self.episode_ticks
            and k - ep.start_tick + 1 >= self.episode_ticks
        ):
            verdict = (False, "timeout")
        return verdict, quit_

    # -- the summary ---------------------------------------------------------------------------------------------
    def _report(self, ticks: int, wall_s: float) -> RolloutReport:
        runner, st = self.runner, self.runner.stats
        dt = 1.0 / self.fps
        control_s = ticks * dt
        minutes = max(1, int(np.ceil(control_s / 60.0)))
        buckets = [0] * minutes
        for k in self.success_ticks:
            buckets[min(minutes - 1, int(k * dt // 60))] += 1
        judged = [e.success for e in self.episodes if e.success is not None]
        safety = runner.robot.safety.counters.as_dict() if runner.robot.safety else {}
        stats = {
            "executed_ticks": st.executed,
            "waiting_ticks": st.waiting_ticks,
            "starvations": st.starvations,
            "starved_ticks": st.starved_ticks,
            "paused_ticks": st.paused_ticks,
            "longest_stall_ticks": st.longest_stall_ticks,
            "longest_stall_ms": round(st.longest_stall_ticks * dt * 1e3, 1),
            "stale_ticks": st.stale_ticks,
            "skipped_ticks": st.skipped_ticks,
            "observe_errors": st.observe_errors,
            "inference_errors": st.inference_errors,
            "rejected_chunks": st.rejected_chunks,
            "prefix_mismatches": st.prefix_mismatches,
            "max_step_rad": round(st.max_step, 4),
            "max_switch_jump_rad": round(max(st.switch_jumps, default=0.0), 4),
            "p99_step_rad": round(float(np.percentile(st.steps, 99)), 4) if st.steps else 0.0,
        }
        return RolloutReport(
            mode=runner.scheduler.mode,
            policy=type(runner.policy).__name__,
            robot="sim" if self.rig.sim is not None else "aloha",
            episodes=self.episodes,
            ticks=ticks,
            control_s=round(control_s, 3),
            wall_s=round(wall_s, 3),
            stopped_by=self.stopped_by,
            tasks=len(self.success_ticks),
            tasks_per_min=round(len(self.success_ticks) / (control_s / 60.0), 3) if control_s else 0.0,
            tasks_per_minute_bucket=buckets,
            success_rate=round(sum(judged) / len(judged), 3) if judged else None,
            inference_ms=percentiles(st.inference_ms),
            delay_ticks=dict(sorted(Counter(st.delay_ticks).items())),
            chunks=runner.scheduler.counters.as_dict(),
            runner=stats,
            safety=safety,
            lateness_ms=percentiles(st.lateness_ns, 1e-6),
        )


def status_text(session: RolloutSession) -> str:
    runner, st = session.runner, session.runner.stats
    k = st.ticks
    minutes = k / session.fps / 60.0
    tasks = len(session.success_ticks)
    rate = tasks / minutes if minutes > 0 else 0.0
    lat = st.inference_ms[-50:]
    late = runner.scheduler.counters.late + runner.scheduler.counters.late_discarded
    clamps = 0
    if runner.robot.safety is not None:
        c = runner.robot.safety.counters
        clamps = c.clamped_limit + c.clamped_delta
    state = "E-STOP" if runner.estopped else ("paused" if runner.paused else "running")
    lat_text = f"{np.percentile(lat, 50):.0f} ms" if lat else "—"
    return (
        f"[{int(minutes):02d}:{int(minutes * 60) % 60:02d}] {state} · tasks {tasks} ({rate:.2f}/min) · "
        f"latency p50 {lat_text} · late {late} · starved {st.starvations} · clamps {clamps}"
    )


# -- keys and the status line ---------------------------------------------------------------------------------
class Terminal:
    """Rollout's keys through the shared terminal component (app/runtime/terminal.py), acted on as they are typed,
    and a status line redrawn on stderr; a no-op when stdin/stderr are not terminals (tests, pipes)."""

    def __init__(self, session: RolloutSession, period_s: float = 0.5) -> None:
        from app.runtime.terminal import Keyboard

        self.session = session
        self.period_s = period_s
        self.keyboard = Keyboard(keys=KEYS, escapes={}, on_command=session.press)
        self._stop = threading.Event()
        self._status_thread: threading.Thread | None = None

    def __enter__(self) -> Terminal:
        self.keyboard.__enter__()
        if sys.stderr.isatty():
            self._status_thread = threading.Thread(target=self._status, name="rollout-status", daemon=True)
            self._status_thread.start()
        if self.keyboard.active:
            print(HELP, flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._status_thread is not None:
            self._status_thread.join(timeout=1.0)
            sys.stderr.write("\n")
        self.keyboard.__exit__(*exc)

    def _status(self) -> None:
        while not self._stop.wait(self.period_s):
            sys.stderr.write("\r" + status_text(self.session) + "\033[K")
            sys.stderr.flush()
