"""The training objective: flow matching with the asynchronous post-training recipe (spec §1.6–1.7, §5.2).

Per step (one VLM pass per sample):
- **prefix** (`async_train`): P = 0 with probability 0.5, else uniform in 1…min(max_prefix, T−1); one P
  for the whole batch. The first P rows of the target chunk go in clean; loss and targets cover rows P…T−1.
- **prefix-column masking**: for P > 2, each of the prefix columns a_0 … a_{P−3} is hidden from the noisy
  rows with probability `prefix_mask_prob` (one draw for the batch).
- **online L1 reweighting** (P > 0): a no-grad 5-step generation with the clean prefix; w = |generated −
  target| on the active, non-prefix, non-padded elements, divided by its mean over the global batch (summed
  across ranks) and clamped to `reweight_clamp` ([0.5, 5]); the loss is weighted elementwise by w.
- **training_repeat** R: the DiT branch runs on R copies of each sample (`VLMContext.repeat_interleave`),
  each with its own flow time and noise.
- optional **frequency loss** (`freq_loss_weight`, λ_freq).

Every random draw of a step comes from `draw_step(seed, step, …)` for the *global* batch, and each rank
takes its slice: the run is the same function of the seed whatever the world size, and a resumed run
draws exactly what the uninterrupted one would have. Noise is zero on the unused action dims: the model
never sees them (its input is x·mask), so with noise there the frequency loss would chase a target it
cannot know.

`FlowObjective` is an `nn.Module` whose `forward` computes the loss, so DDP and FSDP hooks see the call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from xr0.flow import draw_blocked_prefix, flow_matching_loss, sample_actions, sample_flow_time
from xr0.model import XR0Model

NO_PREFIX_PROB = 0.5  # official: half the batches train without a prefix


@dataclass(frozen=True)
class StepDraws:
    """A step's random choices; `time`, `noise` and `gen_noise` are per sample (rows of the batch)."""

    prefix_length: int
    blocked: torch.Tensor | None  # (P,) bool: prefix columns hidden from the noisy rows
    time: torch.Tensor  # (B·R,) flow times
    noise: torch.Tensor  # (B·R, T, A)
    gen_noise: torch.Tensor  # (B, T, A) noise of the reweighting generation (and of evaluation)

    def shard(self, rank: int, world: int) -> StepDraws:
        """This rank's rows (the global batch is split in contiguous equal parts)."""
        if world == 1:
            return self
        b = self.gen_noise.shape[0] // world
        br = self.time.shape[0] // world
        return replace(
            self,
            time=self.time[rank * br : (rank + 1) * br],
            noise=self.noise[rank * br : (rank + 1) * br],
            gen_noise=self.gen_noise[rank * b : (rank + 1) * b],
        )

    def to(self, device: torch.device) -> StepDraws:
        return replace(
            self,
            blocked=None if self.blocked is None else self.blocked.to(device),
            time=self.time.to(device),
            noise=self.noise.to(device),
            gen_noise=self.gen_noise.to(device),
        )


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, stream)."""
    state = np.random.SeedSequence([seed, stream, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def draw_prefix_length(generator: torch.Generator, max_prefix: int, horizon: int) -> int:
    """0 with probability 0.5, else uniform in 1…min(max_prefix, horizon − 1); 0 when max_prefix is 0."""
    top = min(max_prefix, horizon - 1)
    u = torch.rand(2, generator=generator)
    if top < 1 or float(u[0]) < NO_PREFIX_PROB:
        return 0
    return 1 + min(int(float(u[1]) * top), top - 1)


def draw_step(
    seed: int,
    step: int,
    batch: int,
    repeat: int,
    horizon: int,
    action_dim: int,
    action_mask: torch.Tensor,
    max_prefix: int,
    prefix_mask_prob: float,
) -> StepDraws:
    """All random draws of one training step for the global batch. `action_mask` (T, A) zeroes the noise
    on unused dims. `max_prefix` 0 = synchronous training (no prefix)."""
    g = step_generator(seed, step)
    P = draw_prefix_length(g, max_prefix, horizon)
    blocked = draw_blocked_prefix(P, prefix_mask_prob, g) if P else None
    time = sample_flow_time(batch * repeat, g)
    mask = action_mask.float()
    noise = torch.randn((batch * repeat, horizon, action_dim), generator=g) * mask
    gen_noise = torch.randn((batch, horizon, action_dim), generator=g) * mask
    return StepDraws(P, blocked, time, noise, gen_noise)


def l1_weights(
    generated: torch.Tensor,
    target: torch.Tensor,
    selected: torch.Tensor,
    clamp: tuple[float, float],
    reduce: bool = True,
) -> torch.Tensor:
    """Online L1 reweighting: |generated − target| / its mean over `selected` elements (the global batch
    when `reduce` and torch.distributed is initialised), clamped; 1 outside `selected`."""
    err = (generated.float() - target.float()).abs()
    sums = torch.stack([(err * selected).sum(), selected.sum().float()])
    if reduce and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
    mean = sums[0] / sums[1].clamp_min(1.0)
    w = (err / mean.clamp_min(1e-12)).clamp(*clamp)
    return torch.where(selected, w, torch.ones_like(w))


class FlowObjective(nn.Module):
    """Wraps the model for training; `forward` returns (loss, stats) or, with `predict=True`, a sampled chunk."""

    def __init__(
        self,
        model: XR0Model,
        *,
        freeze_vlm: bool,
        training_repeat: int = 4,
        freq_loss_weight: float = 0.0,
        reweight: bool = True,
        reweight_clamp: tuple[float, float] = (0.5, 5.0),
    ) -> None:
        super().__init__()
        self.model = model
        self.freeze_vlm = freeze_vlm
        self.training_repeat = training_repeat
        self.freq_loss_weight = freq_loss_weight
        self.reweight = reweight
        self.reweight_clamp = reweight_clamp

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        state: torch.Tensor,
        actions: torch.Tensor,
        valid: torch.Tensor,
        action_mask: torch.Tensor,
        draws: StepDraws,
        predict: bool = False,
    ):
        """`state` (B, 1, A) raw, `actions` (B, T, A) normalised targets, `valid` (B, T) 0 on padded rows,
        `action_mask` (B, T, A) active dims."""
        model = self.model
        if self.freeze_vlm or predict:
            with torch.no_grad():
                ctx = model.encode(inputs)
        else:
            ctx = model.encode(inputs)
        if predict:
            with torch.no_grad():
                return sample_actions(model, ctx, state, action_mask, noise=draws.gen_noise)
        B, T, _ = actions.shape
        P = draws.prefix_length
        rows = torch.arange(T, device=actions.device)[None, :, None] >= P
        weight = valid[:, :, None].expand_as(actions).float()
        stats: dict[str, torch.Tensor] = {}
        if P and self.reweight:
            with torch.no_grad():
                generated = sample_actions(
                    model, ctx, state, action_mask, actions[:, :P], noise=draws.gen_noise
                )
                selected = (action_mask > 0) & rows & (valid[:, :, None] > 0)
                w = l1_weights(generated, actions, selected, self.reweight_clamp)
            weight = weight * w
            sel_w = w[selected]
            stats = {
                "weight_min": sel_w.min(),
                "weight_max": sel_w.max(),
                "weight_clamped": ((sel_w <= self.reweight_clamp[0]) | (sel_w >= self.reweight_clamp[1]))
                .float()
                .mean(),
            }
        R = self.training_repeat
        if R > 1:
            ctx = ctx.repeat_interleave(R)
            state, actions = state.repeat_interleave(R, 0), actions.repeat_interleave(R, 0)
            action_mask, weight = action_mask.repeat_interleave(R, 0), weight.repeat_interleave(R, 0)
        loss = flow_matching_loss(
            model,
            ctx,
            actions,
            state,
            action_mask,
            P,
            time=draws.time,
            noise=draws.noise,
            weight=weight,
            blocked_prefix=draws.blocked,
            freq_weight=self.freq_loss_weight,
        )
        return loss, stats
