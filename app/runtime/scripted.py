"""Chunk policies the app ships for tests, benchmarks and set-up checks (no model needed).

`ScriptedChunkPolicy` wraps the simulator's scripted teleoperator as a chunk policy: asked at tick ks, it
returns the demonstration's next T joint targets from where the task stands at ks. It behaves like a good
learned policy in the ways that matter to the runner:

- **Progress, not wall time.** It follows the task's phase — the script time of the action the robot
  executed at ks — so when the robot holds (sync mode waiting, starvation) the task waits too and takes
  longer, as it would with a real policy. It learns the phase the way a policy learns it from its
  observations, except exactly: it subscribes to the runner's step events (chunk id and row executed).
- **Imperfect chunks.** Each chunk is the script shifted by a random phase error (`phase_noise_s`), so two
  chunks from different observations disagree where they overlap, like two samples of a real policy.
  Switching between them without a prefix (async-naive) jumps; with a prefix the chunk starts on the
  committed actions and blends into its own plan over `blend_ticks`, as XR0's prefix-trained DiT does.
- **Latency.** Each call takes an injected latency (fixed, or uniform in a range). Against the wall
  clock it sleeps; under a simulated clock it only reports it in `timing_ms["total"]`, and the
  inference worker makes the answer arrive that much simulated time later.

`HoldPolicy` answers "stay where you are" — safe on any robot, for checking a set-up end to end.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from app.runtime.events import EpisodeEvent, StepEvent
from drivers.joints import STATE_DIM
from drivers.sim.scripted import ScriptedTeleoperator
from xr0.boundary import Chunk, PolicyObservation, PolicySpec


@dataclass(frozen=True)
class ScriptedPolicyConfig:
    # Actions per chunk (XR0: 30 = 1 s at 30 Hz).
    chunk_length: int = 30
    # Largest prefix it accepts (XR0's async post-training: 6).
    max_prefix: int = 6
    # Injected inference latency, ms, drawn uniformly from [low, high] per call ([80, 80]: always 80 ms).
    latency_ms: tuple[float, float] = (80.0, 80.0)
    # Std of each chunk's error in where it thinks the task stands, s (0: chunks agree exactly).
    phase_noise_s: float = 0.1
    # Ticks over which a chunk blends from the end of its prefix into its own plan.
    blend_ticks: int = 6
    # Seed of the latency draws and phase errors (runs are reproducible in lockstep).
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.chunk_length <= 1000:
            raise ValueError(f"scripted.chunk_length must be in [2, 1000], got {self.chunk_length}")
        if not 0 <= self.max_prefix < self.chunk_length:
            raise ValueError(
                f"scripted.max_prefix must be in [0, chunk_length-1], got {self.max_prefix} (chunk_length "
                f"{self.chunk_length})"
            )
        lo, hi = self.latency_ms
        if not 0 <= lo <= hi <= 60_000:
            raise ValueError(f"scripted.latency_ms must be [low, high] with 0 <= low <= high, got {lo}, {hi}")
        if not 0 <= self.phase_noise_s <= 2:
            raise ValueError(f"scripted.phase_noise_s must be in [0, 2] s, got {self.phase_noise_s}")
        if not 0 <= self.blend_ticks <= 100:
            raise ValueError(f"scripted.blend_ticks must be in [0, 100], got {self.blend_ticks}")


class ScriptedChunkPolicy:
    """The scripted demonstrator as a chunk policy (simulator only). Also a step-event subscriber."""

    def __init__(
        self,
        teleop: ScriptedTeleoperator,
        config: ScriptedPolicyConfig,
        fps: float = 30.0,
        sleep: bool = False,
    ) -> None:
        self.teleop = teleop
        self.config = config
        self.sleep = sleep
        self.spec = PolicySpec(
            cameras=(), chunk_length=config.chunk_length, max_prefix=config.max_prefix, fps=fps
        )
        self.dt = 1.0 / fps
        self._half_period_ns = round(5e8 / fps)
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(config.seed)
        self._emitted: dict[bytes, float] = {}  # last row of an answer -> nominal phase of its row 0
        self._chunk_phase: dict[int, float] = {}  # runner's chunk id -> nominal phase of its row 0
        self._book: deque[tuple[int, float]] = deque(maxlen=4096)  # (tick deadline, phase of row 0 there)
        self._last_phase: float | None = None  # phase of the last executed action
        self.calls = 0

    # -- subscriber: where the task stands ---------------------------------------------------------------
    def on_episode(self, event: EpisodeEvent) -> None:
        if event.kind == "start":
            with self._lock:
                self._emitted.clear()
                self._chunk_phase.clear()
                self._book.clear()
                self._last_phase = None

    def on_step(self, event: StepEvent) -> None:
        with self._lock:
            rec = event.new_chunk
            if rec is not None and rec.actions is not None:
                phase0 = self._emitted.pop(rec.actions[-1].tobytes(), None)
                if phase0 is not None:
                    self._chunk_phase[rec.chunk_id] = phase0
            phase = None
            if event.chunk_id is not None and event.chunk_id in self._chunk_phase:
                phase = self._chunk_phase[event.chunk_id] + event.chunk_index * self.dt
                self._last_phase = phase
            elif self._last_phase is not None:
                phase = self._last_phase + self.dt  # holding: the next action is the one after the last
            self._book.append((event.deadline_ns, 0.0 if phase is None else phase))

    def close(self) -> None:
        pass

    def _phase_at(self, t_ns: int) -> float:
        for deadline, phase in reversed(self._book):
            if deadline <= t_ns + self._half_period_ns:
                return phase
        return 0.0

    # -- policy ------------------------------------------------------------------------------------------
    def infer(self, observation: PolicyObservation, prefix: np.ndarray) -> Chunk:
        cfg = self.config
        with self._lock:
            phase0 = self._phase_at(observation.t_ns)
            error = float(self._rng.normal(0.0, cfg.phase_noise_s)) if cfg.phase_noise_s > 0 else 0.0
            lo, hi = cfg.latency_ms
            latency_ms = float(self._rng.uniform(lo, hi)) if hi > lo else float(lo)
            self.calls += 1
        t = cfg.chunk_length
        own = np.stack([self.teleop.action(phase0 + error + i * self.dt) for i in range(t)])
        actions = own.copy()
        p = len(prefix)
        if p:
            actions[:p] = prefix
            offset = prefix[-1] - own[p - 1]
            b = cfg.blend_ticks
            for j in range(min(b, t - p)):
                actions[p + j] += offset * (1.0 - (j + 1) / (b + 1))
        with self._lock:
            if len(self._emitted) > 256:
                self._emitted.clear()
            self._emitted[actions[-1].tobytes()] = phase0
        if self.sleep:
            time.sleep(latency_ms / 1e3)
        return Chunk(actions, timing_ms={"total": latency_ms, "injected_latency": latency_ms})


class HoldPolicy:
    """Every chunk says: stay where you are (the prefix, then its last row; or the observed state)."""

    def __init__(self, chunk_length: int = 30, max_prefix: int = 6, fps: float = 30.0) -> None:
        self.spec = PolicySpec(cameras=(), chunk_length=chunk_length, max_prefix=max_prefix, fps=fps)

    def infer(self, observation: PolicyObservation, prefix: np.ndarray) -> Chunk:
        t0 = time.perf_counter()
        last = prefix[-1] if len(prefix) else np.asarray(observation.state, dtype=np.float64)
        actions = np.repeat(last.reshape(1, STATE_DIM), self.spec.chunk_length, axis=0)
        actions[: len(prefix)] = prefix
        return Chunk(actions, timing_ms={"total": (time.perf_counter() - t0) * 1e3})


class RandomPolicy:
    """The baseline a learned policy must beat: each chunk is a random walk from where the arms are
    (joints ±`step_rad` per tick, grippers a random opening), inside the robot's joint limits."""

    def __init__(
        self,
        limits: np.ndarray,
        chunk_length: int = 30,
        fps: float = 30.0,
        seed: int = 0,
        step_rad: float = 0.03,
    ) -> None:
        self.spec = PolicySpec(cameras=(), chunk_length=chunk_length, max_prefix=6, fps=fps)
        self.limits = np.asarray(limits, dtype=np.float64)
        self.step_rad = step_rad
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def infer(self, observation: PolicyObservation, prefix: np.ndarray) -> Chunk:
        t0 = time.perf_counter()
        start = prefix[-1] if len(prefix) else np.asarray(observation.state, dtype=np.float64)
        n = self.spec.chunk_length - len(prefix)
        with self._lock:
            walk = start + np.cumsum(self._rng.normal(0.0, self.step_rad, (n, STATE_DIM)), axis=0)
            walk[:, [6, 13]] = self._rng.uniform(0.0, 1.0, 2)
        walk = np.clip(walk, self.limits[:, 0], self.limits[:, 1])
        actions = np.concatenate([np.asarray(prefix, dtype=np.float64).reshape(-1, STATE_DIM), walk])
        return Chunk(actions, timing_ms={"total": (time.perf_counter() - t0) * 1e3})
