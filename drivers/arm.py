"""The arm contract: one serial chain (or simulated arm) of 6 joints plus a gripper.

Positions are radians, the gripper a fraction (0 closed … 1 open); the Dynamixel driver maps raw ticks
through its calibration, the simulator through its finger geometry. Leaders are read, followers are read
and written. Implementations: `drivers.sim.parts.SimArm`, the scripted leader in `drivers.sim.scripted`,
and `drivers.dynamixel.arm.DynamixelArm` (docs/hardware.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

Role = Literal["leader", "follower"]


@dataclass(frozen=True)
class JointSample:
    position: np.ndarray  # (7,) rad ×6 + gripper fraction
    velocity: np.ndarray | None  # (7,) rad/s (gripper: fraction/s); None where the arm cannot measure it
    effort: np.ndarray | None  # (7,) device units (Dynamixel: mA; sim: actuator force); None if unknown
    t_ns: int  # host capture time (Clock.now_ns) of the read


class Arm(Protocol):
    name: str  # e.g. "left_follower"
    side: str  # "left" | "right"
    role: Role

    def connect(self) -> None: ...

    def disconnect(self, torque_off: bool = False) -> None: ...

    def limits(self) -> np.ndarray:
        """(7, 2) lower/upper joint limits (rad; gripper 0..1); known while disconnected."""
        ...

    def read(self) -> JointSample: ...

    def write(self, target: np.ndarray) -> None:
        """Send (7,) targets that already passed the safety layer."""
        ...
