"""The arm contract: one serial chain (or simulated arm) of 6 joints plus a gripper.

Positions are radians, the gripper a fraction (0 closed … 1 open); the Dynamixel driver maps raw ticks
through its calibration, the simulator through its finger geometry. Leaders are read, followers are read
and written. Implementations: `drivers.sim.parts.SimArm`, the scripted leader in `drivers.sim.scripted`,
and the Dynamixel arms (their own issue).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class ArmConfig:
    """One Dynamixel chain: where it is plugged in, which servos it must find, and its calibration."""

    # Serial device of the U2D2/FTDI adapter; prefer a udev symlink such as /dev/ttyDXL_left_follower.
    port: str = ""
    # Bus speed in baud; the ALOHA arms run at 4 Mbps (4000000). Must match the servos' EEPROM setting.
    baudrate: int = 4_000_000
    # Servo ids on this chain, in joint order (waist … wrist_rotate, gripper; shadow motors after).
    motor_ids: tuple[int, ...] = ()
    # Servo model per id, same order (e.g. xm430-w350, xm540-w270, xl430-w250, xc430-w150).
    motor_models: tuple[str, ...] = ()
    # Shadow motors that follow a master joint: {shadow_id: master_id} (ViperX shoulder and elbow).
    shadows: dict[int, int] = field(default_factory=dict)
    # Calibration file made by `xr0 calibrate` (offsets, signs, gripper range) for exactly this arm.
    calibration: str = ""
    # Gripper current limit in mA (followers run the gripper in current-based position mode).
    gripper_current_limit_ma: float = 300.0

    def __post_init__(self) -> None:
        if len(self.motor_ids) != len(self.motor_models):
            raise ValueError(
                f"motor_ids has {len(self.motor_ids)} entries but motor_models has {len(self.motor_models)}; "
                "give one model per id"
            )
