"""The policy runner: one control tick every 1/fps on absolute deadlines, inference in a worker thread.

Each tick (`PolicyRunner.step`): take the latest observation, collect a chunk the worker finished, pop the
action the chunk scheduler planned for this tick, send it through the safety layer (or hold), publish a
`StepEvent` (tick, observation, action, chunk id and row, lateness) to the subscribers, and — when the
scheduler says so and the observation is fresh — hand the next request to the worker. Nothing in a tick
waits for the policy. The rules of the schedule are in `app/runtime/schedule.py`; how answers are timed against
the wall clock or a simulated clock is in `app/runtime/inference_worker.py`; docs/runner.md explains both.

Safety under the policy (DESIGN.md §7): a chunk with NaN/inf, the wrong shape or values beyond the joint
limits is rejected (the plan goes on, then the arms hold); an observation older than the bound stops
inference; a policy that fails (a server that went away) leaves the committed chunk to finish, then the
arms hold; the e-stop holds the arms on the next tick, whatever the worker is doing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from app.errors import UserError
from app.runtime.events import ChunkRecord, Publisher, StepEvent
from app.runtime.inference_worker import Completed, InferenceWorker
from app.runtime.schedule import MODES, ChunkScheduler, DelayEstimator, Switch
from drivers.clock import NS_PER_S, Clock, SimClock, Tick
from drivers.errors import DeviceError
from drivers.joints import GRIPPER_INDICES, JOINT_NAMES, STATE_DIM
from drivers.robot import BimanualRobot, Observation
from xr0.boundary import Policy, PolicyObservation

log = logging.getLogger(__name__)
_ARM_JOINTS = np.array([i for i in range(STATE_DIM) if i not in GRIPPER_INDICES])
# Answered requests kept in `PolicyRunner.switches` (diagnostics and tests read them; the loop does not): each
# holds its chunk and request (~5.5 KB), so 2000 were ~11 MB that took a 30-minute soak 27 minutes to fill —
# the loop's whole RSS "creep" (tracemalloc, docs/benchmarks.md "twelfth session"). 300 is 2–4 minutes.
SWITCH_HISTORY = 300


@dataclass(frozen=True)
class PolicyConfig:
    # What runs: `scripted` (the simulator's demonstrator as a chunk policy), `hold` (keeps the arms
    # still; for checking a set-up), ws://HOST:PORT of an `xr0 serve`, or a checkpoint directory.
    source: str = "scripted"
    # An XR0 checkpoint's DiT steps through torch.compile: the first chunk compiles (a minute or two on a
    # CPU; cached on disk for the next run), then the DiT runs about twice as fast on a CPU.
    compile: bool = False
    # sync: stop, infer, execute; async: action prefixing (DESIGN.md §6); async-naive: no prefix.
    mode: Literal["sync", "async", "async-naive"] = "async"
    # Cap on the action prefix P; the policy's own trained maximum (its spec) bounds it too (XR0: 6).
    max_prefix: int = 6
    # Ask for the next chunk this many ticks before the expected delay would run the plan dry.
    trigger_margin: int = 2
    # The delay estimate is this quantile of the recent delays ...
    delay_quantile: float = 0.95
    # ... over this many most recent answers.
    delay_window: int = 20
    # Delay assumed until the first answers are measured, ms.
    initial_latency_ms: float = 100.0
    # A chunk later than its prefix: accept (splice, counted) or discard (ask again). docs/runner.md.
    late_chunks: Literal["accept", "discard"] = "accept"
    # Chunks with a value beyond a joint limit by more than this (rad; gripper fraction) are rejected.
    limit_tolerance: float = 0.1
    # Task instruction given to the model (`xr0 rollout --task` overrides).
    instruction: str = "transfer the cube to the other arm"
    # Cameras an XR0 checkpoint reads, in prompt order; empty = every camera in the cameras section.
    cameras: tuple[str, ...] = ()
    # Simulator: an episode not done after this long is a failure and the world resets, s.
    episode_seconds: float = 20.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 1 <= self.max_prefix <= 64:
            raise ValueError(f"max_prefix must be between 1 and 64 actions, got {self.max_prefix}")
        if not 0 <= self.trigger_margin <= 30:
            raise ValueError(f"trigger_margin must be between 0 and 30 ticks, got {self.trigger_margin}")
        if not 0.5 <= self.delay_quantile <= 1.0:
            raise ValueError(f"delay_quantile must be in [0.5, 1], got {self.delay_quantile}")
        if not 1 <= self.delay_window <= 10_000:
            raise ValueError(f"delay_window must be between 1 and 10000 answers, got {self.delay_window}")
        if not 0 < self.initial_latency_ms <= 60_000:
            raise ValueError(f"initial_latency_ms must be in (0, 60000] ms, got {self.initial_latency_ms}")
        if not 0 <= self.limit_tolerance <= 1:
            raise ValueError(f"limit_tolerance must be in [0, 1], got {self.limit_tolerance}")
        if not self.episode_seconds > 0:
            raise ValueError(f"episode_seconds must be > 0 s, got {self.episode_seconds}")


@dataclass
class RunnerStats:
    ticks: int = 0  # ticks stepped
    executed: int = 0  # ticks that sent a planned action
    waiting_ticks: int = 0  # held waiting for a chunk: sync mode, and the first chunk after a (re)start
    starved_ticks: int = 0  # held because the plan ran dry (async modes)
    starvations: int = 0  # times the plan ran dry
    paused_ticks: int = 0
    stale_ticks: int = 0  # observations too old to infer on
    observe_errors: int = 0
    inference_errors: int = 0  # the policy raised (e.g. the server went away)
    rejected_chunks: int = 0  # NaN/inf, wrong shape, beyond the joint limits
    prefix_mismatches: int = 0  # chunks whose prefix rows differed from the prefix (overwritten)
    skipped_ticks: int = 0  # deadlines the loop overran (their planned actions were dropped)
    longest_stall_ticks: int = 0  # longest run of held ticks (waiting or starved)
    max_step: float = 0.0  # largest |planned − previous command| of an arm joint (not grippers), rad
    inference_ms: list[float] = field(default_factory=list)
    delay_ms: list[float] = field(default_factory=list)  # request deadline → answer available
    delay_ticks: list[int] = field(default_factory=list)  # realised delay d of spliced chunks
    lateness_ns: list[int] = field(default_factory=list)
    switch_jumps: list[float] = field(default_factory=list)  # step on the first tick of each new chunk, rad
    steps: list[float] = field(default_factory=list)  # step of every executed tick (arm joints), rad


class PolicyRunner:
    """Drives a robot from a chunk policy. Call `step(tick)` once per control tick (see `run`)."""

    def __init__(
        self,
        robot: BimanualRobot,
        clock: Clock,
        policy: Policy,
        config: PolicyConfig,
        fps: float,
        publisher: Publisher | None = None,
        instruction: str | None = None,
        privileged: Callable[[], dict[str, np.ndarray]] | None = None,
    ) -> None:
        """`privileged`: the simulator's privileged inputs (xr0.boundary.PRIVILEGED), for diagnostic
        policies that ask for them in their spec (`xr0 eval` only); a policy that asks without it is refused."""
        spec = policy.spec
        if spec.privileged and privileged is None:
            raise UserError(
                f"the policy reads simulator-only inputs ({', '.join(spec.privileged)}): it is a diagnostic "
                "for `xr0 eval` in the simulator, not a policy to deploy"
            )
        if abs(spec.fps - fps) > 1e-6:
            raise UserError(
                f"the policy's actions are spaced for {spec.fps:g} Hz but control.fps is {fps:g} Hz"
            )
        if spec.state_dim != STATE_DIM:
            raise UserError(f"the policy works on {spec.state_dim}-wide states; this robot has {STATE_DIM}")
        missing = [c for c in spec.cameras if c not in robot.cameras]
        if missing:
            have = ", ".join(robot.cameras) or "none"
            raise UserError(f"the policy reads camera(s) {', '.join(missing)}, but the robot has {have}")
        mode = config.mode
        max_prefix = min(config.max_prefix, spec.max_prefix, spec.chunk_length - 1)
        if mode == "async" and max_prefix < 1:
            raise UserError(
                "the policy was not trained with an action prefix (max_prefix 0): use --mode async-naive or sync"
            )
        self.robot = robot
        self.clock = clock
        self.policy = policy
        self.spec = spec
        self.config = config
        self.fps = fps
        self.period_ns = round(NS_PER_S / fps)
        self.publisher = publisher or Publisher()
        self.instruction = config.instruction if instruction is None else instruction
        self._privileged = privileged
        self.estimator = DelayEstimator(
            self.period_ns, config.delay_window, config.delay_quantile, config.initial_latency_ms
        )
        self.scheduler = ChunkScheduler(
            mode,
            spec.chunk_length,
            max(1, max_prefix),
            self.estimator,
            config.trigger_margin,
            config.late_chunks,
        )
        self.worker = InferenceWorker(policy, clock, simulated=isinstance(clock, SimClock))
        self.stats = RunnerStats()
        # the latest answered requests, in order (tests and summaries); bounded, so that a long rollout's
        # memory does not grow with every chunk (each holds its chunk: ~5 kB)
        self.switches: deque[Switch] = deque(maxlen=SWITCH_HISTORY)
        self.episode = 0
        self.estopped = False
        self.estop_t_ns: int | None = None  # when the hold was sent
        self._estop = threading.Event()
        self._pause = threading.Event()
        self._was_paused = False
        self._limits: np.ndarray | None = None
        self._last_sent: np.ndarray | None = None
        self._started = False  # a chunk has run since the last (re)start: an empty plan is starvation
        self._stall = 0
        self._observe_failures = 0
        self._error_logged_at, self._problems_held = -1e9, 0

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.worker.start()

    def close(self) -> None:
        self.worker.close()

    def __enter__(self) -> PolicyRunner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def restart(self, episode: int) -> None:
        """Before a new episode (or after the world was reset): forget the plan, drop the answer in flight,
        and wait for the worker to be idle so that no inference overlaps the reset."""
        self.scheduler.reset()
        if not self.worker.wait_idle():
            log.warning("the policy is still answering an old request; its answer will be dropped")
        self.episode = episode
        self._started = False
        self._last_sent = None

    # -- controls (any thread) ----------------------------------------------------------------------------------
    def estop(self) -> None:
        """Hold the arms from the next tick on, for good."""
        self._estop.set()

    def pause(self) -> None:
        self._pause.set()

    def resume(self) -> None:
        self._pause.clear()

    @property
    def paused(self) -> bool:
        return self._pause.is_set()

    # -- one tick -----------------------------------------------------------------------------------------------
    def step(self, tick: Tick) -> StepEvent | None:
        """One control tick. Returns the published event (None if the robot could not be observed)."""
        k = tick.index
        st = self.stats
        st.ticks += 1
        st.skipped_ticks += tick.skipped
        st.lateness_ns.append(tick.lateness_ns)
        if self._estop.is_set():
            return self._estop_tick(tick)
        t0 = time.perf_counter()
        obs, stale = self._observe()
        t1 = time.perf_counter()
        record = self._collect(k)
        if obs is None:
            self._send_hold()
            return None
        paused = self._pause.is_set()
        if paused and not self._was_paused:
            self.scheduler.reset()  # the plan and the answer in flight are stale once the robot stops
            self._started = False
        self._was_paused = paused
        planned = None if paused else self.scheduler.planned(k)
        hold = None
        if planned is not None:
            step = 0.0
            if self._last_sent is not None:
                step = float(np.max(np.abs(planned.action - self._last_sent)[_ARM_JOINTS]))
            st.steps.append(step)
            st.max_step = max(st.max_step, step)
            if record is not None and record.switch_index is not None and self._last_sent is not None:
                st.switch_jumps.append(step)
            cmd = self.robot.send_action(planned.action)
            sent, clamped, rejected = cmd.action, int(cmd.clamped.sum()), cmd.rejected
            st.executed += 1
            self._started = True
            self._stall = 0
        else:
            # sync holds between chunks by design; in async modes an empty plan after a chunk is starvation
            starved = self._started and self.scheduler.mode != "sync"
            hold = "paused" if paused else ("starved" if starved else "waiting")
            sent, clamped, rejected = self._send_hold(), 0, False
            if hold == "starved":
                if self._stall == 0:
                    st.starvations += 1
                st.starved_ticks += 1
            elif hold == "waiting":
                st.waiting_ticks += 1
            else:
                st.paused_ticks += 1
            if hold != "paused":
                self._stall += 1
                st.longest_stall_ticks = max(st.longest_stall_ticks, self._stall)
        self._last_sent = sent
        t2 = time.perf_counter()
        if stale:
            st.stale_ticks += 1
        event = StepEvent(
            tick=k,
            deadline_ns=tick.deadline_ns,
            lateness_ns=tick.lateness_ns,
            episode=self.episode,
            observation=obs,
            leader=None,
            leader_t_ns=None,
            action=sent,
            action_t_ns=self.clock.now_ns(),
            clamped=clamped,
            rejected=rejected,
            timings_ms={"observe": (t1 - t0) * 1e3, "act": (t2 - t1) * 1e3},
            planned=None if planned is None else planned.action,
            chunk_id=None if planned is None else planned.chunk_id,
            chunk_index=None if planned is None else planned.index,
            new_chunk=record,
            hold=hold,
            observation_stale=stale,
        )
        if record is not None and record.actions is not None:
            self.publisher.chunk(record)
        self.publisher.step(event)  # before the request: subscribers see tick ks before its answer exists
        if not paused and not stale and not self.worker.busy and self.scheduler.due(k):
            request = self.scheduler.request(k, tick.deadline_ns, sent)
            self.worker.submit(request, self._policy_observation(obs))
        return event

    def _estop_tick(self, tick: Tick) -> None:
        held = self._send_hold()
        if not self.estopped:
            log.warning("e-stop: the arms hold their last command; the runner stops")
            self.estop_t_ns = self.clock.now_ns()
        self.estopped = True
        self._last_sent = held
        return None

    def _send_hold(self) -> np.ndarray:
        return self.robot.hold()

    def _observe(self) -> tuple[Observation | None, bool]:
        """The latest observation, and whether it is too old to infer on."""
        try:
            obs = self.robot.observe(max_age_ms=float("inf"))
        except DeviceError as e:
            self.stats.observe_errors += 1
            self._observe_failures += 1
            log.warning("observation failed (%s); holding", e)
            if self._observe_failures > self.fps:
                raise DeviceError(
                    f"the robot could not be observed for {self._observe_failures} ticks: {e}"
                ) from e
            return None, True
        self._observe_failures = 0
        bound_ns = self.robot.safety_config.max_observation_age_ms * 1e6
        oldest = min([obs.state_t_ns, *(obs.image_t_ns[c] for c in self.spec.cameras)])
        return obs, self.clock.now_ns() - oldest > bound_ns

    def _policy_observation(self, obs: Observation) -> PolicyObservation:
        return PolicyObservation(
            images={c: obs.images[c] for c in self.spec.cameras},
            state=obs.state.copy(),
            instruction=self.instruction,
            t_ns=obs.state_t_ns,
            privileged=self._privileged_inputs(),
        )

    def _privileged_inputs(self) -> dict[str, np.ndarray]:
        if not self.spec.privileged:
            return {}
        values = self._privileged()
        return {name: np.asarray(values[name], dtype=np.float64) for name in self.spec.privileged}

    # -- answers ------------------------------------------------------------------------------------------------
    def _collect(self, k: int) -> ChunkRecord | None:
        done = self.worker.poll()
        if done is None:
            return None
        st = self.stats
        req = done.request
        if done.error is None:  # a call that failed fast (server down) says nothing about the delay
            st.inference_ms.append(done.inference_ms)
            delay_ms = (done.ready_ns - req.deadline_ns) / 1e6
            st.delay_ms.append(delay_ms)
            self.estimator.record(delay_ms)
        problem = done.error or self._check(done)
        if problem is not None:
            if done.error:
                st.inference_errors += 1
            else:
                st.rejected_chunks += 1
            self.scheduler.fail(req)
            self._log_problem(f"chunk {req.id} not used: {problem}")
            actions = None if done.error else np.asarray(done.chunk.actions, dtype=np.float64)
            self.publisher.chunk(  # for the viewers: what was refused, and why (the arms never saw it)
                ChunkRecord(
                    chunk_id=req.id,
                    request_tick=req.tick,
                    arrival_tick=k,
                    outcome="error" if done.error else "rejected",
                    switch_index=None,
                    prefix_length=len(req.prefix),
                    actions=actions if actions is not None and actions.ndim == 2 else None,
                    inference_ms=done.inference_ms,
                    problem=problem,
                )
            )
            return None
        switch = self.scheduler.receive(req, done.chunk.actions, k)
        self.switches.append(switch)
        if switch.prefix_error > 1e-3:
            st.prefix_mismatches += 1
        if switch.outcome == "stale_epoch":
            return None
        if switch.spliced:
            st.delay_ticks.append(switch.delay)
        return ChunkRecord(
            chunk_id=req.id,
            request_tick=req.tick,
            arrival_tick=k,
            outcome=switch.outcome,
            switch_index=switch.index,
            prefix_length=len(req.prefix),
            actions=switch.actions,
            inference_ms=done.inference_ms,
        )

    def _check(self, done: Completed) -> str | None:
        """Why a chunk must not be executed, or None."""
        a = np.asarray(done.chunk.actions)
        want = (self.spec.chunk_length, STATE_DIM)
        if a.shape != want:
            return f"its shape is {a.shape}, the policy's spec says {want}"
        if not np.all(np.isfinite(a)):
            return "it contains NaN or inf"
        if self._limits is None:
            self._limits = self.robot.limits()
        tol = self.config.limit_tolerance
        beyond = (a < self._limits[:, 0] - tol) | (a > self._limits[:, 1] + tol)
        if beyond.any():
            row, col = map(int, np.argwhere(beyond)[0])
            return (
                f"action {row} of the chunk sets {JOINT_NAMES[col]} to {a[row, col]:.3f}, beyond its limit "
                f"[{self._limits[col, 0]:.3f}, {self._limits[col, 1]:.3f}] by more than {tol}"
            )
        return None

    def _log_problem(self, message: str) -> None:
        """A warning at most every 5 s; the ones held back in between are counted in the next."""
        now = time.monotonic()
        if now - self._error_logged_at > 5.0:
            held = self._problems_held
            log.warning(message + (f" ({held} more like it in the last 5 s not shown)" if held else ""))
            self._error_logged_at, self._problems_held = now, 0
        else:
            self._problems_held += 1
            log.debug(message)
