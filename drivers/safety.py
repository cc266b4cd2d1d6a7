"""The safety layer every command passes through before it reaches an arm (DESIGN.md §7).

It lives in the driver layer so that nothing above it — teleop, replay, a policy — can bypass it. Each
tick it rejects non-finite targets (the arm holds its last command), clamps each joint to its limits, and
limits how far each joint may move in one tick. Every clamp and rejection is counted; `counters()` is what
the status line, Rerun and the episode metadata show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from drivers.joints import GRIPPER_INDICES, JOINT_NAMES, STATE_DIM


@dataclass(frozen=True)
class SafetyConfig:
    # Largest change of an arm joint target per control tick, rad (0.1 rad/tick = 3 rad/s at 30 Hz).
    max_joint_delta_per_tick: float = 0.1
    # Largest change of a gripper target per control tick, as a fraction of its range (0..1).
    max_gripper_delta_per_tick: float = 0.25
    # Joint limits in rad that override the robot's own, by joint name, e.g. {left_waist: [-1.5, 1.5]}.
    joint_limits: dict[str, tuple[float, float]] = field(default_factory=dict)
    # A camera or joint sample older than this stops the policy (ms).
    max_observation_age_ms: float = 100.0
    # Capture times within one observation further apart than this (ms) are flagged and counted as skewed.
    max_observation_skew_ms: float = 50.0
    # What the arms do when the app exits or e-stops: keep holding their position, or go limp.
    on_exit: Literal["hold", "torque_off"] = "hold"

    def __post_init__(self) -> None:
        if not self.max_joint_delta_per_tick > 0:
            raise ValueError("max_joint_delta_per_tick must be > 0 rad")
        if not 0 < self.max_gripper_delta_per_tick <= 1:
            raise ValueError("max_gripper_delta_per_tick must be in (0, 1]")
        for name, (lo, hi) in self.joint_limits.items():
            if name not in JOINT_NAMES:
                raise ValueError(f"joint_limits.{name}: unknown joint; joints are {', '.join(JOINT_NAMES)}")
            if not lo < hi:
                raise ValueError(f"joint_limits.{name}: lower limit {lo} must be below upper limit {hi}")


@dataclass
class SafetyCounters:
    ticks: int = 0
    rejected_nonfinite: int = 0  # whole commands refused because of NaN/inf (arm held its last command)
    clamped_limit: int = 0  # joint values moved inside their limits
    clamped_delta: int = 0  # joint values slowed to the per-tick step limit

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class SafeCommand:
    action: np.ndarray  # (14,) what is really sent
    rejected: bool  # the request was refused and `action` repeats the last command
    clamped: np.ndarray  # (14,) bool: which joints were changed by a limit or step clamp


class SafetyLayer:
    """Turns a requested 14-wide target into the command that is safe to send this tick."""

    def __init__(self, config: SafetyConfig, limits: np.ndarray, initial: np.ndarray) -> None:
        """`limits`: (14, 2) the robot's own joint limits; `initial`: (14,) the measured start position."""
        limits = np.array(limits, dtype=np.float64)
        if limits.shape != (STATE_DIM, 2):
            raise ValueError(f"joint limits must have shape ({STATE_DIM}, 2), got {limits.shape}")
        for name, (lo, hi) in config.joint_limits.items():
            i = JOINT_NAMES.index(name)
            limits[i] = (max(lo, limits[i, 0]), min(hi, limits[i, 1]))
        self.config = config
        self.limits = limits
        self.max_delta = np.full(STATE_DIM, config.max_joint_delta_per_tick)
        self.max_delta[list(GRIPPER_INDICES)] = config.max_gripper_delta_per_tick
        self.last = np.clip(np.asarray(initial, dtype=np.float64), limits[:, 0], limits[:, 1])
        self.counters = SafetyCounters()

    def filter(self, target: np.ndarray) -> SafeCommand:
        target = np.asarray(target, dtype=np.float64)
        if target.shape != (STATE_DIM,):
            raise ValueError(f"an action must have shape ({STATE_DIM},), got {target.shape}")
        self.counters.ticks += 1
        if not np.all(np.isfinite(target)):
            self.counters.rejected_nonfinite += 1
            return SafeCommand(self.last.copy(), rejected=True, clamped=np.zeros(STATE_DIM, dtype=bool))
        in_limits = np.clip(target, self.limits[:, 0], self.limits[:, 1])
        limit_hit = in_limits != target
        stepped = np.clip(in_limits, self.last - self.max_delta, self.last + self.max_delta)
        step_hit = stepped != in_limits
        self.counters.clamped_limit += int(limit_hit.sum())
        self.counters.clamped_delta += int(step_hit.sum())
        self.last = stepped
        return SafeCommand(stepped.copy(), rejected=False, clamped=limit_hit | step_hit)

    def hold(self) -> np.ndarray:
        """The command that keeps the arms where they were last sent."""
        return self.last.copy()
