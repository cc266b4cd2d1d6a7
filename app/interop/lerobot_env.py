"""The isolated environment that runs the `lerobot` library for dataset export and import.

`lerobot` pins older torch, rerun-sdk, dynamixel-sdk and pyrealsense2 than this project uses, so it cannot
share our environment. The first export/import creates a virtual environment of its own (outside the
repository, in the user's cache, so every clone and CI run on the machine reuses it), installs the
pinned `lerobot` there plus zarr/imagecodecs to read our store, and from then on runs our small bridge
module (`recording.lerobot_bridge`) inside it. The interface is narrow: paths and options on the command
line, progress on stderr, one JSON report on stdout.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import venv
from pathlib import Path

from app.errors import UserError

log = logging.getLogger(__name__)

LEROBOT_VERSION = "0.4.4"
# What the bridge needs besides lerobot itself (to read and write our Zarr store).
EXTRA_PACKAGES = ("zarr>=3.1,<4", "imagecodecs>=2025.3")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def env_dir() -> Path:
    """Where the environment lives: $XR0_LEROBOT_ENV, else ~/.cache/xr0-workstation/lerobot-VERSION."""
    explicit = os.environ.get("XR0_LEROBOT_ENV")
    if explicit:
        return Path(explicit).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "xr0-workstation" / f"lerobot-{LEROBOT_VERSION}"


def _python(env: Path) -> Path:
    return env / "bin" / "python"


def _stamp(env: Path) -> Path:
    return env / ".xr0-ready"


def _wanted() -> str:
    return json.dumps({"lerobot": LEROBOT_VERSION, "extra": list(EXTRA_PACKAGES)})


def ensure_env() -> Path:
    """Create (first time) or reuse the LeRobot environment; returns its Python."""
    env = env_dir()
    if _stamp(env).is_file() and _stamp(env).read_text() == _wanted() and _python(env).exists():
        return _python(env)
    print(
        f"Creating the isolated LeRobot {LEROBOT_VERSION} environment in {env} (first time only: about 8 GB "
        "and 3 minutes; later exports reuse it)",
        file=sys.stderr,
        flush=True,
    )
    if not _python(env).exists():
        env.parent.mkdir(parents=True, exist_ok=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(env)
    cmd = [str(_python(env)), "-m", "pip", "install", "--progress-bar", "off", f"lerobot=={LEROBOT_VERSION}"]
    cmd += list(EXTRA_PACKAGES)
    logfile = env / "install.log"
    with open(logfile, "w") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = [ln for ln in logfile.read_text().splitlines() if not ln.startswith("WARNING: Location")][-5:]
        raise UserError(
            f"could not install lerobot=={LEROBOT_VERSION} into {env} (see {logfile}): " + " | ".join(tail)
        )
    _stamp(env).write_text(_wanted())
    return _python(env)


def run_bridge(args: list[str]) -> dict:
    """Run `python -m recording.lerobot_bridge ARGS` in the LeRobot environment; return its JSON report.

    Its stderr (progress bars, log lines) goes straight to the operator; stdout carries one JSON object.
    A failure inside the bridge comes back as {"error": "…"} and is raised as one sentence.
    """
    python = ensure_env()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT_ROOT)  # our store modules, importable with numpy + zarr only
    env["HF_HUB_OFFLINE"] = "1"  # never reach a hub implicitly: local paths only
    env.pop("PYTHONHOME", None)
    result = subprocess.run(
        [str(python), "-m", "recording.lerobot_bridge", *args],
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        env=env,
        check=False,
    )
    lines = [ln for ln in result.stdout.strip().splitlines() if ln.strip()]
    try:
        report = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        report = {}
    if result.returncode != 0 or "error" in report or not report:
        raise UserError(
            report.get("error") or f"the LeRobot bridge failed (exit {result.returncode}); see above"
        )
    return report
