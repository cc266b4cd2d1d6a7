"""Composition: turn an `AppConfig` into concrete, connected-on-demand objects (clock, robot, world).

This is the one place that knows which class implements which config choice (an explicit table, not
registration by import side effect).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from app.compose.config import AppConfig
from app.runtime.rig import Rig
from drivers.camera import Camera, CameraConfig
from drivers.clock import Clock, SimClock, WallClock
from drivers.errors import DeviceError
from drivers.joints import SIDES
from drivers.robot import BimanualRobot
from drivers.sim.aloha import AlohaSim
from drivers.sim.parts import ScriptedLeaderArm, SimArm, SimCamera
from drivers.sim.scripted import ScriptedTeleoperator


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


def calibration_file(config: AppConfig, arm: str) -> Path:
    """Where arm `arm`'s calibration lives. Emulated arms keep theirs in an `emulated/` folder beside the
    real ones, so rehearsing on the emulator never overwrites a real arm's calibration."""
    path = config.resolve(config.robot.arms[arm].calibration or f"calibration/{arm}.json")
    return path.parent / "emulated" / path.name if config.robot.type == "aloha-emulated" else path


def build_aloha_rig(config: AppConfig, camera_names: list[str] | None = None) -> Rig:
    """The Dynamixel ALOHA: four chains on their ports (aloha) or on bus emulators (aloha-emulated).

    Cameras: on hardware the configured RealSense/OpenCV cameras; emulated, every configured camera is
    rendered by the simulator showing the emulated followers' measured pose (drivers/dynamixel/twin.py)."""
    from drivers.dynamixel.aloha import build_aloha_arms

    emulated = config.robot.type == "aloha-emulated"
    clock = WallClock()
    names = list(config.cameras) if camera_names is None else camera_names
    unknown = [n for n in names if n not in config.cameras]
    if unknown:
        raise DeviceError(
            f"camera {unknown[0]!r} is not in the config's cameras section ({', '.join(config.cameras)})"
        )
    files = {name: calibration_file(config, name) for name in config.robot.arms}
    arms = build_aloha_arms(config.robot.arms, files, clock, emulated=emulated)
    closers: list[Callable[[], None]] = [arms.close]
    try:
        cameras: dict = {}
        if emulated and names:
            os.environ.setdefault("MUJOCO_GL", "egl")
            from drivers.dynamixel.twin import ArmTwin, TwinCamera

            twin = ArmTwin(config.robot.sim, clock, arms.followers)
            closers.append(twin.close)
            for n in names:
                cam = config.cameras[n]
                cameras[n] = TwinCamera(twin, n, cam.width, cam.height, cam.fps)
        elif names:
            cameras = {n: build_camera(n, config.cameras[n], clock) for n in names}
        robot = BimanualRobot(
            followers=arms.followers,
            leaders=arms.leaders or None,
            cameras=cameras,
            safety=config.robot.safety,
            clock=clock,
        )
    except BaseException:
        for close in reversed(closers):
            close()
        raise
    return Rig(clock=clock, robot=robot, on_close=closers)


def build_camera(name: str, cfg: CameraConfig, clock: Clock) -> Camera:
    if cfg.type == "realsense":
        from drivers.realsense import RealSenseCamera

        if not cfg.serial:
            raise DeviceError(
                f"cameras.{name}.serial is empty: set it to the camera's serial number (`xr0 cameras` lists them)"
            )
        return RealSenseCamera(name, cfg, clock)
    if cfg.type == "opencv":
        from drivers.opencv_camera import OpenCVCamera

        return OpenCVCamera(name, cfg, clock)
    raise DeviceError(
        f"cameras.{name}.type is {cfg.type!r}: simulator cameras exist only with robot.type sim"
    )


def build_cameras(config: AppConfig, clock: Clock) -> dict[str, Camera]:
    """The configured hardware cameras, not yet connected."""
    return {name: build_camera(name, cfg, clock) for name, cfg in config.cameras.items()}


def build_rig(config: AppConfig, camera_names: list[str] | None = None) -> Rig:
    builders = {"sim": build_sim_rig, "aloha": build_aloha_rig, "aloha-emulated": build_aloha_rig}
    builder = builders.get(config.robot.type)
    if builder is None:
        raise DeviceError(f"robot.type {config.robot.type!r} is not one of {', '.join(builders)}")
    return builder(config, camera_names)
