"""The teleop session on the simulated arms with a (virtual) RealSense that stops mid-episode."""

import threading
import time

import numpy as np
import pytest

pytest.importorskip("pyrealsense2", reason="pyrealsense2 needs Debian's libusb-1.0-0")

from app.runtime.events import Publisher  # noqa: E402
from app.runtime.rig import Rig  # noqa: E402
from app.runtime.teleop import TeleopSession  # noqa: E402
from drivers.camera import CameraConfig  # noqa: E402
from drivers.clock import WallClock  # noqa: E402
from drivers.joints import SIDES  # noqa: E402
from drivers.realsense import RealSenseCamera  # noqa: E402
from drivers.realsense_virtual import VirtualRealSense  # noqa: E402
from drivers.robot import BimanualRobot  # noqa: E402
from drivers.safety import SafetyConfig  # noqa: E402
from drivers.sim.aloha import AlohaSim, SimConfig  # noqa: E402
from drivers.sim.parts import ScriptedLeaderArm, SimArm  # noqa: E402
from drivers.sim.scripted import ScriptedTeleoperator  # noqa: E402


class Collect:
    def __init__(self):
        self.steps, self.episodes = 0, []

    def on_step(self, event):
        self.steps += 1

    def on_episode(self, event):
        self.episodes.append(event)

    def close(self):
        pass


def test_a_camera_that_stops_ends_the_episode_cleanly_with_one_sentence():
    clock = WallClock()
    sim = AlohaSim(SimConfig(), clock)
    teleop = ScriptedTeleoperator(sim)
    v = VirtualRealSense(width=64, height=48, depth=False)
    cam_cfg = CameraConfig(type="realsense", width=64, height=48, frame_timeout_ms=50.0, max_failures=2)
    cam = RealSenseCamera("cam_high", cam_cfg, clock, device=v.device)
    robot = BimanualRobot(
        followers={s: SimArm(sim, s) for s in SIDES},
        leaders={s: ScriptedLeaderArm(teleop, s) for s in SIDES},
        cameras={"cam_high": cam},
        safety=SafetyConfig(max_observation_age_ms=2000),
        clock=clock,
    )

    def feed():  # 0.5 s of frames at 30 Hz, then the camera goes silent (unplugged)
        for k in range(1, 16):
            v.push(np.full((48, 64, 3), k, np.uint8), k, k * 33.3)
            time.sleep(1 / 30)

    feeder = threading.Thread(target=feed)
    feeder.start()
    time.sleep(0.1)
    subscriber = Collect()
    try:
        report = TeleopSession(Rig(clock, robot, sim, teleop), 30.0, Publisher([subscriber])).run(2, 5.0)
    finally:
        feeder.join()
        sim.close()
    assert report.error is not None and "cam_high stopped delivering frames" in report.error
    assert len(report.episodes) == 1  # the second episode never started
    assert 0 < report.episodes[0].ticks < 5 * 30
    assert [e.kind for e in subscriber.episodes] == ["start", "end"]
    assert subscriber.episodes[-1].info["error"] == report.error
    assert subscriber.steps == report.ticks
    assert (
        report.observations["duplicated_frames"] > 0
    )  # the silent camera's last frame was not passed off as new
