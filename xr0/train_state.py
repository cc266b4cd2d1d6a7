"""Run folders, checkpoints and exact resume for XR0 training — safetensors and JSON only, never pickle.

    runs/NAME/
      train_config.json            the resolved configuration of the run
      metrics.jsonl                one JSON object per log step and per eval
      summary.json                 loss-curve summary, evals, throughput, the last checkpoint
      last -> checkpoints/step-N   the newest checkpoint (what `xr0 rollout --policy runs/NAME/last` loads)
      checkpoints/step-000500/     a policy checkpoint (config.json, safetensors, processor files, training.json)
        resume/                    what an exact resume needs:
          state.json               step, samples seen, seed, world size
          trainable.safetensors    the trainable parameters in fp32 (the checkpoint may be bf16 or EMA)
          ema.safetensors          the EMA of the trainable parameters (when enabled)
          optimizer.safetensors    AdamW moments and step counts, keyed "PARAM::NAME"
          optimizer.json           AdamW param groups (hyper-parameters, parameter names)

All randomness of a step is a function of (seed, step, sample number), so resuming needs no RNG state:
the model, the optimiser and the step counter restore everything, bit for bit on the same hardware.
A checkpoint directory is written under a temporary name and renamed into place; `last` is replaced
atomically.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LAST = "last"
RESUME = "resume"
TRAINING_INFO = "training.json"
SEP = "::"


def step_dir(run: Path, step: int) -> Path:
    return run / CHECKPOINTS / f"step-{step:06d}"


def last_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint of a run (through `last`), or None."""
    link = run / LAST
    if link.is_dir() and (link / RESUME / "state.json").is_file():
        return link.resolve()
    return None


def to_cpu_full(t: torch.Tensor) -> torch.Tensor:
    """A plain CPU tensor (FSDP2's sharded DTensors are gathered; collective on every rank)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().to("cpu").clone()


def flatten_optimizer(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A full (FQN-keyed) optimiser state dict → tensors for safetensors + JSON for the rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, state in osd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}{SEP}{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(name, {})[key] = value
    groups = []
    for group in osd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()})
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, field = key.rsplit(SEP, 1)
        state.setdefault(name, {})[field] = value
    for name, extra in meta.get("scalars", {}).items():
        state.setdefault(name, {}).update(extra)
    groups = []
    for group in meta["param_groups"]:
        g = dict(group)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def write_resume(
    directory: Path,
    state: dict[str, Any],
    trainable: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None,
    optimizer: dict[str, Any],
) -> None:
    from safetensors.torch import save_file

    out = directory / RESUME
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in trainable.items()}, str(out / "trainable.safetensors"))
    if ema is not None:
        save_file({k: v.contiguous() for k, v in ema.items()}, str(out / "ema.safetensors"))
    tensors, meta = flatten_optimizer(optimizer)
    save_file(tensors, str(out / "optimizer.safetensors"))
    (out / "optimizer.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out / "state.json").write_text(json.dumps(state, indent=2) + "\n")


def read_resume(directory: Path) -> dict[str, Any]:
    """state, trainable, ema (or None), optimizer — as written by `write_resume`."""
    from safetensors.torch import load_file

    src = directory / RESUME
    if not (src / "state.json").is_file():
        raise ValueError(f"{directory} has no {RESUME}/state.json: it is not a resumable training checkpoint")
    ema_file = src / "ema.safetensors"
    return {
        "state": json.loads((src / "state.json").read_text()),
        "trainable": load_file(str(src / "trainable.safetensors")),
        "ema": load_file(str(ema_file)) if ema_file.is_file() else None,
        "optimizer": unflatten_optimizer(
            load_file(str(src / "optimizer.safetensors")), json.loads((src / "optimizer.json").read_text())
        ),
    }


def publish(tmp: Path, final: Path, run: Path, keep: int) -> None:
    """Move a finished checkpoint into place, point `last` at it, prune old ones (keep 0 = all)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    link = run / LAST
    tmp_link = run / f".{LAST}.tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(final.relative_to(run))
    os.replace(tmp_link, link)
    if keep:
        steps = sorted(
            p for p in (run / CHECKPOINTS).glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")
        )
        for old in steps[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after `step` (a run resumed from an earlier checkpoint re-logs them)."""
    records = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
