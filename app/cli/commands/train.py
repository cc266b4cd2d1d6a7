"""`xr0 train` — fine-tune XR0 on recorded episodes (docs/training.md).

    xr0 train --dataset datasets/sim_transfer_cube.zarr --init tiny --out runs/cube --steps 2000
    xr0 train --dataset a.zarr b.zarr --weights 1 0.5 --init PATH --mode full --async-train --out runs/x
    torchrun --nproc-per-node 8 -m app train …        (DDP; --strategy fsdp shards the model)

Every default is in config.yaml `train:`; the options here override it. The run folder gets
train_config.json, metrics.jsonl, summary.json and checkpoints (`OUT/last` is the newest), which
`xr0 rollout --policy OUT/last` and `xr0 serve --policy OUT/last` load.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

from app.compose.config import AppConfig
from app.errors import UserError, prog
from xr0.train_config import NEW_MODEL_INITS, TrainConfig

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        nargs="+",
        default=None,
        metavar="PATH",
        help="episode store(s): a path, or NAME under recording.root (default: train.data.datasets, "
        "else the store `xr0 record` writes by default)",
    )
    p.add_argument(
        "--weights",
        nargs="+",
        type=float,
        default=None,
        metavar="W",
        help="sampling weight per --dataset (default: equal)",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="tiny|full-random|PATH|HUB_ID",
        help="starting point: a new random model, a checkpoint directory or a Hub id you choose",
    )
    p.add_argument(
        "--variant",
        default=None,
        choices=("tiny", "full"),
        help="a new random model of this variant (same as --init tiny / full-random)",
    )
    p.add_argument("--out", default=None, help="run folder (default: runs/train-DATE-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument(
        "--mode",
        choices=("auto", "frozen-vlm", "full", "lora"),
        default=None,
        help="what is trained (auto: full for a new random model, frozen-vlm from a checkpoint; lora: "
        "adapters on the VLM plus the action head)",
    )
    p.add_argument(
        "--lora-rank",
        type=int,
        default=None,
        metavar="R",
        help="mode lora: adapter rank (alpha follows as 2·R unless --lora-alpha is given)",
    )
    p.add_argument("--lora-alpha", type=float, default=None, help="mode lora: adapter scale alpha")
    p.add_argument(
        "--lora-targets",
        nargs="+",
        default=None,
        metavar="PROJ",
        help="mode lora: projections to adapt (q_proj k_proj v_proj o_proj gate_proj up_proj down_proj; "
        "vision: qkv proj linear_fc1 linear_fc2)",
    )
    p.add_argument(
        "--privileged",
        nargs="+",
        default=None,
        metavar="INPUT",
        help="diagnostic only: simulator inputs appended to the state (object_start); never deploy such a model",
    )
    p.add_argument(
        "--async-train",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="asynchronous post-training (prefixes, L1 reweighting)",
    )
    p.add_argument("--steps", type=int, default=None, help="optimiser steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop and save after this many minutes")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (split over processes)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps")
    p.add_argument("--training-repeat", type=int, default=None, help="DiT passes per VLM pass")
    p.add_argument(
        "--reweight-per-copy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="async: a reweighting generation per repeated copy (official) or one per sample, shared (cheaper)",
    )
    p.add_argument("--freq-loss-weight", type=float, default=None, help="frequency loss weight (0 = off)")
    p.add_argument(
        "--keyframe-loss",
        type=float,
        default=None,
        metavar="W",
        help="weight of the auxiliary keyframe loss that teaches a new model to look (0 = off)",
    )
    p.add_argument("--ema", type=float, default=None, metavar="DECAY", help="EMA decay (0 = off)")
    p.add_argument("--max-pixels", type=int, default=None, help="pixels per view for new checkpoints")
    p.add_argument(
        "--normalize-state",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="normalise the state the model reads (default: yes for a new model, as the checkpoint otherwise)",
    )
    p.add_argument(
        "--absolute-actions",
        action="store_const",
        const=False,
        dest="relative_actions",
        default=None,
        help="a new model predicts absolute joint targets instead of XR0's state-relative ones",
    )
    p.add_argument(
        "--state-noise", type=float, default=None, metavar="RAD", help="noise on the joints the model sees"
    )
    p.add_argument(
        "--state-dropout",
        type=float,
        default=None,
        metavar="P",
        help="probability that a sample hides its state from the model (it must use the cameras)",
    )
    p.add_argument("--crop-scale", type=float, default=None, help="random crop side fraction (1 = no crop)")
    p.add_argument(
        "--colour-jitter",
        type=float,
        default=None,
        metavar="P",
        help="probability of each colour op (brightness, contrast, saturation; 0 = none)",
    )
    p.add_argument(
        "--start-emphasis",
        nargs=2,
        type=int,
        default=None,
        metavar=("STEPS", "REPEAT"),
        help="draw the first STEPS steps of each episode REPEAT extra times per epoch",
    )
    p.add_argument("--cameras", nargs="+", default=None, help="cameras in prompt order")
    p.add_argument("--horizon", type=int, default=None, help="chunk length T")
    p.add_argument("--val-episodes", type=int, default=None, help="episodes held out per store")
    p.add_argument("--num-workers", type=int, default=None, help="loader processes per rank")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--strategy", choices=("auto", "ddp", "fsdp"), default=None, help="multi-process strategy")
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32", "bf16-weights"),
        default=None,
        help="bf16/fp32 autocast, or bf16-weights (bf16 weights, fp32 AdamW masters: the official run's numerics)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of init, data order and flow draws")
    p.add_argument("--log-every", type=int, default=None, help="metrics every N steps")
    p.add_argument("--eval-every", type=int, default=None, help="open-loop evaluation every N steps")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def train_config(args: argparse.Namespace, config: AppConfig) -> TrainConfig:
    """config.yaml `train:` with the command line's overrides; `--dataset` resolved like `xr0 record`."""
    from app.compose.store import resolve_dataset

    cfg = config.train
    if args.variant and args.init:
        raise UserError("give --init or --variant, not both")
    init = {"tiny": "tiny", "full": "full-random"}.get(args.variant) if args.variant else args.init
    mode = args.mode
    if mode is None and init is not None and getattr(cfg, "_mode_was_auto", False):
        mode = "auto"  # config.yaml said auto: decide again for the init given here
    top = {
        "init": init,
        "mode": mode,
        "async_train": args.async_train,
        "steps": args.steps,
        "max_minutes": args.max_minutes,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "training_repeat": args.training_repeat,
        "reweight_per_copy": args.reweight_per_copy,
        "freq_loss_weight": args.freq_loss_weight,
        "keyframe_loss_weight": args.keyframe_loss,
        "ema_decay": args.ema,
        "max_pixels": args.max_pixels,
        "normalize_state": args.normalize_state,
        "relative_actions": args.relative_actions,
        "device": args.device,
        "strategy": args.strategy,
        "precision": args.precision,
        "seed": args.seed,
        "log_every": args.log_every,
        "eval_every": args.eval_every,
        "save_every": args.save_every,
    }
    if args.dataset:
        datasets = [resolve_dataset(d, config) for d in args.dataset]
    elif cfg.data.datasets:
        datasets = [config.resolve(d) for d in cfg.data.datasets]
    else:
        datasets = [resolve_dataset(None, config)]
    data = {
        "datasets": tuple(str(d) for d in datasets),
        "weights": tuple(args.weights) if args.weights else (cfg.data.weights if not args.dataset else ()),
        "cameras": tuple(args.cameras or cfg.data.cameras or config.policy.cameras or tuple(config.cameras)),
        "horizon": args.horizon,
        "val_episodes": args.val_episodes,
        "num_workers": args.num_workers,
        "privileged": tuple(args.privileged) if args.privileged else None,
        "start_steps": args.start_emphasis[0] if args.start_emphasis else None,
        "start_repeat": args.start_emphasis[1] if args.start_emphasis else None,
    }
    augment = {
        "state_noise_rad": args.state_noise,
        "state_dropout": args.state_dropout,
        "crop_scale": args.crop_scale,
        "prob": args.colour_jitter,
    }
    alpha = args.lora_alpha
    if alpha is None and args.lora_rank:
        alpha = 2.0 * args.lora_rank  # alpha follows the rank (alpha/rank stays 2)
    lora = {"rank": args.lora_rank, "alpha": alpha, "targets": tuple(args.lora_targets or ()) or None}
    try:
        data_cfg = replace(cfg.data, **{k: v for k, v in data.items() if v is not None})
        aug_cfg = replace(cfg.augment, **{k: v for k, v in augment.items() if v is not None})
        top["augment"] = aug_cfg
        top["lora"] = replace(cfg.lora, **{k: v for k, v in lora.items() if v is not None})
        out = replace(cfg, data=data_cfg, **{k: v for k, v in top.items() if v is not None})
    except ValueError as e:
        raise UserError(str(e).removeprefix("train.")) from e
    if out.mode == "frozen-vlm" and out.init in NEW_MODEL_INITS:
        blind = (
            f"mode frozen-vlm with a new random model (init {out.init}) trains the action head on a random, "
            "frozen vision model, which cannot learn to see (its policy goes to the average object position)"
        )
        if args.mode != "frozen-vlm":  # from a config file: a trap, not a choice
            raise UserError(f"train.{blind}: use mode full (or auto), or start from a pre-trained checkpoint")
        log.warning("--%s: fine for measuring speed or the mechanics, never for a policy to deploy", blind)
    return out


def run(args: argparse.Namespace, config: AppConfig) -> int:
    cfg = train_config(args, config)
    out = Path(args.out).expanduser() if args.out else Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    from recording.schema import StoreError
    from xr0.checkpoint import CheckpointError
    from xr0.train import Trainer

    try:
        trainer = Trainer(cfg, out, resume=args.resume, progress=not args.no_progress)
        summary = trainer.run()
    except (ValueError, StoreError, CheckpointError, FileNotFoundError) as e:
        raise UserError(str(e)) from e
    if trainer.ctx.main:
        loss = summary.get("loss", {})
        print(
            f"train: {summary['steps']} steps ({summary['stop']}) in {summary['wall_s']} s, "
            f"{summary['samples_per_s']} samples/s"
        )
        if loss:
            print(f"  loss {loss['first']:.4f} → {loss['last']:.4f} (min {loss['min']:.4f})")
        for split, r in summary.get("eval", {}).items():
            print(
                f"  open-loop error ({split}): joints {r['joint_mae_rad']:.4f} rad, gripper {r['gripper_mae']:.4f}"
            )
            v = r.get("vision")
            if v:
                print(
                    f"  vision ({split}, first step of {v['episodes']} episodes): error with another episode's "
                    f"images / own {v['swap_ratio']:.2f}×; reach spread predicted / recorded "
                    f"{v['reach_spread_ratio']:.2f} (≈0: blind, ≈1: it looks)"
                )
        print(f"  checkpoint: {summary['checkpoint']}")
        print(f"  roll it out: {prog()} rollout --robot sim --policy {out / 'last'}")
        print(f"  summary: {out / 'summary.json'}")
    return 0
