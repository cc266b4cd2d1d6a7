"""What is recorded about the set-up, where datasets live, and the checks before a store is written."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.compose.config import AppConfig
from app.errors import UserError, prog
from app.runtime.rig import Rig
from recording.schema import bytes_on_disk  # noqa: F401 - re-exported: dataset info, benchmarks

if TYPE_CHECKING:
    from recording.schema import StoreSpec

log = logging.getLogger(__name__)


def preflight(path: Path) -> None:
    """Fail before touching the robot if the store cannot be appended to. A compaction of the store (e.g.
    one started in the background after the last session) is stopped: recording comes first."""
    from recording.schema import COMMITTED, StoreError, check_store, episode_attrs, episode_dirs
    from recording.writer import stop_compaction

    try:
        stopped = stop_compaction(path)
    except StoreError as e:
        raise UserError(str(e)) from e
    if stopped is not None:
        log.warning(
            "stopped the compaction of %s (pid %d) to record: it finishes with `%s dataset compact %s`, or "
            "after this session when recording.compact_after is on",
            path,
            stopped,
            prog(),
            path,
        )
    if not path.exists():
        if not path.parent.exists():
            raise UserError(f"cannot create dataset {path}: the folder {path.parent} does not exist")
        return
    try:
        check_store(path)
        partial = []
        for index, directory in episode_dirs(path).items():
            try:
                status = episode_attrs(directory).get("status")
            except StoreError:
                status = None
            if status != COMMITTED:
                partial.append(index)
    except StoreError as e:
        raise UserError(str(e)) from e
    if partial:
        raise UserError(
            f"dataset {path} has partial episode(s) {', '.join(map(str, partial))} left by an interrupted "
            f"recording; run `{prog()} dataset repair --dataset {path}` (recover, or --drop) first"
        )


COMPACT_LOG = ".xr0-compact.log"


def compact_in_background(path: Path, config: AppConfig) -> int | None:
    """Start `xr0 dataset compact PATH` as a detached process (its own session: a Ctrl-C in this terminal
    does not reach it) with the configured archive settings, on one CPU at nice +10, writing to
    PATH/.xr0-compact.log. Returns its pid, or None (and why, logged) when it cannot start."""
    rec = config.recording
    argv = [
        sys.executable, "-m", "app.cli.main", "dataset", "compact", "--dataset", str(path),
        "--codec", rec.archive_codec, "--crf", str(rec.archive_crf), "--preset", str(rec.archive_preset),
        "--segment-steps", str(rec.archive_segment_steps), "--threads", "1",
    ]  # fmt: skip
    try:
        with open(path / COMPACT_LOG, "ab") as out:
            child = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True
            )
    except OSError as e:
        log.warning("could not start the background compaction of %s: %s", path, e)
        return None
    return child.pid


# -- what is recorded about the set-up --------------------------------------------------------------------------
def calibration_identity(config: AppConfig) -> dict[str, Any]:
    """Which robot and calibration produced the data: the sim scene, or each arm's calibration file hash."""
    if config.robot.type == "sim":
        sim = config.robot.sim
        return {"kind": "sim", "task": sim.task, "physics_timestep_s": sim.physics_timestep_s}
    arms = {}
    for name, arm in config.robot.arms.items():
        path = config.resolve(arm.calibration) if arm.calibration else None
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path and path.is_file() else None
        arms[name] = {"file": str(path) if path else None, "sha256": digest}
    return {"kind": config.robot.type, "arms": arms}


def build_spec(config: AppConfig, rig: Rig, velocity: bool, effort: bool) -> StoreSpec:
    """The store's layout for this set-up (velocity/effort: whether the arms measure them)."""
    from recording.schema import StoreSpec

    features = rig.robot.features()
    rec = config.recording
    return StoreSpec(
        fps=config.control.fps,
        joint_names=tuple(features.joint_names),
        cameras={n: tuple(s) for n, s in features.cameras.items()},
        robot_type=config.robot.type,
        velocity=velocity,
        effort=effort,
        leader=features.has_leaders,
        image_codec=rec.image_codec,
        jpeg_quality=rec.jpeg_quality,
        image_shard_steps=rec.image_shard_steps,
    )


def default_task(config: AppConfig) -> str:
    sim_tasks = {
        "transfer_cube": "transfer the cube to the other arm",
        "insertion": "insert the peg into the socket",
    }
    if config.robot.type == "sim":
        return sim_tasks.get(config.robot.sim.task, config.policy.instruction)
    return config.policy.instruction


def resolve_dataset(arg: str | None, config: AppConfig) -> Path:
    """`--dataset`: a path (relative to the current folder), or a bare NAME under recording.root."""
    if not arg:
        name = config.robot.sim.task if config.robot.type == "sim" else "teleop"
        return config.data_root / f"{config.robot.type}_{name}.zarr"
    p = Path(arg).expanduser()
    if p.is_absolute() or len(p.parts) > 1:
        return p.resolve()
    return config.data_root / (arg if arg.endswith(".zarr") else f"{arg}.zarr")


def check_disk(path: Path, bytes_needed: float, margin: float) -> float:
    """Free bytes at `path`; refuses (UserError) when below `bytes_needed × margin`."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < bytes_needed * margin:
        raise UserError(
            f"not enough disk space for the planned episodes at {path}: they need about "
            f"{bytes_needed / 1e9:.2f} GB (×{margin:g} margin) but {free / 1e9:.2f} GB are free; free space, "
            "record fewer or shorter episodes, or lower recording.jpeg_quality"
        )
    return free
