"""Scale-out for training: process groups from torchrun's environment, DDP and FSDP2 wrapping, helpers.

`torchrun --nproc-per-node K -m app train …` starts K processes with RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR/PORT in their environment; `setup` joins them (NCCL on CUDA, gloo on CPU) and picks the device
(cuda:LOCAL_RANK). Without those variables everything runs in one process and no group is created.

- **DDP** replicates the model; gradients are averaged across ranks after each backward.
- **FSDP2** (`fully_shard`) shards parameters, gradients and optimiser state: each DiT layer, each VLM text
  decoder layer and each vision block is its own unit, then the root. Use it for `full` fine-tuning of the
  4.7 B model, where a replica plus AdamW state does not fit one GPU.
Only rank 0 logs, writes metrics and saves; collectives (loss averages, gathering weights for a save) run
on every rank.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "ddp", "fsdp")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def device_name(name: str) -> str:
    """`train.device` with `auto` resolved: cuda when a GPU is visible, else cpu."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto`: cuda:LOCAL_RANK when a GPU is visible, else cpu; `cuda` gets the local rank's GPU."""
    name = device_name(name)
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name}: PyTorch sees no CUDA GPU on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def setup(device: str = "auto") -> DistContext:
    """Join torchrun's process group if there is one (env:// rendezvous), else a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
        log.info("rank %d/%d joined the %s process group on %s", rank, world, backend, dev)
    return DistContext(rank, world, local_rank, dev)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(global_batch: int, world: int) -> int:
    """The per-rank batch; the global batch must split evenly over the ranks."""
    if global_batch < 1:
        raise ValueError(f"batch_size must be >= 1, got {global_batch}")
    if global_batch % world:
        raise ValueError(
            f"batch_size {global_batch} does not divide evenly over {world} processes: each rank takes "
            f"batch_size/world samples; use a multiple of {world}"
        )
    return global_batch // world


def resolve_strategy(strategy: str, world: int) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if world == 1:
        return "none"
    return "ddp" if strategy == "auto" else strategy


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The XR0 modules sharded as separate FSDP units: DiT layers, VLM text layers, vision blocks.

    Not the last text layer: the DiT reads only its keys and values (from the KV cache, a side channel),
    never its output, so FSDP's pre-backward hook — which hangs on a unit's outputs — would not re-gather
    its weights for the gradient arriving through the cache. It stays with the root unit, which keeps its
    parameters gathered from forward to backward."""
    units: list[nn.Module] = list(model.dit.layers)
    inner = model.vlm.model
    units += list(inner.language_model.layers)[:-1]
    units += list(inner.visual.blocks)
    return units


def wrap(objective: nn.Module, strategy: str, ctx: DistContext, mixed_bf16: bool = False) -> nn.Module:
    """DDP, FSDP2 or nothing around the objective (whose `.model` is the XR0 model)."""
    if strategy == "none":
        return objective
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(objective, device_ids=ids, broadcast_buffers=False)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        kwargs = {}
        if mixed_bf16:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for unit in fsdp_units(objective.model):
            fully_shard(unit, **kwargs)
        fully_shard(objective, **kwargs)
        return objective
    raise ValueError(f"unknown strategy {strategy!r}")


def unwrap(module: nn.Module) -> nn.Module:
    """The objective inside a DDP wrapper (FSDP2 shards in place: nothing to unwrap)."""
    return module.module if hasattr(module, "module") and not hasattr(module, "model") else module


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean across ranks (a copy; the identity without a process group)."""
    out = values.detach().clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out)
        out /= dist.get_world_size()
    return out


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when any rank says so (e.g. a time limit reached on one clock first)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
