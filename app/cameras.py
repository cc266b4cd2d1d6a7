"""Hardware cameras from config, and `xr0 cameras` (the listing `xr0 doctor` shares).

`build_cameras` is the table from `cameras.<name>.type` to a driver class; the simulator's cameras are
built with the sim rig instead (`app.compose`).
"""

from __future__ import annotations

import glob

from app.config import AppConfig
from drivers.camera import Camera, CameraConfig
from drivers.clock import Clock
from drivers.errors import DeviceError


def build_camera(name: str, cfg: CameraConfig, clock: Clock) -> Camera:
    if cfg.type == "realsense":
        from drivers.realsense import RealSenseCamera

        if not cfg.serial:
            raise DeviceError(
                f"cameras.{name}.serial is empty: set it to the camera's serial number (`xr0 cameras` lists them)"
            )
        return RealSenseCamera(name, cfg, clock)
    if cfg.type == "opencv":
        from drivers.opencv_camera import OpenCVCamera

        return OpenCVCamera(name, cfg, clock)
    raise DeviceError(
        f"cameras.{name}.type is {cfg.type!r}: simulator cameras exist only with robot.type sim"
    )


def build_cameras(config: AppConfig, clock: Clock) -> dict[str, Camera]:
    """The configured hardware cameras, not yet connected."""
    return {name: build_camera(name, cfg, clock) for name, cfg in config.cameras.items()}


# -- command line: `xr0 cameras` ---------------------------------------------------------------------------
def add_arguments(p) -> None:
    pass


def run(args, config: AppConfig) -> int:
    from drivers.realsense import list_devices

    try:
        devices = list_devices()
    except DeviceError as e:
        print(f"RealSense: unavailable — {e}")
        devices = []
    configured = {c.serial: n for n, c in config.cameras.items() if c.type == "realsense" and c.serial}
    print(f"RealSense cameras connected: {len(devices)}")
    for d in devices:
        role = configured.get(d.serial, "not in config")
        print(f"  {d.serial:>14}  {d.name:<34} firmware {d.firmware:<12} USB {d.usb_type or '?':<4} {role}")
    missing = sorted(set(configured) - {d.serial for d in devices})
    for serial in missing:
        print(f"  {serial:>14}  configured as {configured[serial]} but NOT connected")
    video = sorted(glob.glob("/dev/video*"))
    print(f"V4L2 video devices (OpenCV cameras): {', '.join(video) if video else 'none'}")
    return 1 if missing else 0
