"""USB/V4L2 webcams (and video files) through OpenCV, behind the same capture worker as RealSense.

For labs without RealSense cameras. `serial` in the camera config is the OpenCV source: a device index
("0"), a device path (/dev/video2) or a file/image-sequence pattern (useful for tests and replays).
Frames are converted from OpenCV's BGR to RGB; the size the device really delivers is checked against the
configured one, since many webcams silently fall back to another mode.
"""

from __future__ import annotations

import logging

import numpy as np

from drivers.camera import CameraConfig, CaptureWorker, Frame
from drivers.clock import Clock
from drivers.errors import DependencyMissing, DeviceError

log = logging.getLogger(__name__)


def cv2_module():
    try:
        import cv2
    except ImportError as e:
        raise DependencyMissing("OpenCV cameras need OpenCV: pip install opencv-python-headless") from e
    return cv2


class OpenCVCamera(CaptureWorker):
    def __init__(self, name: str, config: CameraConfig, clock: Clock) -> None:
        super().__init__(name, config, clock)
        self.cv2 = cv2_module()
        self._cap = None
        self._pending: np.ndarray | None = None
        self._count = 0

    @property
    def source(self) -> int | str:
        s = self.config.serial.strip()
        if not s:
            raise DeviceError(
                f"camera {self.name}: set its serial to an OpenCV device index (0) or path (/dev/video0)"
            )
        return int(s) if s.isdigit() else s

    def _open(self) -> None:
        cv2 = self.cv2
        cap = cv2.VideoCapture(self.source)
        if not cap.isOpened():
            raise DeviceError(
                f"camera {self.name}: OpenCV could not open {self.source!r} (not connected, wrong index/path, "
                "or in use by another program; `ls /dev/video*` lists video devices)"
            )
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
        cap.set(cv2.CAP_PROP_FPS, self.config.fps)
        ok, probe = cap.read()
        if not ok or probe is None:
            cap.release()
            raise DeviceError(f"camera {self.name}: {self.source!r} opened but delivered no frame")
        h, w = probe.shape[:2]
        if (w, h) != (self.config.width, self.config.height):
            cap.release()
            raise DeviceError(
                f"camera {self.name}: {self.source!r} delivers {w}x{h}, not the configured "
                f"{self.config.width}x{self.config.height}; set cameras.{self.name}.width/height to a mode it supports"
            )
        self._cap = cap
        self._pending = probe

    def _grab(self, timeout_ms: float) -> Frame | None:
        if self._pending is not None:
            bgr, self._pending = self._pending, None
        else:
            ok, bgr = self._cap.read()  # blocks until the device has a frame (OpenCV has no timeout here)
            if not ok or bgr is None:
                return None
        arrived = self.clock.now_ns()
        self._count += 1
        image = np.ascontiguousarray(bgr[:, :, ::-1])
        return Frame(image=image, t_ns=arrived, index=self._count)

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
