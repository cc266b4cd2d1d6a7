"""Observation assembly: latest frames and joints, staleness, duplicated frames and skew are reported."""

import time

import numpy as np
import pytest

pytest.importorskip("pyrealsense2", reason="pyrealsense2 needs Debian's libusb-1.0-0")

from drivers.camera import CameraConfig  # noqa: E402
from drivers.clock import WallClock  # noqa: E402
from drivers.errors import StaleSampleError  # noqa: E402
from drivers.joints import SIDES  # noqa: E402
from drivers.realsense import RealSenseCamera  # noqa: E402
from drivers.realsense_virtual import VirtualRealSense  # noqa: E402
from drivers.robot import BimanualRobot  # noqa: E402
from drivers.safety import SafetyConfig  # noqa: E402
from drivers.sim.aloha import AlohaSim, SimConfig  # noqa: E402
from drivers.sim.parts import SimArm  # noqa: E402


def test_duplicated_stale_and_skewed_frames_are_reported_not_hidden():
    clock = WallClock()
    sim = AlohaSim(SimConfig(), clock)  # arms in real time on the wall clock, like hardware
    v = VirtualRealSense(width=64, height=48, depth=False)
    cam = RealSenseCamera(
        "cam_high", CameraConfig(type="realsense", width=64, height=48), clock, device=v.device
    )
    robot = BimanualRobot(
        followers={s: SimArm(sim, s) for s in SIDES},
        cameras={"cam_high": cam},
        safety=SafetyConfig(max_observation_age_ms=200, max_observation_skew_ms=30),
        clock=clock,
    )
    try:
        with robot:
            v.push(np.zeros((48, 64, 3), np.uint8), 1, 33.3)
            cam.next(1000)
            fresh = robot.observe()
            assert fresh.duplicated == () and fresh.image_index["cam_high"] == 1
            assert fresh.state.shape == (14,)

            time.sleep(0.05)  # no new frame: the next observation has the same one, and says so
            again = robot.observe()
            assert again.duplicated == ("cam_high",)
            assert again.skew_ms > 30  # the frame is ~50 ms older than the joint state
            assert robot.observation_counters["duplicated_frames"] == 1
            assert robot.observation_counters["skewed"] >= 1

            time.sleep(0.2)
            with pytest.raises(StaleSampleError, match="cam_high"):
                robot.observe()
            assert robot.observation_counters["stale"] == 1
    finally:
        sim.close()
