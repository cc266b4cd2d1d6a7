"""Config, variants and the published architecture's key layout (on the meta device: no memory)."""

from __future__ import annotations

import pytest
import torch

from tests.xr0.official_layout import official_shapes
from xr0.config import DiTConfig, XR0Config, variant
from xr0.model import XR0Model, parameter_counts


@pytest.fixture(scope="module")
def full_meta():
    with torch.device("meta"):
        return XR0Model(variant("full"))


def test_full_keys_and_shapes_equal_the_official_table(full_meta):
    ours = {k: tuple(v.shape) for k, v in full_meta.state_dict().items()}
    assert ours.pop("vlm.lm_head.weight") == (151936, 2560)  # tied, not stored in the official index
    expected = official_shapes()
    assert len(expected) == 932
    assert sorted(set(expected) - set(ours)) == [] and sorted(set(ours) - set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}


def test_full_parameter_counts(full_meta):
    counts = parameter_counts(full_meta)
    assert counts["action_head"] == 278_458_368
    assert counts["total"] == 4_716_274_176  # ≈ 4.72 B
    assert counts["vision"] == 415_347_712 and counts["text"] == 4_022_468_096
    assert full_meta.vlm.lm_head.weight is full_meta.vlm.model.language_model.embed_tokens.weight


def test_full_reads_the_cache_of_layers_20_to_35():
    assert variant("full").first_cached_layer == 20


def test_tiny_is_a_few_million_parameters(model):
    assert 0.5e6 < parameter_counts(model)["total"] < 5e6


def test_unknown_variant_suggests_a_name():
    with pytest.raises(ValueError, match="did you mean 'tiny'"):
        variant("tinny")


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"dit_mask": "lambda"}, "dit_mask"),
        ({"num_steps": 0}, "num_steps"),
        ({"max_prefix": 30}, "max_prefix"),
        ({"dit_config": DiTConfig(hidden_size=128, num_hidden_layers=2, head_dim=16, num_key_value_heads=8)}, "head_dim"),
        ({"dit_config": DiTConfig(hidden_size=64, num_hidden_layers=2, head_dim=32, num_key_value_heads=2)}, "num_key_value_heads"),
        ({"dit_config": DiTConfig(hidden_size=128, num_hidden_layers=5, head_dim=32, num_key_value_heads=4)}, "num_hidden_layers"),
    ],
)  # fmt: skip
def test_invalid_configs_name_the_field(changes, field):
    base = variant("tiny").__dict__ | changes
    with pytest.raises(ValueError, match=field):
        XR0Config(**base)


def test_dit_heads_must_match_its_width():
    with pytest.raises(ValueError, match="hidden_size"):
        DiTConfig(hidden_size=1000)


def test_config_json_round_trip_and_official_files_read_as_causal():
    config = variant("tiny")
    assert XR0Config.from_dict(config.to_dict()) == config
    official = config.to_dict()
    for key in ("dit_mask", "local_window", "noisy_rope_offset", "num_steps", "max_prefix"):
        official.pop(key)
    official["auto_map"] = {"AutoModel": "modeling_mibot.MiBoTForActionGeneration"}
    read = XR0Config.from_dict(official)
    assert (read.dit_mask, read.noisy_rope_offset, read.max_prefix, read.num_steps) == ("causal", 0, 0, 5)
    with pytest.raises(ValueError, match="vlm_config"):
        XR0Config.from_dict({"model_type": "llama"})
