"""The deployment contract a checkpoint carries (`deploy.json`, DESIGN.md §10).

Everything a rig must agree with to run a checkpoint is decided when the model is trained and written
beside its weights: the robot's joint layout, the cameras in prompt order (with the frame shape they were
recorded at), the image budget, the control rate, the chunk length and the longest prefix, the action
representation per joint (relative to the state, or absolute), the gripper range, the range of every
action seen in training, the instructions, and the simulator seeds of the training episodes (so that an
evaluation can prove it never tests on them). The normalisation statistics live in the processor files of
the same checkpoint (`action_config[robot_type]`); the contract keeps their SHA-256, so a checkpoint
whose statistics were swapped does not load.

`XR0Policy`, `xr0 serve`, `xr0 rollout` and `xr0 eval` read the contract; `config.yaml` never silently
supplies any of it. A rig that does not match fails with one sentence naming both sides (`check_rig`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CONTRACT_FILE = "deploy.json"
FORMAT = "xr0-deploy"
VERSION = 1
# Simulator-only inputs a diagnostic model may read (rung (b) of the ladder in docs/eval.md); a deployed
# one never does. They fill unused dims of XR0's 32-wide state (xr0.policy.PRIVILEGED_DIMS).
PRIVILEGED_INPUTS: tuple[str, ...] = ("object_start",)
ASPECT_TOLERANCE = 0.02  # a camera whose width/height differs by more than this from training is refused


class ContractError(ValueError):
    """A checkpoint's contract is missing, malformed, or does not match the rig; one sentence."""


@dataclass(frozen=True)
class CameraContract:
    name: str  # cam_high, cam_left_wrist, …
    height: int  # frame size the training episodes were recorded at
    width: int


@dataclass(frozen=True)
class DeployContract:
    robot_type: str  # key of the checkpoint's action statistics, e.g. "aloha"
    joint_names: tuple[str, ...]  # the 14-vector, in order (drivers/joints.py)
    cameras: tuple[CameraContract, ...]  # in prompt order
    max_pixels: int  # image budget per view (the processor resizes every frame to it)
    fps: float  # control rate the actions are spaced for
    chunk_length: int  # T
    max_prefix: int  # longest clean prefix trained (0: the runner sends none)
    relative: tuple[bool, ...]  # per joint: True = predicted relative to the observed state
    gripper_indices: tuple[int, ...] = (6, 13)
    gripper_range: tuple[float, float] = (
        0.0,
        1.0,
    )  # grippers are clipped to this, in training and deployment
    action_range: tuple[tuple[float, float], ...] = ()  # min/max of each action in the training windows
    instructions: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()  # simulator seeds of the training episodes (held-out ones not included)
    privileged: tuple[str, ...] = ()  # diagnostic inputs (PRIVILEGED_INPUTS); empty for a deployable model
    stats_sha256: str = ""  # of the action (and state) statistics in the processor files
    state_normalised: bool = False  # the model reads a normalised state (statistics beside the actions)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        if n == 0:
            raise ContractError("deploy.json: joint_names is empty")
        if len(self.relative) != n:
            raise ContractError(f"deploy.json: relative has {len(self.relative)} entries for {n} joints")
        if self.action_range and len(self.action_range) != n:
            raise ContractError(f"deploy.json: action_range has {len(self.action_range)} rows for {n} joints")
        if not self.cameras:
            raise ContractError("deploy.json: cameras is empty")
        if not self.fps > 0 or self.chunk_length < 2 or not 0 <= self.max_prefix < self.chunk_length:
            raise ContractError(
                f"deploy.json: fps {self.fps}, chunk_length {self.chunk_length}, max_prefix {self.max_prefix} "
                "are inconsistent (fps > 0, chunk_length ≥ 2, 0 ≤ max_prefix < chunk_length)"
            )
        for name in self.privileged:
            if name not in PRIVILEGED_INPUTS:
                raise ContractError(
                    f"deploy.json: unknown privileged input {name!r} (known: {', '.join(PRIVILEGED_INPUTS)})"
                )

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    # -- the rig's side ---------------------------------------------------------------------------------------
    def check_rig(
        self,
        *,
        cameras: Mapping[str, tuple[int, int]],
        fps: float,
        joint_names: Sequence[str],
        where: str = "this rig",
    ) -> None:
        """Raise ContractError (naming both sides) unless the rig gives what the checkpoint was trained on:
        the same joints in the same order, every camera (any extra ones are ignored; their order is the
        checkpoint's), frames of the same aspect ratio, and the same control rate."""
        if tuple(joint_names) != self.joint_names:
            raise ContractError(
                f"the checkpoint was trained on joints {list(self.joint_names)}; {where} has {list(joint_names)}"
            )
        missing = [c.name for c in self.cameras if c.name not in cameras]
        if missing:
            raise ContractError(
                f"the checkpoint reads cameras {list(self.camera_names)}; {where} has no {', '.join(missing)} "
                f"(it has {', '.join(cameras) or 'none'})"
            )
        for c in self.cameras:
            h, w = cameras[c.name]
            if abs(w / h - c.width / c.height) > ASPECT_TOLERANCE * c.width / c.height:
                raise ContractError(
                    f"camera {c.name}: the checkpoint was trained on {c.width}×{c.height} frames; {where} gives "
                    f"{w}×{h}, another aspect ratio (set cameras.{c.name}.width/height to match)"
                )
        if abs(fps - self.fps) > 1e-6:
            raise ContractError(
                f"the checkpoint's actions are spaced for {self.fps:g} Hz; {where} runs at {fps:g} Hz (control.fps)"
            )

    # -- files ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    def save(self, directory: Path) -> Path:
        path = Path(directory) / CONTRACT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = CONTRACT_FILE) -> DeployContract:
        if d.get("format") != FORMAT:
            raise ContractError(f"{source}: not a deployment contract (format {d.get('format')!r})")
        if d.get("version") != VERSION:
            raise ContractError(f"{source}: contract version {d.get('version')} is not {VERSION}; update xr0")
        d = {k: v for k, v in d.items() if k not in ("format", "version")}
        try:
            d["cameras"] = tuple(CameraContract(**c) for c in d["cameras"])
            for k in ("joint_names", "relative", "gripper_indices", "instructions", "seeds", "privileged"):
                if k in d:
                    d[k] = tuple(d[k])
            d["gripper_range"] = tuple(d.get("gripper_range", (0.0, 1.0)))
            d["action_range"] = tuple(tuple(r) for r in d.get("action_range", ()))
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ContractError(f"{source}: malformed ({e})") from e

    @classmethod
    def load(cls, directory: str | Path) -> DeployContract | None:
        """The contract of a checkpoint directory, or None for one written before contracts existed."""
        path = Path(directory) / CONTRACT_FILE
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ContractError(f"{path}: unreadable ({e})") from e
        return cls.from_dict(d, str(path))


def stats_digest(stats: Mapping[str, Any]) -> str:
    """SHA-256 of a robot type's statistics as float32 (what the processor files hold): the action mean
    and std, then the state mean and std when there are any."""
    h = hashlib.sha256()
    for key in ("mean", "std", "state_mean", "state_std"):
        if key in stats:
            h.update(np.ascontiguousarray(np.asarray(stats[key], dtype=np.float32)).tobytes())
    return h.hexdigest()


def clip_grippers(
    actions: np.ndarray, gripper_range: tuple[float, float], indices: Sequence[int] = (6, 13)
) -> np.ndarray:
    """Grippers are fractions of the opening by definition: clip them to the trained range (a copy)."""
    out = np.array(actions, dtype=np.float64, copy=True)
    idx = list(indices)
    out[..., idx] = np.clip(out[..., idx], *gripper_range)
    return out


def build_contract(
    sources: Sequence[Any],
    cameras: Sequence[str],
    relative: np.ndarray,
    *,
    robot_type: str,
    chunk_length: int,
    max_prefix: int,
    max_pixels: int,
    stats: Mapping[str, np.ndarray],
    privileged: Sequence[str] = (),
    state_normalised: bool = False,
) -> DeployContract:
    """The contract of a model trained on `sources` (xr0.data.Source): joints, camera shapes and fps come
    from the stores (which must agree), the action range and the seeds from their training episodes.
    `stats`: the robot type's statistics as the processor files hold them (the state pair only when the
    model reads a normalised state)."""
    from recording.reader import EpisodeStore  # the sources were opened and checked already (xr0.data)

    stores = [EpisodeStore(s.path) for s in sources]
    first = stores[0].spec
    for s, store in zip(sources, stores, strict=True):
        spec = store.spec
        if tuple(spec.joint_names) != tuple(first.joint_names):
            raise ContractError(
                f"dataset {s.path} has joints {list(spec.joint_names)}, {sources[0].path} has "
                f"{list(first.joint_names)}: a checkpoint is trained on one joint layout"
            )
        if abs(spec.fps - first.fps) > 1e-6:
            raise ContractError(
                f"dataset {s.path} was recorded at {spec.fps:g} Hz, {sources[0].path} at "
                f"{first.fps:g} Hz: a checkpoint's actions have one spacing"
            )
    cams = []
    for name in cameras:
        h, w, _ = first.cameras[name]
        cams.append(CameraContract(name, int(h), int(w)))
    lo = np.full(len(first.joint_names), np.inf)
    hi = -lo
    seeds: set[int] = set()
    instructions: set[str] = set()
    for s, store in zip(sources, stores, strict=True):
        for episode in s.train.episodes.tolist():
            a = store.get(int(episode), "action")
            lo, hi = np.minimum(lo, a.min(axis=0)), np.maximum(hi, a.max(axis=0))
            info = store.info(int(episode))
            seed = info.get("seed")
            if isinstance(seed, int) and not isinstance(seed, bool):
                seeds.add(seed)
            instructions.add(info["task"])
    return DeployContract(
        robot_type=robot_type,
        joint_names=tuple(first.joint_names),
        cameras=tuple(cams),
        max_pixels=int(max_pixels),
        fps=float(first.fps),
        chunk_length=int(chunk_length),
        max_prefix=int(max_prefix),
        relative=tuple(bool(x) for x in relative),
        action_range=tuple((round(float(a), 6), round(float(b), 6)) for a, b in zip(lo, hi, strict=True)),
        instructions=tuple(sorted(instructions)),
        seeds=tuple(sorted(seeds)),
        privileged=tuple(privileged),
        stats_sha256=stats_digest(stats),
        state_normalised=state_normalised,
    )
