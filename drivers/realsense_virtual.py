"""A virtual RealSense made with `pyrealsense2.software_device`: the real SDK, frames injected by us.

Used by the tests and by `xr0 bench cameras` to drive `RealSenseCamera` without hardware. It offers one
colour mode (RGB8) and optionally a depth mode (Z16, with depth units), and `push()` injects a frame with a
frame number and a device timestamp, exactly as a device's firmware would deliver it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from drivers.realsense import rs_module


class VirtualRealSense:
    def __init__(
        self,
        serial: str = "000000000001",
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        depth: bool = True,
        depth_units: float = 0.001,
        usb_type: str = "3.2",
        name: str = "Intel RealSense D435 (virtual)",
    ) -> None:
        rs = self.rs = rs_module()
        self.width, self.height, self.fps = width, height, fps
        self.device = rs.software_device()
        for field, value in (
            (rs.camera_info.serial_number, serial),
            (rs.camera_info.name, name),
            (rs.camera_info.firmware_version, "5.16.0.1"),
            (rs.camera_info.usb_type_descriptor, usb_type),
        ):
            self.device.register_info(field, value)
        self.color_sensor = self.device.add_sensor("RGB Camera")
        self.color_profile = self.color_sensor.add_video_stream(
            self._stream(rs.stream.color, 1, rs.format.rgb8, 3)
        )
        self.depth_sensor = self.depth_profile = None
        if depth:
            self.depth_sensor = self.device.add_sensor("Stereo Module")
            self.depth_profile = self.depth_sensor.add_video_stream(
                self._stream(rs.stream.depth, 2, rs.format.z16, 2)
            )
            self.depth_sensor.add_read_only_option(rs.option.depth_units, depth_units)
        self.depth_units = depth_units

    def _stream(self, kind: Any, uid: int, fmt: Any, bpp: int) -> Any:
        rs = self.rs
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid = kind, 0, uid
        vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = self.width, self.height, self.fps, bpp, fmt
        intr = rs.intrinsics()
        intr.width, intr.height = self.width, self.height
        intr.fx = intr.fy = 0.9 * self.width
        intr.ppx, intr.ppy = self.width / 2, self.height / 2
        intr.model = rs.distortion.none
        vs.intrinsics = intr
        return vs

    def _frame(self, pixels: np.ndarray, bpp: int, number: int, timestamp_ms: float, profile: Any) -> Any:
        rs = self.rs
        f = rs.software_video_frame()
        f.pixels = pixels
        f.bpp = bpp
        f.stride = self.width * bpp
        f.timestamp = timestamp_ms
        f.domain = rs.timestamp_domain.hardware_clock
        f.frame_number = number
        f.profile = profile.as_video_stream_profile()
        return f

    def push(
        self, image: np.ndarray, number: int, timestamp_ms: float, depth_m: np.ndarray | None = None
    ) -> None:
        """Inject one colour frame (H×W×3 uint8) and, with a depth sensor, its depth (H×W metres)."""
        if self.depth_sensor is not None:
            raw = (
                np.zeros((self.height, self.width), np.uint16)
                if depth_m is None
                else depth_m / self.depth_units
            )
            z16 = np.ascontiguousarray(np.round(raw).astype(np.uint16))
            self.depth_sensor.on_video_frame(self._frame(z16, 2, number, timestamp_ms, self.depth_profile))
        rgb = np.ascontiguousarray(image, dtype=np.uint8)
        self.color_sensor.on_video_frame(self._frame(rgb, 3, number, timestamp_ms, self.color_profile))
