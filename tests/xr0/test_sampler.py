"""The fused chunk sampler against the reference path (`sample_actions` over `XR0Model.velocity`): prefixes,
mask modes, dtypes, batches of requests with their own prefixes, prompts and chunk lengths, and weights that
change under it."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from tests.xr0.conftest import T, make_images, with_config
from xr0.flow import sample_actions
from xr0.model import cast_parameters
from xr0.sampler import ChunkSampler, place_prefix

A = 32


def active_mask(T: int = T, B: int = 1) -> torch.Tensor:
    m = torch.zeros(B, T, A)
    m[..., :14] = 1
    return m


def draws(seed: int, B: int = 1, T: int = T, P: int = 0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(B, T, A, generator=g)
    state = torch.randn(B, 1, A, generator=g)
    prefix = torch.randn(B, P, A, generator=g) if P else None
    return noise, state, prefix


def reference(model, ctx, noise, state, prefix, mask, steps=None):
    with torch.no_grad():
        return sample_actions(model, ctx, state, mask, prefix, noise=noise, num_steps=steps)


@pytest.mark.parametrize("mode", ["band", "causal"])
@pytest.mark.parametrize("P", [0, 1, 4, 6])
def test_fused_equals_the_reference_in_fp32(model, context, mode, P):
    m = with_config(model, dit_mask=mode)
    noise, state, prefix = draws(P, P=P)
    mask = active_mask()
    for steps in (1, 5):
        want = reference(m, context, noise, state, prefix, mask, steps)
        got = ChunkSampler(m).sample(context, place_prefix(noise, prefix), state, mask, P, num_steps=steps)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        if P:
            assert torch.equal(got[:, :P], prefix)  # the prefix rows never move


def test_fused_stays_within_bf16_rounding_of_the_reference(model, inputs):
    bf16 = cast_parameters(copy.deepcopy(model), torch.bfloat16)
    with torch.no_grad():
        ctx = bf16.encode(inputs)
    noise, state, prefix = draws(7, P=4)
    noise, state, prefix = noise.bfloat16(), state.bfloat16(), prefix.bfloat16()
    want = reference(bf16, ctx, noise, state, prefix, active_mask())
    got = ChunkSampler(bf16).sample(ctx, place_prefix(noise, prefix), state, active_mask(), 4)
    assert got.dtype == torch.bfloat16
    # a bf16 ulp is 2^-7 relative; fused kernels round at other places than the reference's separate ops
    torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=2e-2)


def test_a_batch_of_requests_with_their_own_prompts_prefixes_and_horizons_matches_each_alone(
    model, processor
):
    labels = ("Ego View", "Left-Wrist View")
    views = [make_images(1)[:2], make_images(2, ((32, 64), (64, 32))), make_images(3)[:2]]
    tasks = ["transfer the cube to the other arm please", "fold", "stack the cups"]
    prompts = [
        processor.encode(task, list(zip(labels, images, strict=True)))
        for task, images in zip(tasks, views, strict=True)
    ]
    prefix_lengths = [0, 5, 2]
    horizons = [T, T, 8]  # the third robot's chunks are shorter: its rows 8… are padding
    with torch.no_grad():
        batch_ctx = model.encode(processor.collate(prompts))
    assert batch_ctx.attention_mask.sum(1).unique().numel() > 1  # the prompts are padded
    starts, states, masks, alone = [], [], [], []
    for i, (inputs, P, h) in enumerate(zip(prompts, prefix_lengths, horizons, strict=True)):
        noise, state, prefix = draws(20 + i, T=h, P=P)
        with torch.no_grad():
            alone.append(reference(model, model.encode(inputs), noise, state, prefix, active_mask(h)))
        start, mask = torch.zeros(1, T, A), torch.zeros(1, T, A)
        start[:, :h], mask[:, :h] = place_prefix(noise, prefix), active_mask(h)
        starts.append(start)
        states.append(state)
        masks.append(mask)
    got = ChunkSampler(model).sample(
        batch_ctx, torch.cat(starts), torch.cat(states), torch.cat(masks), prefix_lengths
    )
    for i, h in enumerate(horizons):
        torch.testing.assert_close(got[i : i + 1, :h], alone[i], atol=1e-5, rtol=1e-5)


def test_joined_weights_follow_a_parameter_that_changes(model, context):
    m = copy.deepcopy(model)
    sampler = ChunkSampler(m)
    noise, state, _ = draws(3)
    mask = active_mask()
    before = sampler.sample(context, noise, state, mask)
    with torch.no_grad():
        m.dit.layers[0].mlp.up_proj.weight.normal_(0, 1.0)  # in place: same tensor, new values
        m.dit.layers[1].attn.k_norm.weight.normal_(1, 1.0)
    after = sampler.sample(context, noise, state, mask)
    assert (before - after).abs().max() > 1e-4  # 10× the tolerance below: stale weights would fail it
    torch.testing.assert_close(after, reference(m, context, noise, state, None, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile on the CPU needs a C++ compiler"
)
def test_the_compiled_steps_equal_the_eager_ones_and_prefix_lengths_never_recompile(model, context):
    import torch._dynamo

    torch._dynamo.reset()
    compiled, eager = ChunkSampler(model, compile=True), ChunkSampler(model)
    mask = active_mask()
    for P in (0, 3, 5):  # one shape, three prefix lengths: one compilation
        noise, state, prefix = draws(40 + P, P=P)
        start = place_prefix(noise, prefix)
        got = compiled.sample(context, start, state, mask, P, num_steps=1)
        torch.testing.assert_close(
            got, eager.sample(context, start, state, mask, P, num_steps=1), atol=1e-5, rtol=1e-5
        )
        if P:
            assert torch.equal(got[:, :P], prefix)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames == 1, f"{frames} graphs compiled for one shape"


def test_bad_prefix_lengths_are_one_sentence(model, context):
    noise, state, _ = draws(0)
    with pytest.raises(ValueError, match="prefix_lengths"):
        ChunkSampler(model).sample(context, noise, state, active_mask(), [T])
    with pytest.raises(ValueError, match="prefix_lengths"):
        ChunkSampler(model).sample(context, noise, state, active_mask(), [0, 1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_equals_the_reference_on_the_gpu_in_bf16(model, inputs):
    gpu = cast_parameters(copy.deepcopy(model), torch.bfloat16).to("cuda")
    with torch.no_grad():
        ctx = gpu.encode({k: v.to("cuda") for k, v in inputs.items()})
    noise, state, prefix = (t.to("cuda", torch.bfloat16) for t in draws(11, P=4))
    mask = active_mask().to("cuda")
    want = reference(gpu, ctx, noise, state, prefix, mask)
    got = ChunkSampler(gpu).sample(ctx, place_prefix(noise, prefix), state, mask, 4)
    torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=2e-2)
