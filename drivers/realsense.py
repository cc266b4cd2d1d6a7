"""Intel RealSense cameras through pyrealsense2, on the sensor API (works for real and software devices).

One capture thread per camera (`CaptureWorker`): colour (RGB8) and, if asked, depth (Z16) from the
device's sensors go through a `syncer` into framesets; depth is aligned to colour and scaled to metres
with the device's depth units. Every frame carries the host time it reached us and the device's own
timestamp. Cameras are selected by serial number; a device is reconnected after missed frames, with a
hardware reset as the last resort. Bad input — a serial that is not connected, a mode the device does
not offer, a device held by another process, USB 2 where the mode needs USB 3 — gets one sentence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from drivers.camera import CameraConfig, CaptureWorker, Frame
from drivers.clock import Clock
from drivers.errors import DependencyMissing, DeviceError

log = logging.getLogger(__name__)
# Colour modes above this many pixels per second need USB 3 (USB 2 carries ~640×480×30 comfortably).
USB2_MAX_PIXELS_PER_S = 640 * 480 * 30


def rs_module():
    try:
        import pyrealsense2 as rs
    except ImportError as e:
        raise DependencyMissing(
            f"RealSense cameras need pyrealsense2, which did not import ({e}); "
            "pip install pyrealsense2, and on Debian: sudo apt-get install libusb-1.0-0"
        ) from e
    return rs


@dataclass(frozen=True)
class DeviceInfo:
    serial: str
    name: str
    firmware: str
    usb_type: str  # e.g. "3.2"; "" when the device does not say


def _info(dev: Any, field: Any) -> str:
    try:
        return str(dev.get_info(field)) if dev.supports(field) else ""
    except RuntimeError:
        return ""


def describe(dev: Any) -> DeviceInfo:
    rs = rs_module()
    ci = rs.camera_info
    return DeviceInfo(
        serial=_info(dev, ci.serial_number),
        name=_info(dev, ci.name),
        firmware=_info(dev, ci.firmware_version),
        usb_type=_info(dev, ci.usb_type_descriptor),
    )


def list_devices() -> list[DeviceInfo]:
    """Every RealSense connected to this machine (what `xr0 cameras` and `xr0 doctor` show)."""
    rs = rs_module()
    return [describe(d) for d in rs.context().query_devices()]


def find_device(serial: str, devices: list[Any] | None = None) -> Any:
    """The connected device with this serial number; the error lists the ones that are connected."""
    rs = rs_module()
    devices = list(rs.context().query_devices()) if devices is None else devices
    for d in devices:
        if describe(d).serial == serial:
            return d
    connected = ", ".join(f"{i.serial} ({i.name})" for i in map(describe, devices)) or "none"
    raise DeviceError(f"RealSense {serial!r} is not connected; connected RealSense cameras: {connected}")


def _video_profiles(sensor: Any) -> list[Any]:
    return [p.as_video_stream_profile() for p in sensor.get_stream_profiles() if p.is_video_stream_profile()]


def _pick(dev: Any, stream: Any, fmt: Any, config: CameraConfig, label: str) -> tuple[Any, Any]:
    """(sensor, profile) offering `stream` in `fmt` at the configured size and rate."""
    offered = []
    for sensor in dev.query_sensors():
        for p in _video_profiles(sensor):
            if p.stream_type() != stream or p.format() != fmt:
                continue
            offered.append(f"{p.width()}x{p.height()}@{p.fps()}")
            if (p.width(), p.height(), p.fps()) == (config.width, config.height, round(config.fps)):
                return sensor, p
    serial = describe(dev).serial
    modes = (
        ", ".join(sorted(set(offered), key=lambda m: [int(x) for x in m.replace("@", "x").split("x")]))
        or "none"
    )
    raise DeviceError(
        f"RealSense {serial} has no {label} mode {config.width}x{config.height}@{config.fps:g}; it offers: {modes}"
    )


class RealSenseCamera(CaptureWorker):
    """One RealSense: colour (and aligned depth) frames with host and device timestamps."""

    def __init__(self, name: str, config: CameraConfig, clock: Clock, device: Any | None = None) -> None:
        super().__init__(name, config, clock)
        self.rs = rs_module()
        self._device = device  # a given device (e.g. a pyrealsense2.software_device); else found by serial
        self._sensors: list[Any] = []
        self._syncer = None
        self._align = None
        self.depth_scale = 0.0
        self.intrinsics: dict[str, float] = {}
        self.info: DeviceInfo | None = None

    def _open(self) -> None:
        rs = self.rs
        dev = self._device if self._device is not None else find_device(self.config.serial)
        self.info = describe(dev)
        pixels = self.config.width * self.config.height * self.config.fps
        if self.info.usb_type.startswith("2") and pixels > USB2_MAX_PIXELS_PER_S:
            raise DeviceError(
                f"RealSense {self.info.serial} is on a USB {self.info.usb_type} port, but "
                f"{self.config.width}x{self.config.height}@{self.config.fps:g} needs USB 3: use a USB 3 port and cable"
            )
        color_sensor, color_profile = _pick(dev, rs.stream.color, rs.format.rgb8, self.config, "colour")
        chosen = [(color_sensor, color_profile)]
        if self.config.depth:
            depth_sensor, depth_profile = _pick(dev, rs.stream.depth, rs.format.z16, self.config, "depth")
            chosen.append((depth_sensor, depth_profile))
            self.depth_scale = float(depth_sensor.get_option(rs.option.depth_units))
            self._align = rs.align(rs.stream.color)
        self._apply_options(color_sensor)
        i = color_profile.get_intrinsics()
        self.intrinsics = {
            "fx": i.fx,
            "fy": i.fy,
            "ppx": i.ppx,
            "ppy": i.ppy,
            "width": i.width,
            "height": i.height,
        }
        self._syncer = rs.syncer()
        opened = []
        try:
            for sensor, profile in chosen:
                sensor.open(profile)
                opened.append(sensor)
            for sensor in opened:
                sensor.start(self._syncer)
        except RuntimeError as e:
            for sensor in opened:
                try:
                    sensor.close()
                except RuntimeError:
                    pass
            if "busy" in str(e).lower() or "already opened" in str(e).lower():
                raise DeviceError(
                    f"RealSense {self.info.serial} is in use by another process (close realsense-viewer or the "
                    "other program using it)"
                ) from e
            raise DeviceError(f"RealSense {self.info.serial} could not start streaming: {e}") from e
        self._sensors = opened
        self._device = dev

    def _apply_options(self, sensor: Any) -> None:
        rs = self.rs
        wanted = [
            (rs.option.enable_auto_exposure, rs.option.exposure, self.config.exposure_us, "exposure_us"),
            (
                rs.option.enable_auto_white_balance,
                rs.option.white_balance,
                self.config.white_balance_k,
                "white_balance_k",
            ),
        ]
        for auto_opt, value_opt, value, field in wanted:
            if value == 0:
                if sensor.supports(auto_opt):
                    sensor.set_option(auto_opt, 1)
                continue
            if not sensor.supports(value_opt):
                raise DeviceError(
                    f"camera {self.name}: this RealSense cannot set {field}; set it to 0 (automatic)"
                )
            rng = sensor.get_option_range(value_opt)
            if not rng.min <= value <= rng.max:
                raise DeviceError(
                    f"camera {self.name}: {field} {value:g} is outside {rng.min:g}..{rng.max:g}"
                )
            if sensor.supports(auto_opt):
                sensor.set_option(auto_opt, 0)
            sensor.set_option(value_opt, value)

    def _grab(self, timeout_ms: float) -> Frame | None:
        ok, frames = self._syncer.try_wait_for_frames(int(timeout_ms))
        if not ok:
            return None
        arrived = self.clock.now_ns()
        color = frames.get_color_frame()
        if not color:
            return None  # a depth-only frameset while the colour frame is still on its way
        depth = None
        if self._align is not None:
            aligned = self._align.process(frames)
            d = aligned.get_depth_frame()
            if d:
                depth = np.asanyarray(d.get_data()).astype(np.float32) * self.depth_scale
        image = np.array(color.get_data(), dtype=np.uint8, copy=True).reshape(self.height, self.width, 3)
        return Frame(
            image=image,
            t_ns=arrived,
            index=int(color.get_frame_number()),
            device_t_ns=int(color.get_timestamp() * 1e6),
            depth=depth,
        )

    def _close(self) -> None:
        for sensor in self._sensors:
            for step in (sensor.stop, sensor.close):
                try:
                    step()
                except RuntimeError:
                    pass
        self._sensors = []

    def _recover(self, attempt: int) -> None:
        self._close()
        if attempt == self.max_recoveries and self._device is not None:
            log.warning(
                "camera %s: hardware reset of RealSense %s", self.name, self.info.serial if self.info else "?"
            )
            try:
                self._device.hardware_reset()
                if self.config.serial:
                    self._device = None  # it re-enumerates: look it up again by serial
            except RuntimeError as e:
                log.warning("camera %s: hardware reset not possible: %s", self.name, e)
        self._open()
