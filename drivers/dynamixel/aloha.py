"""The four chains of an ALOHA as `DynamixelArm`s: real ports, or bus emulators (`aloha-emulated`).

`build_aloha_arms` turns `robot.arms` into followers and leaders that share one `ReadGroup` (all chains
are read in parallel, each on its own port). A calibration file is required for real arms; an emulated
arm uses its file if one was made with `xr0 calibrate --robot aloha-emulated`, and otherwise the
emulator's own assembly (`truth_calibration`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from drivers.clock import Clock
from drivers.dynamixel.arm import DynamixelArm
from drivers.dynamixel.calibration import Calibration
from drivers.dynamixel.config import ArmConfig
from drivers.dynamixel.emulated import emulate_arm, truth_calibration
from drivers.dynamixel.emulator import BusEmulator
from drivers.dynamixel.group import ReadGroup
from drivers.errors import DeviceError

log = logging.getLogger(__name__)

# A pty served by a Python thread answers later than a U2D2 with a 1 ms latency timer when the machine is
# busy (the thread must be scheduled); emulated chains wait longer for each status packet. The per-tick
# read budget is unchanged, so a late answer costs a held-over sample (counted), never a late tick.
EMULATED_LATENCY_MS = 3.0
# Connecting (pings, register reads and writes) is not time-critical: emulated chains wait up to this much
# longer for each answer, so a burst of load on a shared machine does not fail a connect.
EMULATED_CONFIG_WAIT_MS = 100.0

ARMS: dict[str, tuple[str, str]] = {
    "left_follower": ("left", "follower"),
    "right_follower": ("right", "follower"),
    "left_leader": ("left", "leader"),
    "right_leader": ("right", "leader"),
}


@dataclass
class AlohaArms:
    followers: dict[str, DynamixelArm] = field(default_factory=dict)
    leaders: dict[str, DynamixelArm] = field(default_factory=dict)
    emulators: dict[str, BusEmulator] = field(default_factory=dict)
    group: ReadGroup = field(default_factory=ReadGroup)

    def close(self) -> None:
        self.group.close()
        for emulator in self.emulators.values():
            emulator.stop()


def load_calibration(name: str, config: ArmConfig, path: Path) -> Calibration:
    """The calibration file of arm `name`, checked against its config."""
    if not path.is_file():
        raise DeviceError(
            f"arm {name} has no calibration: {path} does not exist; run `xr0 calibrate --arm {name}` "
            f"(or set robot.arms.{name}.calibration)"
        )
    calibration = Calibration.load(path)
    calibration.check_for(name, tuple(config.motor_ids), tuple(config.motor_models), str(path))
    return calibration


def build_aloha_arms(
    arms: dict[str, ArmConfig],
    calibration_files: dict[str, Path],
    clock: Clock,
    emulated: bool = False,
    leader_motion: str = "scripted",
) -> AlohaArms:
    """Followers (both required) and leaders (both or none), not yet connected."""
    followers = [n for n in ("left_follower", "right_follower") if n in arms]
    leaders = [n for n in ("left_leader", "right_leader") if n in arms]
    if len(followers) != 2:
        raise DeviceError("robot.arms must configure left_follower and right_follower (see config.yaml)")
    if len(leaders) == 1:
        raise DeviceError(f"robot.arms configures only {leaders[0]}: give both leaders or none")
    out = AlohaArms()
    try:
        for name in followers + leaders:
            side, role = ARMS[name]
            config = arms[name]
            if not config.motor_ids:
                raise DeviceError(f"robot.arms.{name}.motor_ids is empty: list the arm's servo ids")
            path = calibration_files[name]
            if emulated:
                emulator = emulate_arm(name, role, config, motion=leader_motion)
                out.emulators[name] = emulator
                config = replace(
                    config,
                    port=emulator.port,
                    latency_timer_ms=max(config.latency_timer_ms, EMULATED_LATENCY_MS),
                )
                if path.is_file():
                    calibration = load_calibration(name, config, path)
                else:
                    calibration = truth_calibration(name, role, config)
                    log.info(
                        "%s: no %s, using the emulated arm's own assembly as its calibration", name, path
                    )
            else:
                calibration = load_calibration(name, config, path)
            arm = DynamixelArm(name, side, role, config, calibration, clock=clock, group=out.group)
            arm.emulator = out.emulators.get(name)  # aloha-emulated: for fault injection and inspection
            if emulated:
                arm.bus.config_wait_ms = EMULATED_CONFIG_WAIT_MS
            (out.followers if role == "follower" else out.leaders)[side] = arm
    except BaseException:
        out.close()
        raise
    return out
