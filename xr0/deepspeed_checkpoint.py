"""Post-training checkpoints of the official XR0 trainer (PyTorch Lightning + DeepSpeed), read safely.

The official post-training code leaves a run folder like this:

    RUN/config.py, RUN/config.yaml      the resolved training config: `model.params.model` (action_shape,
                                        dit_num_layers, async_train, …) and `data.params.train_datasets`
                                        (`mean`, `std`: the (T, 32) action statistics, `action_length`)
    RUN/last.ckpt/checkpoint/mp_rank_00_model_states.pt
                                        torch.save of {"module": {"model." + key: tensor}, plus DeepSpeed's
                                        and Lightning's bookkeeping (shapes, step counters, ds_config, …)}

Its deploy server reads exactly that: the config for the statistics and the action-head settings, and
`module` with the `model.` prefix stripped; the VLM's architecture and the tokenizer are Qwen3-VL-4B's,
fetched by name. Here they come from a *base* checkpoint directory (or Hub id) that the caller names, or
that the run's config leads to (`model.params.pretrained`, the file the run started from, whose folder
holds the release it was converted from); a base is an XR0 checkpoint (config.json with `vlm_config`) or a
Qwen3-VL one (`model_type` "qwen3_vl"), and only its JSON files and tokenizer are read.

Nothing in the file is unpickled as an arbitrary object: `torch.load(weights_only=True)` builds tensors,
containers and numbers only; a few harmless kinds of object that trainers store beside the weights (argparse
hyper-parameters, numpy scalars, paths) become inert stand-ins without running any of their code; any other
global is refused with a sentence naming the file and the global. This module reads and checks the form;
`xr0.checkpoint.load_post_training` (and `load_checkpoint`, given such a folder) checks the weights against
the model as strictly as a safetensors checkpoint's: a missing or unexpected key, or a wrong shape, is an
error naming it.
"""

from __future__ import annotations

import ast
import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xr0.config import XR0Config
from xr0.processor import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, XR0Processor

log = logging.getLogger(__name__)


class PostTrainingError(ValueError):
    """A post-training run is incomplete or not what it claims; the message names the file and key.
    (`xr0.checkpoint` passes it on as a CheckpointError.)"""


MODEL_STATES = "mp_rank_00_model_states.pt"
TAG = "checkpoint"  # the DeepSpeed tag Lightning saves under: RUN/NAME.ckpt/checkpoint/
PREFIX = "model."  # the Lightning runner holds the XR0 model as `self.model`
RUN_CONFIGS = ("config.py", "config.yaml")  # what the official trainer dumps into the run folder
BASE_FILES = ("config.json", "tokenizer.json", "preprocessor_config.json")
# The official post-training code normalises and decodes with std + 1e-6; the converted statistics carry
# that epsilon in `std`, so decoding here is the same arithmetic as its deploy server's.
ACTION_EPS = 1e-6
OFFICIAL_ROPE_OFFSET = 10  # noisy action tokens sit 10 positions further on (always, in post-training)
OFFICIAL_MAX_PREFIX = 6  # asynchronous post-training draws clean prefixes of 1…6 actions

# Harmless objects trainers store beside the weights; each becomes an inert `_StandIn`.
_STAND_INS = (
    "argparse.Namespace",
    "numpy.dtype",
    "numpy.ndarray",
    *(f"numpy.{c}.multiarray.{n}" for c in ("core", "_core") for n in ("scalar", "_reconstruct")),
    *(
        f"pathlib.{m}{k}Path"
        for m in ("", "_local.")
        for k in ("Posix", "Windows", "PurePosix", "PureWindows")
    ),
)


class _StandIn:
    """Takes the place of a harmless non-tensor object: accepts any arguments and state, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


# -- finding the files ----------------------------------------------------------------------------------------
def find_model_states(path: str | Path) -> Path | None:
    """The model-states file of a run folder, its `last.ckpt` folder or that folder's `checkpoint` folder
    (any `NAME.ckpt` works as the middle one); None when `path` is none of them."""
    path = Path(path)
    for candidate in (
        path / MODEL_STATES,
        path / TAG / MODEL_STATES,
        path / "last.ckpt" / TAG / MODEL_STATES,
    ):
        if candidate.is_file():
            return candidate
    return None


def read_run_config(run_dir: Path) -> tuple[dict[str, Any], Path]:
    """The run's training config (config.py as the deploy server reads it, else config.yaml), as plain data."""
    for name in RUN_CONFIGS:
        file = run_dir / name
        if file.is_file():
            return (_read_py_config(file) if name.endswith(".py") else _read_yaml_config(file)), file
    raise PostTrainingError(
        f"{run_dir} has neither {' nor '.join(RUN_CONFIGS)}: the official trainer writes the run's config, "
        "which holds the action statistics, into the folder above last.ckpt"
    )


def _read_yaml_config(file: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        raise PostTrainingError(f"{file} is not plain YAML ({e.__class__.__name__})") from e
    if not isinstance(data, dict):
        raise PostTrainingError(f"{file} does not hold a mapping")
    return data


def _read_py_config(file: Path) -> dict[str, Any]:
    """mmengine's dump (`data = dict(params=dict(...))`), read as literals: nothing in it is executed."""
    try:
        tree = ast.parse(file.read_text(), filename=str(file))
    except SyntaxError as e:
        raise PostTrainingError(f"{file} is not a Python config file (line {e.lineno}: {e.msg})") from e
    config: dict[str, Any] = {}
    for statement in tree.body:
        if (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
        ):
            config[statement.targets[0].id] = _literal(statement.value, file)
    return config


def _literal(node: ast.expr, file: Path) -> Any:
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "dict"
        and not node.args
    ):
        if any(k.arg is None for k in node.keywords):
            raise PostTrainingError(f"{file} line {node.lineno}: `**` in dict(...) is not read")
        return {k.arg: _literal(k.value, file) for k in node.keywords}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e, file) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_literal(k, file): _literal(v, file) for k, v in zip(node.keys, node.values, strict=True)}
    try:
        return ast.literal_eval(node)
    except ValueError as e:
        raise PostTrainingError(
            f"{file} line {node.lineno}: only literals and dict(...) are read from a run config, "
            f"not {ast.unparse(node)[:60]}"
        ) from e


def _get(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for key in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


# -- reading the weights --------------------------------------------------------------------------------------
def read_model_states(file: Path) -> dict[str, torch.Tensor]:
    """The `module` weights of a DeepSpeed model-states file with the `model.` prefix stripped, read
    without unpickling any object but tensors, containers, numbers and the stand-ins above."""
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    try:
        unsafe = get_unsafe_globals_in_checkpoint(str(file))  # reads the pickle's opcodes, runs nothing
    except (ValueError, RuntimeError, OSError) as e:
        raise PostTrainingError(f"{file} is not a torch.save archive, as DeepSpeed writes them ({e})") from e
    refused = sorted(g for g in unsafe if g not in _STAND_INS)
    if refused:
        raise PostTrainingError(
            f"{file} holds the Python global {refused[0]}, which is neither a tensor nor a plain container, "
            "so it was not unpickled (that could run arbitrary code)"
        )
    try:
        with safe_globals([(_StandIn, name) for name in unsafe]):
            states = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError) as e:
        reason = str(e).split(". ")[0]
        raise PostTrainingError(f"{file} was refused by the weights-only reader: {reason}") from e
    module = states.get("module") if isinstance(states, dict) else None
    if not isinstance(module, dict) or not module:
        raise PostTrainingError(
            f"{file} has no 'module' entry of weights: it is not a DeepSpeed model-states file"
        )
    weights: dict[str, torch.Tensor] = {}
    for key, value in module.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise PostTrainingError(f"{file}: module entry {key!r} is a {type(value).__name__}, not a tensor")
        if not key.startswith(PREFIX):
            raise PostTrainingError(
                f"{file}: module entry {key!r} lacks the {PREFIX!r} prefix the official runner gives every "
                "weight of the XR0 model"
            )
        weights[key.removeprefix(PREFIX)] = value
    empty = sum(t.numel() == 0 for t in weights.values())
    if empty > len(weights) // 2:
        raise PostTrainingError(
            f"{file} holds empty placeholders for {empty} of {len(weights)} weights, as ZeRO stage 3 saves "
            "them: gather the full weights first with DeepSpeed's zero_to_fp32.py"
        )
    return weights


# -- architecture, tokenizer, statistics ------------------------------------------------------------------------
def find_base(source: Path, run_dir: Path, run_config: dict[str, Any]) -> Path:
    """The folder whose config.json and tokenizer the model takes when the caller names none: the run folder
    if it holds them, else the folder of the run's `model.params.pretrained` (or that path itself), else the
    one folder inside it that holds them."""
    tried, folders = [run_dir], []
    pretrained = _get(run_config, "model.params.pretrained")
    if isinstance(pretrained, str) and pretrained:
        path = Path(pretrained).expanduser()
        roots = (
            [Path()]
            if path.is_absolute()
            else [r for r in (_training_cwd(run_dir, run_config), Path.cwd()) if r]
        )
        for root in roots:
            tried += [root / path, (root / path).parent]
            if (root / path).parent != root:  # a folder of its own, not the training folder itself
                folders.append((root / path).parent)
    for directory in tried:
        if _is_base(directory):
            return directory
    # the official README puts the downloaded release under pretrained_ckpt/, perhaps in a folder of its own
    inside = {d for folder in folders if folder.is_dir() for d in folder.iterdir() if _is_base(d)}
    if len(inside) == 1:
        return inside.pop()
    looked = ", ".join(dict.fromkeys(str(d) for d in tried))
    raise PostTrainingError(
        f"{source} is an official post-training checkpoint, whose DeepSpeed files hold only weights, and no "
        f"base with the architecture and tokenizer ({', '.join(BASE_FILES)}) was found in {looked}: name the "
        f"checkpoint it was trained from with `xr0 model convert {source} OUT --base DIR_OR_HUB_ID` (e.g. "
        "XiaomiRobotics/Xiaomi-Robotics-0-Pretrain, or Qwen/Qwen3-VL-4B-Instruct as the official deploy code "
        "does) and use OUT"
    )


def _is_base(directory: Path) -> bool:
    return all((directory / name).is_file() for name in BASE_FILES)


def _training_cwd(run_dir: Path, run_config: dict[str, Any]) -> Path | None:
    """Where the official trainer ran: the run folder minus its relative `trainer.default_root_dir`."""
    root = _get(run_config, "trainer.default_root_dir")
    if not isinstance(root, str) or Path(root).is_absolute():
        return None
    tail = Path(root).parts
    parts = run_dir.resolve().parts
    if not tail or parts[-len(tail) :] != tail:
        return None
    return Path(*parts[: -len(tail)])


def post_training_config(
    base: dict[str, Any], run_config: dict[str, Any], action_length: int, where: str
) -> XR0Config:
    """The base's VLM with the action head the run trained: its layer count and width, the band mask with
    the +10 RoPE offset the official post-training code always applies, and a prefix of up to 6 actions
    when it trained asynchronously."""
    head = _get(run_config, "model.params.model")
    head = head if isinstance(head, dict) else {}
    state_shape = head.get("state_shape", [1, 32])
    action_shape = head.get("action_shape", [action_length, 32])
    if "vlm_config" in base and "dit_config" in base:  # an XR0 checkpoint
        vlm, dit = base["vlm_config"], dict(base["dit_config"])
    elif base.get("model_type") == "qwen3_vl" and "text_config" in base:  # the bare VLM, as the official code
        vlm, text = base, base["text_config"]
        dit = {
            "hidden_size": 1024,
            "num_hidden_layers": 16,
            "head_dim": text.get("head_dim", 128),
            "num_key_value_heads": text.get("num_key_value_heads", 8),
            "intermediate_size": 4096,
        }
    else:
        raise PostTrainingError(f"{where} is neither an XR0 (mibot) nor a Qwen3-VL config.json")
    if "dit_num_layers" in head:
        dit["num_hidden_layers"] = head["dit_num_layers"]
    if head.get("dit_hidden_size", dit["hidden_size"]) != dit["hidden_size"]:
        dit["hidden_size"] = head["dit_hidden_size"]
        dit["intermediate_size"] = 4 * head["dit_hidden_size"]  # the official DiT MLP is 4× wide
    async_train = bool(head.get("async_train", False))
    fields = {
        "vlm_config": vlm,
        "dit_config": dit,
        "state_length": state_shape[0],
        "state_dim": state_shape[-1],
        "action_dim": action_shape[-1],
        "action_length": action_length,
        "dit_mask": "band",
        "local_window": head.get("local_window", 4),
        "noisy_rope_offset": OFFICIAL_ROPE_OFFSET,
        "num_steps": head.get("num_steps", 5),
        "max_prefix": min(OFFICIAL_MAX_PREFIX, action_length - 1) if async_train else 0,
    }
    try:
        return XR0Config.from_dict(fields, source=where)
    except (TypeError, ValueError) as e:
        raise PostTrainingError(f"{where}: {e}") from e


def read_statistics(run_config: dict[str, Any], file: Path) -> tuple[dict[str, list], int]:
    """{"mean", "std"} of the run's data config as the deploy server uses them (std + 1e-6), and T."""
    data = _get(run_config, "data.params.train_datasets") or {}
    length = int(data.get("action_length", _get(run_config, "data.params.action_length") or 30))
    action_dim = (_get(run_config, "model.params.model.action_shape") or [length, 32])[-1]
    entry = {}
    for key in ("mean", "std"):
        where = f"data.params.train_datasets.{key}"
        try:
            value = np.asarray(data.get(key), dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise PostTrainingError(f"{file}: {where} is not a numeric array") from e
        if value.shape != (length, action_dim):
            raise PostTrainingError(
                f"{file}: {where} has shape {value.shape}; the official deploy needs ({length}, {action_dim})"
            )
        entry[key] = value
    entry["std"] = entry["std"] + np.float32(ACTION_EPS)
    return {k: v.tolist() for k, v in entry.items()}, length


# -- the whole ----------------------------------------------------------------------------------------------
@dataclass
class PostTraining:
    """What an official post-training run holds, read and checked for form (not yet against the model)."""

    states: Path  # RUN/NAME.ckpt/checkpoint/mp_rank_00_model_states.pt
    config: XR0Config  # the base's VLM with the run's action head
    weights: dict[str, torch.Tensor]  # official names, on the CPU (memory-mapped)
    processor: XR0Processor  # the base's tokenizer, the run's statistics as action_config[robot_type]


def read_post_training(
    path: str | Path, base_dir: Path | None = None, robot_type: str = "aloha"
) -> PostTraining:
    """Read the run folder, its `last.ckpt` or that folder's `checkpoint` folder; `base_dir` gives the
    architecture and tokenizer (found through the run's config when None)."""
    source = Path(path)
    states = find_model_states(source)
    if states is None:
        raise PostTrainingError(f"{source} holds no {TAG}/{MODEL_STATES}: it is not a DeepSpeed checkpoint")
    run_dir = states.parent.parent.parent  # RUN/NAME.ckpt/checkpoint/file
    run_config, config_file = read_run_config(run_dir)
    action_config, length = read_statistics(run_config, config_file)
    if base_dir is None:
        base_dir = find_base(source, run_dir, run_config)
    elif not _is_base(base_dir):
        missing = [name for name in BASE_FILES if not (base_dir / name).is_file()]
        raise PostTrainingError(f"the base {base_dir} has no {', '.join(missing)}")
    base_json = base_dir / "config.json"
    try:
        base_config = json.loads(base_json.read_text())
    except json.JSONDecodeError as e:
        raise PostTrainingError(f"{base_json} is not JSON ({e})") from e
    config = post_training_config(base_config, run_config, length, str(base_json))
    try:
        loaded = XR0Processor.from_pretrained(base_dir)
    except (FileNotFoundError, ValueError) as e:
        raise PostTrainingError(str(e)) from e
    processor = XR0Processor(
        loaded.tokenizer, _post_training_images(loaded.image_processor), {robot_type: action_config}, length
    )
    log.info(
        "weights from %s; statistics from %s; architecture and tokenizer from %s",
        states,
        config_file,
        base_dir,
    )
    return PostTraining(states, config, read_model_states(states), processor)


def _post_training_images(image_processor):
    """The official post-training client resizes every view to multiples of 32 within 90000 pixels."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    settings = image_processor.to_dict()
    settings.pop("image_processor_type", None)
    settings["size"] = {"shortest_edge": DEFAULT_MIN_PIXELS, "longest_edge": DEFAULT_MAX_PIXELS}
    return Qwen2VLImageProcessorPil.from_dict(settings)
