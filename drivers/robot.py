"""`BimanualRobot`: two followers, optional two leaders and the cameras, behind one lifecycle.

It assembles observations (14-wide state, velocity, effort, frames, capture times) and takes 14-wide
actions through the safety layer; `send_action` returns what was really sent. Features are described
while disconnected, so a recorder or a model can be set up before any hardware is touched.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from drivers.arm import Arm, JointSample
from drivers.camera import Camera, Frame
from drivers.clock import Clock
from drivers.errors import DeviceError, StaleSampleError
from drivers.joints import JOINT_NAMES, SIDES, STATE_DIM, side_slice
from drivers.safety import SafeCommand, SafetyConfig, SafetyLayer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    state: np.ndarray  # (14,) follower joint positions, rad + gripper fraction
    velocity: np.ndarray | None  # (14,) or None
    effort: np.ndarray | None  # (14,) or None
    state_t_ns: int  # capture time of the oldest arm read that went into `state`
    images: dict[str, np.ndarray]  # camera name -> (H, W, 3) uint8 RGB
    image_t_ns: dict[str, int]  # camera name -> capture time
    image_index: dict[str, int]  # camera name -> frame counter
    duplicated: tuple[str, ...] = ()  # cameras whose frame is the same one as in the previous observation
    skew_ms: float = 0.0  # spread of the capture times (state and frames) within this observation


class FrameImages(Mapping):
    """`Observation.images` when some frames are deferred: camera name → pixels, each rendered at its
    first read (and kept). Evaluation in the simulator reads the images only on the ticks where the policy
    is asked for a chunk, so the other ticks render nothing."""

    def __init__(self, frames: Mapping[str, Frame]) -> None:
        self._frames = dict(frames)
        self._images: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._images:
            self._images[name] = self._frames[name].rgb()
        return self._images[name]

    def __iter__(self):
        return iter(self._frames)

    def __len__(self) -> int:
        return len(self._frames)


@dataclass(frozen=True)
class LeaderCommand:
    action: np.ndarray  # (14,) the leaders' positions, the raw teleop command
    t_ns: int


@dataclass(frozen=True)
class Features:
    joint_names: tuple[str, ...]
    cameras: dict[str, tuple[int, int, int]]  # name -> (H, W, 3)
    has_leaders: bool


def _stack(samples: list[JointSample], attr: str) -> np.ndarray | None:
    parts = [getattr(s, attr) for s in samples]
    return None if any(p is None for p in parts) else np.concatenate(parts).astype(np.float64)


class BimanualRobot:
    def __init__(
        self,
        followers: Mapping[str, Arm],
        cameras: Mapping[str, Camera],
        safety: SafetyConfig,
        clock: Clock,
        leaders: Mapping[str, Arm] | None = None,
    ) -> None:
        for group, arms in (("followers", followers), ("leaders", leaders or {})):
            if arms and set(arms) != set(SIDES):
                raise ValueError(f"{group} must be given for both sides {SIDES}, got {sorted(arms)}")
        if not followers:
            raise ValueError("a bimanual robot needs follower arms for both sides")
        self.followers = dict(followers)
        self.leaders = dict(leaders or {})
        self.cameras = dict(cameras)
        self.safety_config = safety
        self.clock = clock
        self.safety: SafetyLayer | None = None
        self._connected = False
        self._last_index: dict[str, int] = {}
        # Observation quality, counted for the status line and the episode metadata.
        self.observation_counters = {"observations": 0, "duplicated_frames": 0, "skewed": 0, "stale": 0}

    # -- lifecycle -------------------------------------------------------------------------------------
    def features(self) -> Features:
        return Features(
            joint_names=JOINT_NAMES,
            cameras={n: (c.height, c.width, 3) for n, c in self.cameras.items()},
            has_leaders=bool(self.leaders),
        )

    def limits(self) -> np.ndarray:
        return np.concatenate([self.followers[s].limits() for s in SIDES])

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        devices: list[Arm | Camera] = [
            *self.followers.values(),
            *self.leaders.values(),
            *self.cameras.values(),
        ]
        done: list[Arm | Camera] = []
        try:
            for d in devices:
                d.connect()
                done.append(d)
        except Exception:
            for d in reversed(done):
                try:
                    d.disconnect()
                except Exception:  # noqa: BLE001 - best effort while unwinding a failed connect
                    log.exception("while disconnecting %s after a failed connect", getattr(d, "name", d))
            raise
        start = self.read_joints()[0]
        self.safety = SafetyLayer(self.safety_config, self.limits(), start)
        self._connected = True

    def rebase(self) -> None:
        """Restart the safety layer's step limit from the measured pose (after the world was reset)."""
        if self.safety is None:
            raise DeviceError("the robot is not connected")
        counters = self.safety.counters
        self.safety = SafetyLayer(self.safety_config, self.limits(), self.read_joints()[0])
        self.safety.counters = counters

    def disconnect(self) -> None:
        torque_off = self.safety_config.on_exit == "torque_off"
        errors = []
        for arm in [*self.followers.values(), *self.leaders.values()]:
            try:
                arm.disconnect(torque_off=torque_off)
            except Exception as e:  # noqa: BLE001 - every device gets its chance to shut down
                errors.append(f"{arm.name}: {e}")
        for cam in self.cameras.values():
            try:
                cam.disconnect()
            except Exception as e:  # noqa: BLE001
                errors.append(f"{cam.name}: {e}")
        self._connected = False
        if errors:
            raise DeviceError("could not shut down cleanly: " + "; ".join(errors))

    def __enter__(self) -> BimanualRobot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # -- reading ---------------------------------------------------------------------------------------
    def read_joints(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int]:
        samples = [self.followers[s].read() for s in SIDES]
        return (
            np.concatenate([s.position for s in samples]).astype(np.float64),
            _stack(samples, "velocity"),
            _stack(samples, "effort"),
            min(s.t_ns for s in samples),
        )

    def observe(self, max_age_ms: float | None = None) -> Observation:
        """Latest joint state and frames, with their capture times.

        A frame older than `max_age_ms` (default: the safety config's bound) raises `StaleSampleError`.
        A frame that is the same one the previous observation had is not hidden: it is named in
        `duplicated` and counted; capture times further apart than the skew bound are counted too.
        """
        age = self.safety_config.max_observation_age_ms if max_age_ms is None else max_age_ms
        counters = self.observation_counters
        state, velocity, effort, state_t = self.read_joints()
        try:
            frames = {name: cam.latest(age) for name, cam in self.cameras.items()}
        except StaleSampleError:
            counters["stale"] += 1
            raise
        duplicated = tuple(n for n, f in frames.items() if self._last_index.get(n) == f.index)
        self._last_index.update({n: f.index for n, f in frames.items()})
        times = [state_t, *(f.t_ns for f in frames.values())]
        skew_ms = (max(times) - min(times)) / 1e6
        counters["observations"] += 1
        counters["duplicated_frames"] += len(duplicated)
        if skew_ms > self.safety_config.max_observation_skew_ms:
            counters["skewed"] += 1
        if duplicated:
            log.debug("duplicated frame from %s", ", ".join(duplicated))
        return Observation(
            state=state,
            velocity=velocity,
            effort=effort,
            state_t_ns=state_t,
            images=FrameImages(frames)
            if any(f.image is None for f in frames.values())
            else {n: f.image for n, f in frames.items()},  # fmt: skip
            image_t_ns={n: f.t_ns for n, f in frames.items()},
            image_index={n: f.index for n, f in frames.items()},
            duplicated=duplicated,
            skew_ms=skew_ms,
        )

    def leader_action(self) -> LeaderCommand:
        if not self.leaders:
            raise DeviceError("this robot has no leader arms configured, so it cannot be teleoperated")
        samples = [self.leaders[s].read() for s in SIDES]
        return LeaderCommand(np.concatenate([s.position for s in samples]), min(s.t_ns for s in samples))

    # -- commanding ------------------------------------------------------------------------------------
    def send_action(self, action: np.ndarray) -> SafeCommand:
        """Filter a (14,) target through the safety layer, send it to the followers, return what was sent."""
        if self.safety is None:
            raise DeviceError("the robot is not connected: call connect() (or use `with robot:`) first")
        cmd = self.safety.filter(action)
        for s in SIDES:
            self.followers[s].write(cmd.action[side_slice(s)])
        return cmd

    def hold(self) -> np.ndarray:
        """Re-send the last command (e.g. when the policy's buffer runs dry or on e-stop)."""
        if self.safety is None:
            raise DeviceError("the robot is not connected")
        held = self.safety.hold()
        for s in SIDES:
            self.followers[s].write(held[side_slice(s)])
        return held


__all__ = ["BimanualRobot", "Features", "LeaderCommand", "Observation", "STATE_DIM"]
