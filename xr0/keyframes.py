"""Keyframe prediction: an auxiliary training loss that makes a from-scratch model look at its cameras.

The flow loss alone lets a new model fit demonstrations through the joint state: mid-episode the state
already encodes the path, and at the start (the same pose in every episode) the first chunk differs little
between episodes, so a model that ignores its cameras loses little and reaches for the average object
position (docs/eval.md, rung (c)). The keyframe loss asks, from the VLM's image tokens alone, for the
joint state at the sample's *next keyframe*: the tick at which a gripper command next opens or closes
(the grasp, the hand-over, the release — the keyframes of C2F-ARM/PerAct), or the episode's last tick.
From the start pose that is the grasp pose, which depends on where the object is and on nothing the
state says. The label comes from the demonstration's own recorded states and gripper commands, so it
exists for every recording — a real robot's too; nothing privileged is read.

The head reads what the action expert reads: the keys and values of the VLM's last cached layer, over the
image tokens only. One learned query per KV head attends over them (scaled dot product), the pooled
values go through a two-layer MLP to the 14 robot dims of the model's (normalised) state. It exists only
in training: checkpoints keep the official layout, and the resume state carries the head's weights.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from xr0.policy import GRIPPER_INDICES, XR0_INDEX

# A gripper command below this fraction of the opening is "closed" (commands are 0 closed … 1 open).
GRIPPER_CLOSED_BELOW = 0.5
# Names of the head's parameters inside the training objective (never in a policy checkpoint).
HEAD_PREFIX = "keyframe_head."


def next_keyframes(actions: np.ndarray) -> np.ndarray:
    """(N, 14) commanded actions of one episode → (N,) for every tick t the first tick τ > t at which a
    gripper command crosses `GRIPPER_CLOSED_BELOW` (τ is the first tick on the other side), or N − 1."""
    n = len(actions)
    closed = np.asarray(actions)[:, list(GRIPPER_INDICES)] < GRIPPER_CLOSED_BELOW  # (N, 2)
    events = np.flatnonzero((closed[1:] != closed[:-1]).any(axis=1)) + 1  # ticks where a gripper switched
    events = np.append(events, n - 1)
    ticks = np.arange(n)
    return events[np.searchsorted(events, ticks, side="right").clip(max=len(events) - 1)]


def robot_dims(state32: torch.Tensor) -> torch.Tensor:
    """(..., 32) model state → (..., 14) robot dims (the keyframe target's layout)."""
    return state32[..., list(XR0_INDEX)]


class KeyframeHead(nn.Module):
    """Attention pooling over the image tokens of one VLM layer's keys/values → (B, 14) keyframe state."""

    def __init__(self, kv_heads: int, head_dim: int, hidden: int = 256, out_dim: int = len(XR0_INDEX)):
        super().__init__()
        self.query = nn.Parameter(torch.randn(kv_heads, head_dim) * 0.02)
        self.mlp = nn.Sequential(
            nn.LayerNorm(kv_heads * head_dim), nn.Linear(kv_heads * head_dim, hidden), nn.GELU(),
            nn.Linear(hidden, out_dim),
        )  # fmt: skip

    def forward(self, keys: torch.Tensor, values: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """`keys`/`values` (B, H, L, hd); `image_tokens` (B, L) bool: the positions the head may read."""
        scores = torch.einsum("bhld,hd->bhl", keys.float(), self.query) * keys.shape[-1] ** -0.5
        scores = scores.masked_fill(~image_tokens[:, None, :], float("-inf"))
        pooled = torch.einsum("bhl,bhld->bhd", scores.softmax(dim=-1), values.float())
        return self.mlp(pooled.flatten(1))


def keyframe_loss(head: KeyframeHead, keys, values, image_tokens, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the head's prediction against the (B, 14) normalised keyframe states."""
    if not bool(image_tokens.any(dim=1).all()):
        raise ValueError("the keyframe loss needs at least one camera view in every sample's prompt")
    return F.mse_loss(head(keys, values, image_tokens), target.float())
