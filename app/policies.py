"""Which policy `--policy` names: the one table from a source string to a `Policy` object.

scripted          the simulator's scripted demonstrator as a chunk policy (app/scripted_policy.py)
hold              keeps the arms where they are (checks a set-up end to end, on any robot)
random            a random walk within the joint limits: the baseline a learned policy must beat
ws://HOST:PORT    a policy behind `xr0 serve` (app/policy_client.py)
PATH              an XR0 checkpoint directory, run in-process (`load_checkpoint`)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from app.errors import CliError
from app.scripted_policy import HoldPolicy, RandomPolicy, ScriptedChunkPolicy
from drivers.clock import SimClock
from xr0.boundary import Policy

if TYPE_CHECKING:
    from app.compose import Rig
    from app.config import AppConfig

BUILT_IN = ("scripted", "hold", "random")


def load_checkpoint(path: Path, config: AppConfig) -> Policy:
    """An XR0 checkpoint as an in-process policy (CUDA when available). The one place the model is wired in."""
    if not path.exists():
        raise CliError(
            f"--policy {path}: no such checkpoint directory (or give one of {', '.join(BUILT_IN)}, ws://HOST:PORT)"
        )
    import torch

    from xr0.policy import XR0Policy, XR0PolicyConfig

    cameras = tuple(config.policy.cameras or config.cameras)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return XR0Policy.from_checkpoint(
            path,
            XR0PolicyConfig(cameras=cameras, fps=config.control.fps),
            device=device,
            local_files_only=True,
        )
    except ValueError as e:  # CheckpointError and bad policy settings: one sentence each
        raise CliError(f"--policy {path}: {e}") from e


def open_policy(source: str, config: AppConfig, rig: Rig | None) -> Policy:
    """The policy `source` names, built from `config`; `rig` is needed by `scripted` (the simulator)."""
    fps = config.control.fps
    if source == "scripted":
        if rig is None or rig.teleop is None:
            raise CliError(
                "the scripted policy is the simulator's demonstrator: it runs with --robot sim only"
            )
        return ScriptedChunkPolicy(
            rig.teleop, config.policy.scripted, fps=fps, sleep=not isinstance(rig.clock, SimClock)
        )
    if source == "random":
        if rig is None:
            raise CliError(
                "the random policy needs the robot's joint limits: run it with a robot (--robot …)"
            )
        return RandomPolicy(rig.robot.limits(), config.policy.scripted.chunk_length, fps=fps)
    if source == "hold":
        scripted = config.policy.scripted
        return HoldPolicy(scripted.chunk_length, scripted.max_prefix, fps=fps)
    if source.startswith(("ws://", "wss://")):
        from app.policy_client import PolicyUnavailable, RemotePolicy
        from app.policy_server import TOKEN_ENV

        server = config.policy.server
        try:
            return RemotePolicy(
                source,
                token=os.environ.get(TOKEN_ENV),
                jpeg_quality=server.jpeg_quality,
                timeout_s=server.timeout_s,
                reconnect_s=server.reconnect_s,
            )
        except PolicyUnavailable as e:
            raise CliError(str(e)) from e
    if not source:
        raise CliError(
            f"no policy given: pass --policy ({', '.join(BUILT_IN)}, ws://HOST:PORT or a checkpoint)"
        )
    path = Path(source).expanduser()
    return load_checkpoint(path if path.is_absolute() or path.exists() else config.resolve(source), config)
