"""Emulated chains for the Dynamixel tests: the real dynamixel-sdk talks to `BusEmulator` on a pty."""

from __future__ import annotations

from dataclasses import replace

import pytest

from drivers.dynamixel.arm import DynamixelArm
from drivers.dynamixel.config import ArmConfig
from drivers.dynamixel.emulated import emulate_arm, truth_calibration

# The config.yaml defaults: a ViperX 300 6DOF follower and a WidowX 250 6DOF leader.
FOLLOWER = ArmConfig(
    baudrate=1_000_000,
    motor_ids=(1, 2, 4, 6, 7, 8, 9, 3, 5),
    motor_models=("xm540-w270",) * 5 + ("xm430-w350",) * 2 + ("xm540-w270",) * 2,
    shadows={3: 2, 5: 4},
)
LEADER = ArmConfig(
    baudrate=1_000_000,
    motor_ids=(1, 2, 4, 6, 7, 8, 9, 3, 5),
    motor_models=("xm430-w350",) * 5 + ("xl430-w250",) * 2 + ("xm430-w350",) * 2,
    shadows={3: 2, 5: 4},
)
TEST_LATENCY_MS = 5.0
TEST_CONFIG_WAIT_MS = 250.0  # connect-time transactions: survive a burst of load from other jobs
ROLES = {
    "left_follower": ("left", "follower", FOLLOWER),
    "left_leader": ("left", "leader", LEADER),
    "right_follower": ("right", "follower", FOLLOWER),
    "right_leader": ("right", "leader", LEADER),
}


class Chain:
    """An emulated arm and the driver's arm on it (not connected)."""

    def __init__(self, name: str, motion: str = "still", pose=None, **overrides) -> None:
        side, role, config = ROLES[name]
        self.name, self.role = name, role
        self.emulator = emulate_arm(name, role, config, motion=motion, pose=pose)
        # A pty served by a thread answers later than a U2D2 when the (shared, 2-core) test machine is busy:
        # wait generously for status packets; the tests about time budgets set their own deadlines.
        overrides.setdefault("latency_timer_ms", TEST_LATENCY_MS)
        overrides.setdefault("read_budget_ms", 30.0)  # the budget tests set their own
        self.config = replace(config, port=self.emulator.port, **overrides)
        self.calibration = truth_calibration(name, role, config)
        self.arm = DynamixelArm(name, side, role, self.config, self.calibration)
        self.arm.bus.config_wait_ms = TEST_CONFIG_WAIT_MS

    def motor(self, motor_id: int):
        return self.emulator.motors[motor_id]

    def close(self) -> None:
        if self.arm.is_connected:
            try:
                self.arm.disconnect()
            except Exception:  # noqa: BLE001 - a test may have pulled the plug
                pass
        self.emulator.stop()


@pytest.fixture
def chains():
    """Factory of emulated chains, all stopped at the end of the test."""
    made: list[Chain] = []

    def make(name: str = "left_follower", **kw) -> Chain:
        chain = Chain(name, **kw)
        made.append(chain)
        return chain

    yield make
    for chain in made:
        chain.close()
