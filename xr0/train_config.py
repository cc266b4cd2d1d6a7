"""Configuration of XR0 fine-tuning (config.yaml `train:`): the recipe, the data and the augmentation.

Plain frozen dataclasses without torch, so the app can load config.yaml quickly; the trainer
(`xr0.train`) and the data pipeline (`xr0.data`) read them. Defaults follow the official post-training
recipe (spec §5.2); docs/training.md explains each knob.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from xr0.augment import AugmentConfig

# Cameras a model can read, and the prompt label of each (the same table as xr0.policy.VIEW_LABELS).
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist", "cam_low")


@dataclass(frozen=True)
class DataConfig:
    # Episode stores to train on (paths; several are mixed by `weights`).
    datasets: tuple[str, ...] = ()
    # Sampling weight of each store (empty: all 1). A store with weight 2 is drawn twice as often per step.
    weights: tuple[float, ...] = ()
    # Cameras the model reads, in prompt order; empty = the app's cameras (config.yaml `cameras`), which is
    # also what `xr0 rollout` feeds the policy.
    cameras: tuple[str, ...] = ()
    # Actions per training window = the chunk length T of the checkpoint (30 = 1 s at 30 Hz).
    horizon: int = 30
    # Episodes of each store held out for evaluation (the last N; a store with fewer episodes gives none).
    val_episodes: int = 1
    # Samples (held-out, and training) on which each eval measures the open-loop action error.
    eval_samples: int = 32
    # Loader worker processes per rank (0: load in the training process). auto: 0 when training on the CPU
    # (the workers would take cores from the model's threads: on 2 cores in-process loading with 2 threads
    # did 24 samples/s, 2 workers beside 1 thread 17), 2 on a GPU.
    num_workers: int | Literal["auto"] = "auto"
    # Batches each worker prepares ahead.
    prefetch_factor: int = 4
    # Key of the statistics in the checkpoint; `XR0Policy` reads "aloha".
    robot_type: str = "aloha"
    # Simulator-only inputs appended to the state (rung (b) of the diagnostics ladder, docs/eval.md):
    # ["object_start"] trains a model that is told where the cube started. Never for a deployed model.
    privileged: tuple[str, ...] = ()
    # Emphasis on the start of episodes, where only the images say where the object is: the first
    # `start_steps` steps of each training episode are drawn `start_repeat` extra times per epoch (0 = off).
    start_steps: int = 0
    start_repeat: int = 0
    # Archived stores (`xr0 dataset compact`: video segments) decode a whole segment to read one frame.
    # With a window > 0 the sampler visits each store's segments in random order and shuffles draws only
    # within windows of this many samples, so one decoded segment serves many samples (each step is still
    # drawn once per epoch). -1 (auto): 8 segments' worth when a store has archived episodes, else 0 (a
    # uniform shuffle). 0: always uniform (slow on archived stores).
    segment_window: int = -1

    def workers(self, device_type: str) -> int:
        """Loader processes for training on a device of this type (`num_workers`, auto resolved)."""
        if self.num_workers == "auto":
            return 0 if device_type == "cpu" else 2
        return int(self.num_workers)

    def __post_init__(self) -> None:
        if self.weights and len(self.weights) != len(self.datasets):
            raise ValueError(
                f"data.weights has {len(self.weights)} entries for {len(self.datasets)} datasets; give one per dataset"
            )
        if any(not w > 0 for w in self.weights):
            raise ValueError(f"data.weights must all be > 0, got {list(self.weights)}")
        for cam in self.cameras:
            if cam not in CAMERAS:
                raise ValueError(f"data.cameras: unknown camera {cam!r}; cameras are {', '.join(CAMERAS)}")
        if self.segment_window < -1:
            raise ValueError(
                f"data.segment_window must be -1 (auto), 0 (off) or > 0, got {self.segment_window}"
            )
        if self.horizon < 2:
            raise ValueError(f"data.horizon must be >= 2, got {self.horizon}")
        if self.num_workers != "auto" and (
            isinstance(self.num_workers, bool)
            or not isinstance(self.num_workers, int)
            or self.num_workers < 0
        ):
            raise ValueError(
                f"data.num_workers must be auto or a whole number >= 0, got {self.num_workers!r}"
            )
        for name in ("val_episodes", "eval_samples", "start_steps", "start_repeat"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.{name} must be >= 0, got {getattr(self, name)}")
        from xr0.contract import PRIVILEGED_INPUTS

        for name in self.privileged:
            if name not in PRIVILEGED_INPUTS:
                raise ValueError(
                    f"data.privileged: unknown input {name!r}; known: {', '.join(PRIVILEGED_INPUTS)}"
                )
        if self.prefetch_factor < 1:
            raise ValueError(f"data.prefetch_factor must be >= 1, got {self.prefetch_factor}")


# Projections LoRA can adapt: the VLM text model's attention and MLP, and the vision tower's attention,
# MLP and patch mergers (xr0/lora.py matches each name in its own tower only, never in the DiT).
LORA_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_VISION_TARGETS = ("qkv", "proj", "linear_fc1", "linear_fc2")


@dataclass(frozen=True)
class LoraConfig:
    # Rank r of each adapter (ΔW = (alpha/r)·B·A with A r×in, B out×r): more is closer to full fine-tuning
    # and costs more adapter memory; 8–64 is the usual range.
    rank: int = 16
    # Scale alpha of the update (applied as alpha/rank); keep alpha = 2·rank when you change the rank.
    alpha: float = 32.0
    # Dropout on each adapter's input during training (0 = off).
    dropout: float = 0.0
    # Projections that get adapters: the text model's q/k/v/o and gate/up/down, and by default the vision
    # tower's qkv/proj/linear_fc1/linear_fc2 too (the official recipe adapts vision; drop them to skip the
    # vision backward). Projections no output depends on (the last text layer's q/o/MLP) never get one.
    targets: tuple[str, ...] = LORA_TEXT_TARGETS + LORA_VISION_TARGETS

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        known = LORA_TEXT_TARGETS + LORA_VISION_TARGETS
        for name in self.targets:
            if name not in known:
                raise ValueError(f"lora.targets: unknown projection {name!r}; known: {', '.join(known)}")
        if not self.targets:
            raise ValueError(f"lora.targets must name at least one projection of {', '.join(known)}")


NEW_MODEL_INITS = ("tiny", "full-random")  # inits that start from random weights


@dataclass(frozen=True)
class TrainConfig:
    # Starting point: tiny | full-random (new random weights) | a checkpoint directory | a Hub id (fetched only
    # because you named it). Released checkpoints switch to the post-training mask (`dit_mask`).
    init: str = "tiny"
    # frozen-vlm: train the action head only (cheap; for a pre-trained VLM); full: everything but the input
    # embeddings (gradient checkpointing on the vision tower on a GPU); lora: low-rank adapters on the VLM's
    # projections (`lora`) plus the whole action head, checkpoints merged into the plain layout.
    # auto: full for a new random model (a frozen *random* vision model cannot learn to see), frozen-vlm
    # from a checkpoint or a Hub id.
    mode: Literal["auto", "frozen-vlm", "full", "lora"] = "auto"
    # Asynchronous post-training: clean action prefixes, prefix-column masking, online L1 reweighting.
    async_train: bool = False
    # Longest clean prefix drawn in async training (official 6); saved as the checkpoint's max_prefix.
    max_prefix: int = 6
    # Probability of hiding each early prefix column from the noisy rows (official 0.5).
    prefix_mask_prob: float = 0.5
    # Clamp of the online L1 loss weights (official [0.5, 5]).
    reweight_clamp: tuple[float, float] = (0.5, 5.0)
    # Online L1 reweighting: true = each of the training_repeat copies gets its own no-grad generation
    # from its own training noise (official); false = one generation per sample, its weights shared by the
    # copies (training_repeat× cheaper generation on prefix steps).
    reweight_per_copy: bool = True
    # DiT self-attention: band (the Λ mask of post-training) | causal (the released checkpoints' path).
    dit_mask: Literal["band", "causal"] = "band"
    # DiT passes per VLM pass, each with its own noise and time (official 4).
    training_repeat: int = 4
    # Weight of the frequency-domain loss (official 1; 0 disables it).
    freq_loss_weight: float = 1.0
    # Weight of the auxiliary keyframe loss (0 = off; not in the official recipe): from the image tokens
    # alone, predict the joint state at the next gripper open/close (xr0/keyframes.py). Makes a new model
    # look at its cameras; needs the VLM trained (mode full or lora) and at least one camera.
    keyframe_loss_weight: float = 0.0
    # Optimiser steps; the cosine schedule ends here.
    steps: int = 30000
    # Stop (and save) after this many minutes of training, even before `steps`; null: no limit.
    max_minutes: float | None = None
    # Global batch (split evenly over torchrun processes); official 16 per GPU × 8 GPUs.
    batch_size: int = 32
    # Peak learning rate after warm-up (official 1e-4).
    lr: float = 1e-4
    # Learning rate at the start of warm-up and at the end of the cosine (official 5e-7).
    min_lr: float = 5e-7
    # Linear warm-up steps (official 2000); capped at a tenth of `steps` for short runs.
    warmup_steps: int = 2000
    # AdamW weight decay (not on biases, norms, AdaLN tables).
    weight_decay: float = 0.1
    # AdamW betas (official 0.9, 0.95).
    betas: tuple[float, float] = (0.9, 0.95)
    # AdamW epsilon.
    eps: float = 1e-8
    # Gradient clipping by global norm (0 disables).
    grad_clip: float = 1.0
    # EMA of the trainable weights, saved as the checkpoint's weights (0 = off; e.g. 0.999).
    ema_decay: float = 0.0
    # auto: bf16 autocast over fp32 weights on a GPU, fp32 on the CPU; bf16 | fp32 force it.
    # bf16-weights: the official run's numerics (DeepSpeed bf16, ZeRO-2): the weights themselves in bf16,
    # forward and backward in bf16 without autocast, AdamW on fp32 master copies with fp32 moments
    # (`xr0.optim`); about half the weight and gradient memory. Not with strategy fsdp.
    precision: Literal["auto", "bf16", "fp32", "bf16-weights"] = "auto"
    # full mode: recompute the vision tower's activations in backward (saves memory). auto: on a GPU only —
    # on the CPU memory is plentiful and the recomputation is pure cost (a tiny model's step ~5 % slower).
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    # With several processes: ddp (replicas) | fsdp (sharded; for `full` on the 4.7 B model) | auto (= ddp).
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    # auto | cpu | cuda | cuda:N (under torchrun each rank takes cuda:LOCAL_RANK).
    device: str = "auto"
    # Image budget of new checkpoints in pixels per view (multiples of 32; 90000 official); null keeps an
    # initial checkpoint's own. Small values (e.g. 4096) make tiny CPU runs fast.
    max_pixels: int | None = None
    # Normalise the state the model reads (mean/std saved beside the action statistics). auto: on for a new
    # random model (its projector learns a raw state whose dims differ 10× in spread slowly), and as the
    # initial checkpoint has it otherwise (the official checkpoints read the state raw).
    normalize_state: bool | Literal["auto"] = "auto"
    # Arm joint actions relative to the state at t (XR0's representation; grippers are absolute either way)
    # or absolute (`false`: a new model only; a checkpoint keeps the representation it was trained with).
    # A model unsure of the task's phase that predicts relative targets adds a whole reach to a pose that
    # has already reached (docs/eval.md); absolute targets stay within the demonstrated range.
    relative_actions: bool = True
    # Seed of the model init (new models), the data order, augmentation and every flow draw.
    seed: int = 42
    # Metrics every N steps (JSONL, TensorBoard, progress bar).
    log_every: int = 10
    # Open-loop action error every N steps (and at the end); 0 = only at the end.
    eval_every: int = 500
    # Checkpoint every N steps (and at the end); 0 = only at the end.
    save_every: int = 1000
    # Periodic checkpoints kept (the newest N; 0 = all).
    keep_checkpoints: int = 3
    # Stores, cameras, chunk length, held-out episodes, loader workers.
    data: DataConfig = field(default_factory=DataConfig)
    # Training image augmentation.
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # mode lora: rank, scale, dropout and target projections of the adapters.
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        if not self.relative_actions and self.init not in NEW_MODEL_INITS:
            raise ValueError(
                "train.relative_actions: false needs a new model (init tiny or full-random); a checkpoint keeps "
                "the action representation it was trained with"
            )
        if self.mode == "auto":  # resolved once, here: everything downstream sees frozen-vlm or full
            object.__setattr__(self, "mode", "full" if self.init in NEW_MODEL_INITS else "frozen-vlm")
            object.__setattr__(self, "_mode_was_auto", True)  # a new `init` (replace) must resolve it again
        positive = ("steps", "batch_size", "training_repeat", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "save_every", "keep_checkpoints", "max_prefix"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"train.max_minutes must be > 0 (or null), got {self.max_minutes}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"train.min_lr must be in (0, lr={self.lr}], got {self.min_lr}")
        lo, hi = self.reweight_clamp
        if not 0 < lo <= 1 <= hi:
            raise ValueError(
                f"train.reweight_clamp must be [low <= 1, high >= 1], got {list(self.reweight_clamp)}"
            )
        if not 0 <= self.prefix_mask_prob <= 1:
            raise ValueError(f"train.prefix_mask_prob must be in [0, 1], got {self.prefix_mask_prob}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not (isinstance(self.gradient_checkpointing, bool) or self.gradient_checkpointing == "auto"):
            raise ValueError(
                f"train.gradient_checkpointing must be auto, true or false, got {self.gradient_checkpointing!r}"
            )
        if self.freq_loss_weight < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("train.freq_loss_weight, weight_decay and grad_clip must be >= 0")
        if self.keyframe_loss_weight < 0:
            raise ValueError(f"train.keyframe_loss_weight must be >= 0, got {self.keyframe_loss_weight}")
        if self.keyframe_loss_weight and self.mode == "frozen-vlm":
            raise ValueError(
                "train.keyframe_loss_weight needs the VLM trained (mode full or lora): with mode frozen-vlm "
                "it cannot teach the model to look"
            )
        if self.max_pixels is not None and self.max_pixels < 1024:
            raise ValueError(f"train.max_pixels must be >= 1024 (one 32×32 patch), got {self.max_pixels}")
        if self.async_train and self.dit_mask != "band":
            raise ValueError(
                "train.async_train needs dit_mask: band (the prefix is trained under the Λ mask)"
            )
        if self.precision == "bf16-weights" and self.strategy == "fsdp":
            raise ValueError(
                "train.precision bf16-weights is not available with strategy fsdp; use precision bf16 "
                "(FSDP then computes in bf16 over sharded fp32 weights)"
            )
        if self.async_train and self.max_prefix < 1:
            raise ValueError("train.async_train needs max_prefix >= 1")

    def checkpointing(self, device_type: str) -> bool:
        """Recompute the vision tower in backward (`gradient_checkpointing`, auto resolved: on a GPU only)."""
        if self.gradient_checkpointing == "auto":
            return device_type == "cuda"
        return bool(self.gradient_checkpointing)
