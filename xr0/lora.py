"""LoRA fine-tuning of XR0 (`train.mode: lora`): low-rank adapters on the VLM's projections through peft.

Each targeted `nn.Linear` W of the VLM (`train.lora.targets`: the text model's q/k/v/o and gate/up/down
projections, and by default the vision tower's qkv/proj/linear_fc1/linear_fc2 and its patch mergers) is
replaced in place by peft's `lora.Linear`, which computes `W·x + (alpha/rank)·B·A·dropout(x)` with A
(rank × in, Kaiming-uniform) and B (out × rank, zeros): a fresh adapter leaves the model's output exactly
as it was. Only A and B are trained in the VLM; the action head (DiT, projectors, time modules, sink) is
trained in full (`xr0.train.set_trainable`). The projections no output depends on
(`XR0Model.unused_vlm_parameter_names`: the last text layer's q/o/MLP) get no adapter, nor does anything
in the DiT, whose own projections share these names.

Wrapping renames the base weights (`…q_proj.weight` → `…q_proj.base_layer.weight`) and adds
`…q_proj.lora_A.default.weight` / `…lora_B.default.weight`. Checkpoints never see those names:
`merge_adapters` turns a state dict of the wrapped model into the official layout with W + (alpha/rank)·B·A
folded in, on a copy (the training model keeps its adapters and continues). The adapters themselves, with
the head, are the run's trainable parameters, so they travel in `resume/` like any others; a resumed run
rebuilds its frozen base from the run's own starting point (`base_init`), never from a merged checkpoint,
so resuming is exact.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn as nn

from xr0.train_config import LORA_TEXT_TARGETS, LORA_VISION_TARGETS, NEW_MODEL_INITS, LoraConfig

log = logging.getLogger(__name__)

ADAPTER = "default"  # peft's adapter name; there is only ever one
BASE = ".base_layer."
TOWERS = {  # module prefix inside the XR0 model → the projection names that may be adapted there
    "vlm.model.language_model.": LORA_TEXT_TARGETS,
    "vlm.model.visual.": LORA_VISION_TARGETS,
}


def is_adapter(name: str) -> bool:
    """A LoRA parameter (A or B) of the wrapped model."""
    return ".lora_A." in name or ".lora_B." in name


def adapts_vision(cfg: LoraConfig) -> bool:
    return any(t in LORA_VISION_TARGETS for t in cfg.targets)


def target_modules(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Names (in the XR0 model) of the linear layers that get an adapter."""
    unused = model.unused_vlm_parameter_names()
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        for prefix, allowed in TOWERS.items():
            leaf = name.rsplit(".", 1)[-1]
            if name.startswith(prefix) and leaf in allowed and leaf in cfg.targets:
                if f"{name}.weight" not in unused:
                    names.append(name)
    return names


def add_adapters(model: nn.Module, cfg: LoraConfig, seed: int = 0) -> list[str]:
    """Wrap the targeted projections of `model.vlm` with peft LoRA layers, in place; the adapters' random
    init is a function of `seed` only (the global RNG is left alone). Returns the wrapped module names."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model
    except ImportError as e:  # a declared dependency; only a broken environment gets here
        raise ImportError("train.mode lora needs the peft package: pip install 'peft>=0.21'") from e

    names = target_modules(model, cfg)
    if not names:
        raise ValueError(f"train.lora.targets {list(cfg.targets)} match no projection of this model's VLM")
    peft_config = PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=[n.removeprefix("vlm.") for n in names],  # exact names: never a DiT projection
        bias="none",
    )
    device = model.sink.weight.device
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        inject_adapter_in_model(peft_config, model.vlm, adapter_name=ADAPTER)
    return names


def merge_adapters(weights: dict[str, torch.Tensor], cfg: LoraConfig) -> dict[str, torch.Tensor]:
    """A state dict of the wrapped model (names without the objective's `model.` prefix) → the official
    layout: each adapted weight becomes W + (alpha/rank)·B·A (computed in fp32, stored in W's dtype), the
    adapters are dropped and `base_layer` leaves the names. The input is not modified."""
    scale = cfg.alpha / cfg.rank
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if is_adapter(key):
            continue
        if BASE in key:
            module, leaf = key.split(BASE)
            if leaf == "weight":
                a = weights[f"{module}.lora_A.{ADAPTER}.weight"].float()  # (rank, in)
                b = weights[f"{module}.lora_B.{ADAPTER}.weight"].float()  # (out, rank)
                value = (value.float() + scale * (b @ a)).to(value.dtype)
            key = f"{module}.{leaf}"
        out[key] = value
    return out


def base_init(run_checkpoint: Path, seed: int) -> str:
    """The starting point of the LoRA run that wrote `run_checkpoint` (its `training.json`): a resumed run
    rebuilds the frozen base from it — a merged checkpoint already holds the adapters' update."""
    from xr0.train_state import TRAINING_INFO

    saved = json.loads((run_checkpoint / TRAINING_INFO).read_text())["config"]
    init = saved["init"]
    if init in NEW_MODEL_INITS and saved["seed"] != seed:
        raise ValueError(
            f"train.seed: this LoRA run started from a new random model with seed {saved['seed']}; resume it "
            f"with that seed (its frozen base is rebuilt from it), not {seed}"
        )
    log.info("LoRA resume: the frozen base is rebuilt from the run's init %s", init)
    return init
