"""RealSense cameras through the real pyrealsense2 SDK, with virtual devices (`software_device`)."""

import time

import numpy as np
import pytest

pytest.importorskip("pyrealsense2", reason="pyrealsense2 needs Debian's libusb-1.0-0")

from drivers.camera import CameraConfig  # noqa: E402
from drivers.clock import WallClock  # noqa: E402
from drivers.errors import CameraTimeout, DeviceError, StaleSampleError  # noqa: E402
from drivers.realsense import RealSenseCamera, describe, find_device  # noqa: E402
from drivers.realsense_virtual import VirtualRealSense  # noqa: E402

W, H = 64, 48


def config(**kw) -> CameraConfig:
    base = {"type": "realsense", "width": W, "height": H, "fps": 30, "frame_timeout_ms": 100.0}
    return CameraConfig(**{**base, **kw})


def image(value: int) -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = value  # red channel carries the value: checks the channel order too
    return img


@pytest.fixture
def camera():
    v = VirtualRealSense(width=W, height=H, depth=False)
    cam = RealSenseCamera("cam_high", config(), WallClock(), device=v.device)
    cam.connect()
    yield v, cam
    cam.disconnect()


def test_next_returns_each_new_frame_once_and_times_out_without_one(camera):
    v, cam = camera
    v.push(image(10), 1, 33.3)
    f = cam.next(1000)
    assert f.index == 1 and f.image.shape == (H, W, 3) and f.image[0, 0, 0] == 10 and f.image[0, 0, 1] == 0
    assert f.device_t_ns == pytest.approx(33.3e6, abs=1e3)
    assert abs(time.monotonic_ns() - f.t_ns) < 1e9
    t0 = time.monotonic()
    with pytest.raises(CameraTimeout, match="cam_high: no new frame within 80 ms"):
        cam.next(80)
    assert 0.07 < time.monotonic() - t0 < 1.0
    v.push(image(20), 2, 66.6)
    assert cam.next(1000).index == 2


def test_latest_is_the_newest_frame_and_refuses_old_ones(camera):
    v, cam = camera
    with pytest.raises(StaleSampleError, match="no frame has arrived yet"):
        cam.latest(100)
    for k in (1, 2, 3):
        v.push(image(k), k, k * 33.3)
        cam.next(1000)
    assert cam.latest(500).index == 3
    time.sleep(0.15)
    with pytest.raises(StaleSampleError, match=r"cam_high: the newest frame is \d+ ms old \(bound 50 ms\)"):
        cam.latest(50)


def test_dropped_frames_are_counted_from_gaps_in_frame_numbers(camera):
    v, cam = camera
    for k in (1, 2, 5, 6, 9):
        v.push(image(k), k, k * 33.3)
        assert cam.next(1000).index == k
    assert cam.dropped == 4  # 3, 4, 7, 8 never arrived


def test_a_stalled_device_becomes_a_clear_error_within_its_bound():
    v = VirtualRealSense(width=W, height=H, depth=False)
    cfg = config(frame_timeout_ms=50.0, max_failures=2)
    cam = RealSenseCamera("cam_left_wrist", cfg, WallClock(), device=v.device)
    cam.connect()
    try:
        v.push(image(1), 1, 33.3)
        cam.next(1000)
        t0 = time.monotonic()
        # No more frames: 2 overdue frames -> reconnect, twice (the last with a hardware reset), then an error.
        bound_s = (cam.max_recoveries + 1) * cfg.max_failures * cfg.frame_timeout_ms / 1e3
        with pytest.raises(DeviceError, match="cam_left_wrist stopped delivering frames"):
            cam.next(5000)
        elapsed = time.monotonic() - t0
        assert elapsed < bound_s + 1.0, f"took {elapsed:.2f} s, bound {bound_s:.2f} s"
        assert cam.recoveries == cam.max_recoveries
        with pytest.raises(DeviceError, match="stopped delivering frames"):
            cam.latest(1e9)  # every later read reports the failure instead of a frozen image
    finally:
        cam.disconnect()


@pytest.mark.parametrize("units, metres", [(0.001, 0.5), (0.0001, 0.25)])
def test_depth_is_aligned_and_scaled_to_metres(units, metres):
    v = VirtualRealSense(width=W, height=H, depth=True, depth_units=units)
    cam = RealSenseCamera("cam_high", config(depth=True), WallClock(), device=v.device)
    cam.connect()
    try:
        assert cam.depth_scale == pytest.approx(units)
        depth = None
        for k in range(1, 6):  # the syncer pairs colour with depth once both streams are flowing
            v.push(image(k), k, k * 33.3, depth_m=np.full((H, W), metres))
            frame = cam.next(1000)
            depth = frame.depth if frame.depth is not None else depth
        assert depth is not None and depth.shape == (H, W) and depth.dtype == np.float32
        centre = depth[H // 4 : 3 * H // 4, W // 4 : 3 * W // 4]
        np.testing.assert_allclose(centre, metres, atol=units)
    finally:
        cam.disconnect()


def test_two_cameras_at_once_keep_their_own_frames():
    devs = [VirtualRealSense(serial=f"00000000000{i}", width=W, height=H, depth=False) for i in (1, 2)]
    cams = [RealSenseCamera(f"cam{i}", config(), WallClock(), device=d.device) for i, d in enumerate(devs)]
    for c in cams:
        c.connect()
    try:
        for k in range(1, 6):
            devs[0].push(image(100 + k), k, k * 33.3)
            devs[1].push(image(200 + k), k, k * 33.3)
            assert cams[0].next(1000).image[0, 0, 0] == 100 + k
            assert cams[1].next(1000).image[0, 0, 0] == 200 + k
    finally:
        for c in cams:
            c.disconnect()


def test_intrinsics_and_device_info_are_exposed(camera):
    _, cam = camera
    assert cam.intrinsics["width"] == W and cam.intrinsics["ppx"] == W / 2
    assert cam.info.serial == "000000000001" and cam.info.usb_type == "3.2" and "D435" in cam.info.name


# -- bad input: one clear sentence each --------------------------------------------------------------------
def test_serial_not_connected_lists_the_connected_ones():
    v = VirtualRealSense(serial="123456789012", width=W, height=H, depth=False)
    with pytest.raises(DeviceError) as e:
        find_device("999999999999", devices=[v.device])
    assert str(e.value) == (
        "RealSense '999999999999' is not connected; connected RealSense cameras: "
        "123456789012 (Intel RealSense D435 (virtual))"
    )
    assert describe(find_device("123456789012", devices=[v.device])).serial == "123456789012"


def test_unsupported_mode_lists_the_modes_the_device_offers():
    v = VirtualRealSense(width=W, height=H, depth=False)
    cam = RealSenseCamera("cam_high", config(width=1280, height=720), WallClock(), device=v.device)
    with pytest.raises(DeviceError, match=r"has no colour mode 1280x720@30; it offers: 64x48@30"):
        cam.connect()


def test_camera_in_use_by_another_process():
    v = VirtualRealSense(width=W, height=H, depth=False)
    v.color_sensor.open(v.color_profile)  # someone else holds the sensor
    cam = RealSenseCamera("cam_high", config(), WallClock(), device=v.device)
    with pytest.raises(DeviceError, match="is in use by another process"):
        cam.connect()


def test_usb2_port_for_a_usb3_mode():
    v = VirtualRealSense(width=1280, height=720, depth=False, usb_type="2.1")
    cam = RealSenseCamera("cam_high", config(width=1280, height=720), WallClock(), device=v.device)
    with pytest.raises(DeviceError, match=r"is on a USB 2\.1 port, but 1280x720@30 needs USB 3"):
        cam.connect()


def test_manual_exposure_out_of_range_or_unsupported_is_refused():
    v = VirtualRealSense(width=W, height=H, depth=False)
    cam = RealSenseCamera("cam_high", config(exposure_us=5000), WallClock(), device=v.device)
    with pytest.raises(DeviceError, match="cannot set exposure_us; set it to 0"):
        cam.connect()
