"""LoRA fine-tuning (`train.mode: lora`, peft): what is trainable, what a run changes, the merged plain
checkpoint it writes, exact resume, the memory estimate and the command line."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from app.cli.main import main
from tests.xr0.test_data import CAMS, make_store
from tests.xr0.test_train import cli_args, config
from xr0.checkpoint import load_checkpoint
from xr0.config import variant
from xr0.lora import add_adapters, is_adapter, merge_adapters, target_modules
from xr0.memory import estimate
from xr0.model import create_model
from xr0.policy import XR0Policy, XR0PolicyConfig
from xr0.train import Trainer, set_trainable
from xr0.train_config import LORA_TEXT_TARGETS, LoraConfig

RANK = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("lora") / "s.zarr", lengths=(40, 30, 30))


def lora_config(store, **kw):
    return config(store, mode="lora", lora=LoraConfig(rank=RANK, alpha=2.0 * RANK), **kw)


def wrapped(cfg: LoraConfig):
    model = create_model(variant("tiny"), seed=0)
    add_adapters(model, cfg, seed=0)
    set_trainable(model, "lora")
    return model


def test_only_the_adapters_and_the_action_head_are_trainable():
    model = wrapped(LoraConfig(rank=RANK))
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    head = {n for n in params if not n.startswith("vlm.")}
    adapters = {n for n in params if is_adapter(n)}
    assert adapters and trainable == head | adapters
    assert all(
        n.startswith("vlm.") for n in adapters
    )  # the DiT's own q/o/gate… projections are trained in full
    modules = {n.split(".lora_")[0] for n in adapters}
    assert modules == set(target_modules(create_model(variant("tiny"), seed=0), LoraConfig(rank=RANK)))
    # every text layer's seven projections but the last layer's q/o/MLP (nothing reads them), and the vision
    # tower's attention, MLP and patch mergers
    last = "vlm.model.language_model.layers.3."
    assert {m.removeprefix(last) for m in modules if m.startswith(last)} == {
        "self_attn.k_proj",
        "self_attn.v_proj",
    }
    assert sum(m.startswith("vlm.model.language_model.layers.0.") for m in modules) == 7
    assert sum(m.startswith("vlm.model.visual.blocks.") for m in modules) == 4 * 2
    assert {m for m in modules if "merger" in m} == {
        f"vlm.model.visual.{p}.{fc}"
        for p in ("merger", "deepstack_merger_list.0", "deepstack_merger_list.1")
        for fc in ("linear_fc1", "linear_fc2")
    }
    # rank r: A is r × in, B is out × r; B starts at zero, so a fresh adapter changes nothing
    q = "vlm.model.language_model.layers.0.self_attn.q_proj"
    assert params[f"{q}.lora_A.default.weight"].shape == (RANK, 128)
    assert params[f"{q}.lora_B.default.weight"].shape == (128, RANK)
    assert not params[f"{q}.lora_B.default.weight"].any()
    text_only = wrapped(LoraConfig(rank=RANK, targets=LORA_TEXT_TARGETS))
    assert not any("visual" in n for n, _ in text_only.named_parameters() if is_adapter(n))


def test_the_memory_estimate_counts_trainable_parameters_per_mode():
    model = create_model(variant("tiny"), seed=0)
    sizes = {}
    for mode in ("frozen-vlm", "full"):
        set_trainable(model, mode)
        sizes[mode] = estimate(model)
    lora = estimate(wrapped(LoraConfig(rank=RANK)), ema=True)
    head = sizes["frozen-vlm"]["trainable"]
    assert lora["trainable_head"] == head and lora["trainable_vlm"] == 0
    assert 0 < lora["trainable_adapters"] < sizes["full"]["trainable_vlm"]
    assert lora["adamw_gib"] == pytest.approx(2 * lora["gradients_gib"], abs=2e-3)
    assert lora["ema_gib"] == pytest.approx(lora["gradients_gib"], abs=1e-3)
    assert sizes["frozen-vlm"]["trainable"] < lora["trainable"] < sizes["full"]["trainable"]


def test_the_small_variant_is_mid_size_and_takes_adapters():
    from xr0.model import XR0Model, parameter_counts

    with torch.device("meta"):
        model = XR0Model(variant("small"))
    counts = parameter_counts(model)
    assert 1e8 < counts["total"] < 3e8 and counts["action_head"] < counts["vision"] < counts["text"]
    modules = target_modules(model, LoraConfig())
    assert (
        len(modules) == 11 * 7 + 2 + 8 * 4 + (1 + 3) * 2
    )  # text layers, the last one's k/v, blocks, mergers


def test_merging_folds_the_scaled_product_into_the_base_weight():
    w, a, b = torch.randn(6, 5), torch.randn(2, 5), torch.randn(6, 2)
    m = "vlm.x.q_proj"
    state = {f"{m}.base_layer.weight": w, f"{m}.lora_A.default.weight": a, f"{m}.lora_B.default.weight": b}
    state[f"{m}.base_layer.bias"] = torch.ones(6)
    merged = merge_adapters(state, LoraConfig(rank=2, alpha=3.0))
    assert set(merged) == {f"{m}.weight", f"{m}.bias"}
    torch.testing.assert_close(merged[f"{m}.weight"], w + 1.5 * b @ a)
    assert torch.equal(state[f"{m}.base_layer.weight"], w)  # a copy: the training weights are untouched


def test_a_lora_run_writes_a_merged_plain_checkpoint_that_matches_the_adapted_model(store, tmp_path, inputs):
    cfg = lora_config(store, steps=3)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.run()
    exported, _ = load_checkpoint(tmp_path / "run" / "last")  # strict: the official key layout
    after = dict(exported.named_parameters())
    base = create_model(variant("tiny"), seed=cfg.seed)
    before = dict(base.named_parameters())
    assert after.keys() == before.keys()
    targeted = {f"{m}.weight" for m in target_modules(base, cfg.lora)}
    vlm = [n for n in before if n.startswith("vlm.")]
    changed = {n for n in vlm if not torch.equal(before[n], after[n])}
    assert changed == targeted  # every adapted projection moved; embeddings, norms, biases bit-identical
    head = [n for n in before if not n.startswith("vlm.")]
    assert all(not torch.equal(before[n], after[n]) for n in head)  # the action head is trained in full
    # the plain model computes what the adapted one does
    adapted = trainer.model.eval()
    T = 8
    g = torch.Generator().manual_seed(0)
    x, state = torch.randn(1, T, 32, generator=g), torch.randn(1, 1, 32, generator=g)
    t, mask = torch.tensor([0.3]), torch.ones(1, T, 32)
    with torch.no_grad():
        ctx_a, ctx_b = adapted.encode(inputs), exported.encode(inputs)
        for k_a, k_b in zip(ctx_a.keys, ctx_b.keys, strict=True):
            torch.testing.assert_close(k_a, k_b, rtol=1e-4, atol=1e-5)
        v_a = adapted.velocity(ctx_a, x, t, state, mask)
        v_b = exported.velocity(ctx_b, x, t, state, mask)
    torch.testing.assert_close(v_a, v_b, rtol=1e-4, atol=1e-5)
    # …and it is an ordinary policy checkpoint
    XR0Policy.from_checkpoint(tmp_path / "run" / "last", XR0PolicyConfig(cameras=CAMS))
    info = json.loads((tmp_path / "run" / "last" / "training.json").read_text())
    assert info["config"]["mode"] == "lora" and info["config"]["lora"]["rank"] == RANK


def test_a_lora_run_resumes_exactly(store, tmp_path):
    cfg = lora_config(store, steps=4, save_every=2)
    a, b = tmp_path / "a", tmp_path / "b"
    Trainer(cfg, a, progress=False).run()
    shutil.copytree(a, b, symlinks=True)  # b: the same run, rolled back to its step-2 checkpoint
    shutil.rmtree(b / "checkpoints" / "step-000004")
    (b / "last").unlink()
    (b / "last").symlink_to("checkpoints/step-000002")
    saved = load_file(b / "last" / "resume" / "trainable.safetensors")
    assert any(is_adapter(n) for n in saved)  # the adapters travel in the resume state
    Trainer(cfg, b, resume=True, progress=False).run()
    x, y = (load_file(run / "last" / "resume" / "trainable.safetensors") for run in (a, b))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    (wa, _), (wb, _) = load_checkpoint(a / "last"), load_checkpoint(b / "last")
    pa, pb = dict(wa.named_parameters()), dict(wb.named_parameters())
    assert all(torch.equal(pa[k], pb[k]) for k in pa)  # the merged checkpoints too
    # another rank cannot continue these adapters
    other = replace(cfg, steps=6, lora=LoraConfig(rank=2 * RANK))
    with pytest.raises(ValueError, match="train.lora targets or rank"):
        Trainer(other, b, resume=True, progress=False).run()


def test_xr0_train_mode_lora_from_the_command_line(store, tmp_path, capsys, caplog):
    argv = cli_args(store, tmp_path / "run", steps=2) + ["--mode", "lora", "--lora-rank", "2"]
    with caplog.at_level(logging.INFO, logger="xr0.train"):
        assert main(argv) == 0
    assert any(r.getMessage().startswith("memory estimate (lora)") for r in caplog.records)
    info = json.loads((tmp_path / "run" / "last" / "training.json").read_text())
    assert info["config"]["lora"]["rank"] == 2 and info["config"]["lora"]["alpha"] == 4.0  # alpha = 2·rank
    assert main(cli_args(store, tmp_path / "bad", steps=2) + ["--mode", "lora", "--lora-rank", "0"]) == 1
    assert "lora.rank must be >= 1" in capsys.readouterr().err
