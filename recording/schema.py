"""The layout of an xr0 episode store (format `xr0-episodes`, version 1) and the errors its readers raise.

    NAME.zarr/                      Zarr v3 group; attributes: format, format_version, fps, robot_type,
                                    joint_names, cameras {name: [H, W, 3]}, image_codec, keys, units, stats
      episodes/                     group
        episode_000000/             group; attributes: status (recording | committed), task, success, …
          timestamp_ns              (T,)  int64   the tick's deadline on the host monotonic clock
          observation.state         (T, 14) float64 …  one array per key, listed by `StoreSpec.arrays()`
          observation.images.cam_high  (T, H, W, 3) uint8, one JPEG per chunk, ~1 s of frames per shard file

Each episode is its own group, so finishing or dropping one never rewrites another's files, and a
committed episode is never touched again. The `status` attribute of the episode group is the commit
marker: it is written last, after every array holds its data, in one atomic file replace.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_NAME = "xr0-episodes"
FORMAT_VERSION = 1
EPISODES_GROUP = "episodes"
EPISODE_RE = re.compile(r"^episode_(\d{6,})$")
DISCARDED_PREFIX = ".discarded-"  # an episode being deleted is first renamed to this prefix
COMPACT_PREFIX = ".compact-"  # an episode being compacted is built under this prefix, then swapped in
TEMP_SUFFIX = ".partial"  # zarr writes each file as NAME.<uuid>.partial, then renames it into place

# Episode status values (the commit marker).
RECORDING = "recording"
COMMITTED = "committed"

# Rough compressed bytes per pixel, for disk-space estimates (camera images; the simulator's are smaller).
BYTES_PER_PIXEL = {"jpeg": 0.35, "png": 2.0}
NUMERIC_BYTES_PER_STEP = 1500


class StoreError(Exception):
    """A dataset path, its format or its data is not what was expected; the message is one sentence."""


class StoreBusy(StoreError):
    """Another process is writing to the store."""


def episode_name(index: int) -> str:
    return f"episode_{index:06d}"


@dataclass(frozen=True)
class ArraySpec:
    """One per-step array of an episode: its key, dtype, shape of one step, unit and meaning."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    unit: str
    description: str
    image: bool = False

    def to_attrs(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "unit": self.unit,
            "description": self.description,
        }


@dataclass(frozen=True)
class StoreSpec:
    """What a store holds: the rate, the joints, the cameras and which optional arrays are present."""

    fps: float
    joint_names: tuple[str, ...]
    cameras: dict[str, tuple[int, int, int]]  # name -> (H, W, 3)
    robot_type: str
    velocity: bool = True  # observation.velocity is recorded
    effort: bool = True  # observation.effort is recorded
    leader: bool = True  # the leader's raw command (teleop) is recorded
    image_codec: str = "jpeg"
    jpeg_quality: int = 90
    image_shard_steps: int = 30
    numeric_chunk_steps: int = 1024
    # A policy rollout's chunk length T: adds the policy.* arrays (chunk ids, planned actions, the chunks
    # received). 0 for teleoperation.
    policy_chunk: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form store-level attributes

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if not self.joint_names:
            raise ValueError("joint_names must not be empty")
        for name, shape in self.cameras.items():
            if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
                raise ValueError(f"camera {name}: shape must be (H, W, 3), got {tuple(shape)}")
        if self.image_codec not in BYTES_PER_PIXEL:
            raise ValueError(f"image_codec must be jpeg or png, got {self.image_codec!r}")

    def arrays(self) -> list[ArraySpec]:
        j = (len(self.joint_names),)
        host = "ns, host monotonic clock"
        out = [
            ArraySpec("timestamp_ns", "int64", (), host, "the control tick's deadline"),
            ArraySpec(
                "tick",
                "int64",
                (),
                "ticks",
                "control tick index since the session started; a gap is a skipped tick",
            ),
            ArraySpec("lateness_ns", "int64", (), "ns", "how late the loop woke up for the tick"),
            ArraySpec(
                "observation.state", "float64", j, "rad; gripper 0=closed..1=open", "follower joint positions"
            ),
            ArraySpec("observation.state.t_ns", "int64", (), host, "capture time of the joint read"),
        ]
        if self.velocity:
            out.append(
                ArraySpec(
                    "observation.velocity",
                    "float64",
                    j,
                    "rad/s; gripper fraction/s",
                    "follower joint velocities",
                )
            )
        if self.effort:
            out.append(
                ArraySpec(
                    "observation.effort",
                    "float64",
                    j,
                    "device units (Dynamixel mA, sim N or N·m)",
                    "follower joint efforts",
                )
            )
        out += [
            ArraySpec(
                "action",
                "float64",
                j,
                "rad; gripper 0=closed..1=open",
                "the command sent to the followers, after the safety layer",
            ),
            ArraySpec("action.t_ns", "int64", (), host, "when the command was sent"),
            ArraySpec("action.clamped", "int16", (), "joints", "joints the safety layer clamped this tick"),
            ArraySpec(
                "action.rejected", "bool", (), "", "the request was refused (non-finite) and the arms held"
            ),
        ]
        if self.leader:
            out += [
                ArraySpec(
                    "leader.action",
                    "float64",
                    j,
                    "rad; gripper 0=closed..1=open",
                    "the leader arms' raw command (before safety)",
                ),
                ArraySpec("leader.t_ns", "int64", (), host, "capture time of the leader read"),
            ]
        if self.policy_chunk:
            out += [
                ArraySpec(
                    "policy.chunk_id",
                    "int64",
                    (),
                    "",
                    "chunk the executed action came from; -1: the arms held",
                ),
                ArraySpec("policy.chunk_index", "int64", (), "", "row of that chunk; -1: the arms held"),
                ArraySpec(
                    "policy.planned",
                    "float64",
                    j,
                    "rad; gripper 0..1",
                    "the planned action, before the safety layer",
                ),
                ArraySpec(
                    "policy.new_chunk_id", "int64", (), "", "id of the chunk received on this tick; -1: none"
                ),
                ArraySpec(
                    "policy.new_chunk_start",
                    "int64",
                    (),
                    "ticks",
                    "the tick row 0 of the received chunk belongs to",
                ),
                ArraySpec(
                    "policy.new_chunk",
                    "float64",
                    (self.policy_chunk, *j),
                    "rad; gripper 0..1",
                    "the chunk received on this tick as it was executed (prefix rows enforced); zeros otherwise",
                ),
            ]
        for cam, shape in self.cameras.items():
            key = f"observation.images.{cam}"
            out += [
                ArraySpec(key, "uint8", tuple(shape), "RGB", f"camera {cam}", image=True),
                ArraySpec(f"{key}.t_ns", "int64", (), host, f"capture time of the {cam} frame"),
                ArraySpec(
                    f"{key}.index",
                    "int64",
                    (),
                    "frames",
                    f"{cam} frame counter; a repeated value is a duplicated frame",
                ),
            ]
        return out

    def keys(self) -> list[str]:
        return [a.key for a in self.arrays()]

    def bytes_per_step(self) -> float:
        """A rough estimate of the stored bytes per step (for the disk-space check before recording)."""
        pixels = sum(h * w for h, w, _ in self.cameras.values())
        return pixels * BYTES_PER_PIXEL[self.image_codec] + NUMERIC_BYTES_PER_STEP

    def to_attrs(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "fps": self.fps,
            "robot_type": self.robot_type,
            "joint_names": list(self.joint_names),
            "cameras": {n: list(s) for n, s in self.cameras.items()},
            "optional": {
                "velocity": self.velocity,
                "effort": self.effort,
                "leader": self.leader,
                "policy_chunk": self.policy_chunk,
            },
            "image_codec": {"name": self.image_codec, "jpeg_quality": self.jpeg_quality},
            "layout": {
                "image_shard_steps": self.image_shard_steps,
                "numeric_chunk_steps": self.numeric_chunk_steps,
            },
            "keys": {a.key: a.to_attrs() for a in self.arrays()},
            "units": {
                "joints": "rad",
                "gripper": "fraction, 0 = closed … 1 = open",
                "time": "ns on the host's monotonic clock (simulated clock in lockstep simulation)",
                "images": "RGB uint8, H×W×3",
            },
            **({"extra": self.extra} if self.extra else {}),
        }

    @staticmethod
    def from_attrs(attrs: dict[str, Any], where: str = "the store") -> StoreSpec:
        try:
            opt = attrs.get("optional", {})
            codec = attrs.get("image_codec", {})
            layout = attrs.get("layout", {})
            return StoreSpec(
                fps=float(attrs["fps"]),
                joint_names=tuple(attrs["joint_names"]),
                cameras={n: tuple(int(x) for x in s) for n, s in attrs["cameras"].items()},
                robot_type=str(attrs.get("robot_type", "")),
                velocity=bool(opt.get("velocity", True)),
                effort=bool(opt.get("effort", True)),
                leader=bool(opt.get("leader", True)),
                policy_chunk=int(opt.get("policy_chunk", 0)),
                image_codec=str(codec.get("name", "jpeg")),
                jpeg_quality=int(codec.get("jpeg_quality", 90)),
                image_shard_steps=int(layout.get("image_shard_steps", 30)),
                numeric_chunk_steps=int(layout.get("numeric_chunk_steps", 1024)),
                extra=dict(attrs.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{where}: the root attributes are incomplete or invalid ({e!r})") from e

    def difference(self, other: StoreSpec) -> str | None:
        """The first field in which two specs disagree, as a sentence fragment (None if compatible)."""
        for name in ("fps", "joint_names", "cameras", "velocity", "effort", "leader", "policy_chunk"):
            a, b = getattr(self, name), getattr(other, name)
            if name == "cameras":
                a = {k: tuple(v) for k, v in a.items()}
                b = {k: tuple(v) for k, v in b.items()}
            if a != b:
                return f"{name} is {a!r} in the store but {b!r} now"
        return None


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{what}: {path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{what}: {path} cannot be read as JSON ({e})") from e
    if not isinstance(data, dict):
        raise StoreError(f"{what}: {path} is not a JSON object")
    return data


def check_store(path: Path) -> dict[str, Any]:
    """The root attributes of the xr0 episode store at `path`, or a one-sentence `StoreError` saying why not."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"dataset {path} does not exist")
    if not path.is_dir():
        raise StoreError(f"dataset {path} is a file, not a Zarr store directory")
    meta_file = path / "zarr.json"
    if not meta_file.exists():
        if (path / ".zgroup").exists() or (path / ".zarray").exists():
            raise StoreError(
                f"dataset {path} is a Zarr v2 store; xr0 reads Zarr v3 stores of format {FORMAT_NAME} "
                "(convert it, or record a new one with `xr0 record`)"
            )
        raise StoreError(f"dataset {path} is not a Zarr store (it has no zarr.json)")
    meta = read_json(meta_file, f"dataset {path}")
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
        raise StoreError(
            f"dataset {path} is not a Zarr v3 group (zarr_format {meta.get('zarr_format')!r}, "
            f"node_type {meta.get('node_type')!r})"
        )
    attrs = meta.get("attributes") or {}
    fmt = attrs.get("format")
    if fmt != FORMAT_NAME:
        raise StoreError(
            f"dataset {path} is a Zarr store of another format ({'no format attribute' if fmt is None else f'format {fmt!r}'}), "
            f"not an {FORMAT_NAME} store written by xr0"
        )
    version = attrs.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise StoreError(f"dataset {path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise StoreError(
            f"dataset {path} was written in {FORMAT_NAME} version {version}, newer than this xr0 reads "
            f"(version {FORMAT_VERSION}); update xr0"
        )
    return attrs


def episode_dirs(path: Path) -> dict[int, Path]:
    """Episode index -> directory, for every `episodes/episode_NNNNNN` folder (committed or not)."""
    root = Path(path) / EPISODES_GROUP
    if not root.is_dir():
        return {}
    out = {}
    for child in root.iterdir():
        m = EPISODE_RE.match(child.name)
        if m and child.is_dir():
            out[int(m.group(1))] = child
    return dict(sorted(out.items()))


def episode_attrs(directory: Path) -> dict[str, Any]:
    """An episode group's attributes, read straight from its zarr.json (raises `StoreError` if unreadable)."""
    meta = read_json(directory / "zarr.json", f"episode {directory.name}")
    return dict(meta.get("attributes") or {})


def bytes_on_disk(path: Path) -> int:
    """Bytes of the files under `path` (or of the file itself); files that vanish while it counts (a live
    writer renames its temporary files) are skipped."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total
