"""The network's contracts on the tiny model: masks, prefix, offset, conditioning, seeding, gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.xr0.conftest import T, make_images, with_config
from xr0.flow import draw_blocked_prefix, flow_matching_loss, sample_actions, sample_flow_time, seeded_noise
from xr0.model import dit_position_ids, dit_self_mask

A = 32


def active_mask(T: int = T, dims: int = 14) -> torch.Tensor:
    m = torch.zeros(1, T, A)
    m[..., :dims] = 1
    return m


def run(model, ctx, noise, prefix=None, steps=None, mask=None):
    mask = active_mask(noise.shape[1]) if mask is None else mask
    with torch.no_grad():
        return sample_actions(model, ctx, torch.zeros(1, 1, A), mask, prefix, noise=noise, num_steps=steps)


def noise(seed: int, T: int = T) -> torch.Tensor:
    return torch.randn(1, T, A, generator=torch.Generator().manual_seed(seed))


def rows_changed(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    return [i for i in range(a.shape[1]) if not torch.equal(a[0, i, :14], b[0, i, :14])]


def test_causal_action_i_is_unaffected_by_later_actions(model, context):
    causal = with_config(model, dit_mask="causal")
    n = noise(0)
    j = 7
    m = n.clone()
    m[0, j, :14] += 1.0
    assert rows_changed(run(causal, context, n), run(causal, context, m)) == list(range(j, T))


def test_band_prefix_perturbation_reaches_only_the_window(model, context, inputs):
    """Through L DiT layers row i sees rows i−w…i per layer, so prefix row j reaches noisy rows up to
    j + w·L and no further. Outside the window the velocity is bit-identical (masked keys add exact zeros),
    in the model's fp32 and in float64; inside it the farthest row moves by ~1e-8, about fp32's rounding of
    a hidden state (CPU-dependent), so the reach is checked on a float64 copy of the same weights, at the
    velocity itself (not after x + v·dt)."""
    w, L, P = model.config.local_window, model.config.dit_config.num_hidden_layers, 4
    wide = copy.deepcopy(model).double()
    with torch.no_grad():
        wide_context = wide.encode(inputs)
    for net, ctx in ((model, context), (wide, wide_context)):
        dtype = net.dtype
        mask = active_mask().to(dtype)
        prefix = torch.randn(1, P, A, generator=torch.Generator().manual_seed(2)).to(dtype) * mask[:, :P]
        x = torch.cat([prefix, noise(1).to(dtype)[:, P:]], dim=1)
        t, state = torch.zeros(1, dtype=dtype), torch.zeros(1, 1, A, dtype=dtype)

        def velocity(x, net=net, ctx=ctx, mask=mask, t=t, state=state):
            with torch.no_grad():
                return net.velocity(ctx, x, t, state, mask, P)[0, :, :14]

        base = velocity(x)
        for j in (0, P - 1):
            moved = x.clone()
            moved[0, j, :14] += 1.0
            change = (velocity(moved) - base).abs().amax(-1)  # (T,)
            reach = min(T, j + w * L + 1)
            assert (change[:P] == 0).all() and (change[reach:] == 0).all(), (dtype, j, change)
            if dtype == torch.float64:  # rounding is ~1e-17 here
                assert (change[P:reach] > 1e-12).all(), (j, change)


def test_prefix_rows_come_out_exactly_equal(model, context):
    P = 5
    prefix = torch.randn(1, P, A, generator=torch.Generator().manual_seed(3))
    out = run(model, context, noise(4), prefix)
    assert torch.equal(out[:, :P], prefix)
    assert not torch.equal(out[:, P:], noise(4)[:, P:])


def test_rope_offset_changes_band_outputs_and_nothing_in_causal_mode(model, context):
    n = noise(5)
    band0, band10 = with_config(model, noisy_rope_offset=0), with_config(model, noisy_rope_offset=10)
    assert not torch.allclose(run(band0, context, n), run(band10, context, n))
    causal0 = with_config(model, dit_mask="causal", noisy_rope_offset=0)
    causal10 = with_config(model, dit_mask="causal", noisy_rope_offset=10)
    assert torch.equal(run(causal0, context, n), run(causal10, context, n))


def test_outputs_change_with_image_and_instruction(model, processor, inputs, context):
    labels = ("Ego View", "Left-Wrist View", "Right-Wrist View")
    images = make_images()
    other_image = images[:2] + make_images(seed=9)[2:]
    n = noise(6)
    base = run(model, context, n)
    for instruction, imgs in (
        ("transfer the cube to the other arm", other_image),
        ("insert the peg", images),
    ):
        enc = processor.encode(instruction, list(zip(labels, imgs, strict=True)))
        with torch.no_grad():
            out = run(model, model.encode(enc), n)
        assert (out - base)[..., :14].abs().max() > 1e-4


def test_same_seed_same_chunk_different_seed_different_chunk(model, context):
    mask = active_mask()

    def chunk(seed):
        with torch.no_grad():
            return sample_actions(model, context, torch.zeros(1, 1, A), mask, seed=seed)

    assert torch.equal(chunk(7), chunk(7))
    assert not torch.allclose(chunk(7), chunk(8))


def test_seeded_noise_reproduces_the_official_global_seeding():
    like = torch.zeros(2, 10, A, dtype=torch.bfloat16)
    state = torch.get_rng_state()
    try:  # the official sequence: seed the global RNG, randn_like(action_mask), restore
        torch.manual_seed(1234)
        official = torch.randn_like(like)
    finally:
        torch.set_rng_state(state)
    ours = seeded_noise(1234, like)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, official)
    assert torch.equal(torch.get_rng_state(), state)  # and ours left the global RNG alone


def test_masked_action_dims_are_ignored(model, context):
    mask = active_mask(dims=7)
    n = noise(10)
    m = n.clone()
    m[..., 7:] = torch.randn(1, T, A - 7, generator=torch.Generator().manual_seed(11)) * 5
    a, b = run(model, context, n, mask=mask), run(model, context, m, mask=mask)
    assert torch.equal(a[..., :7], b[..., :7])


def test_a_batch_with_padding_matches_single_samples(model, processor):
    labels = ("Ego View", "Left-Wrist View")
    samples = [
        processor.encode(
            "transfer the cube to the other arm please", list(zip(labels, make_images(1)[:2], strict=True))
        ),
        processor.encode("fold", list(zip(labels, make_images(2, ((32, 64), (64, 32))), strict=True))),
    ]
    batch = processor.collate(samples)
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]  # the second one is padded
    n = torch.cat([noise(12), noise(13)])
    mask = active_mask().repeat(2, 1, 1)
    with torch.no_grad():
        together = sample_actions(model, model.encode(batch), torch.zeros(2, 1, A), mask, noise=n)
        for i, s in enumerate(samples):
            alone = sample_actions(model, model.encode(s), torch.zeros(1, 1, A), mask[:1], noise=n[i : i + 1])
            torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def reference_mrope(
    ids: list[int], grids: list[tuple[int, int, int]], image_id: int
) -> list[tuple[int, int, int]]:
    """Spec §1.5 in plain Python: text positions count up on all 3 axes; an image's merged patches get
    (start, start + row, start + col); text after it continues from the largest id so far + 1."""
    out, nxt, i, grid = [], 0, 0, iter(grids)
    while i < len(ids):
        if ids[i] != image_id:
            out.append((nxt, nxt, nxt))
            nxt, i = nxt + 1, i + 1
            continue
        _, gh, gw = next(grid)
        h, w = gh // 2, gw // 2
        out += [(nxt, nxt + r, nxt + c) for r in range(h) for c in range(w)]
        nxt, i = nxt + max(h, w), i + h * w
    return out


def test_mrope_ids_match_the_spec_and_the_dit_continues_after_the_prompt(model, processor):
    labels = ("Ego View", "Right-Wrist View")
    samples = [
        processor.encode(
            "a long instruction with many words",
            list(zip(labels, make_images(3, ((64, 128), (96, 64))), strict=True)),
        ),
        processor.encode("short", list(zip(labels, make_images(4, ((32, 32), (64, 64))), strict=True))),
    ]
    batch = processor.collate(samples)
    pos = model.vlm_position_ids(batch)
    for b, s in enumerate(samples):
        L = s["input_ids"].shape[1]
        ref = reference_mrope(
            s["input_ids"][0].tolist(), s["image_grid_thw"].tolist(), processor.image_token_id
        )
        assert pos[:, b, :L].T.tolist() == [list(p) for p in ref]
        assert (pos[:, b, L:] == 1).all()  # padding, as transformers 4.57 fills it
    last = pos.max(-1).values  # (3, B)
    dit = dit_position_ids(last, num_actions=6, prefix_length=2, offset=10)
    k = torch.arange(8)
    expected = last[..., None] + 1 + k + torch.where(k >= 4, 10, 0)
    assert torch.equal(dit, expected) and torch.equal(dit[0], dit[1]) and torch.equal(dit[1], dit[2])


def test_band_mask_is_the_lambda_shape():
    m = dit_self_mask(8, "band", 4)  # rows/cols: sink, state, a0..a7
    assert m[:2, :2].tolist() == [[True, False], [True, True]] and not m[:2, 2:].any()
    assert m[2 + 6, :].tolist() == [True, True, False, False, True, True, True, True, True, False]
    blocked = dit_self_mask(
        8, "band", 4, prefix_length=4, blocked_prefix=torch.tensor([True, False, False, False])
    )
    assert not blocked[2 + 4, 2] and blocked[2 + 3, 2]  # noisy rows lose a0, prefix rows keep it
    assert dit_self_mask(8, "causal", 4).equal(torch.ones(10, 10, dtype=torch.bool).tril())


def test_gradient_reaches_every_trainable_parameter(model, processor):
    labels = ("Ego View", "Left-Wrist View")
    batch = processor.collate(
        [processor.encode(f"task {i}", list(zip(labels, make_images(i)[:2], strict=True))) for i in range(2)]
    )
    model.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(0)
    actions = torch.randn(2, T, A, generator=g)
    mask = active_mask().repeat(2, 1, 1)
    loss = flow_matching_loss(
        model, model.encode(batch), actions, torch.randn(2, 1, A, generator=g), mask, prefix_length=4,
        blocked_prefix=draw_blocked_prefix(4, 0.5, g), freq_weight=1.0, generator=g,
    )  # fmt: skip
    loss.backward()
    try:
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        no_grad = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
        assert no_grad == []
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen == model.unused_vlm_parameter_names()
        assert "vlm.model.language_model.norm.weight" in frozen and len(frozen) == 8
    finally:
        model.zero_grad(set_to_none=True)


def test_training_times_follow_beta():
    t = sample_flow_time(200_000, torch.Generator().manual_seed(0))
    assert 0 <= t.min() and t.max() < 0.999
    # s = 1 − t/0.999 ~ Beta(1.5, 1): mean 0.6, so E[t] = 0.999·0.4
    assert t.mean().item() == pytest.approx(0.999 * 0.4, abs=3e-3)
    assert (t < 0.5).float().mean().item() == pytest.approx(1 - (1 - 0.5 / 0.999) ** 1.5, abs=3e-3)


def test_position_ids_kept_at_inference_are_those_of_the_prompt_given(model, processor, inputs):
    other = processor.encode("fold", [("Ego View", make_images(5)[0][:32])])
    with torch.enable_grad():  # computed afresh, never from the cache
        want_a, want_b = model.vlm_position_ids(inputs), model.vlm_position_ids(other)
    with torch.no_grad():
        for batch, want in ((inputs, want_a), (other, want_b), (inputs, want_a), (inputs, want_a)):
            assert torch.equal(model.vlm_position_ids(batch), want)
