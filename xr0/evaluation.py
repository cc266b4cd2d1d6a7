"""Open-loop action error: how far the model's chunks are from the demonstrated actions, in robot units.

For fixed samples (held-out episodes, and training ones for comparison) the model samples a full chunk
the way the policy does at inference (5 Euler steps, no prefix, a fixed noise per sample so successive
evaluations are comparable), decodes it with the checkpoint's statistics back to absolute 14-wide
actions, and compares it with the recorded window over its real (non-padded) rows: mean |error| of the
joints (rad) and of the grippers (fraction of the range). Every rank evaluates its share of the samples
through the wrapped objective (so FSDP can gather its shards), and the sums are added across ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from xr0.data import Collate, TrainingSamples
from xr0.objective import StepDraws, step_generator
from xr0.policy import GRIPPER_INDICES, model_to_robot_actions
from xr0.processor import XR0Processor

EVAL_STREAM = 7  # generator stream of the evaluation noise (the training draws use stream 0)


def eval_noise(seed: int, keys: Sequence[tuple[int, int, int]], action_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, A) noise fixed per sample: the same at every evaluation."""
    noise = [
        torch.randn(action_mask.shape, generator=step_generator(seed, i, EVAL_STREAM + k)) for k, i, _ in keys
    ]
    return torch.stack(noise) * action_mask


def predict_chunks(
    objective,
    processor,
    batch,
    keys,
    robot_type: str,
    relative: np.ndarray,
    seed: int,
    device,
    autocast: bool,
) -> np.ndarray:
    """(B, T, 14) absolute robot chunks the model samples for a collated batch (fixed noise per key)."""
    action_mask = processor.get_action_mask(robot_type)[0]
    B = len(keys)
    noise = eval_noise(seed, keys, action_mask)
    draws = StepDraws(0, None, torch.zeros(B), torch.zeros_like(noise), noise).to(device)
    inputs = {k: v.to(device) for k, v in batch["inputs"].items()}
    mask = action_mask.to(device).expand(B, -1, -1)
    tensors = (batch["state"], batch["actions"], batch["valid"])
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        x = objective(inputs, *(t.to(device) for t in tensors), mask, draws, predict=True)
    decoded = processor.decode_action(x.float().cpu(), robot_type).double().numpy()
    return np.stack(
        [model_to_robot_actions(decoded[b], batch["robot_state"][b].numpy(), relative) for b in range(B)]
    )


def arm_joints() -> np.ndarray:
    """The 12 arm joints of the 14-wide robot vector (every dim but the grippers), whatever the action
    representation (relative or absolute)."""
    mask = np.ones(14, dtype=bool)
    mask[list(GRIPPER_INDICES)] = False
    return mask


def vision_dependence(
    objective: torch.nn.Module,
    processor: XR0Processor,
    dataset: TrainingSamples,
    keys: Sequence[tuple[int, int, int]],
    *,
    robot_type: str,
    relative: np.ndarray,
    seed: int,
    device: torch.device,
    autocast: bool,
) -> dict[str, float]:
    """Does the model look? On the first step of several episodes — the same start pose in each, so only
    the images say where the object is — compare the chunk error with the episode's own images and with
    the next episode's (`swap_ratio` ≈ 1: the images are ignored), and the spread across episodes of the
    predicted reach (the chunk's last row) with the recorded one (`reach_spread_ratio` ≈ 0: blind, it goes
    to the average object position; ≈ 1: it reaches where the demonstrations did). Joints only, rad.
    Every rank computes the same (small) thing, so FSDP's collectives match."""
    if len(keys) < 2:
        return {}
    collate = Collate(processor)
    samples = [dataset[k] for k in keys]
    swapped = [dict(s, inputs=samples[(j + 1) % len(samples)]["inputs"]) for j, s in enumerate(samples)]
    recorded = np.stack([s["robot_actions"].numpy() for s in samples])  # (n, T, 14)
    valid = np.stack([s["valid"].numpy() for s in samples]) > 0  # (n, T)
    args = (robot_type, relative, seed, device, autocast)
    same = [keys[0]] * len(keys)  # one noise for all: at the start pose only the images differ
    own = predict_chunks(objective, processor, collate(samples), same, *args)
    other = predict_chunks(objective, processor, collate(swapped), same, *args)
    joints = arm_joints()

    def error(pred: np.ndarray) -> float:
        return float(np.abs(pred - recorded)[valid][:, joints].mean())

    last = valid.sum(1) - 1  # the last real row of each window
    rows = np.arange(len(keys))
    spread_pred = float(own[rows, last][:, joints].std(0).mean())
    spread_data = float(recorded[rows, last][:, joints].std(0).mean())
    e_own, e_swap = error(own), error(other)
    return {
        "start_error_own_rad": e_own,
        "start_error_swapped_rad": e_swap,
        "swap_ratio": e_swap / max(e_own, 1e-9),
        "reach_spread_pred_rad": spread_pred,
        "reach_spread_data_rad": spread_data,
        "reach_spread_ratio": spread_pred / max(spread_data, 1e-9),
        "episodes": len(keys),
    }


def open_loop_error(
    objective: torch.nn.Module,
    processor: XR0Processor,
    dataset: TrainingSamples,
    keys: Sequence[tuple[int, int, int]],
    *,
    robot_type: str,
    relative: np.ndarray,
    batch_size: int,
    seed: int,
    device: torch.device,
    autocast: bool,
    rank: int = 0,
    world: int = 1,
) -> dict[str, float]:
    """Mean |chunk − recorded actions| over `keys` (this rank takes every world-th; all ranks run the same
    number of batches, padding with repeats that are not counted)."""
    collate = Collate(processor)
    per_rank = -(-len(keys) // world)
    mine = list(keys[rank::world])
    real = len(mine)
    mine += [keys[0]] * (per_rank - real)
    sums = torch.zeros(4, dtype=torch.float64)  # joint |err| sum, joint count, gripper sum, gripper count
    for start in range(0, per_rank, batch_size):
        chunk = mine[start : start + batch_size]
        batch = collate([dataset[k] for k in chunk])
        B = len(chunk)
        robots = predict_chunks(
            objective, processor, batch, chunk, robot_type, relative, seed, device, autocast
        )
        for b in range(min(B, real - start)):
            robot = robots[b]
            err = np.abs(robot - batch["robot_actions"][b].numpy())[batch["valid"][b].numpy() > 0]
            joints, grippers = err[:, arm_joints()], err[:, ~arm_joints()]
            sums += torch.tensor(
                [joints.sum(), joints.size, grippers.sum(), grippers.size], dtype=torch.float64
            )
    if world > 1 and dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    return {
        "joint_mae_rad": float(sums[0] / max(float(sums[1]), 1.0)),
        "gripper_mae": float(sums[2] / max(float(sums[3]), 1.0)),
        "samples": len(keys),
    }
