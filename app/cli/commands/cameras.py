"""`xr0 cameras`: the RealSense cameras and video devices connected, against the config.

The table from `cameras.<name>.type` to a driver class is `build_camera` in app/compose/rig.py.
"""

from __future__ import annotations

import argparse
import glob

from app.compose.config import AppConfig
from drivers.errors import DeviceError


# -- command line: `xr0 cameras` ---------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, config: AppConfig) -> int:
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
