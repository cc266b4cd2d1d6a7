"""The camera contract: RGB uint8 frames with capture times, and two explicit reads (STYLE.md 7).

- `latest(max_age_ms)` returns the newest frame if it is young enough, and raises `StaleSampleError`
  otherwise — never an old frame passed off as new.
- `next(timeout_ms)` waits for a frame newer than the last one returned, and raises `CameraTimeout`.

Hardware cameras capture in a background `CaptureWorker` thread (RealSense, OpenCV); the control loop
only ever copies a reference out of it. The simulator's cameras render on demand (`drivers.sim.parts`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from drivers.clock import Clock
from drivers.errors import CameraTimeout, DeviceError, StaleSampleError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    image: np.ndarray | None  # (H, W, 3) uint8 RGB; None only for a deferred frame (`pixels`)
    t_ns: int  # host time the frame reached us (Clock.now_ns)
    index: int  # the device's frame counter: a repeated index is a duplicated frame
    device_t_ns: int | None = None  # the device's own timestamp, where it has one
    depth: np.ndarray | None = None  # (H, W) float32 metres, aligned to the colour image (RealSense only)
    # A simulator camera in lockstep evaluation defers its rendering to the first read of the image
    # (`drivers.sim.parts.SimCamera.deferred`): this renders it, or raises if the world has moved on.
    pixels: Callable[[], np.ndarray] | None = None

    def rgb(self) -> np.ndarray:
        """The frame's pixels (rendered now if the frame was deferred)."""
        return self.image if self.image is not None else self.pixels()


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
    # Record aligned depth in metres (RealSense only).
    depth: bool = False
    # Exposure in microseconds, 0 = auto exposure (RealSense colour sensor).
    exposure_us: float = 0.0
    # White balance in kelvin, 0 = auto white balance (RealSense colour sensor).
    white_balance_k: float = 0.0
    # A frame is overdue after this long, ms; after `max_failures` overdue frames in a row the camera
    # reconnects (RealSense: hardware reset as a last resort), and if that fails it reports an error.
    frame_timeout_ms: float = 500.0
    max_failures: int = 3

    def __post_init__(self) -> None:
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise ValueError(f"camera size {self.width}x{self.height} is outside 16..4096 pixels")
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.exposure_us < 0 or self.white_balance_k < 0:
            raise ValueError("exposure_us and white_balance_k must be >= 0 (0 means automatic)")
        if not self.frame_timeout_ms > 0 or self.max_failures < 1:
            raise ValueError("frame_timeout_ms must be > 0 and max_failures >= 1")


class CaptureWorker:
    """A camera that grabs frames on its own thread and serves `latest` / `next` to the control loop.

    Subclasses implement `_open()`, `_grab(timeout_ms) -> Frame | None` (None: nothing arrived in time),
    `_close()`, and optionally `_recover(attempt)` (reconnect; raise when giving up). Consecutive overdue
    frames are bounded by `config.max_failures`: then the worker tries to recover once per round; when
    recovery fails the camera is marked failed and every read raises that error — a stalled device
    becomes a clear error within `frame_timeout_ms × max_failures`, not a frozen image.
    """

    max_recoveries = 2

    def __init__(self, name: str, config: CameraConfig, clock: Clock) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self.width, self.height, self.fps = config.width, config.height, config.fps
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._seq = 0  # frames published
        self._seen_seq = 0  # the sequence number `next` returned last
        self._error: DeviceError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames = 0
        self.dropped = 0
        self.overdue = 0
        self.recoveries = 0

    # -- to implement --------------------------------------------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _grab(self, timeout_ms: float) -> Frame | None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _recover(self, attempt: int) -> None:
        self._close()
        self._open()

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def connect(self) -> None:
        self._open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._close()

    # -- reads (control thread) --------------------------------------------------------------------------------
    def latest(self, max_age_ms: float) -> Frame:
        with self._cond:
            frame, error = self._frame, self._error
        if error is not None:
            raise error
        if frame is None:
            raise StaleSampleError(f"camera {self.name}: no frame has arrived yet")
        age_ms = (self.clock.now_ns() - frame.t_ns) / 1e6
        if age_ms > max_age_ms:
            raise StaleSampleError(
                f"camera {self.name}: the newest frame is {age_ms:.0f} ms old (bound {max_age_ms:.0f} ms)"
            )
        return frame

    def next(self, timeout_ms: float) -> Frame:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._seq > self._seen_seq or self._error is not None, timeout_ms / 1e3
            )
            if self._error is not None:
                raise self._error
            if not ok:
                raise CameraTimeout(f"camera {self.name}: no new frame within {timeout_ms:.0f} ms")
            self._seen_seq = self._seq
            return self._frame

    # -- worker ------------------------------------------------------------------------------------------------
    def _publish(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None and frame.index > self._frame.index + 1:
                self.dropped += frame.index - self._frame.index - 1  # the device skipped frame numbers
            self._frame = frame
            self._seq += 1
            self.frames += 1
            self._cond.notify_all()

    def _fail(self, error: DeviceError) -> None:
        log.error("%s", error)
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def _run(self) -> None:
        failures = 0
        attempt = 0
        while not self._stop.is_set():
            try:
                frame = self._grab(self.config.frame_timeout_ms)
            except Exception as e:  # noqa: BLE001 - any SDK failure counts as a missed frame
                log.warning("camera %s: %s", self.name, e)
                frame = None
            if self._stop.is_set():
                return
            if frame is not None:
                failures = 0
                self._publish(frame)
                continue
            failures += 1
            self.overdue += 1
            if failures < self.config.max_failures:
                continue
            if attempt >= self.max_recoveries:
                waited = self.config.frame_timeout_ms * self.config.max_failures
                self._fail(
                    DeviceError(
                        f"camera {self.name} stopped delivering frames (none for {waited:.0f} ms, "
                        f"{attempt} reconnect(s) tried); check its cable and USB port"
                    )
                )
                return
            attempt += 1
            self.recoveries += 1
            log.warning(
                "camera %s: no frame for %d tries, reconnecting (attempt %d)", self.name, failures, attempt
            )
            try:
                self._recover(attempt)
                failures = 0
            except Exception as e:  # noqa: BLE001
                self._fail(DeviceError(f"camera {self.name} could not reconnect: {e}"))
                return
