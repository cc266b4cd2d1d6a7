"""Rectified flow for XR0: seeded noise, the Euler sampler, training times and the flow-matching loss.

Convention (spec §1.6): t = 0 is noise, t = 1 is data; x_t = (1 − t)·ε + t·a; the network predicts the
velocity, whose target is a − ε. Inference integrates 5 Euler steps from t = 0 (no evaluation at t = 1).
Rows of a clean action prefix sit in x unchanged: the network's velocity there is 0.
"""

from __future__ import annotations

import torch

from xr0.model import VLMContext, XR0Model

BETA_ALPHA = 1.5  # training times: s ~ Beta(1.5, 1), t = 0.999·(1 − s) — more weight on noisy times
T_MAX = 0.999


def seeded_noise(seed: int, like: torch.Tensor) -> torch.Tensor:
    """Gaussian noise shaped, typed and placed like `like`, as the official remote code draws it.

    The official code saves the global RNG states, calls `torch.manual_seed(seed)`, draws
    `torch.randn_like(action_mask)` (model dtype, on the model's device) and restores the states. A fresh
    generator seeded the same way yields the same numbers without touching any global state, so
    concurrent callers cannot disturb each other (tests/xr0 checks the equality).
    """
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    generator = torch.Generator(device=like.device)
    generator.manual_seed(seed)
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


def sample_actions(
    model: XR0Model,
    ctx: VLMContext,
    state: torch.Tensor,
    action_mask: torch.Tensor,
    prefix: torch.Tensor | None = None,
    *,
    seed: int | None = None,
    noise: torch.Tensor | None = None,
    num_steps: int | None = None,
    blocked_prefix: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate the flow from noise to a chunk of normalised actions (B, T, A), in the model dtype.

    `action_mask` (B, T, A) sets the chunk length; `prefix` (B, P, A) normalised committed actions that
    the chunk must start with (returned unchanged); the noise comes from `seed` (official seeding) or is
    given as `noise` (B, T, A); `blocked_prefix` (P,) bool: prefix columns hidden from the noisy rows (the
    training mask, for a generation that must see what the trained velocity saw).
    """
    dtype = model.dtype
    action_mask = action_mask.to(device=model.device, dtype=dtype)
    if noise is None:
        if seed is None:
            raise ValueError("sample_actions needs a seed or explicit noise")
        noise = seeded_noise(seed, action_mask)
    if noise.shape != action_mask.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, the action mask {tuple(action_mask.shape)}")
    x = noise.to(device=model.device, dtype=dtype)
    B, T, _ = x.shape
    P = 0 if prefix is None else prefix.shape[1]
    if P:
        if P >= T or prefix.shape[0] != B or prefix.shape[2] != x.shape[2]:
            raise ValueError(f"prefix has shape {tuple(prefix.shape)}; expected (B={B}, P<{T}, {x.shape[2]})")
        x = torch.cat([prefix.to(device=x.device, dtype=dtype), x[:, P:]], dim=1)
    steps = num_steps or model.config.num_steps
    dt = 1.0 / steps
    for k in range(steps):
        t = torch.full((B,), k * dt, dtype=dtype, device=x.device)
        x = x + model.velocity(ctx, x, t, state, action_mask, P, blocked_prefix) * dt
    return x


def sample_flow_time(batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Training times t = 0.999·(1 − s), s ~ Beta(1.5, 1), drawn exactly by the inverse CDF s = u^(1/1.5)."""
    u = torch.rand(batch, generator=generator, device=device)
    return T_MAX * (1 - u.pow(1.0 / BETA_ALPHA))


def draw_blocked_prefix(
    prefix_length: int, prob: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training-only prefix-column masking (spec §1.4): when P > 2, each of the columns a_0 … a_{P−3}
    is hidden from the noisy rows with probability `prob`; the last two prefix columns always stay."""
    blocked = torch.zeros(prefix_length, dtype=torch.bool)
    if prefix_length > 2:
        blocked[: prefix_length - 2] = torch.rand(prefix_length - 2, generator=generator) < prob
    return blocked


def flow_matching_loss(
    model: XR0Model,
    ctx: VLMContext,
    actions: torch.Tensor,
    state: torch.Tensor,
    action_mask: torch.Tensor,
    prefix_length: int = 0,
    *,
    time: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    blocked_prefix: torch.Tensor | None = None,
    freq_weight: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """0.5 · weighted MSE of the velocity over active dims of the non-prefix rows (+ optional frequency term).

    `actions` (B, T, A) normalised targets, their first `prefix_length` rows fed clean; `weight` (B, T, A)
    elementwise loss weights (e.g. the online L1 reweighting); `freq_weight` adds the mean |rFFT over time|
    difference of prediction and target (non-prefix rows), scaled per sample by its mean weight.
    """
    B, T, _ = actions.shape
    device = actions.device
    actions = actions.float()
    if noise is None:
        noise = torch.randn(actions.shape, generator=generator, device=device)
    if time is None:
        time = sample_flow_time(B, generator, device)
    tt = time.float()[:, None, None]
    x_t = (1 - tt) * noise + tt * actions
    if prefix_length:
        x_t = torch.cat([actions[:, :prefix_length], x_t[:, prefix_length:]], dim=1)
    v = model.velocity(ctx, x_t, time, state, action_mask, prefix_length, blocked_prefix).float()
    target = actions - noise
    rows = torch.arange(T, device=device)[None, :, None] >= prefix_length
    active = (action_mask.to(device) > 0) & rows
    w = torch.ones_like(v) if weight is None else weight.float()
    err = (v - target).pow(2) * w
    loss = 0.5 * err[active.expand_as(err)].mean()
    if freq_weight:
        diff = torch.fft.rfft(v[:, prefix_length:], dim=1) - torch.fft.rfft(target[:, prefix_length:], dim=1)
        per_sample = diff.abs().mean(dim=(1, 2)) * w[:, prefix_length:].mean(dim=(1, 2))
        loss = loss + freq_weight * per_sample.mean()
    return loss
