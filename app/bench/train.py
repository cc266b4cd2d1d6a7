"""`xr0 bench train`: XR0 training step time and peak memory, per training mode.

One step is what `xr0 train` does per batch: the VLM pass (no grad in frozen-vlm mode), the DiT on
`training_repeat` copies with the flow-matching loss (plus the no-grad reweighting generation when
`--async-train` draws a prefix), backward, gradient clipping and AdamW — the trainer's own objective,
parameter groups and optimiser, on random images, states and targets (step time does not depend on the
values). `tiny` and `small` (≈132 M parameters) run on a CPU; `full` needs a CUDA GPU (bf16 autocast, fp32
master weights).

Each mode runs in a fresh process (spawned), so its memory is its own: `peak_rss_gib` is that process's
resident high-water mark (`ru_maxrss`: interpreter, libraries, weights, optimiser state and the largest
step's activations), `rss_before_steps_gib` the same mark before the first step (imports, model, batch);
on a GPU `peak_gpu_mem_gib` is torch's allocated peak. `estimate` is what `xr0 train` logs before training
(weights, gradients, AdamW moments; no activations).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from app.errors import UserError

if TYPE_CHECKING:
    import torch

    from app.compose.config import AppConfig
    from xr0.processor import XR0Processor

log = logging.getLogger(__name__)

LABELS = ("Ego View", "Left-Wrist View", "Right-Wrist View")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    from xr0.train_config import LoraConfig

    p.add_argument(
        "--variant", default="tiny", choices=("tiny", "small", "full"), help="model with random weights"
    )
    p.add_argument(
        "--modes",
        nargs="+",
        default=["frozen-vlm", "lora", "full"],
        choices=("frozen-vlm", "lora", "full"),
        help="training modes, each measured in its own process",
    )
    p.add_argument(
        "--lora-rank", type=int, default=LoraConfig.rank, help="lora: adapter rank (alpha = 2·rank)"
    )
    p.add_argument(
        "--lora-targets",
        nargs="+",
        default=list(LoraConfig().targets),
        metavar="PROJ",
        help="lora: projections with adapters (drop qkv proj linear_fc1 linear_fc2 to leave vision frozen)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="samples per step")
    p.add_argument("--views", type=int, default=3, choices=(1, 2, 3), help="camera views per sample")
    p.add_argument("--width", type=int, default=320, help="image width (multiple of 32 keeps it unchanged)")
    p.add_argument("--height", type=int, default=256, help="image height")
    p.add_argument("--horizon", type=int, default=30, help="chunk length T")
    p.add_argument("--training-repeat", type=int, default=4, help="DiT passes per VLM pass")
    p.add_argument(
        "--async-train", action="store_true", help="draw prefixes (and reweighting) as async training"
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="auto: bf16 on GPU")
    p.add_argument(
        "--gradient-checkpointing",
        default="auto",
        choices=("auto", "true", "false"),
        help="full mode: recompute the vision tower in backward (auto: on a GPU only, as `xr0 train`)",
    )


def _batch(
    processor: XR0Processor, batch: int, views: int, height: int, width: int, seed: int
) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    samples = [
        processor.encode(
            "transfer the cube to the other arm",
            [(LABELS[v], rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for v in range(views)],
        )
        for _ in range(batch)
    ]
    return processor.collate(samples)


def _measure(args: argparse.Namespace, mode: str, device: torch.device) -> dict:
    import resource

    import torch

    from xr0 import memory
    from xr0.config import QWEN_SPECIAL_TOKENS, tiny_special_ids, variant
    from xr0.lora import adapts_vision, add_adapters
    from xr0.model import create_model, parameter_counts
    from xr0.objective import FlowObjective, draw_step
    from xr0.policy import XR0_INDEX
    from xr0.processor import XR0Processor
    from xr0.train import param_groups, set_trainable
    from xr0.train_config import LoraConfig

    T = args.horizon
    std = np.zeros((T, 32), np.float32)
    std[:, list(XR0_INDEX)] = 0.1
    special = QWEN_SPECIAL_TOKENS if args.variant == "full" else tiny_special_ids()
    processor = XR0Processor.build(
        {"aloha": {"mean": np.zeros_like(std).tolist(), "std": std.tolist()}}, special, T
    )
    config = variant(args.variant, action_length=T, max_prefix=6 if args.async_train else 0)
    model = create_model(config, seed=0, device=device)
    vision_grads = mode == "full"
    if mode == "lora":
        lora = LoraConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank, targets=tuple(args.lora_targets))
        add_adapters(model, lora)
        vision_grads = adapts_vision(lora)
    set_trainable(model, mode)
    from xr0.train_config import TrainConfig

    setting = {"auto": "auto", "true": True, "false": False}[args.gradient_checkpointing]
    checkpointing = vision_grads and TrainConfig(gradient_checkpointing=setting).checkpointing(device.type)
    if checkpointing:
        model.vlm.model.visual.activation_checkpointing_enable({"use_reentrant": False})
    model.train()
    if mode == "frozen-vlm":
        model.vlm.eval()
    objective = FlowObjective(
        model,
        freeze_vlm=mode == "frozen-vlm",
        training_repeat=args.training_repeat,
        reweight=args.async_train,
    )
    params = [p for p in objective.parameters() if p.requires_grad]
    fused = device.type in ("cuda", "cpu") or None  # as the trainer: torch's fused AdamW kernels
    optimizer = torch.optim.AdamW(param_groups(objective, 0.1), lr=1e-4, betas=(0.9, 0.95), fused=fused)
    autocast = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    mask = processor.get_action_mask("aloha")[0]
    B = args.batch_size
    inputs = {
        k: v.to(device) for k, v in _batch(processor, B, args.views, args.height, args.width, 0).items()
    }
    state = torch.randn(B, 1, 32, device=device)
    actions = torch.randn(B, T, 32, device=device) * mask.to(device)
    valid = torch.ones(B, T, device=device)
    mask_b = mask.to(device).expand(B, -1, -1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    for step in range(args.warmup + args.steps):
        draws = draw_step(0, step, B, args.training_repeat, T, 32, mask, config.max_prefix, 0.5).to(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, _ = objective(inputs, state, actions, valid, mask_b, draws)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    counts = parameter_counts(model)
    out = {
        "gradient_checkpointing": checkpointing,
        "trainable_params": sum(p.numel() for p in params),
        "total_params": counts["total"],
        "step_ms": {
            "p50": round(float(np.percentile(times, 50)), 1),
            "mean": round(float(np.mean(times)), 1),
        },
        "samples_per_s": round(B / (float(np.mean(times)) / 1e3), 2),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "estimate": memory.estimate(model),
        "rss_before_steps_gib": round(rss_before / 2**30, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, 2),
    }
    if device.type == "cuda":
        out["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del model, objective, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _measure_in_process(options: dict, mode: str, device: str, threads: int) -> dict:
    """`_measure` in a fresh process (spawned), so peak RSS belongs to this mode alone."""
    import torch

    torch.set_num_threads(threads)
    return _measure(argparse.Namespace(**options), mode, torch.device(device))


def bench(args: argparse.Namespace, config: AppConfig) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from app.bench import machine
    from xr0.distributed import pick_device

    try:
        device = pick_device(args.device)
    except ValueError as e:
        raise UserError(f"--device: {e}") from e
    from xr0.train_config import LoraConfig

    try:
        LoraConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank, targets=tuple(args.lora_targets))
    except ValueError as e:
        raise UserError(f"--{str(e).replace('.', '-', 1)}") from e
    if args.variant == "full" and device.type != "cuda":
        raise UserError("--variant full needs a CUDA GPU (fp32 weights plus AdamW state: tens of GB)")
    result = {
        "bench": "train",
        "variant": args.variant,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": args.batch_size,
        "views": args.views,
        "width": args.width,
        "height": args.height,
        "horizon": args.horizon,
        "training_repeat": args.training_repeat,
        "async_train": args.async_train,
        "steps": args.steps,
        "torch_threads": torch.get_num_threads(),
    }
    options = {k: v for k, v in vars(args).items() if isinstance(v, int | float | str | list | bool | None)}
    spawn = multiprocessing.get_context("spawn")
    for mode in args.modes:
        log.info("timing %s steps of %s in a fresh process …", mode, args.variant)
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            job = pool.submit(_measure_in_process, options, mode, str(device), torch.get_num_threads())
            result[mode] = job.result()
        if mode == "lora":
            result[mode]["adapters"] = {
                "rank": args.lora_rank,
                "alpha": 2.0 * args.lora_rank,
                "targets": list(args.lora_targets),
            }
    result["machine"] = machine()
    return result
