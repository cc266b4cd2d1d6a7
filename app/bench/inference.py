"""`xr0 bench inference`: latency of one XR0 chunk, split into preprocessing, VLM prefill and DiT steps.

It times `XR0Policy.infer` end to end — the path a rollout uses — on random images and states, with a
random-weight model of the chosen variant (latency does not depend on the weight values) or a checkpoint.
`tiny` runs on the CPU; `full` needs a CUDA GPU (bf16, SDPA, or flash-attention-2 when installed).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from app.errors import UserError
from app.runtime.episodes import percentiles

if TYPE_CHECKING:
    from app.compose.config import AppConfig
    from xr0.policy import XR0Policy

log = logging.getLogger(__name__)

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", default="tiny", help="model variant with random weights: tiny | full")
    p.add_argument(
        "--checkpoint", default=None, help="time a checkpoint directory instead of a random variant"
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    p.add_argument(
        "--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="auto: bf16 on GPU"
    )
    p.add_argument("--views", type=int, default=3, choices=(1, 2, 3), help="camera views in the prompt")
    p.add_argument("--width", type=int, default=320, help="image width in pixels")
    p.add_argument("--height", type=int, default=256, help="image height in pixels")
    p.add_argument("--chunk", type=int, default=30, help="actions per chunk T")
    p.add_argument("--prefix", type=int, default=0, help="prefix rows P given with each request")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the model's, 5)")
    p.add_argument("--iters", type=int, default=30, help="timed chunks")
    p.add_argument("--warmup", type=int, default=3, help="untimed chunks first")
    p.add_argument(
        "--compile", action="store_true", help="the DiT steps through torch.compile (policy.compile)"
    )
    p.add_argument(
        "--no-compare",
        dest="compare",
        action="store_false",
        help="skip timing the reference path of each stage (transformers' image processor and vision "
        "forward, the unfused DiT sampler) for the speed-ups",
    )


def build_policy(
    variant_name: str, checkpoint: str | None, device: str, dtype_name: str, chunk: int
) -> XR0Policy:
    import torch

    from xr0.config import QWEN_SPECIAL_TOKENS, tiny_special_ids, variant
    from xr0.model import create_model
    from xr0.policy import STATE_DIM, XR0_INDEX, XR0Policy, XR0PolicyConfig
    from xr0.processor import XR0Processor

    dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    if dtype is None:
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if checkpoint:
        return XR0Policy.from_checkpoint(checkpoint, device=device, dtype=dtype)
    if variant_name == "full" and torch.device(device).type != "cuda":
        raise UserError(
            "--variant full needs a CUDA GPU (≈19 GB of weights in fp32); use --variant tiny on a CPU"
        )
    config = variant(variant_name)
    std = np.zeros((chunk, config.action_dim), np.float32)
    std[:, list(XR0_INDEX[:STATE_DIM])] = 0.1  # random statistics for the 14 robot dims
    stats = {"aloha": {"mean": np.zeros_like(std).tolist(), "std": std.tolist()}}
    special = QWEN_SPECIAL_TOKENS if variant_name == "full" else tiny_special_ids()
    processor = XR0Processor.build(stats, special_ids=special)
    attn = "sdpa"
    if torch.device(device).type == "cuda":
        try:
            import flash_attn  # noqa: F401

            attn = "flash_attention_2"
        except ImportError:
            pass
    model = create_model(config, seed=0, device=device, dtype=dtype, attn_implementation=attn)
    return XR0Policy(model, processor, XR0PolicyConfig())


def bench(args: argparse.Namespace, config: AppConfig) -> dict:
    import torch
    import transformers

    from app.bench import machine
    from xr0.boundary import PolicyObservation
    from xr0.config import VARIANTS

    if args.variant not in VARIANTS:
        raise UserError(f"--variant {args.variant}: unknown; variants are {', '.join(VARIANTS)}")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: PyTorch sees no CUDA GPU on this machine")
    t0 = time.perf_counter()
    policy = build_policy(args.variant, args.checkpoint, device, args.dtype, args.chunk)
    build_s = time.perf_counter() - t0
    if args.prefix > policy.spec.max_prefix:
        raise UserError(f"--prefix {args.prefix}: this model takes at most {policy.spec.max_prefix}")
    cameras = CAMERAS[: args.views]
    policy_config = replace(policy.config, cameras=tuple(cameras), num_steps=args.steps, compile=args.compile)
    policy = type(policy)(policy.model, policy.processor, policy_config)
    if args.compile:  # the first chunk compiles: timed here, outside the warm-up and the timed chunks
        t0 = time.perf_counter()
        rng0 = np.random.default_rng(1)
        images0 = {c: rng0.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8) for c in cameras}
        policy.infer(
            PolicyObservation(images0, np.zeros(14), "transfer the cube", 0), np.zeros((args.prefix, 14))
        )
        compile_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    timings: dict[str, list[float]] = {"preprocess": [], "vlm": [], "dit": [], "total": []}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.iters):
        images = {c: rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8) for c in cameras}
        state = rng.normal(0, 0.3, 14)
        obs = PolicyObservation(images=images, state=state, instruction="transfer the cube", t_ns=i)
        prefix = state + rng.normal(0, 0.01, (args.prefix, 14))
        chunk = policy.infer(obs, prefix)
        if i >= args.warmup:
            for k in timings:
                timings[k].append(chunk.timing_ms[k])
    sample = policy.processor.encode("transfer the cube", [("v", images[c]) for c in cameras])
    result = {
        "bench": "inference",
        "variant": "checkpoint" if args.checkpoint else args.variant,
        "device": device if not device.startswith("cuda") else torch.cuda.get_device_name(device),
        "dtype": str(policy.model.dtype).removeprefix("torch."),
        "attention": policy.model.vlm.config._attn_implementation,
        "views": args.views,
        "width": args.width,
        "height": args.height,
        "prompt_tokens": int(sample["input_ids"].shape[1]),
        "chunk": policy.spec.chunk_length,
        "prefix": args.prefix,
        "steps": args.steps or policy.model.config.num_steps,
        "iters": args.iters,
        **{f"{k}_ms": percentiles(v, digits=2) for k, v in timings.items()},
        "build_s": round(build_s, 1),
        "compiled": args.compile,
        **({"first_chunk_with_compile_s": round(compile_s, 1)} if args.compile else {}),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": machine(),
    }
    if device.startswith("cuda"):
        result["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if args.compare:
        result["reference_ms"], result["speedup"] = compare_stages(policy, images, args, device)
    return result


def compare_stages(
    policy: XR0Policy, images: dict, args: argparse.Namespace, device: str
) -> tuple[dict, dict]:
    """p50 of each stage on its reference path and on the optimised one, on the same inputs: images through
    transformers' image processor vs `xr0.images`; the VLM with transformers' vision forward and MRoPE ids
    recomputed vs ours (fp32 patch embedding as a matrix product, per-grid tables and ids kept); the DiT
    through `sample_actions` vs the fused sampler."""
    import torch

    from xr0.flow import sample_actions, seeded_noise
    from xr0.images import image_patches
    from xr0.policy import VIEW_LABELS
    from xr0.vision import use_official_vision

    model, proc = policy.model, policy.processor
    views = [images[c] for c in policy.spec.cameras]
    inputs = {
        k: v.to(device)
        for k, v in proc.encode(
            "transfer the cube", [(VIEW_LABELS[c], images[c]) for c in policy.spec.cameras]
        ).items()
    }
    state = torch.zeros(1, 1, 32, dtype=model.dtype, device=device)
    mask = policy.action_mask
    noise = seeded_noise(0, mask.to(model.dtype))
    prefix = noise[:, : args.prefix] if args.prefix else None

    def vlm_reference() -> None:
        model.__dict__.pop("_position_ids_cache", None)
        use_official_vision(model.vlm, False)
        try:
            model.encode(inputs)
        finally:
            use_official_vision(model.vlm, True)

    with torch.inference_mode():
        ctx = model.encode(inputs)
        stages = {
            "preprocess": (
                lambda: proc.image_processor(images=views, return_tensors="pt"),
                lambda: image_patches(proc.image_processor, views),
            ),
            "vlm": (vlm_reference, lambda: model.encode(inputs)),
            "dit": (
                lambda: sample_actions(model, ctx, state, mask, prefix, noise=noise, num_steps=args.steps),
                lambda: policy._sampler.sample(ctx, noise, state, mask, args.prefix, args.steps),
            ),
        }
        reference, speedup = {}, {}
        for name, (slow, fast) in stages.items():
            times = {"reference": [], "optimised": []}
            for i in range(args.warmup + args.iters):
                for label, fn in (("reference", slow), ("optimised", fast)):  # interleaved: same load
                    t0 = time.perf_counter()
                    fn()
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    if i >= args.warmup:
                        times[label].append((time.perf_counter() - t0) * 1e3)
            ref, opt = float(np.median(times["reference"])), float(np.median(times["optimised"]))
            reference[name] = {"reference_p50": round(ref, 2), "optimised_p50": round(opt, 2)}
            speedup[name] = round(ref / opt, 2)
    return reference, speedup
