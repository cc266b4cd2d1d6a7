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

The head reads the vision tower's merged image tokens (what the language model receives for each
view), so its gradient reaches the vision tower by the shortest path; the language model and the action
expert then find the object's place already in their inputs. Per view, four learned queries attend over
the view's tokens (content keys; the tokens carry their position embeddings, so the pooled vector says
where as well as what); the pooled views go through a two-layer MLP to the 14 robot dims of the model's
(normalised) state. The head exists only in training: checkpoints keep the official layout, and the
resume state carries the head's weights.
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


class KeyframeHead(nn.Module):
    """Per-view attention pooling over the vision tower's merged tokens → (B, 14) keyframe state."""

    def __init__(
        self, width: int, views: int, heads: int = 4, hidden: int = 256, out_dim: int = len(XR0_INDEX)
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"the vision width {width} is not divisible into {heads} pooling heads")
        self.views, self.heads = views, heads
        self.query = nn.Parameter(torch.randn(views, heads, width // heads) * 0.02)
        self.key = nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.LayerNorm(views * width),
            nn.Linear(views * width, hidden),
            nn.GELU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`tokens` (B, V, n, C) each view's merged tokens (padded), `mask` (B, V, n) True on real ones."""
        B, V, n, C = tokens.shape
        tokens = tokens.float()
        keys = self.key(tokens).view(B, V, n, self.heads, -1)
        scores = torch.einsum("bvnhd,vhd->bvhn", keys, self.query) * keys.shape[-1] ** -0.5
        scores = scores.masked_fill(~mask[:, :, None, :], float("-inf"))
        pooled = torch.einsum(
            "bvhn,bvnhd->bvhd", scores.softmax(dim=-1), tokens.view(B, V, n, self.heads, -1)
        )
        return self.mlp(pooled.reshape(B, V * C))


def view_tokens(merged: torch.Tensor, grid_thw: torch.Tensor, merge: int, batch: int):
    """The vision tower's merged tokens of all images (N, C), in prompt order, → (B, V, n, C) per sample
    and view (padded to the longest view) and the (B, V, n) mask of real tokens."""
    counts = (grid_thw.prod(dim=-1) // (merge * merge)).tolist()
    if len(counts) % batch:
        raise ValueError(
            f"{len(counts)} images do not split evenly over {batch} samples (one set of views each)"
        )
    parts = list(torch.split(merged, counts))
    n = max(counts)
    tokens = torch.nn.utils.rnn.pad_sequence(parts, batch_first=True)  # (B·V, n, C)
    mask = torch.arange(n, device=merged.device)[None] < torch.tensor(counts, device=merged.device)[:, None]
    V = len(counts) // batch
    return tokens.view(batch, V, n, -1), mask.view(batch, V, n)


def keyframe_loss(
    head: KeyframeHead, tokens: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Mean squared error of the head's prediction against the (B, 14) normalised keyframe states."""
    if tokens.shape[1] != head.views:
        raise ValueError(
            f"the keyframe head was built for {head.views} views; the prompt has {tokens.shape[1]}"
        )
    return F.mse_loss(head(tokens, mask), target.float())
