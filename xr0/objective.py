"""The training objective: flow matching with the asynchronous post-training recipe (spec §1.6–1.7, §5.2).

Per step (one VLM pass per sample):
- **training_repeat** R: the DiT branch runs on R copies of each sample (`VLMContext.repeat_interleave`),
  each with its own flow time and noise.
- **prefix** (`async_train`): P = 0 with probability 0.5, else uniform in 1…min(max_prefix, T−1); one P
  for the whole batch. The first P rows of the target chunk go in clean; loss and targets cover rows P…T−1.
- **prefix-column masking**: for P > 2, each of the prefix columns a_0 … a_{P−3} is hidden from the noisy
  rows with probability `prefix_mask_prob` (one draw for the batch).
- **online L1 reweighting** (P > 0), as the official `forward`/`compute_loss` do it: every copy runs a
  no-grad 5-step generation from its own training noise, with the clean prefix and under the step's
  blocked prefix columns; err = |generated − target|. On the *active* elements (used dims, rows P…, not
  padded) err is divided by its mean over them (the global batch, summed across ranks — the official code
  takes each rank's own mean); then every element is clamped to `reweight_clamp` ([0.5, 5]) — so an
  element outside the active set keeps its clamped raw error, which only the frequency term reads.
  `reweight_per_copy=False` keeps the cheaper variant: one generation per sample (from `gen_noise`),
  its weights shared by the R copies.
- **loss** (`recipe_loss`, the official `compute_loss`): 0.5 · the weighted squared velocity error,
  averaged over the active elements only (a padded row is neither in the numerator nor the denominator;
  the count is the global batch's, where the official code divides by each rank's own),
  plus `freq_loss_weight` · the mean |rFFT over time| difference of prediction and target on rows P…
  (all rows and dims, as official), scaled per copy by its mean weight.

Every random draw of a step comes from `draw_step(seed, step, …)` for the *global* batch, and each rank
takes its slice: the run is the same function of the seed whatever the world size, and a resumed run
draws exactly what the uninterrupted one would have. Noise is zero on the unused action dims: the model
never sees them (its input is x·mask), so with noise there the frequency loss would chase a target it
cannot know.

`FlowObjective` is an `nn.Module` whose `forward` computes the loss, so DDP and FSDP hooks see the call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from xr0.flow import draw_blocked_prefix, sample_actions, sample_flow_time
from xr0.keyframes import KeyframeHead, keyframe_loss, view_tokens
from xr0.model import XR0Model

NO_PREFIX_PROB = 0.5  # official: half the batches train without a prefix


@dataclass(frozen=True)
class StepDraws:
    """A step's random choices; `time`, `noise` and `gen_noise` are per sample (rows of the batch)."""

    prefix_length: int
    blocked: torch.Tensor | None  # (P,) bool: prefix columns hidden from the noisy rows
    time: torch.Tensor  # (B·R,) flow times
    noise: torch.Tensor  # (B·R, T, A)
    gen_noise: torch.Tensor  # (B, T, A) noise of evaluation (and of the shared reweighting generation)

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
    """Online L1 reweighting (official `compute_loss`): err = |generated − target|; on `selected` elements
    err / its mean over them (the global batch when `reduce` and torch.distributed is initialised), the raw
    err elsewhere; then all of it clamped."""
    err = (generated.float() - target.float()).abs()
    sums = torch.stack([(err * selected).sum(), selected.sum().float()])
    if reduce and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
    mean = sums[0] / sums[1].clamp_min(1.0)
    return torch.where(selected, err / mean.clamp_min(1e-12), err).clamp(*clamp)


def recipe_loss(
    v: torch.Tensor,
    target: torch.Tensor,
    active: torch.Tensor,
    prefix_length: int,
    weight: torch.Tensor | None = None,
    freq_weight: float = 0.0,
    reduce: bool = True,
) -> torch.Tensor:
    """The official loss: 0.5 · mean over `active` (B, T, A) of weight·(v − target)², plus `freq_weight` ·
    mean |rFFT_time(v) − rFFT_time(target)| over rows `prefix_length`… (every row and dim), each sample's
    term scaled by its mean weight over those rows. `weight` None = 1.

    With `reduce` under torch.distributed the squared-error mean divides by the *global* count of active
    elements (times the world size, which DDP/FSDP's gradient averaging takes back out): padded rows differ
    between ranks, and this keeps the run the one-process run at any world size."""
    v, target = v.float(), target.float()
    w = torch.ones_like(v) if weight is None else weight.float()
    err = (v - target).pow(2) * w
    count, world = active.sum().float(), 1
    if reduce and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        dist.all_reduce(count)
    loss = 0.5 * err[active].sum() * world / count.clamp_min(1)
    if freq_weight:
        P = prefix_length
        diff = torch.fft.rfft(v[:, P:], dim=1) - torch.fft.rfft(target[:, P:], dim=1)
        per_sample = diff.abs().mean(dim=(1, 2)) * w[:, P:].mean(dim=(1, 2))
        loss = loss + freq_weight * per_sample.mean()
    return loss


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
        reweight_per_copy: bool = True,
        keyframe_head: KeyframeHead | None = None,
        keyframe_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.keyframe_head = keyframe_head  # the auxiliary keyframe loss (xr0.keyframes); training only
        self.keyframe_weight = keyframe_weight
        self.freeze_vlm = freeze_vlm
        self.training_repeat = training_repeat
        self.freq_loss_weight = freq_loss_weight
        self.reweight = reweight
        self.reweight_clamp = reweight_clamp
        self.reweight_per_copy = reweight_per_copy
        self._vision_out: list[torch.Tensor] = []
        if keyframe_head is not None:  # keep the vision tower's merged tokens of each training pass
            model.vlm.model.visual.register_forward_hook(self._keep_vision_tokens)

    def _keep_vision_tokens(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.training and torch.is_grad_enabled():
            self._vision_out[:] = [output.pooler_output]

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        state: torch.Tensor,
        actions: torch.Tensor,
        valid: torch.Tensor,
        action_mask: torch.Tensor,
        draws: StepDraws,
        predict: bool = False,
        keyframe: torch.Tensor | None = None,
    ):
        """`state` (B, 1, A) raw, `actions` (B, T, A) normalised targets, `valid` (B, T) 0 on padded rows,
        `action_mask` (B, T, A) active dims, `keyframe` (B, 14) the keyframe loss's targets (or None)."""
        model = self.model
        if self.freeze_vlm or predict:
            with torch.no_grad():
                ctx = model.encode(inputs)
        else:
            ctx = model.encode(inputs)
        if predict:
            with torch.no_grad():
                return sample_actions(model, ctx, state, action_mask, noise=draws.gen_noise)
        aux = None
        if self.keyframe_head is not None and keyframe is not None:  # once per VLM pass, before the repeats
            if "pixel_values" not in inputs:
                raise ValueError("the keyframe loss needs at least one camera view in the prompt")
            if not self._vision_out:
                raise ValueError(
                    "the keyframe loss needs the vision tower run with gradients (mode full or lora)"
                )
            merged = self._vision_out.pop()  # the vision tower's merged tokens of this pass (the hook above)
            grid = inputs["image_grid_thw"]
            tokens, mask = view_tokens(
                merged, grid, model.vlm.config.vision_config.spatial_merge_size, len(keyframe)
            )
            aux = keyframe_loss(self.keyframe_head, tokens, mask, keyframe)
        R, P = self.training_repeat, draws.prefix_length
        reweight = bool(P) and self.reweight

        def generate(ctx, state, action_mask, actions, noise):  # the reweighting's no-grad generation
            with torch.no_grad():
                return sample_actions(
                    model, ctx, state, action_mask, actions[:, :P], noise=noise, blocked_prefix=draws.blocked
                )

        generated = None
        if reweight and not self.reweight_per_copy:  # one generation per sample, shared by its R copies
            generated = generate(ctx, state, action_mask, actions, draws.gen_noise).repeat_interleave(R, 0)
        if R > 1:
            ctx = ctx.repeat_interleave(R)
            state, actions = state.repeat_interleave(R, 0), actions.repeat_interleave(R, 0)
            action_mask, valid = action_mask.repeat_interleave(R, 0), valid.repeat_interleave(R, 0)
        T = actions.shape[1]
        rows = torch.arange(T, device=actions.device)[None, :, None] >= P
        active = (action_mask > 0) & rows & (valid[:, :, None] > 0)  # (B·R, T, A): what the MSE averages
        weight, stats = None, {}
        if reweight:
            if generated is None:  # official: each copy from its own training noise
                generated = generate(ctx, state, action_mask, actions, draws.noise)
            with torch.no_grad():
                weight = l1_weights(generated, actions, active, self.reweight_clamp)
            sel_w = weight[active]
            lo, hi = self.reweight_clamp
            stats = (
                {}
                if sel_w.numel() == 0
                else {
                    "weight_min": sel_w.min(),
                    "weight_max": sel_w.max(),
                    "weight_clamped": ((sel_w <= lo) | (sel_w >= hi)).float().mean(),
                }
            )
        actions = actions.float()
        noise = draws.noise.float()
        tt = draws.time.float()[:, None, None]
        x_t = (1 - tt) * noise + tt * actions
        if P:
            x_t = torch.cat([actions[:, :P], x_t[:, P:]], dim=1)
        v = model.velocity(ctx, x_t, draws.time, state, action_mask, P, draws.blocked)
        loss = recipe_loss(v, actions - noise, active, P, weight, self.freq_loss_weight)
        if aux is not None:
            loss = loss + self.keyframe_weight * aux
            stats["keyframe_loss"] = aux.detach()
        return loss, stats
