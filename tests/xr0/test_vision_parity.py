"""XR0's VLM against the official recipe (transformers 4.57.1), frozen on the tiny model.

tests/xr0/data/ holds the tiny XR0's weights, a right-padded batch of two prompts with five images, and what
4.57.1 computed from them in fp32 and bf16: the MRoPE ids, the vision tower's outputs, the keys/values of
the text layers the DiT reads, and the flow sample of our DiT on those keys/values (PROVENANCE.md;
scripts/make_vision_parity_reference.py writes them). The targets: actions within 1e-5 (fp32) and 1e-3
(bf16) of the reference.

Tolerances of the intermediate tensors. fp32: 1e-5 absolute + relative (≈20 fp32 ulps at the keys' |k| ≈ 4),
room for another CPU's summation order. bf16: one bf16 ulp (rtol 2⁻⁷), one rounding flip per element;
transformers' own vision forward is off by up to 3 ulps on a quarter of the keys. The keys/values are
compared on real tokens only: the DiT never attends to padding. bf16 actions within 1e-3 means bit-equal
wherever |a| ≥ 0.25 (the bf16 ulp there is ≥ 2⁻⁹ ≈ 0.002): the reference was computed on an x86-64 CPU
with torch 2.13.0; on a machine whose bf16 kernels round differently, regenerate it there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from xr0.config import XR0Config, variant
from xr0.flow import sample_actions
from xr0.model import cast_parameters, create_model
from xr0.vision import interpolated_position_embeddings, rotary_position_embeddings, use_official_vision

DATA = Path(__file__).parent / "data"
INPUTS = DATA / "vision_parity_inputs.safetensors"
REFERENCE = DATA / "vision_parity_reference.safetensors"
# The bf16 reference is bit-level: matrix products in bf16 round according to the CPU's kernels (AMX, AVX-512
# bf16, or upcasting), so the bf16 checks run only on CPUs with the same bf16 features as the machine that
# wrote the reference (PROVENANCE.md), and are skipped, saying so, elsewhere. fp32 runs everywhere.
REFERENCE_BF16_FEATURES = {"amx_bf16": True, "avx512_bf16": True, "capability": "AVX512"}


def bf16_features() -> dict:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    capability = torch.backends.cpu.get_cpu_capability()
    return {"amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags, "capability": capability}


def skip_unless_reference_bf16_kernels() -> None:
    here = bf16_features()
    if here != REFERENCE_BF16_FEATURES:
        pytest.skip(
            f"this CPU's bf16 kernels ({here}) differ from the reference machine's ({REFERENCE_BF16_FEATURES}): "
            "the bit-level bf16 reference does not apply here (regenerate it on this machine to check bf16)"
        )


DTYPES = ("float32", "bfloat16")
# (rtol, atol) of the vision features and keys/values; atol of the actions (the targets)
TOLERANCE = {"float32": ((1e-5, 1e-5), 1e-5), "bfloat16": ((2**-7, 2**-9), 1e-3)}


@pytest.fixture(scope="module")
def frozen() -> dict:
    with safe_open(str(INPUTS), "pt") as f:
        config = XR0Config.from_dict(json.loads(f.metadata()["xr0_config"]), source=str(INPUTS))
    tensors = load_file(str(INPUTS))
    return {
        "config": config,
        "weights": {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")},
        "inputs": {k.removeprefix("inputs."): v for k, v in tensors.items() if k.startswith("inputs.")},
        "sampling": {k.removeprefix("sampling."): v for k, v in tensors.items() if k.startswith("sampling.")},
        "reference": load_file(str(REFERENCE)),
    }


def run(frozen: dict, dtype_name: str, official: bool = True) -> dict:
    """Our model, as `create_model` builds it, on the frozen weights and batch: vision outputs, VLM context
    and the flow sample."""
    dtype = getattr(torch, dtype_name)
    model = create_model(frozen["config"], seed=0)
    missing, unexpected = model.load_state_dict(frozen["weights"], strict=False)
    if missing != ["vlm.lm_head.weight"] or unexpected:  # lm_head is tied to the embedding, not stored
        pytest.fail(f"{INPUTS.name} does not fit the model: missing {missing}, unexpected {unexpected}")
    model = cast_parameters(model.eval(), dtype)
    if not official:
        use_official_vision(model.vlm, False)  # transformers' own forward (XR0Model installs ours)
    inputs, sampling = frozen["inputs"], frozen["sampling"]
    with torch.no_grad():
        vision = model.vlm.model.visual(inputs["pixel_values"].to(dtype), grid_thw=inputs["image_grid_thw"])
        ctx = model.encode(inputs)
        actions = sample_actions(
            model,
            ctx,
            sampling["state"].to(dtype),
            sampling["action_mask"],
            noise=sampling["noise"].to(dtype),
        )
    return {
        "position_ids": model.vlm_position_ids(inputs),
        "vision": vision,
        "ctx": ctx,
        "actions": actions,
        "real": inputs["attention_mask"].bool(),
    }


def real_tokens(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, H, L, hd) → (n_real, H, hd): the cache rows the DiT attends to."""
    return x.transpose(1, 2)[real].float()


@pytest.mark.parametrize("dtype", DTYPES)
def test_vlm_cache_and_actions_match_the_official_recipe(frozen, dtype):
    if dtype == "bfloat16":
        skip_unless_reference_bf16_kernels()
    out, ref = run(frozen, dtype), frozen["reference"]
    (rtol, atol), action_atol = TOLERANCE[dtype]
    assert torch.equal(out["position_ids"], ref[f"{dtype}.position_ids"])
    close = {"rtol": rtol, "atol": atol}
    torch.testing.assert_close(
        out["vision"].pooler_output.float(), ref[f"{dtype}.vision.embeds"].float(), **close
    )
    for j, feature in enumerate(out["vision"].deepstack_features):
        torch.testing.assert_close(feature.float(), ref[f"{dtype}.vision.deepstack.{j}"].float(), **close)
    for kind in ("keys", "values"):
        for i, x in enumerate(getattr(out["ctx"], kind)):
            expected = real_tokens(ref[f"{dtype}.{kind}.{i}"], out["real"])
            torch.testing.assert_close(
                real_tokens(x, out["real"]), expected, **close, msg=lambda m, k=kind, i=i: f"{k} {i}: {m}"
            )
    torch.testing.assert_close(
        out["actions"].float(), ref[f"{dtype}.actions"].float(), rtol=0, atol=action_atol
    )


def test_transformers_own_vision_path_misses_the_bf16_target(frozen):
    # The check above is sharp enough to see what xr0/vision.py corrects. If this fails, transformers computes
    # the vision tower like 4.57.1 again and xr0/vision.py may be deleted.
    skip_unless_reference_bf16_kernels()
    out, ref = run(frozen, "bfloat16", official=False), frozen["reference"]
    (rtol, atol), action_atol = TOLERANCE["bfloat16"]
    keys = real_tokens(out["ctx"].keys[-1], out["real"])
    expected = real_tokens(ref["bfloat16.keys.1"], out["real"])
    assert not torch.allclose(keys, expected, rtol=rtol, atol=atol)
    assert (out["actions"].float() - ref["bfloat16.actions"].float()).abs().max() > action_atol


def test_position_embeddings_are_the_bilinear_resampling_of_the_table():
    # The recipe's rounding aside (its weights are fp32, hence fp32 tolerances on an fp64 table), it is
    # F.interpolate(bilinear, align_corners=True) in the tower's patch order (2×2 merge blocks), the grid
    # repeated for each frame of a video.
    visual = create_model(variant("tiny"), seed=0).vlm.model.visual
    g = torch.Generator().manual_seed(0)
    visual.pos_embed.weight.data = torch.randn(
        visual.pos_embed.weight.shape, dtype=torch.float64, generator=g
    )
    side, merge = visual.num_grid_per_side, visual.spatial_merge_size
    grid = torch.tensor([[1, 4, 6], [2, 10, 8]])
    got = interpolated_position_embeddings(visual, grid)
    table = visual.pos_embed.weight.detach().T.reshape(1, -1, side, side)
    expected = []
    for t, h, w in grid.tolist():
        image = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=True)[0]  # (C, h, w)
        image = image.permute(1, 2, 0).reshape(h // merge, merge, w // merge, merge, -1).transpose(1, 2)
        expected.append(image.reshape(h * w, -1).repeat(t, 1))
    torch.testing.assert_close(got, torch.cat(expected), rtol=1.3e-6, atol=1e-5)


def test_rotary_angles_equal_transformers_own():
    visual = create_model(variant("tiny"), seed=0).vlm.model.visual
    grid = torch.tensor([[1, 4, 6], [2, 10, 8]])
    cos, sin = rotary_position_embeddings(visual, grid)
    from transformers.vision_utils import get_vision_position_ids

    position = get_vision_position_ids(grid, visual.spatial_merge_size)
    expected_cos, expected_sin = visual.rotary_pos_emb(cos, position)
    torch.testing.assert_close(cos, expected_cos)
    torch.testing.assert_close(sin, expected_sin)


def test_outputs_the_official_path_cannot_record_are_refused(frozen):
    visual = create_model(frozen["config"], seed=0).vlm.model.visual
    inputs = frozen["inputs"]
    with pytest.raises(ValueError, match="output_hidden_states"):
        visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"], output_hidden_states=True)


def test_grid_tables_are_kept_at_inference_and_follow_the_grid_and_the_weights():
    visual = create_model(variant("tiny"), seed=0).eval().vlm.model.visual
    grid = torch.tensor([[1, 4, 6]])
    with torch.no_grad():
        first = visual._grid_tables(grid)
        assert visual._grid_tables(grid)[0] is first[0]  # kept: the same camera sizes every chunk
        visual.pos_embed.weight.mul_(2.0)  # in place, as an optimizer step or a weight load
        doubled = visual._grid_tables(grid)
        other = visual._grid_tables(torch.tensor([[1, 6, 4]]))
    torch.testing.assert_close(doubled[0], 2 * first[0])
    assert other[0].shape == first[0].shape and not torch.equal(other[1][0], first[1][0])
    torch.testing.assert_close(other[0], interpolated_position_embeddings(visual, torch.tensor([[1, 6, 4]])))
    with torch.enable_grad():  # training: computed every time, so gradients reach the table
        assert visual._grid_tables(grid)[0].requires_grad
