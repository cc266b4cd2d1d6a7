"""Checkpoints: strict load of a directory in the official layout, bit-exact save → load, clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.xr0.conftest import libero_stats
from tests.xr0.official_layout import TINY, official_shapes
from xr0.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint
from xr0.config import tiny_special_ids
from xr0.flow import sample_actions
from xr0.tokenizer import build_tokenizer


def official_config() -> dict:
    """config.json as the release writes it: transformers-4.57 sub-configs, no mode switches, remote code."""
    ids = tiny_special_ids()
    return {
        "architectures": ["MiBoTForActionGeneration"],
        "auto_map": {"AutoConfig": "configuration_mibot.MiBoTConfig", "AutoModel": "modeling_mibot.MiBoTForActionGeneration"},
        "model_type": "mibot",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.1",
        "state_length": 1, "state_dim": 32, "action_length": 30, "action_dim": 32,
        "dit_config": {"hidden_size": TINY.dit_hidden, "num_hidden_layers": TINY.dit_layers, "head_dim": TINY.head_dim,
                       "num_key_value_heads": TINY.kv_heads, "intermediate_size": TINY.dit_intermediate},
        "vlm_config": {
            "model_type": "qwen3_vl", "architectures": ["Qwen3VLForConditionalGeneration"], "torch_dtype": "bfloat16",
            "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
            "tie_word_embeddings": True,
            "text_config": {
                "model_type": "qwen3_vl_text", "vocab_size": TINY.vocab, "hidden_size": TINY.text_hidden,
                "intermediate_size": TINY.text_intermediate, "num_hidden_layers": TINY.text_layers,
                "num_attention_heads": TINY.heads, "num_key_value_heads": TINY.kv_heads, "head_dim": TINY.head_dim,
                "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "attention_bias": False,
                "rope_theta": 5000000, "rope_scaling": {"rope_type": "default", "mrope_interleaved": True, "mrope_section": [6, 5, 5]},
                "tie_word_embeddings": True, "torch_dtype": "bfloat16",
            },
            "vision_config": {
                "model_type": "qwen3_vl", "depth": TINY.vision_depth, "hidden_size": TINY.vision_hidden,
                "intermediate_size": TINY.vision_intermediate, "num_heads": 2, "hidden_act": "gelu_pytorch_tanh",
                "out_hidden_size": TINY.vision_out, "patch_size": 16, "temporal_patch_size": 2, "spatial_merge_size": 2,
                "num_position_embeddings": TINY.pos_embeddings, "deepstack_visual_indexes": [0, 1], "in_channels": 3,
            },
        },
    }  # fmt: skip


def write_official(directory, shapes=None, shards: int = 3) -> dict[str, torch.Tensor]:
    """A synthetic release: bf16 tensors under the official names in 3 shards + index, no lm_head."""
    shapes = official_shapes(TINY) if shapes is None else shapes
    g = torch.Generator().manual_seed(0)
    tensors = {k: (torch.randn(s, generator=g) * 0.05).to(torch.bfloat16) for k, s in shapes.items()}
    names = list(tensors)
    per = math.ceil(len(names) / shards)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in names[i * per : (i + 1) * per]}
        save_file(part, str(directory / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    (directory / "config.json").write_text(json.dumps(official_config()))
    pre = {
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "MiBotProcessor",
        "auto_map": {"AutoProcessor": "processing_mibot.MiBotProcessor"},
        "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True, "resample": 3,
        "rescale_factor": 1 / 255, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "min_pixels": 65536, "max_pixels": 16777216, "size": {"shortest_edge": 65536, "longest_edge": 16777216},
        "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
        "action_config": {"libero_all": libero_stats()},
    }  # fmt: skip
    (directory / "preprocessor_config.json").write_text(json.dumps(pre))
    (directory / "processor_config.json").write_text(json.dumps({"processor_class": "MiBotProcessor"}))
    (directory / "video_preprocessor_config.json").write_text("{}")
    build_tokenizer().save(str(directory / "tokenizer.json"))
    return tensors


def test_strict_load_of_the_official_layout(tmp_path):
    written = write_official(tmp_path)
    model, processor = load_checkpoint(tmp_path)
    state = model.state_dict()
    assert set(state) == set(written) | {"vlm.lm_head.weight"}
    assert all(torch.equal(state[k], v) for k, v in written.items())
    assert model.vlm.lm_head.weight is model.vlm.model.language_model.embed_tokens.weight
    assert (
        model.dtype == torch.bfloat16 and model.config.dit_mask == "causal" and model.config.max_prefix == 0
    )
    assert all(b.dtype == torch.float32 and not b.is_meta for b in model.buffers())  # RoPE rebuilt in fp32
    # it runs, LIBERO-style: 10 actions from the statistics' shape, and the 200×200 view goes up to the
    # release's 65536-pixel minimum (256×256 → 64 tokens)
    image = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    inputs = processor.encode("put the bowl on the plate", [("Base View", image), ("Left-Wrist View", image)])
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 2 * 64
    with torch.no_grad():
        actions = sample_actions(
            model,
            model.encode(inputs),
            torch.zeros(1, 1, 32),
            processor.get_action_mask("libero_all"),
            seed=1,
        )
    decoded = processor.decode_action(actions, "libero_all")
    assert decoded.shape == (1, 10, 32) and decoded.dtype == torch.float32 and torch.isfinite(decoded).all()


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_layout_mismatches_are_named(tmp_path, change):
    shapes = official_shapes(TINY)
    if change == "missing":
        del shapes["dit.layers.1.adaln_table"]
    elif change == "unexpected":
        shapes["dit.sink.weight"] = (1, TINY.dit_hidden)
    else:
        shapes["t_projector.layers.0.bias"] = (7,)
    write_official(tmp_path, shapes)
    expected = {"missing": "missing dit.layers.1.adaln_table", "unexpected": "unexpected dit.sink.weight",
                "shape": r"t_projector.layers.0.bias has shape \(7,\)"}[change]  # fmt: skip
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(tmp_path)


def test_save_then_load_is_bit_exact(model, processor, inputs, tmp_path):
    save_checkpoint(model, processor, tmp_path, max_shard_bytes=1_500_000)
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert "vlm.lm_head.weight" not in index["weight_map"]
    loaded, loaded_processor = load_checkpoint(tmp_path)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert loaded.config == model.config
    assert {
        n for n, p in loaded.named_parameters() if not p.requires_grad
    } == model.unused_vlm_parameter_names()
    for rt in processor.list_robot_types():  # normalisation statistics travel inside the checkpoint
        assert all(
            torch.equal(x, y) for x, y in zip(processor.stats[rt], loaded_processor.stats[rt], strict=True)
        )
    mask = processor.get_action_mask("aloha")
    with torch.no_grad():
        out_a = sample_actions(model, model.encode(inputs), torch.zeros(1, 1, 32), mask, seed=3)
        out_b = sample_actions(loaded, loaded.encode(inputs), torch.zeros(1, 1, 32), mask, seed=3)
    assert torch.equal(out_a, out_b)


def test_bf16_save_load_keeps_dtype_and_bits(model, processor, tmp_path):
    from xr0.model import cast_parameters, create_model

    bf16 = cast_parameters(create_model(model.config, seed=1), torch.bfloat16)
    save_checkpoint(bf16, processor, tmp_path)
    loaded, _ = load_checkpoint(tmp_path)
    assert loaded.dtype == torch.bfloat16
    assert all(
        torch.equal(x, y)
        for x, y in zip(bf16.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    as_fp32, _ = load_checkpoint(tmp_path, dtype=torch.float32)
    assert as_fp32.dtype == torch.float32 and torch.equal(as_fp32.sink.weight, bf16.sink.weight.float())


def test_missing_things_get_one_sentence(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint directory at /nonexistent/ckpt"):
        resolve_checkpoint("/nonexistent/ckpt")
    (tmp_path / "runs").mkdir()
    with pytest.raises(
        CheckpointError, match="no checkpoint directory"
    ):  # a local-looking ORG/NAME never hits the hub
        resolve_checkpoint(str(tmp_path / "runs" / "missing"))
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_checkpoint(tmp_path)


def test_a_hub_id_offline_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        CheckpointError, match="hf download XiaomiRobotics/Xiaomi-Robotics-0-LIBERO --local-dir DIR"
    ):
        resolve_checkpoint(
            "XiaomiRobotics/Xiaomi-Robotics-0-LIBERO", local_files_only=True, cache_dir=tmp_path / "hub"
        )
