"""Camera images for `aloha-emulated`: the MuJoCo ALOHA scene as a picture of the emulated followers.

Emulated chains have no cameras, but a lab rehearsing record → train → roll out needs frames of the
configured size from every configured camera. `ArmTwin` keeps one simulator whose follower arms are
driven, before every render, to the positions the emulated followers last reported; `TwinCamera` is the
simulator's camera behind the same `Camera` contract. The simulator's task objects are only scenery here:
nothing is scored.
"""

from __future__ import annotations

from collections.abc import Mapping

from drivers.clock import Clock
from drivers.sim.aloha import AlohaSim, SimConfig
from drivers.sim.parts import SimCamera


class ArmTwin:
    def __init__(self, config: SimConfig, clock: Clock, followers: Mapping[str, object]) -> None:
        self.sim = AlohaSim(config, clock)
        self.followers = dict(followers)

    def sync(self) -> None:
        for side, arm in self.followers.items():
            sample = arm.last_sample
            if sample is not None:
                self.sim.set_targets(side, sample.position)

    def close(self) -> None:
        self.sim.close()


class TwinCamera(SimCamera):
    def __init__(self, twin: ArmTwin, name: str, width: int, height: int, fps: float = 30.0) -> None:
        super().__init__(twin.sim, name, width, height, fps)
        self.twin = twin

    def latest(self, max_age_ms: float):
        self.twin.sync()
        return super().latest(max_age_ms)

    def next(self, timeout_ms: float):
        self.twin.sync()
        return super().next(timeout_ms)
