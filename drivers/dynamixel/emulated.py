"""Emulated ALOHA arms: bus emulators dressed as a ViperX (follower) or WidowX (leader) chain.

Each emulated arm has a hidden, seeded "assembly" — where each joint's zero sits in ticks, which way
each motor turns, the gripper's closed and open readings, how its shadow motors are mounted — so
calibration has something real to find: `xr0 calibrate --robot aloha-emulated` recovers it, and
`truth_calibration` gives it directly when no calibration file was made. The servos start as from the
factory (return delay 500 µs, no Secondary ID, normal direction), so connecting exercises the whole
configuration path.

Motion source of the emulated leaders (`motion="scripted"`): a smooth, deterministic wave of every joint
around the rest pose (periods of 4–9 s, gripper opening and closing), starting exactly at the rest pose,
so `xr0 teleop --robot aloha-emulated` shows the followers tracking something. With `motion="still"`
they stay where a hand (`BusEmulator.move_by_hand`, the scripted operator below) puts them.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass

import numpy as np

from drivers.dynamixel.calibration import Calibration, Step
from drivers.dynamixel.config import ArmConfig
from drivers.dynamixel.emulator import BusEmulator
from drivers.dynamixel.tables import RAD_PER_TICK, TICKS_PER_REV
from drivers.joints import ARM_DOF

# Joint ranges of the emulated arms (rad), close to the ViperX 300's.
TRUE_LOWER = np.array([-2.8, -1.85, -1.76, -2.8, -1.87, -2.8])
TRUE_UPPER = np.array([2.8, 1.26, 1.6, 2.8, 2.23, 2.8])
REST_POSE = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5])  # the simulator's start pose, gripper half open
_WAVE_AMPLITUDE = np.array([0.6, 0.35, 0.35, 0.6, 0.5, 0.8, 0.45])
_WAVE_PERIOD_S = np.array([9.0, 7.0, 6.0, 5.0, 4.0, 8.0, 4.0])


@dataclass(frozen=True)
class ArmTruth:
    """How an emulated arm is assembled: raw master ticks = offset + sign × angle / rad-per-tick."""

    offset: np.ndarray  # (6,) ticks at 0 rad
    sign: np.ndarray  # (6,) ±1
    gripper_closed: float  # ticks
    gripper_open: float
    shadow_mounts: dict[int, float]  # shadow id -> mount: shadow raw = mount − master raw

    def ticks(self, position: np.ndarray) -> np.ndarray:
        """(7,) rad ×6 + gripper fraction → (7,) raw master ticks."""
        position = np.asarray(position, dtype=np.float64)
        out = np.empty(ARM_DOF)
        out[:6] = self.offset + self.sign * position[:6] / RAD_PER_TICK
        out[6] = self.gripper_closed + position[6] * (self.gripper_open - self.gripper_closed)
        return out


def arm_truth(name: str, config: ArmConfig) -> ArmTruth:
    """The seeded assembly of the emulated arm `name` (the same in every process)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    closed = float(1400 + rng.integers(-100, 100))
    return ArmTruth(
        offset=TICKS_PER_REV / 2 + rng.integers(-150, 150, size=6).astype(np.float64),
        sign=rng.choice([-1.0, 1.0], size=6),
        gripper_closed=closed,
        gripper_open=closed + rng.choice([-1, 1]) * (900.0 + rng.integers(0, 200)),
        shadow_mounts={s: float(TICKS_PER_REV + rng.integers(-100, 100)) for s in config.shadows},
    )


def truth_calibration(name: str, role: str, config: ArmConfig) -> Calibration:
    """The calibration a perfect `xr0 calibrate` would find for an emulated arm."""
    t = arm_truth(name, config)
    return Calibration(
        arm=name,
        role=role,
        motor_ids=tuple(config.motor_ids),
        motor_models=tuple(config.motor_models),
        offset=(*(float(v) for v in t.offset), t.gripper_closed),
        sign=(*(int(s) for s in t.sign), 1 if t.gripper_open > t.gripper_closed else -1),
        lower=tuple(float(v) for v in TRUE_LOWER),
        upper=tuple(float(v) for v in TRUE_UPPER),
        gripper_open=t.gripper_open,
        created="emulated",
    )


def leader_wave(t: float) -> np.ndarray:
    """(7,) the scripted leader pose at `t` seconds: the rest pose plus a slow wave of every joint."""
    phase = 2 * math.pi * t / _WAVE_PERIOD_S
    return REST_POSE + _WAVE_AMPLITUDE * np.sin(phase) * min(1.0, t / 2.0)


def emulate_arm(
    name: str, role: str, config: ArmConfig, motion: str = "scripted", pose: np.ndarray | None = None
) -> BusEmulator:
    """Start a bus emulator for arm `name`; connect the driver to `emulator.port`."""
    truth = arm_truth(name, config)
    masters = config.motor_ids[:ARM_DOF]
    start = truth.ticks(REST_POSE if pose is None else pose)
    emulator = BusEmulator(
        zip(config.motor_ids, config.motor_models, strict=True),
        baudrate=config.baudrate,
        shadows=config.shadows,
        initial_ticks=dict(zip(masters, start, strict=True)),
        shadow_mounts=truth.shadow_mounts,
        name=name,
    )
    if role == "leader" and motion == "scripted":
        emulator.hand = lambda t: dict(zip(masters, truth.ticks(leader_wave(t)), strict=True))
    return emulator.start()


class EmulatedOperator:
    """Plays the human during calibration of an emulated arm: does what each step asks, by hand."""

    def __init__(self, emulator: BusEmulator, name: str, config: ArmConfig, hold_s: float = 0.06) -> None:
        self.emulator = emulator
        self.truth = arm_truth(name, config)
        self.masters = config.motor_ids[:ARM_DOF]
        self.hold_s = hold_s  # how long each pose is held (the calibrator samples at 50 Hz)
        self.steps: list[str] = []

    def pose(self, position: np.ndarray) -> None:
        self.emulator.move_by_hand(dict(zip(self.masters, self.truth.ticks(position), strict=True)))

    def __call__(self, step: Step) -> None:
        self.steps.append(step.key)
        zero = np.array([0.0] * 6 + [0.5])
        if step.key == "zero":
            self.pose(zero)
        elif step.key == "positive":
            self.pose(zero + np.array([0.5] * 6 + [0.0]))
        elif step.key == "range":
            for j in range(ARM_DOF):
                for end in (TRUE_LOWER[j], TRUE_UPPER[j]) if j < 6 else (0.0, 1.0):
                    pose = zero.copy()
                    pose[j] = end
                    self.pose(pose)
                    time.sleep(self.hold_s)
            self.pose(zero)
        elif step.key == "gripper_closed":
            self.pose(np.array([0.0] * 6 + [0.0]))
