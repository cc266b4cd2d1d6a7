"""Which policy `--policy` names: the one table from a source string to a `Policy` object.

scripted          the simulator's scripted demonstrator as a chunk policy (app/runtime/scripted.py)
hold              keeps the arms where they are (checks a set-up end to end, on any robot)
random            a random walk within the joint limits: the baseline a learned policy must beat
ws://HOST:PORT    a policy behind `xr0 serve` (app/serving/client.py)
PATH              an XR0 checkpoint directory, run in-process (`load_checkpoint`)
replay:STORE      the recorded demonstrations of each seed (a diagnostic for `xr0 eval`, app/runtime/replay_policy.py)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.errors import UserError
from app.runtime.scripted import HoldPolicy, RandomPolicy, ScriptedChunkPolicy
from drivers.clock import SimClock
from xr0.boundary import Policy

if TYPE_CHECKING:
    from app.compose.config import AppConfig
    from app.runtime.rig import Rig

BUILT_IN = ("scripted", "hold", "random")
REPLAY = (
    "replay:"  # replay:STORE.zarr — the recorded demonstrations, a diagnostic (app/runtime/replay_policy.py)
)


def load_checkpoint(path: Path, config: AppConfig) -> Policy:
    """An XR0 checkpoint as an in-process policy (CUDA when available). The one place the model is wired in.

    The checkpoint's deployment contract (deploy.json) fixes its cameras, rate and action representation;
    only a checkpoint written before contracts existed takes them from `config` (with a warning)."""
    if not path.exists():
        raise UserError(
            f"--policy {path}: no such checkpoint directory (or give one of {', '.join(BUILT_IN)}, ws://HOST:PORT)"
        )
    if (path / "summary.json").exists() and (path / "last").exists():
        raise UserError(f"--policy {path} is a training run, not a checkpoint: use {path / 'last'}")
    import torch

    from xr0.contract import DeployContract
    from xr0.policy import XR0Policy, XR0PolicyConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        legacy = None
        if DeployContract.load(path) is None:
            legacy = XR0PolicyConfig(
                cameras=tuple(config.policy.cameras or config.cameras), fps=config.control.fps
            )
        policy = XR0Policy.from_checkpoint(path, legacy, device=device, local_files_only=True)
        if config.policy.compile:
            policy.compile_sampler()
        return policy
    except ValueError as e:  # CheckpointError, ContractError and bad policy settings: one sentence each
        raise UserError(f"--policy {path}: {e}") from e


def check_rig(policy: Policy, config: AppConfig, source: str) -> None:
    """Refuse (one sentence naming both sides) a policy whose contract the rig does not meet: its joints,
    cameras (and their aspect ratio) and control rate. A policy without a contract is checked for its
    cameras and rate only."""
    from drivers.joints import JOINT_NAMES
    from xr0.contract import ContractError, DeployContract

    spec = policy.spec
    cameras = {name: (cam.height, cam.width) for name, cam in config.cameras.items()}
    try:
        if spec.contract is not None:
            DeployContract.from_dict(spec.contract).check_rig(
                cameras=cameras, fps=config.control.fps, joint_names=JOINT_NAMES, where="this rig's config"
            )
            return
    except ContractError as e:
        raise UserError(f"--policy {source}: {e}") from e
    missing = [c for c in spec.cameras if c not in cameras]
    if missing:
        raise UserError(
            f"--policy {source} reads cameras {list(spec.cameras)}; this rig's config has no {', '.join(missing)}"
        )
    if abs(spec.fps - config.control.fps) > 1e-6:
        raise UserError(
            f"--policy {source} spaces its actions for {spec.fps:g} Hz; control.fps is {config.control.fps:g}"
        )


def open_policy(source: str, config: AppConfig, rig: Rig | None) -> Policy:
    """The policy `source` names, built from `config`; `rig` is needed by `scripted` (the simulator)."""
    fps = config.control.fps
    if source == "scripted":
        if rig is None or rig.teleop is None:
            raise UserError(
                "the scripted policy is the simulator's demonstrator: it runs with --robot sim only"
            )
        return ScriptedChunkPolicy(
            rig.teleop, config.policy.scripted, fps=fps, sleep=not isinstance(rig.clock, SimClock)
        )
    if source == "random":
        if rig is None:
            raise UserError(
                "the random policy needs the robot's joint limits: run it with a robot (--robot …)"
            )
        return RandomPolicy(rig.robot.limits(), config.policy.scripted.chunk_length, fps=fps)
    if source == "hold":
        scripted = config.policy.scripted
        return HoldPolicy(scripted.chunk_length, scripted.max_prefix, fps=fps)
    if source.startswith(("ws://", "wss://")):
        from app.serving.client import PolicyUnavailable, RemotePolicy
        from app.serving.server import TOKEN_ENV

        server = config.policy.server
        try:
            remote = RemotePolicy(
                source,
                token=os.environ.get(TOKEN_ENV),
                jpeg_quality=server.jpeg_quality,
                timeout_s=server.timeout_s,
                reconnect_s=server.reconnect_s,
            )
        except PolicyUnavailable as e:
            raise UserError(str(e)) from e
        if rig is not None:
            check_rig(remote, config, source)
        return remote
    if source.startswith(REPLAY):
        from app.runtime.replay_policy import ReplayPolicy

        scripted = config.policy.scripted
        store = Path(source.removeprefix(REPLAY)).expanduser()
        try:
            return ReplayPolicy(
                store if store.exists() else config.resolve(store),
                scripted.chunk_length,
                scripted.max_prefix,
                latency_ms=float(np.mean(scripted.latency_ms)),
            )
        except (OSError, ValueError) as e:
            raise UserError(f"--policy {source}: {e}") from e
    if not source:
        raise UserError(
            f"no policy given: pass --policy ({', '.join(BUILT_IN)}, ws://HOST:PORT or a checkpoint)"
        )
    path = Path(source).expanduser()
    policy = load_checkpoint(path if path.is_absolute() or path.exists() else config.resolve(source), config)
    if rig is not None:
        check_rig(policy, config, source)
    return policy
