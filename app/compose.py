"""Composition: turn an `AppConfig` into concrete, connected-on-demand objects (clock, robot, world).

This is the one place that knows which class implements which config choice (an explicit table, not
registration by import side effect).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from app.config import AppConfig
from drivers.clock import Clock, SimClock, WallClock
from drivers.errors import DeviceError
from drivers.joints import SIDES
from drivers.robot import BimanualRobot
from drivers.sim.aloha import AlohaSim
from drivers.sim.parts import ScriptedLeaderArm, SimArm, SimCamera
from drivers.sim.scripted import ScriptedTeleoperator


@dataclass
class Rig:
    """What a session runs on: the clock, the robot, and — in simulation — the world and its teleoperator."""

    clock: Clock
    robot: BimanualRobot
    sim: AlohaSim | None = None
    teleop: ScriptedTeleoperator | None = None

    def close(self) -> None:
        if self.sim is not None:
            self.sim.close()


def build_clock(config: AppConfig) -> Clock:
    if config.robot.type == "sim" and config.control.sim_timing == "lockstep":
        return SimClock()
    return WallClock()


def build_sim_rig(config: AppConfig, camera_names: list[str] | None = None) -> Rig:
    """The simulated ALOHA: followers and cameras in MuJoCo, the scripted teleoperator as leaders."""
    os.environ.setdefault("MUJOCO_GL", "egl")  # must be set before mujoco creates a GL context
    clock = build_clock(config)
    sim = AlohaSim(config.robot.sim, clock)
    teleop = ScriptedTeleoperator(sim, config.robot.scripted)
    names = list(config.cameras) if camera_names is None else camera_names
    cameras = {}
    for name in names:
        cam = config.cameras.get(name)
        if cam is None:
            raise DeviceError(
                f"camera {name!r} is not in the config's cameras section ({', '.join(config.cameras)})"
            )
        cameras[name] = SimCamera(sim, name, cam.width, cam.height, cam.fps)
    robot = BimanualRobot(
        followers={s: SimArm(sim, s) for s in SIDES},
        leaders={s: ScriptedLeaderArm(teleop, s) for s in SIDES},
        cameras=cameras,
        safety=config.robot.safety,
        clock=clock,
    )
    return Rig(clock=clock, robot=robot, sim=sim, teleop=teleop)


def build_rig(config: AppConfig, camera_names: list[str] | None = None) -> Rig:
    builders = {"sim": build_sim_rig}
    builder = builders.get(config.robot.type)
    if builder is None:
        raise DeviceError(
            f"robot.type {config.robot.type!r}: the Dynamixel arm driver is not part of this version yet; "
            "use --robot sim"
        )
    return builder(config, camera_names)
