"""The policy boundary (DESIGN.md §6): what any policy takes and returns, in robot units, as numpy.

The runner, the policy server and client, scripted test policies and the XR0 adapter all speak this.
It is plain data — no torch — so the runner and the wire format never depend on the model's internals.

    chunk = policy.infer(observation, prefix)

- `observation`: images by camera name (H×W×3 uint8 RGB), the 14-wide state (rad, gripper 0..1), the
  task instruction and the capture time (ns, host monotonic clock) of the state.
- `prefix`: (P, 14) the committed actions (absolute targets) the robot will execute from the
  observation's tick on; P may be 0 and is at most `spec.max_prefix`.
- returns a `Chunk`: (T, 14) absolute targets for ticks ks … ks+T−1 whose first P rows equal the prefix,
  and the time each stage took.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# Inputs only a simulator can give, name -> width. A diagnostic policy may ask for them (the ladder of
# docs/eval.md: a replay of the recorded demonstration needs the seed and the episode's tick; a
# "privileged" model reads where the object started); a deployable policy never does.
PRIVILEGED: dict[str, int] = {"object_start": 3, "seed": 1, "episode_tick": 1}


@dataclass(frozen=True)
class PolicySpec:
    """What a policy needs and produces; the policy server's hello message carries it."""

    cameras: tuple[str, ...]  # camera names it reads, e.g. ("cam_high", "cam_left_wrist", "cam_right_wrist")
    chunk_length: int  # T, actions per chunk
    max_prefix: int  # largest P it was trained with (0: cannot take a prefix)
    state_dim: int = 14
    fps: float = 30.0  # control rate the actions are spaced for
    robot_type: str = "aloha"
    # Simulator-only inputs this policy needs (PRIVILEGED); a deployable policy needs none.
    privileged: tuple[str, ...] = ()
    # A checkpoint's deployment contract (xr0/contract.py, as its JSON dict): what the rig must match.
    contract: dict | None = field(default=None, compare=False, hash=False)


@dataclass(frozen=True)
class PolicyObservation:
    images: dict[str, np.ndarray]  # camera name -> (H, W, 3) uint8 RGB
    state: np.ndarray  # (14,) float, rad + gripper fraction
    instruction: str
    t_ns: int  # capture time of the state (Clock.now_ns time base)
    # Simulator-only inputs by name (PRIVILEGED), given only to diagnostic policies that ask for them.
    privileged: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    actions: np.ndarray  # (T, 14) float, absolute targets; rows [:P] equal the prefix
    timing_ms: dict[str, float] = field(default_factory=dict)  # e.g. {"vlm": …, "dit": …, "total": …}


class Policy(Protocol):
    spec: PolicySpec

    def infer(self, observation: PolicyObservation, prefix: np.ndarray) -> Chunk: ...
