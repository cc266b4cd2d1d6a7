"""The camera contract: RGB uint8 frames with host capture times and two explicit reads (STYLE.md 7).

`latest(max_age_ms)` returns the newest frame if it is young enough and raises `StaleSampleError`
otherwise; `next(timeout_ms)` waits for a frame newer than the last one returned. Hardware cameras
capture in a background worker (their own issue); the simulator's cameras render on demand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    t_ns: int  # host capture time (Clock.now_ns)
    index: int  # frame counter: a repeated index is a duplicated frame
    device_t_ns: int | None = None  # the device's own timestamp, where it has one


class Camera(Protocol):
    name: str
    width: int
    height: int
    fps: float

    def connect(self) -> None: ...

    def disconnect(self) -> None: ...

    def latest(self, max_age_ms: float) -> Frame: ...

    def next(self, timeout_ms: float) -> Frame: ...


@dataclass(frozen=True)
class CameraConfig:
    # Where frames come from: the simulator, a RealSense (by serial), or an OpenCV/V4L2 device.
    type: Literal["sim", "realsense", "opencv"] = "sim"
    # RealSense serial number, or OpenCV device index/path (e.g. "0" or /dev/video2); unused in sim.
    serial: str = ""
    # Frame size in pixels. The simulator renders at this size; hardware must support the mode.
    width: int = 320
    height: int = 240
    # Frames per second requested from the device (hardware); the simulator renders once per tick.
    fps: float = 30.0
    # Record aligned depth (RealSense only), in metres.
    depth: bool = False

    def __post_init__(self) -> None:
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise ValueError(f"camera size {self.width}x{self.height} is outside 16..4096 pixels")
        if not self.fps > 0:
            raise ValueError(f"camera fps must be > 0, got {self.fps}")
