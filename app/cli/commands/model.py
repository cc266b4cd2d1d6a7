"""`xr0 model info [full|tiny|PATH]`: what a model is made of, without loading any weights.
`xr0 model convert SRC OUT [--base BASE]`: an official post-training (DeepSpeed) checkpoint into a
checkpoint directory (xr0/deepspeed_checkpoint.py says what is read from where).

The model is built on PyTorch's meta device (shapes only, no memory), so `full` (4.7 B parameters) is
described in a second on any machine. For a checkpoint directory it also checks the stored tensor names
and shapes against the model (the strict-load check, reading only the safetensors headers) and lists the
robot types whose action statistics the checkpoint carries.

The model is a positional argument (or `--model`). Earlier versions named it with `--config` after
`info`, unlike every other command's `--config` (the app config): that spelling still works for one
release, with a deprecation line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.compose.config import ROBOT_TYPES, AppConfig
from app.errors import UserError

_HUB = "Only this command reaches the Hub, for the repo you name; credentials: `hf auth login` or HF_TOKEN."


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="sub", metavar="{info,convert,push,pull}", required=True)
    push = sub.add_parser(
        "push", help="upload a checkpoint and its model card to the Hugging Face Hub", description=_HUB
    )
    push.add_argument("--checkpoint", required=True, help="a checkpoint directory (e.g. runs/NAME/last)")
    push.add_argument("--repo-id", required=True, help="USER/NAME on the Hub (created if it does not exist)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    pull = sub.add_parser("pull", help="download a checkpoint from the Hugging Face Hub", description=_HUB)
    pull.add_argument("--repo-id", required=True, help="USER/NAME on the Hub")
    pull.add_argument("--out", required=True, help="the folder to download into")
    info = sub.add_parser(
        "info",
        help="parameter counts by part, mask mode, checkpoint layout check",
        description="parameter counts by part, mask mode, checkpoint layout check",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    info.add_argument(
        "model", nargs="?", default=None, metavar="MODEL",
        help="a model variant (full, tiny) or a checkpoint directory (default: full)",
    )  # fmt: skip
    info.add_argument(
        "--model", dest="model_option", default=None, metavar="MODEL", help="the same, as an option"
    )
    info.add_argument("--config", dest="model_deprecated", default=None, help=argparse.SUPPRESS)
    info.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    info.add_argument("--robot", choices=ROBOT_TYPES, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    info.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    convert = sub.add_parser(
        "convert",
        help="turn an official post-training (DeepSpeed) checkpoint into a checkpoint directory",
        description="Read RUN/last.ckpt/checkpoint/mp_rank_00_model_states.pt (weights only, strictly checked) "
        "and the run's config.py (action statistics), take config.json and the tokenizer from a base, and "
        "write config.json, sharded safetensors and the processor files into OUT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    convert.add_argument(
        "src", metavar="SRC", help="the run folder, its last.ckpt folder or last.ckpt/checkpoint"
    )
    convert.add_argument("out", metavar="OUT", help="a new folder for the converted checkpoint")
    convert.add_argument(
        "--base",
        default=None,
        metavar="DIR|HUB_ID",
        help="the checkpoint the run was trained from, for config.json and the tokenizer (an XR0 release or "
        "Qwen/Qwen3-VL-4B-Instruct; a Hub id fetches its JSON files only); default: found through the run's "
        "config (model.params.pretrained)",
    )
    convert.add_argument(
        "--robot-type", default="aloha", help="the name the run's action statistics are stored under"
    )


def describe(target: str) -> dict:
    """Counts and settings of a variant or checkpoint directory, built on the meta device."""
    import torch

    from xr0.checkpoint import CheckpointError, layout_problems, read_config, stored_shapes
    from xr0.config import VARIANTS, variant
    from xr0.deepspeed_checkpoint import find_model_states
    from xr0.model import XR0Model, parameter_counts

    path = Path(target).expanduser()
    directory = None
    if target in VARIANTS and not path.is_dir():
        config = variant(target)
    elif path.is_dir() and not (path / "config.json").is_file() and find_model_states(path) is not None:
        raise UserError(
            f"{target} is an official post-training (DeepSpeed) checkpoint: convert it with "
            f"`xr0 model convert {target} OUT`, then run `xr0 model info OUT`"
        )
    elif path.is_dir():
        directory = path
        try:
            config = read_config(path)
        except CheckpointError as e:
            raise UserError(str(e)) from e
    else:
        raise UserError(
            f"model {target}: not a model variant ({', '.join(VARIANTS)}) nor a checkpoint directory"
        )
    with torch.device("meta"):
        model = XR0Model(config)
    text = config.qwen_config().text_config
    info = {
        "model": target,
        "parameters": parameter_counts(model),
        "vlm_text_layers": text.num_hidden_layers,
        "dit_layers": config.dit_config.num_hidden_layers,
        "dit_reads_vlm_layers": [config.first_cached_layer, text.num_hidden_layers - 1],
        "dit_mask": config.dit_mask,
        "local_window": config.local_window if config.dit_mask == "band" else None,
        "noisy_rope_offset": config.noisy_rope_offset if config.dit_mask == "band" else 0,
        "max_prefix": config.max_prefix,
        "num_steps": config.num_steps,
        "state_action_dims": [config.state_dim, config.action_dim],
    }
    if directory is not None:
        try:
            shapes = stored_shapes(directory)
        except CheckpointError as e:
            raise UserError(str(e)) from e
        problems = layout_problems(model, shapes)
        info["stored_tensors"] = len(shapes)
        info["layout"] = "ok (strict)" if not problems else problems[:10]
        pre = directory / "preprocessor_config.json"
        stats = json.loads(pre.read_text()).get("action_config", {}) if pre.is_file() else {}
        info["robot_types"] = {
            rt: (len(e["mean"]) if e["mean"] and isinstance(e["mean"][0], list) else config.action_length)
            for rt, e in stats.items()
        }
    return info


def format_info(info: dict) -> str:
    p = info["parameters"]
    rows = [
        f"model            {info['model']}",
        f"  vision tower   {p['vision']:>15,}",
        f"  text model     {p['text']:>15,}  (embeddings tied to lm_head, counted once)",
        f"  action head    {p['action_head']:>15,}  (DiT, projectors, timestep modules, sink)",
        f"  total          {p['total']:>15,}  ({_human(p['total'])})",
        f"VLM text layers  {info['vlm_text_layers']}; the DiT's {info['dit_layers']} layers read the KV cache of "
        f"layers {info['dit_reads_vlm_layers'][0]}…{info['dit_reads_vlm_layers'][1]}",
    ]
    if info["dit_mask"] == "band":
        rows.append(
            f"mask             band (window {info['local_window']}), noisy RoPE offset +{info['noisy_rope_offset']}, "
            f"prefix up to {info['max_prefix']}"
        )
    else:
        rows.append(f"mask             causal (released checkpoints), prefix up to {info['max_prefix']}")
    rows.append(f"sampler          {info['num_steps']} Euler steps")
    if "layout" in info:
        layout = info["layout"]
        rows.append(f"weights          {info['stored_tensors']} stored tensors, layout " + (
            layout if isinstance(layout, str) else "MISMATCH: " + "; ".join(layout)
        ))  # fmt: skip
        robots = ", ".join(f"{rt} (T={t})" for rt, t in info["robot_types"].items()) or "none"
        rows.append(f"action stats     {robots}")
    return "\n".join(rows)


def _human(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def convert(src: Path, out: Path, base: str | None, robot_type: str) -> str:
    """Read the DeepSpeed post-training run SRC, write the checkpoint directory OUT; a summary line."""
    import sys

    from xr0.checkpoint import CheckpointError, has_safetensors, load_post_training, save_checkpoint
    from xr0.deepspeed_checkpoint import find_model_states

    if src.is_dir() and has_safetensors(src):
        raise UserError(f"{src} is already a checkpoint directory (safetensors weights): nothing to convert")
    if not src.is_dir() or find_model_states(src) is None:
        raise UserError(
            f"{src} is neither an official post-training checkpoint (the run folder, its last.ckpt or "
            "last.ckpt/checkpoint, holding mp_rank_00_model_states.pt) nor a checkpoint directory"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; choose a new OUT")
    print(f"xr0 model convert: reading {src} …", file=sys.stderr)
    try:
        model, processor = load_post_training(src, base, robot_type, local_files_only=False)
    except CheckpointError as e:
        raise UserError(str(e)) from e
    tensors = len(model.state_dict())
    print(f"xr0 model convert: {tensors} tensors match the XR0 layout; writing {out} …", file=sys.stderr)
    save_checkpoint(model, processor, out)
    robots = ", ".join(f"{rt} (T={processor.chunk_length(rt)})" for rt in processor.list_robot_types())
    return f"converted {src} into {out} ({model.dtype}, action statistics: {robots or 'none'})"


def run(args: argparse.Namespace, config: AppConfig) -> int:
    import sys

    if args.sub == "convert":
        print(convert(Path(args.src).expanduser(), Path(args.out).expanduser(), args.base, args.robot_type))
        return 0
    if args.sub in ("push", "pull"):
        from app.interop import hub

        if args.sub == "push":
            url = hub.push_checkpoint(Path(args.checkpoint), args.repo_id, private=args.private)
            print(f"pushed {args.checkpoint} (with a model card stating its deployment contract) to {url}")
        else:
            out = hub.pull_checkpoint(args.repo_id, Path(args.out))
            print(f"pulled {args.repo_id} into {out}; run it with `xr0 eval --policy {out}`")
        return 0

    given = [m for m in (args.model, args.model_option, args.model_deprecated) if m is not None]
    if len(given) > 1:
        raise UserError(f"name the model once (got {', '.join(given)})")
    if args.model_deprecated is not None:
        print(
            f"xr0 model info: --config after `info` is deprecated (it will mean the app config, as everywhere "
            f"else); write `xr0 model info {args.model_deprecated}`",
            file=sys.stderr,
        )
    info = describe(given[0] if given else "full")
    print(json.dumps(info) if args.json else format_info(info))
    return 0 if info.get("layout", "ok") == "ok (strict)" or "layout" not in info else 1
