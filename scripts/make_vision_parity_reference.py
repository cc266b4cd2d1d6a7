"""Write the frozen reference of tests/xr0/test_vision_parity.py: the tiny XR0's VLM run by transformers 4.57.1.

The official XR0 code ran Qwen3-VL on transformers 4.57.1; the project runs 5.x, whose vision tower computes
some steps differently in bf16 (docs/model.md, "transformers 5.x versus the official 4.57.1"). This script
records what 4.57.1 computes, so a test can hold our VLM path to it without installing 4.57.1. Run by hand,
never by the tests, in three stages over two environments:

1. `inputs` (the project's .venv): the tiny XR0 (`variant("tiny")`, seed 0) with its weights rounded to
   bf16 values (so the bf16 runs cast nothing and the fp32 runs upcast exactly), a fixed right-padded batch
   of two prompts with images from our processor, and the noise/state/action mask of the flow sampler.
   → tests/xr0/data/vision_parity_inputs.safetensors
2. `reference` (a separate environment with torch 2.13.0 and transformers 4.57.1; imports nothing from this
   project): the VLM weights as a Hugging Face checkpoint loaded with 4.57.1's
   `Qwen3VLForConditionalGeneration.from_pretrained(dtype, attn_implementation="sdpa")` — the official
   recipe — then the inner `model.model(input_ids, attention_mask, pixel_values, image_grid_thw,
   use_cache=True)`, keeping the keys/values of the text layers the DiT reads, the MRoPE ids of
   `get_rope_index(input_ids, image_grid_thw, None, attention_mask)` and the vision tower's outputs;
   in fp32 and bf16.
3. `actions` (the project's .venv): our DiT (bit-exact to the official one given the same cache) on the
   reference keys/values: the 5-step flow sample in each dtype.
   → tests/xr0/data/vision_parity_reference.safetensors (stages 2 and 3)

    .venv/bin/python scripts/make_vision_parity_reference.py \
        --reference-python /work/exp/tf457/venv/bin/python

runs all three (stage 2 in a subprocess of the other interpreter). tests/xr0/data/PROVENANCE.md records
the run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "xr0" / "data"
INPUTS = DATA / "vision_parity_inputs.safetensors"
REFERENCE = DATA / "vision_parity_reference.safetensors"
DTYPES = ("float32", "bfloat16")
CHUNK = 16  # actions per chunk of the sampled reference
ACTIVE_DIMS = 14  # the bimanual layout's active action dims (the rest masked)
# Two prompts of different lengths (the second is right-padded), views of several grid shapes so the
# learned 8×8 position table is both down- and up-sampled: (H, W) in pixels, multiples of 32.
SAMPLES = (
    (
        "transfer the red cube to the other arm, slowly",
        (("Ego View", (64, 96)), ("Left-Wrist View", (96, 160)), ("Right-Wrist View", (96, 64))),
    ),
    ("fold", (("Ego View", (160, 128)), ("Left-Wrist View", (64, 64)))),
)


# -- stage 1: the project's environment ----------------------------------------------------------------
def qwen_457_config(vlm_config: dict) -> dict:
    """`Qwen3VLConfig` keyword arguments in 4.57.1's spelling: `rope_theta` + `rope_scaling` (as the
    official config.json files have them) instead of 5.x's `rope_parameters`."""
    vlm = json.loads(json.dumps(vlm_config))
    text = vlm["text_config"]
    rope = dict(text.pop("rope_parameters"))
    text["rope_theta"] = rope.pop("rope_theta")
    text["rope_scaling"] = rope  # rope_type, mrope_interleaved, mrope_section
    vlm["architectures"] = ["Qwen3VLForConditionalGeneration"]
    vlm["model_type"] = "qwen3_vl"
    return vlm


def write_inputs() -> None:
    import numpy as np
    import torch
    import transformers
    from safetensors.torch import save_file

    from xr0.config import variant
    from xr0.model import create_model
    from xr0.processor import XR0Processor

    config = variant("tiny")
    model = create_model(config, seed=0)
    tensors = {
        f"model.{name}": value.to(torch.bfloat16).contiguous()
        for name, value in model.state_dict().items()
        if name != "vlm.lm_head.weight"  # tied to the token embedding
    }
    processor = XR0Processor.build({})
    rng = np.random.default_rng(0)
    samples = [
        processor.encode(
            instruction,
            [(label, rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for label, (h, w) in views],
        )
        for instruction, views in SAMPLES
    ]
    batch = processor.collate(samples)
    if int(batch["attention_mask"].sum(-1).min()) == batch["attention_mask"].shape[1]:
        raise RuntimeError("the reference batch must contain padding")
    tensors.update({f"inputs.{key}": value.contiguous() for key, value in batch.items()})
    g = torch.Generator().manual_seed(0)
    B = len(SAMPLES)
    action_mask = torch.zeros(B, CHUNK, config.action_dim)
    action_mask[..., :ACTIVE_DIMS] = 1
    tensors["sampling.noise"] = torch.randn(B, CHUNK, config.action_dim, generator=g)
    tensors["sampling.state"] = 0.5 * torch.randn(B, 1, config.state_dim, generator=g)
    tensors["sampling.action_mask"] = action_mask
    metadata = {
        "xr0_config": json.dumps(config.to_dict(), default=list),
        "qwen3_vl_config_457": json.dumps(qwen_457_config(config.vlm_config)),
        "weights": "XR0 tiny, create_model(variant('tiny'), seed=0), rounded to bf16",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    DATA.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(INPUTS), metadata=metadata)
    INPUTS.chmod(0o644)  # safetensors creates its files owner-only
    print(f"wrote {INPUTS.relative_to(ROOT)}: batch {tuple(batch['input_ids'].shape)}")


# -- stage 2: transformers 4.57.1 (imports nothing from this project) ----------------------------------
def write_reference(out: Path) -> None:
    import torch
    import transformers
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import Qwen3VLForConditionalGeneration

    if transformers.__version__ != "4.57.1":
        raise RuntimeError(f"stage 'reference' needs transformers 4.57.1, this is {transformers.__version__}")
    with safe_open(str(INPUTS), "pt") as f:
        meta = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    xr0_config = json.loads(meta["xr0_config"])
    vlm_config = json.loads(meta["qwen3_vl_config_457"])
    n_text = vlm_config["text_config"]["num_hidden_layers"]
    n_dit = xr0_config["dit_config"]["num_hidden_layers"]
    first = n_text - n_dit  # XR0Config.first_cached_layer
    inputs = {k.removeprefix("inputs."): v for k, v in tensors.items() if k.startswith("inputs.")}
    vlm_weights = {k.removeprefix("model.vlm."): v for k, v in tensors.items() if k.startswith("model.vlm.")}
    result: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(vlm_config))
        save_file(vlm_weights, str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
        for name in DTYPES:
            dtype = getattr(torch, name)
            vlm = Qwen3VLForConditionalGeneration.from_pretrained(
                tmp, dtype=dtype, attn_implementation="sdpa"
            ).eval()
            if vlm.model.language_model.embed_tokens.weight.dtype != dtype:
                raise RuntimeError(f"the 4.57.1 model did not load in {name}")
            with torch.no_grad():
                position_ids, _ = vlm.model.get_rope_index(
                    inputs["input_ids"], inputs["image_grid_thw"], None, inputs["attention_mask"]
                )
                vlm.model.rope_deltas = None
                output = vlm.model(
                    input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"],
                    pixel_values=inputs["pixel_values"],
                    image_grid_thw=inputs["image_grid_thw"],
                    use_cache=True,
                )
                embeds, deepstack = vlm.model.visual(
                    inputs["pixel_values"].to(dtype), grid_thw=inputs["image_grid_thw"]
                )
            cache = output.past_key_values
            for i in range(n_dit):
                layer = cache.layers[first + i]
                result[f"{name}.keys.{i}"] = layer.keys.contiguous()
                result[f"{name}.values.{i}"] = layer.values.contiguous()
            result[f"{name}.position_ids"] = position_ids.contiguous()
            result[f"{name}.vision.embeds"] = embeds.contiguous()
            for j, feature in enumerate(deepstack):
                result[f"{name}.vision.deepstack.{j}"] = feature.contiguous()
    metadata = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cached_layers": f"{first}..{n_text - 1}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    save_file(result, str(out), metadata=metadata)
    print(f"wrote {out} (transformers {transformers.__version__}, torch {torch.__version__})")


# -- stage 3: our DiT on the reference cache -------------------------------------------------------------
def write_actions(vlm_part: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from xr0.config import XR0Config
    from xr0.flow import sample_actions
    from xr0.model import VLMContext, cast_parameters, create_model

    with safe_open(str(INPUTS), "pt") as f:
        config = XR0Config.from_dict(json.loads(f.metadata()["xr0_config"]))
    with safe_open(str(vlm_part), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(INPUTS))
    reference = load_file(str(vlm_part))
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    mask = tensors["inputs.attention_mask"]
    n_dit = config.dit_config.num_hidden_layers
    for name in DTYPES:
        dtype = getattr(torch, name)
        model = create_model(config, seed=0)
        model.load_state_dict(weights, strict=False)  # the tied lm_head is not stored
        model = cast_parameters(model.eval(), dtype)
        ctx = VLMContext(
            keys=[reference[f"{name}.keys.{i}"] for i in range(n_dit)],
            values=[reference[f"{name}.values.{i}"] for i in range(n_dit)],
            attention_mask=mask.bool(),
            last_position=reference[f"{name}.position_ids"].max(dim=-1).values,
        )
        with torch.no_grad():
            actions = sample_actions(
                model,
                ctx,
                tensors["sampling.state"].to(dtype),
                tensors["sampling.action_mask"],
                noise=tensors["sampling.noise"].to(dtype),
            )
        reference[f"{name}.actions"] = actions.contiguous()
    metadata["actions"] = "xr0.flow.sample_actions of this project's DiT on the reference keys/values"
    save_file(reference, str(REFERENCE), metadata=metadata)
    REFERENCE.chmod(0o644)
    print(f"wrote {REFERENCE.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("all", "inputs", "reference", "actions"), default="all")
    parser.add_argument(
        "--reference-python", help="python of the transformers-4.57.1 environment (stage all)"
    )
    parser.add_argument("--vlm-part", type=Path, help="stage 2's output file (stages reference/actions)")
    args = parser.parse_args()
    if args.stage == "inputs":
        write_inputs()
    elif args.stage == "reference":
        write_reference(args.vlm_part)
    elif args.stage == "actions":
        write_actions(args.vlm_part)
    else:
        if not args.reference_python:
            raise SystemExit(
                "--reference-python is needed: the python of the transformers 4.57.1 environment"
            )
        write_inputs()
        with tempfile.TemporaryDirectory() as tmp:
            part = Path(tmp) / "vlm.safetensors"
            cmd = [args.reference_python, __file__, "--stage", "reference", "--vlm-part", str(part)]
            subprocess.run(cmd, check=True)
            write_actions(part)


if __name__ == "__main__":
    main()
