"""The training objective against the official post-training code, re-stated here from its definition
(`XR0.forward` / `compute_loss`): per-copy reweighting generations from each copy's own training noise under
the blocked prefix columns, the official weights (normalised on active elements, clamped raw elsewhere),
padded rows out of the loss; per-dimension statistics broadcast as the official processor does; and the
bf16-weights precision (fp32 AdamW masters) through the trainer."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.xr0.conftest import make_images
from tests.xr0.test_data import CAMS, make_store
from xr0.checkpoint import load_checkpoint, save_checkpoint
from xr0.config import variant
from xr0.model import VLMContext, create_model
from xr0.objective import FlowObjective, StepDraws, draw_step, l1_weights
from xr0.optim import MasterWeightAdamW
from xr0.policy import XR0_INDEX
from xr0.processor import XR0Processor
from xr0.train import Trainer
from xr0.train_config import DataConfig, TrainConfig

B, R, P = 2, 2, 4
BLOCKED = torch.tensor([True, True, False, False])  # prefix columns a_0, a_1 hidden from the noisy rows
PADDED = 5  # sample 1's window runs 5 rows past its episode's end


# -- the official definitions, re-stated -------------------------------------------------------------------
def official_generation(model, ctx, state, mask, prefix, noise, blocked):
    """`_flow_generate(cat([prefix, noise[:, P:]]))` under the step's attention mask, one copy at a time."""
    P = prefix.shape[1]
    x = torch.cat([prefix, noise[:, P:]], dim=1)
    for k in range(5):
        t = torch.full((x.shape[0],), k / 5)
        x = x + model.velocity(ctx, x, t, state, mask, P, blocked) * 0.2
    return x


def official_loss(pred, target, action_mask, weight, freq=1.0):
    """`compute_loss` on rows P… (weight None = no prefix: ones)."""
    pred, target, m = pred.float(), target.float(), action_mask.bool()
    weight = torch.ones_like(pred) if weight is None else weight.float().clone()
    weight[m] = weight[m] / weight[m].mean()
    weight = weight.clamp(0.5, 5.0)
    mse = (F.mse_loss(pred, target, reduction="none") * weight)[m].mean()
    spectrum = (torch.fft.rfft(pred, dim=1) - torch.fft.rfft(target, dim=1)).abs()
    return 0.5 * mse + freq * (spectrum * weight.mean(dim=[1, 2])[:, None, None]).mean()


def row(ctx: VLMContext, i: int) -> VLMContext:
    return VLMContext(
        [k[i : i + 1] for k in ctx.keys],
        [v[i : i + 1] for v in ctx.values],
        ctx.attention_mask[i : i + 1],
        ctx.last_position[:, i : i + 1],
    )


@pytest.fixture(scope="module")
def model():
    """The tiny model with its head's weight matrices ×5: at init scale the velocities are so small that
    the prefix columns barely steer a generation (blocked or not: 8e-4 apart); ×5: 0.1 apart."""
    model = create_model(variant("tiny"), seed=0).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("vlm.") and p.ndim == 2 and "adaln" not in name:
                p.mul_(5)
    return model


@pytest.fixture(scope="module")
def step(model, processor):
    """A batch of 2 (sample 1 padded at the end), its draws with P = 4 and two blocked columns, and the
    official quantities computed from them copy by copy."""
    T = processor.chunk_length("aloha")
    inputs = processor.collate(
        [
            processor.encode("transfer the cube", [("Ego View", img)])
            for img in make_images(3, ((32, 32),) * B)
        ]
    )
    mask = processor.get_action_mask("aloha", B)
    g = torch.Generator().manual_seed(0)
    actions = torch.randn(B, T, 32, generator=g) * mask
    state = torch.randn(B, 1, 32, generator=g)
    valid = torch.ones(B, T)
    valid[1, -PADDED:] = 0
    d = draw_step(0, 0, B, R, T, 32, mask[0], 6, 0.5)
    draws = StepDraws(P, BLOCKED, d.time, d.noise, d.gen_noise)
    with torch.no_grad():
        ctx = model.encode(inputs).repeat_interleave(R)
        a, s, m, v = (x.repeat_interleave(R, 0) for x in (actions, state, mask, valid))
        tt = draws.time[:, None, None]
        x_t = torch.cat([a[:, :P], ((1 - tt) * draws.noise + tt * a)[:, P:]], dim=1)
        pred = model.velocity(ctx, x_t, draws.time, s, m, P, BLOCKED)[:, P:]
        gen = {
            blocked: torch.cat(
                [
                    official_generation(
                        model,
                        row(ctx, i),
                        s[i : i + 1],
                        m[i : i + 1],
                        a[i : i + 1, :P],
                        draws.noise[i : i + 1],
                        BLOCKED if blocked else None,
                    )  # fmt: skip
                    for i in range(B * R)
                ]
            )
            for blocked in (True, False)
        }
    return {
        "batch": (inputs, state, actions, valid, mask, draws),
        "pred": pred,
        "target": (a - draws.noise)[:, P:],
        "loss_mask": (m * v[:, :, None])[:, P:],  # a padded row is a masked row of the loss
        "dims_mask": m[:, P:],
        "err": {k: (g - a).abs()[:, P:] for k, g in gen.items()},
    }


def objective(model, **kw):
    return FlowObjective(model, freeze_vlm=True, training_repeat=R, freq_loss_weight=1.0, reweight=True, **kw)


def test_each_copy_is_weighted_by_its_own_generation_under_the_blocked_prefix(model, step):
    with torch.no_grad():
        loss, stats = objective(model)(*step["batch"])
    err = step["err"][True]
    expect = official_loss(step["pred"], step["target"], step["loss_mask"], err)
    torch.testing.assert_close(loss, expect, rtol=2e-5, atol=0)
    # the copies of a sample had different weights, and each mattered
    assert (err[0] - err[1]).abs().max() > 0.1 and (err[2] - err[3]).abs().max() > 0.1
    shared = torch.stack([err[0], err[0], err[2], err[2]])
    assert abs(float(official_loss(step["pred"], step["target"], step["loss_mask"], shared) - loss)) > 1e-3
    # the generation saw the blocked columns: without them the weights (and the loss) differ
    unblocked = official_loss(step["pred"], step["target"], step["loss_mask"], step["err"][False])
    assert abs(float(unblocked - loss)) > 1e-4
    assert 0.5 <= float(stats["weight_min"]) < float(stats["weight_max"]) <= 5.0


def test_padded_rows_are_out_of_the_mean_and_elements_outside_keep_their_clamped_error(model, step):
    with torch.no_grad():
        loss, _ = objective(model)(*step["batch"])
    err, pred, target = step["err"][True], step["pred"], step["target"]
    # counting the padded rows in the denominator (weight 0 there) gives another loss
    active = step["loss_mask"].bool()
    w = err.clone()
    w[active] = (w[active] / w[active].mean()).clamp(0.5, 5.0)
    w[~active] = 0
    dims = step["dims_mask"].bool()
    counted = 0.5 * ((pred - target).pow(2) * w)[dims].mean()
    assert abs(float(counted - loss)) > 1e-3
    # elements outside the active set keep clamp(|gen − target|), not 1: only the frequency term reads them
    w1 = err.clone()
    w1[active] = w1[active] / w1[active].mean()
    w1 = torch.where(active, w1.clamp(0.5, 5.0), torch.ones_like(w1))
    spectrum = (torch.fft.rfft(pred, dim=1) - torch.fft.rfft(target, dim=1)).abs()
    mse = 0.5 * (F.mse_loss(pred, target, reduction="none") * w1)[active].mean()
    ones_outside = mse + (spectrum * w1.mean(dim=[1, 2])[:, None, None]).mean()
    assert abs(float(ones_outside - loss)) > 1e-3
    # a padded row's targets change nothing in the weights of the other rows
    actions = step["batch"][2]
    far = actions.clone()
    far[1, -PADDED:] += 100.0
    sel = torch.ones_like(err, dtype=torch.bool) & active
    a_r, far_r = actions.repeat_interleave(R, 0)[:, P:], far.repeat_interleave(R, 0)[:, P:]
    gen = err + 0  # any generation: compare the weights of both targets on the active elements
    w_a = l1_weights(gen, a_r, sel, (0.5, 5.0))
    w_far = l1_weights(gen, far_r, sel, (0.5, 5.0))
    assert torch.equal(w_a[sel], w_far[sel]) and not torch.equal(w_a[~sel], w_far[~sel])


def test_l1_weights_follow_the_official_definition():
    # per row; rows 0–2 are not selected (e.g. an unused dim, a padded row): their raw error, clamped
    errors = torch.tensor([7.0, 0.2, 2.0] + [1.0] * 6 + [100.0, 1000.0])
    generated = errors[None, :, None].expand(2, 11, 3).clone()
    selected = torch.ones(2, 11, 3, dtype=torch.bool)
    selected[:, :3] = False
    w = l1_weights(generated, torch.zeros_like(generated), selected, (0.5, 5.0))
    assert torch.all(w[:, 0] == 5.0) and torch.all(w[:, 1] == 0.5) and torch.all(w[:, 2] == 2.0)
    mean = (6 + 100 + 1000) / 8  # over the selected elements only
    assert torch.all(w[:, 3:9] == 0.5) and torch.all(w[:, 10] == 5.0)
    torch.testing.assert_close(w[:, 9], torch.full((2, 3), 100 / mean))


def test_the_shared_switch_weights_every_copy_from_one_generation_per_sample(model, step):
    inputs, state, actions, valid, mask, draws = step["batch"]
    with torch.no_grad():
        loss, _ = objective(model, reweight_per_copy=False)(*step["batch"])
        ctx = model.encode(inputs)
        gen = torch.cat(
            [
                official_generation(
                    model,
                    row(ctx, b),
                    state[b : b + 1],
                    mask[b : b + 1],
                    actions[b : b + 1, :P],
                    draws.gen_noise[b : b + 1],
                    BLOCKED,
                )  # fmt: skip
                for b in range(B)
            ]
        )
    err = (gen - actions).abs()[:, P:].repeat_interleave(R, 0)
    expect = official_loss(step["pred"], step["target"], step["loss_mask"], err)
    torch.testing.assert_close(loss, expect, rtol=2e-5, atol=0)


def test_without_a_prefix_the_loss_is_the_plain_official_mse(model, processor, step):
    inputs, state, actions, valid, mask, draws = step["batch"]
    plain = StepDraws(0, None, draws.time, draws.noise, draws.gen_noise)
    with torch.no_grad():
        loss, stats = objective(model)(inputs, state, actions, valid, mask, plain)
        ctx = model.encode(inputs).repeat_interleave(R)
        a, s, m, v = (x.repeat_interleave(R, 0) for x in (actions, state, mask, valid))
        tt = draws.time[:, None, None]
        pred = model.velocity(ctx, (1 - tt) * draws.noise + tt * a, draws.time, s, m)
    expect = official_loss(pred, a - draws.noise, m * v[:, :, None], None)
    torch.testing.assert_close(loss, expect, rtol=2e-5, atol=0)
    assert stats == {}


# -- per-dimension statistics ------------------------------------------------------------------------------
def official_action_mask(std, batch: int = 1) -> torch.Tensor:
    """The official processor: `torch.tensor(std)[None]`, then `(std > 1e-5).float().repeat(B, 1, 1)`."""
    return (torch.tensor(std, dtype=torch.float32)[None] > 1e-5).float().repeat(batch, 1, 1)


def per_dim_stats() -> dict:
    mean, std = np.zeros(32, np.float32), np.zeros(32, np.float32)
    mean[list(XR0_INDEX)] = np.linspace(-0.2, 0.2, 14)
    std[list(XR0_INDEX)] = np.linspace(0.1, 0.5, 14)
    return {"mean": mean.tolist(), "std": std.tolist()}


def test_per_dimension_statistics_broadcast_as_the_official_processor(caplog):
    stats = per_dim_stats()
    with caplog.at_level(logging.WARNING, logger="xr0.processor"):
        p = XR0Processor.build({"r": stats}, action_length=30)
    assert "chunks of 1 action" in caplog.text
    for batch in (1, 3):
        assert torch.equal(p.get_action_mask("r", batch), official_action_mask(stats["std"], batch))
    assert p.chunk_length("r") == 1 and p.stats["r"][0].shape == (1, 1, 32)
    # decoding broadcasts the one row over any chunk length, as the official decode_action does
    a = torch.randn(2, 5, 32)
    expected = a * torch.tensor(stats["std"])[None] + torch.tensor(stats["mean"])[None]
    torch.testing.assert_close(p.decode_action(a, "r"), expected)
    per_step = {"mean": [stats["mean"]] * 7, "std": [stats["std"]] * 7}  # (T, A) keeps T
    q = XR0Processor.build({"r": per_step})
    assert torch.equal(q.get_action_mask("r", 2), official_action_mask(per_step["std"], 2))
    assert q.chunk_length("r") == 7


def test_a_checkpoint_with_per_dimension_statistics_samples_one_action(tmp_path):
    model = create_model(variant("tiny"), seed=0)
    save_checkpoint(model, XR0Processor.build({"aloha": per_dim_stats()}, action_length=30), tmp_path / "ck")
    loaded, processor = load_checkpoint(tmp_path / "ck")
    from xr0.flow import sample_actions

    inputs = processor.encode("transfer the cube", [("Ego View", make_images(1, ((32, 32),))[0])])
    mask = processor.get_action_mask("aloha")
    with torch.no_grad():
        chunk = sample_actions(loaded, loaded.encode(inputs), torch.zeros(1, 1, 32), mask, seed=7)
    assert loaded.config.action_length == 30 and chunk.shape == (1, 1, 32)  # the official T = 1


# -- bf16 weights with fp32 AdamW masters ------------------------------------------------------------------
def test_master_weight_adamw_is_adamw_on_fp32_weights():
    g = torch.Generator().manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3, generator=g)), torch.nn.Parameter(torch.randn(4, generator=g))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    groups = lambda ps: [{"params": ps[:1], "weight_decay": 0.1}, {"params": ps[1:], "weight_decay": 0.0}]  # noqa: E731
    ours = MasterWeightAdamW(groups(a), lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    ref = torch.optim.AdamW(groups(b), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in a]
        for p, q, gr in zip(a, b, grads, strict=True):
            p.grad, q.grad = gr.clone(), gr.clone()
        ours.step()
        ref.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_master_weights_keep_the_updates_bf16_would_round_away():
    ours = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    plain = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    opt = MasterWeightAdamW([ours], lr=1e-3, weight_decay=0.0)
    ref = torch.optim.AdamW([plain], lr=1e-3, weight_decay=0.0)
    for _ in range(30):  # each update (1e-3) is below half a bf16 step at 1.0 (2^-8)
        ours.grad = torch.ones(8, dtype=torch.bfloat16)
        plain.grad = torch.ones(8, dtype=torch.bfloat16)
        opt.step()
        ref.step()
    assert torch.all(plain == 1.0)  # bf16 AdamW never moved
    master = opt.state[ours]["master"]
    assert master.dtype == torch.float32 and float(master[0]) == pytest.approx(0.97, abs=1e-4)
    assert torch.equal(ours.detach(), master.to(torch.bfloat16)) and float(ours.detach()[0]) < 1.0
    # the state survives a save and load onto bf16 parameters in fp32
    again = torch.nn.Parameter(ours.detach().clone())
    opt2 = MasterWeightAdamW([again], lr=1e-3, weight_decay=0.0)
    opt2.load_state_dict(opt.state_dict())
    assert all(opt2.state[again][k].dtype == torch.float32 for k in ("master", "exp_avg", "exp_avg_sq"))
    assert torch.equal(opt2.state[again]["master"], master)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("objective") / "s.zarr", lengths=(30, 30, 30))


def config(store, **kw) -> TrainConfig:
    data = DataConfig(datasets=(str(store),), cameras=CAMS, horizon=8, num_workers=0, eval_samples=2)
    base = TrainConfig(
        init="tiny", mode="frozen-vlm", steps=3, batch_size=4, training_repeat=2, max_pixels=1024, lr=1e-3,
        warmup_steps=0, log_every=1, eval_every=0, save_every=0, async_train=True, data=data,
    )  # fmt: skip
    return replace(base, **kw)


@pytest.mark.parametrize("precision", ["fp32", "bf16-weights"])
def test_a_few_steps_in_each_precision(store, tmp_path, precision):
    trainer = Trainer(config(store, precision=precision), tmp_path / "run", progress=False)
    summary = trainer.run()
    assert summary["steps"] == 3 and np.isfinite(summary["loss"]["last"])
    head = trainer.model.dit.layers[0].attn.qkv_proj.weight
    state = trainer.optimizer.state[head]
    if precision == "bf16-weights":
        assert head.dtype == torch.bfloat16 and isinstance(trainer.optimizer, MasterWeightAdamW)
        assert state["master"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
        assert torch.equal(head.detach(), state["master"].to(torch.bfloat16))
    else:
        assert head.dtype == torch.float32 and "master" not in state
    model, _ = load_checkpoint(tmp_path / "run" / "last")
    assert model.dtype == torch.float32  # saved in the dtype the starting weights had


def test_bf16_weights_resume_exactly_and_refuse_fsdp(store, tmp_path):
    import shutil

    from safetensors.torch import load_file

    cfg = config(store, precision="bf16-weights", steps=4, save_every=2)
    a, b = tmp_path / "a", tmp_path / "b"
    Trainer(cfg, a, progress=False).run()
    shutil.copytree(a, b, symlinks=True)  # b: the same run, rolled back to its step-2 checkpoint
    shutil.rmtree(b / "checkpoints" / "step-000004")
    (b / "last").unlink()
    (b / "last").symlink_to("checkpoints/step-000002")
    Trainer(cfg, b, resume=True, progress=False).run()
    for name in ("trainable", "optimizer"):
        x, y = (load_file(run / "last" / "resume" / f"{name}.safetensors") for run in (a, b))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    masters = [
        v for k, v in load_file(a / "last" / "resume" / "optimizer.safetensors").items() if "master" in k
    ]
    assert masters and all(v.dtype == torch.float32 for v in masters)
    with pytest.raises(ValueError, match="bf16-weights is not available with strategy fsdp"):
        TrainConfig(precision="bf16-weights", strategy="fsdp")
