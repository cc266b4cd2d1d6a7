"""OpenCV cameras through the real cv2.VideoCapture, fed an image sequence on disk."""

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from drivers.camera import CameraConfig  # noqa: E402
from drivers.clock import WallClock  # noqa: E402
from drivers.errors import DeviceError  # noqa: E402
from drivers.opencv_camera import OpenCVCamera  # noqa: E402

W, H = 64, 48


def write_sequence(folder, n=5, size=(H, W)) -> str:
    for k in range(n):
        rgb = np.zeros((*size, 3), np.uint8)
        rgb[..., 0] = 50 + k  # red in RGB
        cv2.imwrite(str(folder / f"f_{k:03d}.png"), rgb[:, :, ::-1])  # OpenCV writes BGR
    return str(folder / "f_%03d.png")


def test_frames_come_out_rgb_with_counters(tmp_path):
    cam = OpenCVCamera(
        "cam_high",
        CameraConfig(type="opencv", serial=write_sequence(tmp_path), width=W, height=H),
        WallClock(),
    )
    cam.connect()
    try:
        first = cam.next(2000)
        assert first.image.shape == (H, W, 3) and first.image.dtype == np.uint8
        # red stays red: BGR was converted. The grabber runs ahead of `next` (it returns the newest frame),
        # so the first frame seen may be any of the sequence: frame k (index k + 1) has red 50 + k.
        assert first.image[0, 0, 0] == 49 + first.index and first.image[0, 0, 2] == 0
        # `next` waits for a newer frame and returns the newest: the grabber may have read two meanwhile
        second = cam.next(2000)
        assert second.index > first.index and second.image[0, 0, 0] == 49 + second.index
    finally:
        cam.disconnect()


def test_wrong_size_names_what_the_device_delivers(tmp_path):
    cfg = CameraConfig(type="opencv", serial=write_sequence(tmp_path, size=(30, 40)), width=W, height=H)
    with pytest.raises(DeviceError, match=r"delivers 40x30, not the configured 64x48"):
        OpenCVCamera("cam_high", cfg, WallClock()).connect()


def test_missing_source_is_a_clear_error(tmp_path):
    cfg = CameraConfig(type="opencv", serial=str(tmp_path / "nothing_%03d.png"), width=W, height=H)
    with pytest.raises(DeviceError, match="OpenCV could not open"):
        OpenCVCamera("cam_high", cfg, WallClock()).connect()
    with pytest.raises(DeviceError, match="set its serial to an OpenCV device index"):
        OpenCVCamera("cam_high", CameraConfig(type="opencv", width=W, height=H), WallClock()).connect()
