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
from xr0.policy import model_to_robot_actions
from xr0.processor import XR0Processor

EVAL_STREAM = 7  # generator stream of the evaluation noise (the training draws use stream 0)


def eval_noise(seed: int, keys: Sequence[tuple[int, int, int]], action_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, A) noise fixed per sample: the same at every evaluation."""
    noise = [
        torch.randn(action_mask.shape, generator=step_generator(seed, i, EVAL_STREAM + k)) for k, i, _ in keys
    ]
    return torch.stack(noise) * action_mask


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
    action_mask = processor.get_action_mask(robot_type)[0]  # (T, A)
    per_rank = -(-len(keys) // world)
    mine = list(keys[rank::world])
    real = len(mine)
    mine += [keys[0]] * (per_rank - real)
    sums = torch.zeros(4, dtype=torch.float64)  # joint |err| sum, joint count, gripper sum, gripper count
    for start in range(0, per_rank, batch_size):
        chunk = mine[start : start + batch_size]
        batch = collate([dataset[k] for k in chunk])
        B = len(chunk)
        noise = eval_noise(seed, chunk, action_mask)
        draws = StepDraws(0, None, torch.zeros(B), torch.zeros_like(noise), noise).to(device)
        inputs = {k: v.to(device) for k, v in batch["inputs"].items()}
        mask = action_mask.to(device).expand(B, -1, -1)
        tensors = (batch["state"], batch["actions"], batch["valid"])
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            x = objective(inputs, *(t.to(device) for t in tensors), mask, draws, predict=True)
        decoded = processor.decode_action(x.float().cpu(), robot_type).double().numpy()
        for b in range(min(B, real - start)):
            robot = model_to_robot_actions(decoded[b], batch["robot_state"][b].numpy(), relative)
            err = np.abs(robot - batch["robot_actions"][b].numpy())[batch["valid"][b].numpy() > 0]
            joints, grippers = err[:, relative], err[:, ~relative]
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
