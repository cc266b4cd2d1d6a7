"""`xr0 --version`: what a bug report needs — this package's version and git commit, Python, and the
versions of the libraries whose behaviour the results depend on. Read from package metadata, so nothing
heavy (torch, transformers) is imported to print it."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGE = "xr0-workstation"
LIBRARIES = ("torch", "transformers", "zarr", "rerun-sdk", "mujoco", "numpy", "dynamixel-sdk", "pyrealsense2")
ROOT = Path(__file__).resolve().parents[2]


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit(root: Path = ROOT) -> str:
    """The checkout's commit (with "+changes" when the work tree differs), or "unknown" outside git."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def version_text() -> str:
    lines = [f"xr0-workstation {_version(PACKAGE)} (git {git_commit()})"]
    lines.append(f"python {platform.python_version()} on {platform.system()} {platform.machine()}")
    lines += [f"{name} {_version(name)}" for name in LIBRARIES]
    return "\n".join(lines)
