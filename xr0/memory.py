"""What a training run will hold in memory, estimated before the first step (`xr0 train` logs it).

Per process: the weights (fp32 master copies in training, frozen ones included), and for the trainable
parameters their gradients, AdamW's two moments and the optional EMA — all fp32 — divided by the world
size under FSDP, which shards them. Activations are not estimated: they grow with batch × prompt tokens
× `training_repeat`, depend on the mode (none are kept for a frozen VLM, the vision tower's are recomputed
under gradient checkpointing) and on the attention kernel; `xr0 bench train` measures the whole peak.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

GIB = 2**30


def estimate(model: nn.Module, *, ema: bool = False, shards: int = 1) -> dict[str, Any]:
    """Parameter counts (total; trainable split into adapters, VLM and action head) and bytes per process
    of weights, gradients, AdamW moments and EMA, before activations."""
    total = trainable = adapters = vlm = 0
    weight_bytes = trainable_bytes = 0
    for name, p in model.named_parameters():  # tied weights are listed once
        total += p.numel()
        weight_bytes += p.numel() * p.element_size()
        if not p.requires_grad:
            continue
        trainable += p.numel()
        trainable_bytes += p.numel() * p.element_size()
        if ".lora_A." in name or ".lora_B." in name:
            adapters += p.numel()
        elif name.startswith("vlm."):
            vlm += p.numel()
    parts = {
        "weights": weight_bytes,
        "gradients": trainable_bytes,
        "adamw": 2 * trainable_bytes,
        "ema": trainable_bytes if ema else 0,
    }
    parts = {k: v / shards for k, v in parts.items()}
    return {
        "params": total,
        "trainable": trainable,
        "trainable_adapters": adapters,
        "trainable_vlm": vlm,
        "trainable_head": trainable - adapters - vlm,
        **{f"{k}_gib": round(v / GIB, 3) for k, v in parts.items()},
        "total_gib": round(sum(parts.values()) / GIB, 3),
        "shards": shards,
    }


def describe(mode: str, est: dict[str, Any]) -> str:
    """One log line."""

    def count(n: int) -> str:
        return "0" if n == 0 else f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"

    per = f" per process (FSDP over {est['shards']})" if est["shards"] > 1 else ""
    return (
        f"memory estimate ({mode}){per}: {est['total_gib']:.2f} GiB before activations — weights "
        f"{est['weights_gib']:.2f} GiB ({count(est['params'])} parameters), gradients {est['gradients_gib']:.2f}, "
        f"AdamW moments {est['adamw_gib']:.2f}, EMA {est['ema_gib']:.2f}; trainable {count(est['trainable'])} "
        f"(adapters {count(est['trainable_adapters'])}, VLM {count(est['trainable_vlm'])}, action head "
        f"{count(est['trainable_head'])}); activations not included (batch × tokens; `xr0 bench train` "
        "measures the peak)"
    )
