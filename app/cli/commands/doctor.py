"""Environment checks behind `xr0 doctor`: one line per check, each with a fix the operator can run.

Every check is a small function returning a `Check` (or a list of them, one per port or device).
Nothing here reads config.yaml or environment variables: the caller passes the data root, the
configured serial ports and RealSense serials. A check that breaks unexpectedly is reported as a
failed check, never raised, so one broken subsystem cannot hide the others.
"""

from __future__ import annotations

import argparse
import ctypes.util
import grp
import importlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from app.compose.config import AppConfig

logger = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str  # short id shown in the second column, e.g. "pkg torch", "serial /dev/ttyUSB0"
    status: Status  # ok: nothing to do; warn: works but degraded; fail: a feature will not work
    detail: str  # what was found, in one line
    fix: str = ""  # for warn/fail: the command(s) the operator can run


# (import name, pip package name): what `pip install -e .` should have installed.
DEFAULT_PACKAGES: tuple[tuple[str, str], ...] = (
    ("numpy", "numpy"),
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("zarr", "zarr"),
    ("imagecodecs", "imagecodecs"),
    ("rerun", "rerun-sdk"),
    ("dynamixel_sdk", "dynamixel-sdk"),
    ("pyrealsense2", "pyrealsense2"),
    ("mujoco", "mujoco"),
    ("gym_aloha", "gym-aloha"),
    ("yaml", "pyyaml"),
    ("serial", "pyserial"),
)

MIN_PYTHON = (3, 11)
EGL_TIMEOUT_S = 60.0
DISK_WARN_GIB = 20.0
DISK_FAIL_GIB = 2.0
FTDI_VENDOR_ID = 0x0403
USB_SERIAL_SYSFS = Path("/sys/bus/usb-serial/devices")

EGL_APT_FIX = "sudo apt-get install libegl1 libgl1 libegl-mesa0"
LIBUSB_APT_FIX = "sudo apt-get install libusb-1.0-0"
# Shared libraries our dependencies dlopen, and the Debian/Ubuntu package that provides each.
_APT_PACKAGE_FOR_LIB = {
    "libusb-1.0": "libusb-1.0-0",
    "libEGL": "libegl1",
    "libGL": "libgl1",
    "libOSMesa": "libosmesa6",
    "libGLdispatch": "libglvnd0",
}
_SERIAL_UDEV_RULE = 'KERNEL=="ttyUSB*", MODE="0666"'
_FTDI_UDEV_RULE = 'ACTION=="add", SUBSYSTEM=="usb-serial", DRIVER=="ftdi_sio", ATTR{latency_timer}="1"'
_GIB = 1024**3


# --- python and packages ------------------------------------------------------------------------


def check_python(
    version_info: Sequence[int] = sys.version_info, minimum: tuple[int, int] = MIN_PYTHON
) -> Check:
    """Python must be at least `minimum` (pyproject's requires-python)."""
    found = ".".join(str(part) for part in version_info[:3])
    want = ".".join(str(part) for part in minimum)
    if tuple(version_info[:2]) >= minimum:
        return Check("python", "ok", f"Python {found} ({sys.executable})")
    return Check(
        "python",
        "fail",
        f"Python {found} is too old: xr0-workstation needs Python >= {want}",
        f"sudo apt-get install python{want} python{want}-venv && python{want} -m venv .venv "
        "&& .venv/bin/pip install -e .",
    )


def _missing_library_fix(message: str) -> str | None:
    """If an import failed because a shared library is missing, the apt command that provides it."""
    match = re.search(r"(lib[\w.+-]+?)\.so[\w.]*: cannot open shared object file", message)
    if match is None:
        return None
    lib = match.group(1)
    package = _APT_PACKAGE_FOR_LIB.get(lib)
    if package is not None:
        return f"sudo apt-get install {package}"
    return f"install the system package that provides {lib}.so (find it with `apt-file search {lib}.so`)"


def check_package(import_name: str, pip_name: str) -> Check:
    """Import `import_name` and report its installed version; a broken import is reported, not raised."""
    name = f"pkg {import_name}"
    try:
        module = importlib.import_module(import_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == import_name.split(".")[0]:
            return Check(
                name,
                "fail",
                f"{import_name} is not installed (pip package {pip_name})",
                f"pip install -e .  (in the project), or: pip install {pip_name}",
            )
        # The package is there but one of its own dependencies is not.
        return Check(
            name,
            "fail",
            f"import {import_name} failed: {exc}",
            f"pip install --force-reinstall {pip_name}",
        )
    except Exception as exc:  # ImportError, OSError, or anything a broken package raises at import
        message = f"{type(exc).__name__}: {exc}"
        fix = _missing_library_fix(message) or f"pip install --force-reinstall {pip_name}"
        return Check(name, "fail", f"import {import_name} failed: {message}", fix)
    try:
        version = importlib.metadata.version(pip_name)
    except importlib.metadata.PackageNotFoundError:
        version = str(getattr(module, "__version__", "unknown version"))
    return Check(name, "ok", f"{pip_name} {version}")


def check_packages(packages: Sequence[tuple[str, str]] = DEFAULT_PACKAGES) -> list[Check]:
    return [check_package(import_name, pip_name) for import_name, pip_name in packages]


# --- rendering and system libraries --------------------------------------------------------------

# Runs in a child process: a GL crash (segfault, abort) there cannot take the doctor down, and
# MUJOCO_GL is set before mujoco is first imported.
_EGL_SCRIPT = """
import json
import mujoco
model = mujoco.MjModel.from_xml_string(
    "<mujoco><worldbody><light pos='0 0 1'/><geom type='sphere' size='0.1'/></worldbody></mujoco>"
)
data = mujoco.MjData(model)
mujoco.mj_forward(model, data)
renderer = mujoco.Renderer(model, 32, 32)
renderer.update_scene(data)
image = renderer.render()
gl = ""
try:
    from OpenGL import GL
    gl = GL.glGetString(GL.GL_RENDERER).decode(errors="replace")
except Exception:
    pass
renderer.close()
print(json.dumps({"shape": list(image.shape), "max": int(image.max()), "renderer": gl}))
"""


def check_egl(timeout_s: float = EGL_TIMEOUT_S, python: str = sys.executable) -> Check:
    """Render one 32x32 MuJoCo frame offscreen through EGL, in a subprocess."""
    name = "egl-render"
    fix = f"{EGL_APT_FIX}; then export MUJOCO_GL=egl before running xr0"
    env = {**os.environ, "MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"}
    try:
        result = subprocess.run(
            [python, "-c", _EGL_SCRIPT], env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return Check(name, "fail", f"MuJoCo EGL render did not finish within {timeout_s:g} s", fix)
    except OSError as exc:
        return Check(name, "fail", f"could not start {python}: {exc}", fix)
    if result.returncode != 0:
        if result.returncode < 0:
            how = f"crashed with {signal.Signals(-result.returncode).name}"
        else:
            how = f"exited with status {result.returncode}"
        lines = result.stderr.strip().splitlines()
        last = f": {lines[-1]}" if lines else ""
        return Check(name, "fail", f"MuJoCo EGL render {how}{last}", fix)
    try:
        report = json.loads(result.stdout.strip().splitlines()[-1])
        height, width = report["shape"][:2]
    except (IndexError, ValueError, KeyError, TypeError):
        return Check(name, "fail", f"MuJoCo EGL render printed no result: {result.stdout[-200:]!r}", fix)
    renderer = f", {report['renderer']}" if report.get("renderer") else ""
    return Check(name, "ok", f"MuJoCo renders offscreen ({width}x{height}{renderer})")


def check_libusb() -> Check:
    """libusb-1.0 is what pyrealsense2 needs to talk to (and even to import for) RealSense cameras."""
    found = ctypes.util.find_library("usb-1.0")
    if found:
        return Check("libusb", "ok", f"libusb-1.0 found ({found})")
    return Check(
        "libusb",
        "fail",
        "libusb-1.0 not found: pyrealsense2 cannot load, so RealSense cameras are unavailable",
        LIBUSB_APT_FIX,
    )


# --- serial ports and the FTDI latency timer ------------------------------------------------------


def check_serial_port(path: str, access: Callable[[str, int], bool] = os.access) -> Check:
    """A configured Dynamixel port must exist, be a character device and be read/writable by us.

    `access` is `os.access` unless a caller (a test running as root, where everything is
    accessible) needs to see the permission branch.
    """
    name = f"serial {path}"
    if not os.path.exists(path):
        return Check(
            name,
            "fail",
            f"{path} does not exist (arm unplugged, or a different ttyUSB number)",
            "plug the U2D2/FTDI adapter in and pick the port from the 'serial-detected' line "
            "(stable names: ls -l /dev/serial/by-id/)",
        )
    info = os.stat(path)
    if not stat.S_ISCHR(info.st_mode):
        return Check(
            name,
            "fail",
            f"{path} exists but is not a serial device",
            "set the port to a device such as /dev/serial/by-id/usb-FTDI_...  (ls -l /dev/serial/by-id/)",
        )
    if not access(path, os.R_OK | os.W_OK):
        try:
            group = grp.getgrgid(info.st_gid).gr_name
        except KeyError:
            group = "dialout"
        return Check(
            name,
            "fail",
            f"{path} is not readable and writable by this user (owned by group {group!r})",
            f"sudo usermod -aG {group} $USER  then log out and back in; or a udev rule: "
            f"echo '{_SERIAL_UDEV_RULE}' | sudo tee /etc/udev/rules.d/99-xr0-serial.rules "
            "&& sudo udevadm control --reload-rules && sudo udevadm trigger",
        )
    return Check(name, "ok", f"{path} is present and read/writable")


def check_detected_serial_ports() -> Check:
    """List the serial ports the OS sees, marking FTDI adapters (U2D2 and friends)."""
    name = "serial-detected"
    try:
        from serial.tools import list_ports
    except Exception as exc:  # pyserial missing or broken
        return Check(name, "warn", f"cannot list serial ports: {exc}", "pip install pyserial")
    ports = sorted(list_ports.comports(), key=lambda port: port.device)
    if not ports:
        return Check(name, "ok", "no serial ports detected")
    described = []
    for port in ports:
        if port.vid == FTDI_VENDOR_ID:
            serial = f" sn={port.serial_number}" if port.serial_number else ""
            described.append(f"{port.device} (FTDI {port.vid:04x}:{port.pid or 0:04x}{serial})")
        elif port.vid is not None:
            described.append(f"{port.device} (usb {port.vid:04x}:{port.pid or 0:04x})")
        else:
            described.append(port.device)
    ftdi = sum(port.vid == FTDI_VENDOR_ID for port in ports)
    return Check(name, "ok", f"{len(ports)} port(s), {ftdi} FTDI: " + ", ".join(described))


def check_ftdi_latency(sysfs_dir: Path = USB_SERIAL_SYSFS, max_ms: int = 1) -> list[Check]:
    """FTDI adapters default to a 16 ms latency timer, which caps a Dynamixel sync read near 60 Hz."""
    timers = sorted(sysfs_dir.glob("ttyUSB*/latency_timer")) if sysfs_dir.is_dir() else []
    if not timers:
        return [Check("ftdi-latency", "ok", "no FTDI USB-serial devices (nothing to tune)")]
    persist = (
        f"echo '{_FTDI_UDEV_RULE}' | sudo tee /etc/udev/rules.d/99-xr0-ftdi-latency.rules "
        "&& sudo udevadm control --reload-rules && sudo udevadm trigger"
    )
    checks = []
    for timer in timers:
        device = timer.parent.name
        name = f"ftdi-latency {device}"
        try:
            latency_ms = int(timer.read_text().strip())
        except (OSError, ValueError) as exc:
            checks.append(Check(name, "warn", f"cannot read {timer}: {exc}", f"sudo cat {timer}"))
            continue
        if latency_ms <= max_ms:
            checks.append(Check(name, "ok", f"latency timer {latency_ms} ms"))
            continue
        checks.append(
            Check(
                name,
                "warn",
                f"latency timer {latency_ms} ms (> {max_ms} ms): bus reads will be slow and jittery",
                f"echo 1 | sudo tee {timer}  (now); to persist: {persist}",
            )
        )
    return checks


# --- cameras, GPU, disk ---------------------------------------------------------------------------


def check_realsense(serials: Sequence[str] = ()) -> Check:
    """List connected RealSense cameras; every configured serial must be among them."""
    name = "realsense"
    wanted = ", ".join(serials)
    try:
        from drivers.realsense import list_devices

        devices = list_devices()  # the same code as `xr0 cameras`
    except (
        Exception
    ) as exc:  # DependencyMissing (ImportError/OSError inside): not installed, or libusb missing
        message = f"{type(exc.__cause__ or exc).__name__}: {exc.__cause__ or exc}"
        fix = _missing_library_fix(message) or "pip install pyrealsense2"
        if serials:
            return Check(name, "fail", f"cannot look for configured camera(s) {wanted}: {message}", fix)
        return Check(name, "warn", f"pyrealsense2 unavailable ({message}); sim cameras only", fix)

    found = [(d.serial, f"{d.name} sn={d.serial} fw={d.firmware} usb={d.usb_type or '?'}") for d in devices]
    slow_usb = [d.serial for d in devices if d.usb_type.startswith("2")]
    listing = "; ".join(text for _, text in found) or "none"
    missing = [serial for serial in serials if serial not in {serial for serial, _ in found}]
    if missing:
        return Check(
            name,
            "fail",
            f"configured camera(s) {', '.join(missing)} not connected; connected: {listing}",
            "plug the camera(s) into a USB 3 port, or set the serials in config.yaml to connected ones",
        )
    if not found:
        return Check(name, "ok", "none connected (sim cameras in use)")
    if slow_usb:
        return Check(
            name,
            "warn",
            f"{listing}; {', '.join(slow_usb)} on USB 2 (too slow for several streams at 30 Hz)",
            "move the camera(s) to a USB 3 port and use a USB 3 cable",
        )
    return Check(name, "ok", listing)


def check_gpu() -> list[Check]:
    """CUDA GPUs for training and inference, and flash-attn for fast attention on them."""
    try:
        import torch
    except Exception as exc:
        return [Check("gpu", "fail", f"torch unavailable: {exc}", "pip install -e .")]
    if not torch.cuda.is_available():
        return [
            Check(
                "gpu",
                "warn",
                f"no CUDA GPU (torch {torch.__version__}): training/inference run on CPU (tiny models only)",
                "use a machine with an NVIDIA GPU and a CUDA build of torch, or serve the policy from one "
                "(xr0 serve)",
            ),
            Check("flash-attn", "ok", "not needed without a CUDA GPU"),
        ]
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(f"cuda:{index} {props.name} {props.total_memory / _GIB:.0f} GiB")
    checks = [Check("gpu", "ok", f"CUDA {torch.version.cuda}: " + ", ".join(devices))]
    try:
        import flash_attn
    except Exception as exc:
        checks.append(
            Check(
                "flash-attn",
                "warn",
                f"flash_attn not importable ({type(exc).__name__}: {exc}); attention falls back to sdpa",
                "pip install -e .[gpu]",
            )
        )
    else:
        checks.append(Check("flash-attn", "ok", f"flash-attn {getattr(flash_attn, '__version__', '?')}"))
    return checks


def check_disk(data_root: Path, warn_gib: float = DISK_WARN_GIB, fail_gib: float = DISK_FAIL_GIB) -> Check:
    """Free space where datasets will be written (the nearest existing parent; nothing is created)."""
    root = Path(data_root).expanduser().absolute()
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free_gib = shutil.disk_usage(existing).free / _GIB
    where = str(root) if existing == root else f"{root} (not created yet; measured at {existing})"
    detail = f"{free_gib:.1f} GiB free under {where}"
    fix = f"free space (du -sh {existing}/* | sort -h) or point the data root at a larger disk (df -h)"
    if free_gib < fail_gib:
        return Check("disk", "fail", f"{detail}: below {fail_gib:g} GiB, recording will stop", fix)
    if free_gib < warn_gib:
        return Check("disk", "warn", f"{detail}: below {warn_gib:g} GiB", fix)
    return Check("disk", "ok", detail)


def check_loop_priority(probe: Callable[[], tuple[bool, bool]] | None = None) -> Check:
    """Whether the control loop can have real-time scheduling (runtime.loop_priority: auto asks for it)."""
    from app.runtime.priority import NICE, RT_PRIORITY, can_raise

    realtime, nice = (probe or can_raise)()
    if realtime:
        return Check("loop-priority", "ok", f"the control loop can run at SCHED_FIFO {RT_PRIORITY}")
    fix = (
        "run as root, or give the user an rtprio limit: a line `USER - rtprio 50` in "
        "/etc/security/limits.d/xr0.conf (then log in again); or `sudo setcap cap_sys_nice+ep` on the python binary"
    )
    if nice:
        return Check(
            "loop-priority", "warn", f"no real-time scheduling; the control loop runs at nice {NICE}", fix
        )
    return Check(
        "loop-priority",
        "warn",
        "no real-time scheduling or raised priority: the loop competes with everything",
        fix,
    )


def check_codecs(
    live: tuple[str, ...] = ("jpeg", "png"),
    archive: str = "av1",
    missing_video: Callable[[str], str | None] | None = None,
) -> Check:
    """The live tier's image codecs (imagecodecs) and the archive tier's video codec (PyAV) are usable."""
    import imagecodecs

    from recording.video import missing

    problems = []
    for name in live:
        codec = getattr(imagecodecs, {"jpeg": "JPEG8", "png": "PNG"}[name], None)
        if codec is None or not codec.available:
            problems.append(f"the installed imagecodecs {imagecodecs.__version__} lacks {name}")
    why = (missing_video or missing)(archive)
    if why:
        problems.append(f"archive codec {archive}: {why}")
    if problems:
        return Check(
            "codecs",
            "fail" if len(problems) > 1 or not why else "warn",
            "; ".join(problems),
            "pip install --force-reinstall imagecodecs av (in the project's environment: ./xr0w)",
        )
    return Check("codecs", "ok", f"live: {', '.join(live)} (imagecodecs); archive: {archive} (PyAV)")


# --- running and reporting ------------------------------------------------------------------------


def _guarded(name: str, check: Callable[[], Check | list[Check]]) -> list[Check]:
    """Run one check; an unexpected error becomes a failed line instead of ending the doctor."""
    try:
        result = check()
    except Exception as exc:
        logger.exception("check %s raised", name)
        return [Check(name, "fail", f"check crashed: {type(exc).__name__}: {exc}", "report this as a bug")]
    return result if isinstance(result, list) else [result]


def run_checks(
    *,
    data_root: Path,
    serial_ports: Sequence[str] = (),
    realsense_serials: Sequence[str] = (),
    packages: Sequence[tuple[str, str]] = DEFAULT_PACKAGES,
    archive_codec: str = "av1",
) -> list[Check]:
    """Run every check, in the order an operator would fix them."""
    steps: list[tuple[str, Callable[[], Check | list[Check]]]] = [
        ("python", check_python),
        *[(f"pkg {imp}", lambda imp=imp, pip=pip: check_package(imp, pip)) for imp, pip in packages],
        ("egl-render", check_egl),
        ("libusb", check_libusb),
        *[(f"serial {port}", lambda port=port: check_serial_port(port)) for port in serial_ports],
        ("serial-detected", check_detected_serial_ports),
        ("ftdi-latency", check_ftdi_latency),
        ("realsense", lambda: check_realsense(realsense_serials)),
        ("gpu", check_gpu),
        ("loop-priority", check_loop_priority),
        ("codecs", lambda: check_codecs(archive=archive_codec)),
        ("disk", lambda: check_disk(data_root)),
    ]
    checks: list[Check] = []
    for name, step in steps:
        for check in _guarded(name, step):
            logger.debug("%s %s: %s", check.status, check.name, check.detail)
            checks.append(check)
    return checks


def format_checks(checks: list[Check]) -> str:
    """Aligned lines `status  name  detail`, each warn/fail followed by an indented `fix:` line."""
    width = max((len(check.name) for check in checks), default=0) + 2
    lines = []
    for check in checks:
        lines.append(f"{check.status:<6}{check.name:<{width}}{check.detail}")
        if check.status != "ok" and check.fix:
            lines.append(f"{'':6}fix: {check.fix}")
    return "\n".join(lines)


def exit_code(checks: Iterable[Check]) -> int:
    """1 if any check failed, else 0 (warnings do not fail the doctor)."""
    return 1 if any(check.status == "fail" for check in checks) else 0


# -- command line: `xr0 doctor` ---------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, config: AppConfig) -> int:
    """Check the machine against the config: configured ports and cameras only on real robots."""
    on_hardware = config.robot.type != "sim"
    ports = [a.port for a in config.robot.arms.values() if a.port] if on_hardware else []
    serials = (
        [c.serial for c in config.cameras.values() if c.type == "realsense" and c.serial]
        if on_hardware
        else []
    )
    checks = run_checks(
        data_root=config.data_root,
        serial_ports=ports,
        realsense_serials=serials,
        archive_codec=config.recording.archive_codec,
    )
    print(format_checks(checks))
    return exit_code(checks)
