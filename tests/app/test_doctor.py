"""`xr0 doctor` checks, run for real against this machine (and a pseudo-terminal, tmp files, a fake sysfs)."""

import ctypes.util
import os
import sys

import pytest

from app.cli.commands.doctor import (
    Check,
    check_codecs,
    check_disk,
    check_egl,
    check_ftdi_latency,
    check_package,
    check_python,
    check_realsense,
    check_serial_port,
    exit_code,
    format_checks,
    run_checks,
)

MISSING = ("definitely_missing_pkg_xyz", "definitely-missing-pkg")


def test_missing_package_fails_naming_the_pip_package(tmp_path):
    checks = run_checks(data_root=tmp_path, packages=[MISSING])
    (check,) = [c for c in checks if "definitely_missing_pkg_xyz" in c.name]
    assert check.status == "fail"
    assert "definitely_missing_pkg_xyz" in check.detail
    assert "pip install definitely-missing-pkg" in check.fix
    assert exit_code(checks) == 1
    assert "definitely-missing-pkg" in format_checks(checks)


def test_present_package_is_ok_with_its_version():
    import numpy

    check = check_package("numpy", "numpy")
    assert check.status == "ok"
    assert numpy.__version__ in check.detail


def test_package_whose_import_raises_is_reported_not_raised(tmp_path, monkeypatch):
    # A real module on disk that fails at import the way pyrealsense2 does without libusb.
    (tmp_path / "broken_native_xyz.py").write_text(
        "raise ImportError('libusb-1.0.so.0: cannot open shared object file: No such file or directory')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    check = check_package("broken_native_xyz", "broken-native-xyz")
    assert check.status == "fail"
    assert "libusb-1.0.so.0" in check.detail
    assert check.fix == "sudo apt-get install libusb-1.0-0"


def test_python_version_gate():
    assert check_python().status == "ok"
    old = check_python((3, 10, 12))
    assert old.status == "fail"
    assert "3.10.12" in old.detail and "3.11" in old.fix


def test_configured_serial_port_that_does_not_exist_fails_naming_it(tmp_path):
    path = str(tmp_path / "ttyUSB7")
    check = check_serial_port(path)
    assert check.status == "fail"
    assert path in check.detail and path in check.name
    assert check.fix


def test_regular_file_is_not_a_serial_port(tmp_path):
    path = tmp_path / "not_a_tty"
    path.write_text("")
    assert check_serial_port(str(path)).status == "fail"


def test_pseudo_terminal_is_an_accessible_serial_port():
    leader, follower = os.openpty()
    try:
        path = os.ttyname(follower)
        assert check_serial_port(path).status == "ok"
        # The permission branch, as a user outside the device's group would see it. Root can open
        # anything, so os.access is replaced by one answering like a denied user.
        denied = check_serial_port(path, access=lambda _path, _mode: False)
        assert denied.status == "fail"
        assert "usermod -aG" in denied.fix and "$USER" in denied.fix
    finally:
        os.close(leader)
        os.close(follower)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read and write any file")
def test_serial_port_without_permission_fails_for_a_normal_user():
    leader, follower = os.openpty()
    path = os.ttyname(follower)
    mode = os.stat(path).st_mode
    try:
        os.chmod(path, 0)
        check = check_serial_port(path)
        assert check.status == "fail"
        assert "usermod" in check.fix
    finally:
        os.chmod(path, mode)
        os.close(leader)
        os.close(follower)


def test_ftdi_latency_warns_above_one_ms_with_the_tee_command(tmp_path):
    for device, value in (("ttyUSB0", "16\n"), ("ttyUSB1", "1\n")):
        (tmp_path / device).mkdir()
        (tmp_path / device / "latency_timer").write_text(value)
    slow, fast = check_ftdi_latency(tmp_path)
    assert slow.status == "warn" and "16 ms" in slow.detail
    assert f"echo 1 | sudo tee {tmp_path}/ttyUSB0/latency_timer" in slow.fix
    assert 'ATTR{latency_timer}="1"' in slow.fix
    assert fast.status == "ok"
    (none,) = check_ftdi_latency(tmp_path / "absent")
    assert none.status == "ok"


def test_configured_realsense_serial_not_connected_fails_naming_it():
    check = check_realsense(["000000000000"])
    assert check.status == "fail"
    assert "000000000000" in check.detail
    assert check.fix


def test_disk_check_reports_free_gib(tmp_path):
    check = check_disk(tmp_path)
    assert check.status in ("ok", "warn")
    assert "GiB free" in check.detail and str(tmp_path) in check.detail
    # A root that does not exist yet is measured at its nearest parent, and nothing is created.
    missing = tmp_path / "not" / "yet"
    assert "GiB free" in check_disk(missing).detail
    assert not (tmp_path / "not").exists()
    assert check_disk(tmp_path, warn_gib=1e9, fail_gib=1e8).status == "fail"
    assert check_disk(tmp_path, warn_gib=1e9, fail_gib=0).status == "warn"


@pytest.mark.skipif(ctypes.util.find_library("EGL") is None, reason="libEGL is not installed")
def test_egl_offscreen_render_works_here():
    check = check_egl()
    assert check.status == "ok", check
    assert "32x32" in check.detail


def test_egl_timeout_is_a_fail_with_the_apt_fix():
    check = check_egl(timeout_s=0.01)
    assert check.status == "fail"
    assert "libegl1" in check.fix and "MUJOCO_GL=egl" in check.fix


def test_format_checks_one_line_per_check_plus_fix_lines():
    checks = [
        Check("python", "ok", f"Python {sys.version.split()[0]}"),
        Check("libusb", "fail", "libusb-1.0 not found", "sudo apt-get install libusb-1.0-0"),
        Check("gpu", "warn", "no CUDA GPU", "pip install -e .[gpu]"),
    ]
    lines = format_checks(checks).splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("ok    python")
    assert lines[1].startswith("fail  libusb")
    assert lines[2].strip() == "fix: sudo apt-get install libusb-1.0-0"
    assert lines[3].startswith("warn  gpu")
    # The detail column is aligned.
    detail_lines = [lines[0], lines[1], lines[3]]
    assert len({line.index(check.detail) for line, check in zip(detail_lines, checks, strict=True)}) == 1
    assert exit_code(checks) == 1
    assert exit_code(checks[:1] + checks[2:]) == 0


def test_run_checks_covers_every_check(tmp_path):
    checks = run_checks(
        data_root=tmp_path, serial_ports=[str(tmp_path / "ttyUSB9")], packages=[("numpy", "numpy")]
    )
    names = [check.name for check in checks]
    for expected in ("python", "pkg numpy", "egl-render", "libusb", "serial-detected", "realsense", "gpu"):
        assert expected in names
    assert f"serial {tmp_path / 'ttyUSB9'}" in names
    assert any(name.startswith("ftdi-latency") for name in names)
    assert names[-1] == "disk"
    assert all(check.fix for check in checks if check.status != "ok")
    assert len(format_checks(checks).splitlines()) == len(checks) + sum(c.status != "ok" for c in checks)


def test_codecs_check_names_the_package_that_lacks_a_codec():
    ok = check_codecs()
    assert ok.status == "ok" and "archive: av1 (PyAV)" in ok.detail
    lacking = check_codecs(
        archive="av1", missing_video=lambda codec: "the installed PyAV 99 has no libsvtav1 encoder"
    )
    assert (
        lacking.status == "warn"
        and "archive codec av1: the installed PyAV 99 has no libsvtav1" in lacking.detail
    )
