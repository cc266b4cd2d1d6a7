"""Fine-tuning XR0 on recorded episodes: the configuration and the training loop.

`Trainer(config, run_dir).run()` builds (or loads) the model, computes the action statistics from the
training episodes, and trains with the flow-matching objective of `xr0.objective` — AdamW (0.9, 0.95),
weight decay 0.1 except biases, norms and AdaLN tables, linear warm-up then cosine, gradient clipping,
bf16 autocast on a GPU, optional EMA — on one process or under torchrun (DDP or FSDP2, `xr0.distributed`).
It logs to `metrics.jsonl` (and TensorBoard when installed), shows a progress bar, evaluates the open-loop
action error on held-out episodes, and writes checkpoints that `XR0Policy.from_checkpoint` loads and that
resume exactly (`xr0.train_state`). docs/training.md is the user's guide.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xr0 import distributed as dist_
from xr0.contract import build_contract
from xr0.data import (
    DataError,
    MixtureSchedule,
    RankBatches,
    TrainingSamples,
    action_statistics,
    eval_keys,
    make_loader,
    open_sources,
    segment_order,
    source_states,
    source_windows,
    state_statistics,
)
from xr0.keyframes import HEAD_PREFIX, KeyframeHead
from xr0.objective import FlowObjective, draw_step
from xr0.policy import RELATIVE_JOINTS
from xr0.processor import STATS_KEYS
from xr0.train_config import TrainConfig
from xr0.train_state import (
    TRAINING_INFO,
    append_jsonl,
    last_checkpoint,
    publish,
    read_jsonl,
    read_resume,
    step_dir,
    to_cpu_full,
    truncate_metrics,
    write_resume,
)

log = logging.getLogger(__name__)

NEW_MODELS = {"tiny": "tiny", "full-random": "full"}  # --init NAME → a variant with random weights
NO_DECAY = ("bias", "norm", "ln", "rotary_emb", "adaln")  # official: no weight decay when the name has one
OFFICIAL_ROPE_OFFSET = 10


def warmup_length(cfg: TrainConfig) -> int:
    return min(cfg.warmup_steps, cfg.steps // 10)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up from min_lr to lr, then cosine back to min_lr at `steps` (the official LambdaLR)."""
    warm = warmup_length(cfg)
    if step < warm:
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, cfg.steps - warm))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA's decay at 0-based `step`: min(decay, (1 + step) / (10 + step)), the usual warm-up.

    A fixed 0.999 keeps 0.999^n of the random initialisation after n steps — 37 % after 1000, 22 % after
    1500 — so a short run's checkpoint (the EMA weights) was a blend with noise that failed closed-loop
    while the raw weights' open-loop figures looked fine. With the warm-up the initialisation's share is
    below 1 % after 10 steps; the decay reaches 0.99 near step 900 and 0.999 near step 9000."""
    return min(decay, (1.0 + step) / (10.0 + step))


# -- model and processor ------------------------------------------------------------------------------------
def build_model(
    cfg: TrainConfig, stats: dict[str, np.ndarray], device: torch.device, init: str | None = None
):
    """The model (fp32 master weights) and processor a run starts from (or resumes: `init` = its checkpoint),
    with the run's switches and the new statistics as `action_config[robot_type]`, and the dtype the
    starting weights were stored in (checkpoints are saved in it, so frozen weights stay exact)."""
    from xr0.checkpoint import load_checkpoint
    from xr0.config import QWEN_SPECIAL_TOKENS, tiny_special_ids, variant
    from xr0.model import cast_parameters, create_model
    from xr0.processor import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, XR0Processor

    init = init or cfg.init
    horizon = cfg.data.horizon
    action_config = {cfg.data.robot_type: {"mean": stats["mean"].tolist(), "std": stats["std"].tolist()}}

    def with_state_stats(normalize: bool) -> dict:
        if normalize and "state_mean" in stats:
            for key in ("state_mean", "state_std"):
                action_config[cfg.data.robot_type][key] = stats[key].tolist()
        return action_config

    if init in NEW_MODELS:
        with_state_stats(cfg.normalize_state is not False)
        config = variant(NEW_MODELS[init], action_length=horizon)
        special = QWEN_SPECIAL_TOKENS if init == "full-random" else tiny_special_ids()
        processor = XR0Processor.build(
            action_config, special, horizon, DEFAULT_MIN_PIXELS, cfg.max_pixels or DEFAULT_MAX_PIXELS
        )
        model = create_model(_switches(config, cfg), seed=cfg.seed, device=device)
        stored = torch.float32
    else:
        # straight onto the device: no host copy of a 4.7 B model per rank
        model, loaded = load_checkpoint(init, device=device)
        stored = model.dtype
        cast_parameters(model, torch.float32)
        model.config = _switches(model.config, cfg)
        was_normalised = bool(loaded.state_stats)
        normalize = was_normalised if cfg.normalize_state == "auto" else bool(cfg.normalize_state)
        if normalize != was_normalised:
            log.warning(
                "%s was trained on a %s state; train.normalize_state=%s changes what its state projector "
                "reads, which costs it what it had learned there",
                init,
                "normalised" if was_normalised else "raw",
                cfg.normalize_state,
            )
        with_state_stats(normalize)
        image_processor = loaded.image_processor
        if cfg.max_pixels is not None:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

            settings = image_processor.to_dict()
            settings.pop("image_processor_type", None)
            settings["size"] = {"shortest_edge": DEFAULT_MIN_PIXELS, "longest_edge": cfg.max_pixels}
            image_processor = Qwen2VLImageProcessorPil.from_dict(settings)
        processor = XR0Processor(loaded.tokenizer, image_processor, action_config, action_length=horizon)
    return model.to(device), processor, stored


def _switches(config, cfg: TrainConfig):
    band = cfg.dit_mask == "band"
    offset = config.noisy_rope_offset if config.dit_mask == "band" else OFFICIAL_ROPE_OFFSET
    return replace(
        config,
        dit_mask=cfg.dit_mask,
        noisy_rope_offset=offset if band else 0,
        max_prefix=min(cfg.max_prefix, cfg.data.horizon - 1) if cfg.async_train else 0,
        action_length=cfg.data.horizon,
    )


def set_trainable(model, mode: str) -> None:
    """frozen-vlm: the action head only; lora: the action head and the VLM's adapters (`xr0.lora`); full:
    everything but the input embeddings (and the tied lm_head) and the VLM parameters no output depends on."""
    frozen = model.unused_vlm_parameter_names()
    for name, p in model.named_parameters():
        if mode == "frozen-vlm":
            p.requires_grad_(not name.startswith("vlm."))
        elif mode == "lora":
            p.requires_grad_(not name.startswith("vlm.") or ".lora_A." in name or ".lora_B." in name)
        else:
            p.requires_grad_(name not in frozen and "embed_tokens" not in name and "lm_head" not in name)


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if any(s in name.lower() for s in NO_DECAY) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _trainable(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n.removeprefix("model."): p for n, p in module.named_parameters() if p.requires_grad}


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.progress = progress
        self.ctx = dist_.setup(cfg.device)
        try:
            self.local_batch = dist_.check_batch(cfg.batch_size, self.ctx.world)
            self.strategy = dist_.resolve_strategy(cfg.strategy, self.ctx.world)
            self._check_run(resume)
        except BaseException:
            dist_.teardown()
            raise
        self.grad_norm, self.prefix_length = torch.zeros(()), 0
        self.cameras = cfg.data.cameras or ("cam_high", "cam_left_wrist", "cam_right_wrist")
        # XR0's representation (arm joints relative to the state), or absolute everywhere for a new model.
        self.relative = np.asarray(RELATIVE_JOINTS, dtype=bool) & bool(cfg.relative_actions)

    def _check_run(self, resume: bool) -> None:
        self.resume_from = last_checkpoint(self.run_dir) if resume else None
        if resume and self.resume_from is None:
            raise ValueError(
                f"--resume: {self.run_dir} has no checkpoint to resume from (no {self.run_dir}/last)"
            )
        if not resume and last_checkpoint(self.run_dir) is not None:
            raise ValueError(
                f"{self.run_dir} already holds a training run; pass --resume to continue it or choose another --out"
            )

    # -- set-up -----------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.sources = open_sources(cfg.data, self.cameras)
        train_samples = sum(len(s.train) for s in self.sources)
        if cfg.batch_size > train_samples:
            raise DataError(
                f"batch_size {cfg.batch_size} is larger than the {train_samples} training samples in "
                f"{', '.join(s.path for s in self.sources)}; use a smaller batch or more episodes"
            )
        self.start_step = 0
        state = None
        if self.resume_from is not None:
            state = read_resume(self.resume_from)
            self.start_step = int(state["state"]["step"])
            from xr0.processor import XR0Processor

            saved = XR0Processor.from_pretrained(self.resume_from).action_config[cfg.data.robot_type]
            stats = {k: np.asarray(saved[k], np.float32) for k in STATS_KEYS if k in saved}
        else:
            stats, rows = action_statistics(
                list(source_windows(self.sources)), cfg.data.horizon, self.relative
            )
            stats.update(state_statistics(source_states(self.sources, cfg.data.privileged)))
            log.info("action and state statistics from %d windows of the training episodes", rows)
        init = str(self.resume_from) if self.resume_from is not None else None
        if init is not None and cfg.mode == "lora":  # its checkpoints are merged: rebuild the base instead
            from xr0.lora import base_init

            init = base_init(self.resume_from, cfg.seed)
        model, self.processor, self.save_dtype = build_model(cfg, stats, ctx.device, init)
        if cfg.augment.state_dropout and not self.processor.normalizes_state(cfg.data.robot_type):
            raise DataError(
                "train.augment.state_dropout needs a normalised state (a hidden state reads as the "
                "training mean, 0); this model reads its state raw (train.normalize_state)"
            )
        vision_grads = cfg.mode == "full"
        if cfg.mode == "lora":
            from xr0.lora import adapts_vision, add_adapters

            add_adapters(model, cfg.lora, seed=cfg.seed)
            vision_grads = adapts_vision(cfg.lora)
        set_trainable(model, cfg.mode)
        if vision_grads and cfg.checkpointing(ctx.device.type):
            model.vlm.model.visual.activation_checkpointing_enable({"use_reentrant": False})
        model.train()
        if cfg.mode == "frozen-vlm":
            model.vlm.eval()
        head = None
        if cfg.keyframe_loss_weight:
            width = model.vlm.config.vision_config.out_hidden_size
            head = KeyframeHead(width, len(self.cameras)).to(ctx.device)
        if state is not None:
            self._check_resume(model, head, state)
            params = dict(model.named_parameters()) | {
                HEAD_PREFIX + n: p for n, p in (head.named_parameters() if head is not None else ())
            }
            with torch.no_grad():
                for name, value in state["trainable"].items():
                    params[name].copy_(value)
        if cfg.precision == "bf16-weights":  # the official run's bf16 weights; AdamW keeps fp32 masters
            from xr0.model import cast_parameters

            cast_parameters(model, torch.bfloat16)
        self.model = model
        objective = FlowObjective(
            model,
            freeze_vlm=cfg.mode == "frozen-vlm",
            training_repeat=cfg.training_repeat,
            freq_loss_weight=cfg.freq_loss_weight,
            reweight=cfg.async_train,
            reweight_clamp=cfg.reweight_clamp,
            reweight_per_copy=cfg.reweight_per_copy,
            keyframe_head=head,
            keyframe_weight=cfg.keyframe_loss_weight,
        )
        self.wrapped = dist_.wrap(objective, self.strategy, ctx)
        self.params = _trainable(objective)
        # torch's fused AdamW (CUDA and CPU kernels): one pass over all tensors instead of a loop over them
        fused = ctx.device.type in ("cuda", "cpu") and self.strategy != "fsdp"
        if cfg.precision == "bf16-weights":
            from xr0.optim import MasterWeightAdamW

            self.optimizer = MasterWeightAdamW(
                param_groups(objective, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps
            )
        else:
            self.optimizer = torch.optim.AdamW(
                param_groups(objective, cfg.weight_decay),
                lr=cfg.lr,
                betas=cfg.betas,
                eps=cfg.eps,
                fused=fused or None,
            )
        self.ema = None
        if cfg.ema_decay:
            self.ema = {n: p.detach().clone().float() for n, p in self.params.items()}
        if ctx.main:
            from xr0 import memory

            shards = ctx.world if self.strategy == "fsdp" else 1
            estimate = memory.estimate(model, ema=bool(cfg.ema_decay), shards=shards)
            log.info(memory.describe(cfg.mode, estimate))
        if state is not None:
            self._restore(state)
        self.action_mask = self.processor.get_action_mask(cfg.data.robot_type)[0]  # (T, 32)
        self.contract = build_contract(
            self.sources,
            self.cameras,
            self.relative,
            robot_type=cfg.data.robot_type,
            chunk_length=cfg.data.horizon,
            max_prefix=model.config.max_prefix,
            max_pixels=self.processor.image_processor.size["longest_edge"],
            stats=self.processor.action_config[cfg.data.robot_type],
            privileged=cfg.data.privileged,
            state_normalised=self.processor.normalizes_state(cfg.data.robot_type),
        )
        self.autocast = cfg.precision == "bf16" or (cfg.precision == "auto" and ctx.device.type == "cuda")
        seed = cfg.seed
        groups, window = segment_order(self.sources, cfg.data.segment_window)
        self.schedule = MixtureSchedule(
            [len(s.split("draw")) for s in self.sources],
            [s.weight for s in self.sources],
            seed,
            groups,
            window,
        )
        common = (self.processor, self.cameras, self.relative, cfg.data.horizon, cfg.data.robot_type)
        priv = cfg.data.privileged
        self.train_set = TrainingSamples(
            self.sources, *common, cfg.augment, seed, "draw", priv, keyframes=bool(cfg.keyframe_loss_weight)
        )
        self.eval_sets = {
            split: (TrainingSamples(self.sources, *common, cfg.augment, seed, split, priv), keys)
            for split in ("val", "train")
            if (keys := eval_keys(self.sources, split, cfg.data.eval_samples))
        }

    def _check_resume(self, model, head, state: dict[str, Any]) -> None:
        """The resumed run must train the same parameters; other changes are allowed but reported."""
        trainable = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
        trainable |= {HEAD_PREFIX + n: tuple(p.shape) for n, p in (head.named_parameters() if head else ())}
        saved_shapes = {n: tuple(t.shape) for n, t in state["trainable"].items()}
        if trainable != saved_shapes:
            raise ValueError(
                f"{self.resume_from} was trained with other trainable parameters (another mode, other "
                "train.lora targets or rank, or the keyframe loss on or off); resume with the settings it "
                "was trained with"
            )
        info = json.loads((self.resume_from / TRAINING_INFO).read_text())
        free = {"steps", "max_minutes", "log_every", "eval_every", "save_every", "keep_checkpoints", "device",
                "num_workers", "prefetch_factor", "eval_samples", "gradient_checkpointing"}  # fmt: skip

        def relevant(cfg: dict[str, Any]) -> dict[str, Any]:
            flat = {**{k: v for k, v in cfg.items() if k != "data"}, **cfg.get("data", {})}
            return {k: json.dumps(v) for k, v in flat.items() if k not in free}

        saved, now = relevant(info["config"]), relevant(asdict(self.cfg))
        changed = sorted(k for k in now if k in saved and now[k] != saved[k])  # keys added since: defaults
        splits = [(d["path"], d["train_episodes"]) for d in info["datasets"]]
        if splits != [(s.path, s.train.episodes.tolist()) for s in self.sources]:
            changed.append("the stores' training episodes")
        if changed:
            log.warning(
                "resuming with changes (%s): the run will not reproduce an uninterrupted one",
                ", ".join(changed),
            )

    def _restore(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(
            self.wrapped, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
        )
        if self.ema is not None:
            if state["ema"] is None:
                raise ValueError(f"{self.resume_from} was trained without EMA; resume with ema_decay 0")
            for name, shadow in self.ema.items():
                full = state["ema"][name]
                if hasattr(shadow, "device_mesh"):
                    from torch.distributed.tensor import distribute_tensor

                    full = distribute_tensor(full.to(shadow.device), shadow.device_mesh, shadow.placements)
                shadow.copy_(full)

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        try:
            self._prepare()
            return self._loop()
        finally:
            dist_.teardown()

    def _loop(self) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        metrics = self.run_dir / "metrics.jsonl"
        if ctx.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "train_config.json").write_text(json.dumps(self._describe(), indent=2) + "\n")
            truncate_metrics(metrics, self.start_step)
        tb = self._tensorboard()
        batches = RankBatches(self.schedule, cfg.batch_size, ctx.rank, ctx.world, self.start_step, cfg.steps)
        loader = make_loader(
            self.train_set,
            batches,
            cfg.data.workers(ctx.device.type),
            cfg.data.prefetch_factor,
            ctx.device.type == "cuda",
        )
        bar = self._bar()
        t_start = time.monotonic()
        t_log, samples_log = t_start, 0
        loss_sum, n_sum = torch.zeros((), device=ctx.device), 0
        step, stop = self.start_step, "steps"
        extra: dict[str, Any] = {}
        for batch in loader:
            lr = lr_at(step, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss, stats = self._step(step, batch)
            step += 1
            loss_sum += loss.detach()
            n_sum += 1
            samples_log += cfg.batch_size
            extra = stats
            if bar is not None:
                bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                mean_loss = float(dist_.all_reduce_mean(loss_sum / n_sum))
                now = time.monotonic()
                record = {
                    "step": step,
                    "loss": mean_loss,
                    "lr": lr,
                    "grad_norm": float(self.grad_norm),
                    "samples_per_s": samples_log / max(now - t_log, 1e-9),
                    "prefix_length": self.prefix_length,
                    **{k: float(v) for k, v in extra.items()},
                }
                loss_sum, n_sum, t_log, samples_log = torch.zeros((), device=ctx.device), 0, now, 0
                if ctx.main:
                    append_jsonl(metrics, record)
                    if tb is not None:
                        for k, v in record.items():
                            tb.add_scalar(f"train/{k}", v, step)
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", sps=f"{record['samples_per_s']:.1f}"
                        )
            timed_out = cfg.max_minutes is not None and time.monotonic() - t_start > cfg.max_minutes * 60
            if dist_.any_rank(timed_out, ctx.device):
                stop = "max_minutes"
                break
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                self._eval(step, metrics, tb)
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                self._save(step)
        if bar is not None:
            bar.close()
        wall = time.monotonic() - t_start
        evals = self._eval(step, metrics, tb) if step > self.start_step else {}
        checkpoint = self._save(step) if step > self.start_step else self.resume_from
        summary = self._summary(metrics, step, stop, wall, evals, checkpoint)
        if ctx.main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if tb is not None:
            tb.close()
        return summary

    def _step(self, step: int, batch: dict[str, Any]):
        cfg, ctx = self.cfg, self.ctx
        draws = draw_step(
            cfg.seed,
            step,
            cfg.batch_size,
            cfg.training_repeat,
            cfg.data.horizon,
            self.action_mask.shape[-1],
            self.action_mask,
            self.model.config.max_prefix,
            cfg.prefix_mask_prob,
        )
        draws = draws.shard(ctx.rank, ctx.world).to(ctx.device)
        self.prefix_length = draws.prefix_length
        dev = ctx.device
        inputs = {k: v.to(dev) for k, v in batch["inputs"].items()}
        mask = self.action_mask.to(dev).expand(self.local_batch, -1, -1)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.autocast):
            keyframe = batch["keyframe"].to(dev) if "keyframe" in batch else None
            loss, stats = self.wrapped(
                inputs, batch["state"].to(dev), batch["actions"].to(dev), batch["valid"].to(dev), mask, draws,
                keyframe=keyframe,
            )  # fmt: skip
        loss.backward()
        params = list(self.params.values())
        if cfg.grad_clip:
            self.grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            self.grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if hasattr(self.grad_norm, "full_tensor"):
            self.grad_norm = self.grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            decay = ema_decay_at(step, cfg.ema_decay)
            with torch.no_grad():
                # fp32 weights: one foreach call instead of a Python loop of lerps; low-precision weights
                # (bf16-weights) one at a time, so that only one fp32 copy of a weight exists at once
                same = [n for n, p in self.params.items() if p.dtype == self.ema[n].dtype]
                if same:
                    torch._foreach_lerp_(
                        [self.ema[n] for n in same], [self.params[n].detach() for n in same], 1 - decay
                    )
                for name, p in self.params.items():
                    if p.dtype != self.ema[name].dtype:
                        self.ema[name].lerp_(p.detach().float(), 1 - decay)
        return loss, stats

    @contextlib.contextmanager
    def _ema_weights(self):
        """The EMA weights in the model for the block (what a checkpoint holds), the raw ones back after."""
        if self.ema is None:
            yield
            return
        with torch.no_grad():
            raw = {name: p.detach().clone() for name, p in self.params.items()}
            for name, p in self.params.items():
                p.copy_(self.ema[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(raw[name])

    # -- evaluation -------------------------------------------------------------------------------------
    def _eval(self, step: int, metrics: Path, tb) -> dict[str, Any]:
        """Open-loop action error (robot units) and vision dependence on the fixed held-out and training
        samples, of the weights a checkpoint would hold (the EMA's when one is kept)."""
        with self._ema_weights():
            return self._eval_weights(step, metrics, tb)

    def _eval_weights(self, step: int, metrics: Path, tb) -> dict[str, Any]:
        from xr0.data import start_keys
        from xr0.evaluation import open_loop_error, vision_dependence

        ctx, cfg = self.ctx, self.cfg
        self.wrapped.eval()
        results = {
            split: open_loop_error(
                self.wrapped,
                self.processor,
                dataset,
                keys,
                robot_type=cfg.data.robot_type,
                relative=self.relative,
                batch_size=self.local_batch,
                seed=cfg.seed,
                device=ctx.device,
                autocast=self.autocast,
                rank=ctx.rank,
                world=ctx.world,
            )
            for split, (dataset, keys) in self.eval_sets.items()
        }
        # does the model look? the first step of several episodes, own vs another episode's images
        for split, (dataset, _) in self.eval_sets.items():
            vision = vision_dependence(
                self.wrapped,
                self.processor,
                dataset,
                start_keys(self.sources, split, cfg.data.eval_samples),
                robot_type=cfg.data.robot_type,
                relative=self.relative,
                seed=cfg.seed,
                device=ctx.device,
                autocast=self.autocast,
            )
            if vision:
                results[split]["vision"] = vision
        self.wrapped.train()
        if self.cfg.mode == "frozen-vlm":
            self.model.vlm.eval()
        if ctx.main and results:
            append_jsonl(metrics, {"step": step, "eval": results})
            if tb is not None:
                for split, r in results.items():
                    for k, v in r.items():
                        if isinstance(v, dict):
                            for kk, vv in v.items():
                                tb.add_scalar(f"eval_{split}/{k}_{kk}", vv, step)
                        else:
                            tb.add_scalar(f"eval_{split}/{k}", v, step)
            log.info("step %d open-loop error: %s", step, json.dumps(results))
        return results

    # -- checkpoints ------------------------------------------------------------------------------------
    def _save(self, step: int) -> Path:
        """Gather (collective), then rank 0 writes the policy checkpoint and the resume state."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        from xr0.checkpoint import save_checkpoint
        from xr0.model import XR0Model

        ctx = self.ctx
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(self.wrapped, options=options)
        optim = get_optimizer_state_dict(self.wrapped, self.optimizer, options=options)
        trainable = {n: to_cpu_full(p) for n, p in self.params.items()}
        ema = {n: to_cpu_full(t) for n, t in self.ema.items()} if self.ema is not None else None
        final = step_dir(self.run_dir, step)
        if ctx.main:
            weights = {k.removeprefix("model."): v for k, v in full.items() if k.startswith("model.")}
            weights.update({k: v for k, v in (ema or {}).items() if not k.startswith(HEAD_PREFIX)})
            if self.cfg.mode == "lora":  # the official layout, adapters folded in (a copy: training goes on)
                from xr0.lora import merge_adapters

                weights = merge_adapters(weights, self.cfg.lora)
            dtype = self.save_dtype
            weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
            with torch.device("meta"):
                shell = XR0Model(self.model.config)
            shell.load_state_dict(weights, strict=True, assign=True)
            tmp = final.with_name(final.name + ".tmp")
            save_checkpoint(shell, self.processor, tmp)
            (tmp / TRAINING_INFO).write_text(json.dumps(self._describe(step), indent=2) + "\n")
            self.contract.save(tmp)
            state = {
                "step": step,
                "samples_seen": step * self.cfg.batch_size,
                "seed": self.cfg.seed,
                "world_size": ctx.world,
            }
            write_resume(tmp, state, trainable, ema, optim)
            publish(tmp, final, self.run_dir, self.cfg.keep_checkpoints)
            log.info("saved step %d to %s", step, final)
        dist_.barrier()
        return final

    # -- reporting --------------------------------------------------------------------------------------
    def _describe(self, step: int | None = None) -> dict[str, Any]:
        """What produced a checkpoint: enough to run it the way it was trained."""
        from xr0.data import open_store

        tasks = sorted({t for s in self.sources for t in open_store(s.path).tasks})
        info = {
            "cameras": list(self.cameras),
            "relative": self.relative.tolist(),
            "robot_type": self.cfg.data.robot_type,
            "chunk_length": self.cfg.data.horizon,
            "instructions": tasks,
            "datasets": [
                {
                    "path": s.path,
                    "weight": s.weight,
                    "train_episodes": s.train.episodes.tolist(),
                    "val_episodes": s.val.episodes.tolist(),
                }
                for s in self.sources
            ],
            "world_size": self.ctx.world,
            "strategy": self.strategy,
            "config": asdict(self.cfg),
        }
        if step is not None:
            info["step"] = step
        return info

    def _summary(
        self, metrics: Path, step: int, stop: str, wall: float, evals: dict, checkpoint
    ) -> dict[str, Any]:
        records = read_jsonl(metrics) if self.ctx.main else []
        losses = [r["loss"] for r in records if "loss" in r]
        summary: dict[str, Any] = {"steps": step, "stop": stop, "wall_s": round(wall, 1)}
        if losses:
            k = max(1, len(losses) // 10)
            first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
            summary["loss"] = {
                "first": first,
                "last": last,
                "min": float(np.min(losses)),
                "last_over_first": last / first,
                "points": len(losses),
            }
        trained = step - self.start_step
        summary["samples_per_s"] = round(trained * self.cfg.batch_size / max(wall, 1e-9), 2)
        summary["eval"] = evals
        summary["evals"] = [r for r in records if "eval" in r]
        summary["checkpoint"] = str(checkpoint) if checkpoint else None
        return summary

    def _bar(self):
        if not (self.progress and self.ctx.main):
            return None
        from recording.progress import progress_bar

        return progress_bar(self.cfg.steps, "train", "step", initial=self.start_step)

    def _tensorboard(self):
        if not self.ctx.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))
