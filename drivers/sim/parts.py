"""The simulator's arms (followers, and the scripted teleoperator as leaders) and cameras, behind the same
`Arm` and `Camera` contracts as hardware."""

from __future__ import annotations

import numpy as np

from drivers.arm import JointSample, Role
from drivers.camera import Frame
from drivers.errors import CameraTimeout, DeviceError, StaleSampleError
from drivers.joints import SIDES, side_slice
from drivers.sim.aloha import AlohaSim
from drivers.sim.scripted import ScriptedTeleoperator


class _SimulatedArm:
    """What both simulated arms share: the side, the lifecycle and the limits of the simulated ViperX."""

    role: Role

    def __init__(self, sim: AlohaSim, side: str) -> None:
        if side not in SIDES:
            raise ValueError(f"arm side must be one of {SIDES}, got {side!r}")
        self.sim = sim
        self.side = side
        self.name = f"{side}_{self.role}"
        self._connected = False

    def connect(self) -> None:
        self._connected = True

    def disconnect(self, torque_off: bool = False) -> None:
        # A simulated arm has no torque to release: "torque off" and "hold" both leave the targets as they are.
        self._connected = False

    def limits(self) -> np.ndarray:
        return self.sim.limits()[side_slice(self.side)]

    def _check_connected(self) -> None:
        if not self._connected:
            raise DeviceError(f"simulated arm {self.name} is not connected; call connect() first")


class SimArm(_SimulatedArm):
    """One simulated ViperX follower: reads measured joints, writes joint targets."""

    role: Role = "follower"

    def read(self) -> JointSample:
        pos, vel, effort = self.sim.joint_state(self.side)
        return JointSample(position=pos, velocity=vel, effort=effort, t_ns=self.sim.capture_ns())

    def write(self, target: np.ndarray) -> None:
        self._check_connected()
        self.sim.set_targets(self.side, target)


class ScriptedLeaderArm(_SimulatedArm):
    """One side of the scripted teleoperator behind the `Arm` contract: a leader that can only be read."""

    role: Role = "leader"

    def __init__(self, teleop: ScriptedTeleoperator, side: str) -> None:
        super().__init__(teleop.sim, side)
        self.teleop = teleop

    def read(self) -> JointSample:
        self._check_connected()
        self.sim.sync()  # bring the physics (and so `time_s`) up to the clock
        position = self.teleop.action(self.sim.time_s)[side_slice(self.side)]
        return JointSample(position=position, velocity=None, effort=None, t_ns=self.sim.capture_ns())

    def write(self, target: np.ndarray) -> None:
        raise DeviceError(f"{self.name} is a scripted leader arm: it is read, it cannot be commanded")


class SimCamera:
    """A camera of the simulated scene, rendered offscreen at the physics state of the clock's time."""

    def __init__(self, sim: AlohaSim, name: str, width: int, height: int, fps: float = 30.0) -> None:
        self.sim = sim
        self.name = name
        self.width = width
        self.height = height
        self.fps = fps
        # Deferred: a frame renders when its image is first read (`Frame.rgb`), not when it is taken — for
        # lockstep evaluation, where the policy reads the images only on the ticks it is asked for a chunk.
        self.deferred = False
        self._last_index = -1

    def connect(self) -> None:
        self.sim.render(self.name, self.width, self.height)  # fails here, at connect, if rendering can't work

    def disconnect(self) -> None:
        pass

    def _frame(self) -> Frame:
        index = self._index()
        if self.deferred:
            return Frame(
                image=None, t_ns=self.sim.capture_ns(), index=index, pixels=lambda: self._render(index)
            )
        return Frame(
            image=self.sim.render(self.name, self.width, self.height), t_ns=self.sim.capture_ns(), index=index
        )

    def _index(self) -> int:
        """The frame index of the physics state now (integrated up to the clock first): one frame per
        physics state, the step counter since the episode start, offset per episode."""
        self.sim.sync()
        return self.sim.episode * 10_000_000 + round(self.sim.time_s / self.sim.model.opt.timestep)

    def _render(self, index: int) -> np.ndarray:
        """A deferred frame's pixels: the physics must still be in the state the frame was taken at."""
        now = self._index()
        if now != index:
            raise DeviceError(
                f"camera {self.name}: a deferred frame was read after the simulation moved on (frame {index}, "
                f"world at {now}); read a deferred observation's images within its tick"
            )
        return self.sim.render(self.name, self.width, self.height)

    def latest(self, max_age_ms: float) -> Frame:
        frame = self._frame()
        age_ms = (self.sim.clock.now_ns() - frame.t_ns) / 1e6
        if age_ms > max_age_ms:
            raise StaleSampleError(
                f"camera {self.name}: the newest frame is {age_ms:.0f} ms old (bound {max_age_ms:.0f} ms)"
            )
        self._last_index = frame.index
        return frame

    def next(self, timeout_ms: float) -> Frame:
        frame = self._frame()
        if frame.index == self._last_index:
            raise CameraTimeout(
                f"camera {self.name}: no new simulated frame; the simulation did not advance "
                f"(advance the clock before asking for the next frame; waited {timeout_ms:.0f} ms)"
            )
        self._last_index = frame.index
        return frame
