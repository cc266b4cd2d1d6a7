"""XR0 checkpoints: Hugging Face–style directories in the official layout.

A checkpoint directory holds `config.json` (XR0Config, `model_type` "mibot"), the weights as sharded
safetensors with `model.safetensors.index.json` (or one `model.safetensors`), and the processor files
(`tokenizer.json`, `preprocessor_config.json` with the action statistics, `processor_config.json`).
Keys are those of the official checkpoints; `vlm.lm_head.weight` is tied to the input embeddings and is
not stored. Loading is strict: a missing or unexpected key, or a wrong shape, is an error naming it.

A Hugging Face Hub id (`ORG/NAME`) is used only when the caller passes one and no local directory of
that name exists; nothing is downloaded otherwise.

The official post-training code writes DeepSpeed files instead (`RUN/last.ckpt/checkpoint/
mp_rank_00_model_states.pt`); `load_checkpoint` reads those too, through `xr0.deepspeed_checkpoint`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from xr0.config import XR0Config
from xr0.model import XR0Model, cast_parameters
from xr0.processor import XR0Processor

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
LM_HEAD = "vlm.lm_head.weight"
EMBED = "vlm.model.language_model.embed_tokens.weight"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or of another architecture; the message says which file/key."""


# -- saving -----------------------------------------------------------------------------------------------
def save_checkpoint(
    model: XR0Model, processor: XR0Processor, directory: str | Path, max_shard_bytes: int = 4 * 2**30
) -> Path:
    """Write config, sharded safetensors (+ index) and the processor files into `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if model.vlm.config.tie_word_embeddings:
        state.pop(LM_HEAD, None)  # tied: the official index does not store it
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.detach().contiguous().cpu()
        size += nbytes
    for old in list(directory.glob("model-*-of-*.safetensors")) + [directory / SINGLE_FILE]:
        old.unlink(missing_ok=True)  # a previous save with another shard count
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, filename))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    config = model.config.to_dict()
    config["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    processor.save_pretrained(directory)
    log.info("saved checkpoint to %s (%d tensors in %d shards)", directory, len(state), len(shards))
    return directory


# -- loading ----------------------------------------------------------------------------------------------
def resolve_checkpoint(
    name: str | Path,
    local_files_only: bool = False,
    cache_dir: str | Path | None = None,
    allow_patterns: tuple[str, ...] = ("*.json", "*.safetensors"),
) -> Path:
    """A local checkpoint directory, or a Hub id downloaded (or found in the cache) on request; only the
    files matching `allow_patterns` are fetched (`("*.json",)` for a base's config and tokenizer)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(
            f"{name} is a file; a checkpoint is a directory with config.json and safetensors"
        )
    text = str(name)
    first = Path(text.split("/")[0])
    if not _HUB_ID.fullmatch(text) or first.is_dir():
        raise CheckpointError(f"no checkpoint directory at {name}")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            repo_id=text,
            allow_patterns=list(allow_patterns),
            local_files_only=local_files_only,
            cache_dir=str(cache_dir) if cache_dir else None,
        )
    except Exception as e:  # the hub client raises many kinds (offline, not found, auth, network)
        raise CheckpointError(
            f"{name} is not a local directory and could not be fetched from the Hugging Face Hub "
            f"({type(e).__name__}); on a machine with internet run `hf download {name} --local-dir DIR`, "
            "copy DIR here and pass its path"
        ) from e
    return Path(local)


def read_config(directory: Path) -> XR0Config:
    file = directory / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{directory} has no config.json: it is not a checkpoint directory")
    try:
        return XR0Config.from_dict(json.loads(file.read_text()), source=str(file))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: {e}") from e


def weight_files(directory: Path) -> dict[str, Path]:
    """Tensor name → the safetensors file holding it."""
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = {name: directory / f for name, f in weight_map.items()}
        for f in set(files.values()):
            if not f.is_file():
                raise CheckpointError(f"{index} names {f.name}, which is missing")
        return files
    single = directory / SINGLE_FILE
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return dict.fromkeys(f.keys(), single)
    raise CheckpointError(f"{directory} has neither {INDEX_FILE} nor {SINGLE_FILE}")


def stored_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the stored tensors, without reading the data."""
    from safetensors import safe_open

    shapes = {}
    by_file: dict[Path, list[str]] = {}
    for name, file in weight_files(directory).items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(str(file), framework="pt") as f:
            for name in names:
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def layout_problems(model: XR0Model, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Differences between stored tensors and the model: missing, unexpected, wrong shape."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if model.vlm.config.tie_word_embeddings:
        expected.pop(LM_HEAD, None)
        shapes = {k: v for k, v in shapes.items() if k != LM_HEAD}
    problems = [f"missing {k}" for k in expected if k not in shapes]
    problems += [f"unexpected {k}" for k in shapes if k not in expected]
    problems += [
        f"{k} has shape {shapes[k]}, the model expects {expected[k]}"
        for k in expected
        if k in shapes and shapes[k] != expected[k]
    ]
    return problems


def load_checkpoint(
    name: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    local_files_only: bool = False,
    cache_dir: str | Path | None = None,
) -> tuple[XR0Model, XR0Processor]:
    """Load model and processor strictly. `dtype` None keeps the stored dtype (bf16 for the releases). A
    post-training run of the official trainer (DeepSpeed files, no safetensors) is read by
    `xr0.deepspeed_checkpoint`, which finds its architecture and tokenizer through the run's config."""
    from safetensors import safe_open

    directory = resolve_checkpoint(name, local_files_only, cache_dir)
    if not has_safetensors(directory):
        from xr0.deepspeed_checkpoint import find_model_states

        if find_model_states(directory) is not None:
            return load_post_training(
                directory, device=device, dtype=dtype, attn_implementation=attn_implementation
            )
    config = read_config(directory)
    with torch.device("meta"):
        model = XR0Model(config, attn_implementation=attn_implementation)
    check_layout(model, stored_shapes(directory), directory)
    state: dict[str, torch.Tensor] = {}
    for file in sorted(set(weight_files(directory).values())):
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensor = f.get_tensor(key)
                # CPU tensors read from a file can sit at unaligned addresses, where CPU kernels take other
                # code paths and results differ in the last bits; a copy is aligned.
                state[key] = tensor.clone() if tensor.device.type == "cpu" else tensor
    assign_weights(model, state, device, dtype)
    try:
        processor = XR0Processor.from_pretrained(directory, action_length=config.action_length)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(str(e)) from e
    return model, processor


def load_post_training(
    path: str | Path,
    base: str | Path | None = None,
    robot_type: str = "aloha",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    local_files_only: bool = True,
    cache_dir: str | Path | None = None,
) -> tuple[XR0Model, XR0Processor]:
    """An official post-training run (`xr0.deepspeed_checkpoint`: the run folder, `last.ckpt` or its
    `checkpoint` folder), checked as strictly as a checkpoint directory. `base` (a folder, or a Hub id whose
    JSON files are fetched) gives config.json and the tokenizer; None finds them through the run's config."""
    from xr0.deepspeed_checkpoint import PostTrainingError, read_post_training

    base_dir = None
    if base is not None:
        base_dir = resolve_checkpoint(base, local_files_only, cache_dir, allow_patterns=("*.json",))
    try:
        run = read_post_training(path, base_dir, robot_type)
    except PostTrainingError as e:
        raise CheckpointError(str(e)) from e
    with torch.device("meta"):
        model = XR0Model(run.config, attn_implementation=attn_implementation)
    weights = run.weights
    check_layout(model, {k: tuple(v.shape) for k, v in weights.items()}, run.states)
    if model.vlm.config.tie_word_embeddings and LM_HEAD in weights:
        if not torch.equal(weights.pop(LM_HEAD), weights[EMBED]):
            raise CheckpointError(
                f"{run.states}: {LM_HEAD} differs from {EMBED}, though the config ties them"
            )
    # copies: aligned, and free of the flat buffers DeepSpeed keeps its parameters in
    on_cpu = torch.device(device).type == "cpu"
    state = {k: v.clone() if on_cpu else v.to(device) for k, v in weights.items()}
    weights.clear()  # the memory-mapped file is let go of
    assign_weights(model, state, device, dtype)
    return model, run.processor


def has_safetensors(directory: Path) -> bool:
    return (directory / INDEX_FILE).is_file() or (directory / SINGLE_FILE).is_file()


def check_layout(model: XR0Model, shapes: dict[str, tuple[int, ...]], where: str | Path) -> None:
    """One sentence naming the first five differences between stored tensors and the model, if any."""
    problems = layout_problems(model, shapes)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointError(f"{where} does not match the XR0 layout: {'; '.join(problems[:5])}{more}")


def assign_weights(
    model: XR0Model, state: dict[str, torch.Tensor], device: str | torch.device, dtype: torch.dtype | None
) -> XR0Model:
    """Put checked tensors (`check_layout`) into a meta-device model: strict, re-tied, buffers rebuilt."""
    tied = model.vlm.config.tie_word_embeddings
    if tied:
        state[LM_HEAD] = state[EMBED]
    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        model.vlm.lm_head.weight = model.vlm.model.language_model.embed_tokens.weight
    _materialize_buffers(model, torch.device(device))
    if dtype is not None:
        cast_parameters(model, dtype)
    return model.eval()


def _materialize_buffers(model: torch.nn.Module, device: torch.device) -> None:
    """Non-persistent buffers (RoPE inverse frequencies) are not stored; rebuild them from their module's
    config after a meta-device load, in fp32 as transformers computes them."""
    for name, module in model.named_modules():
        missing = [b for b, t in module.named_buffers(recurse=False) if t.is_meta]
        if not missing:
            continue
        if not hasattr(module, "config"):
            raise CheckpointError(f"cannot rebuild buffers {missing} of {name or 'the model'} after loading")
        fresh = type(module)(module.config)
        for b in missing:
            module.register_buffer(b, getattr(fresh, b).to(device), persistent=False)
