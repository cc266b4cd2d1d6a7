"""What a session runs on: the clock, the robot and, in simulation, the world (built by app/compose/rig.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.clock import Clock
from drivers.robot import BimanualRobot
from drivers.sim.aloha import AlohaSim
from drivers.sim.scripted import ScriptedTeleoperator


@dataclass
class Rig:
    """What a session runs on: the clock, the robot, and — in simulation — the world and its teleoperator."""

    clock: Clock
    robot: BimanualRobot
    sim: AlohaSim | None = None
    teleop: ScriptedTeleoperator | None = None
    # What else to release when the session ends (bus emulators, read threads, a camera twin).
    on_close: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        if self.sim is not None:
            self.sim.close()
        for close in reversed(self.on_close):
            close()
