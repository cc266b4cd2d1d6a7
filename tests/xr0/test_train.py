"""The trainer on tiny real stores: frozen/full modes, the async recipe, the optimiser and schedule,
checkpoints the policy loads, exact kill-and-resume through `xr0 train`, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from app.cli.main import main
from tests.xr0.test_data import CAMS, make_store
from xr0.checkpoint import load_checkpoint, save_checkpoint
from xr0.config import variant
from xr0.distributed import check_batch
from xr0.model import create_model
from xr0.objective import draw_prefix_length, draw_step, step_generator
from xr0.policy import XR0Policy, XR0PolicyConfig
from xr0.train import Trainer, ema_decay_at, lr_at, param_groups
from xr0.train_config import DataConfig, TrainConfig
from xr0.train_state import read_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("train") / "s.zarr", lengths=(40, 30, 30))


def config(store, **kw) -> TrainConfig:
    data = DataConfig(datasets=(str(store),), cameras=CAMS, horizon=8, num_workers=0, eval_samples=4)
    base = TrainConfig(
        init="tiny", mode="frozen-vlm", steps=6, batch_size=4, training_repeat=2, max_pixels=1024, lr=1e-3, warmup_steps=0,
        log_every=1, eval_every=0, save_every=0, data=data,
    )  # fmt: skip
    return replace(base, **kw)


def trained(run: Path):
    model, processor = load_checkpoint(run / "last")
    return dict(model.named_parameters()), processor


def test_frozen_vlm_trains_the_head_and_leaves_the_vlm_bit_identical(store, tmp_path):
    cfg = config(store, mode="frozen-vlm")
    summary = Trainer(cfg, tmp_path / "run", progress=False).run()
    assert summary["steps"] == 6 and summary["stop"] == "steps"
    after, _ = trained(tmp_path / "run")
    before = dict(create_model(variant("tiny"), seed=cfg.seed).named_parameters())
    vlm = [n for n in before if n.startswith("vlm.")]
    head = [n for n in before if not n.startswith("vlm.")]
    assert all(torch.equal(before[n], after[n]) for n in vlm)
    assert sum(not torch.equal(before[n], after[n]) for n in head) == len(head)  # every head tensor moved
    # the checkpoint is a policy, and says how it was trained
    policy = XR0Policy.from_checkpoint(tmp_path / "run" / "last", XR0PolicyConfig(cameras=CAMS))
    assert policy.spec.chunk_length == 8 and policy.spec.max_prefix == 0  # synchronous training: no prefix
    info = json.loads((tmp_path / "run" / "last" / "training.json").read_text())
    assert (
        info["cameras"] == list(CAMS) and info["step"] == 6 and info["instructions"] == ["transfer the cube"]
    )
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert set(summary["eval"]) == {"val", "train"} and summary["eval"]["val"]["joint_mae_rad"] > 0


def test_full_mode_trains_the_vlm_but_not_its_input_embeddings(store, tmp_path):
    cfg = config(store, mode="full", steps=2)
    Trainer(cfg, tmp_path / "run", progress=False).run()
    after, _ = trained(tmp_path / "run")
    before = dict(create_model(variant("tiny"), seed=cfg.seed).named_parameters())
    embed = "vlm.model.language_model.embed_tokens.weight"
    assert torch.equal(before[embed], after[embed])
    assert not torch.equal(
        before["vlm.model.visual.blocks.0.attn.qkv.weight"],
        after["vlm.model.visual.blocks.0.attn.qkv.weight"],
    )
    assert not torch.equal(
        before["vlm.model.language_model.layers.0.mlp.up_proj.weight"],
        after["vlm.model.language_model.layers.0.mlp.up_proj.weight"],
    )


def test_prefix_lengths_follow_the_async_distribution():
    draws = [draw_prefix_length(step_generator(0, s), 6, 30) for s in range(6000)]
    freq = np.bincount(draws, minlength=8) / len(draws)
    assert abs(freq[0] - 0.5) < 0.03 and freq[7] == 0
    assert np.all(np.abs(freq[1:7] - 1 / 12) < 0.015)
    assert {draw_prefix_length(step_generator(0, s), 6, 4) for s in range(200)} == {0, 1, 2, 3}  # P < T
    assert {draw_prefix_length(step_generator(0, s), 0, 30) for s in range(50)} == {0}  # synchronous
    d = draw_step(1, 5, 4, 2, 30, 32, torch.ones(30, 32), 6, 0.5)
    assert d.prefix_length == draw_prefix_length(step_generator(1, 5), 6, 30)


# The L1 weights and the objective's loss are tested against the official definitions in test_objective.py.


def test_async_training_draws_prefixes_and_saves_a_prefix_checkpoint(store, tmp_path):
    cfg = config(store, async_train=True, steps=12)
    Trainer(cfg, tmp_path / "run", progress=False).run()
    records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    lengths = [r["prefix_length"] for r in records]
    assert lengths == [draw_prefix_length(step_generator(cfg.seed, s), 6, 8) for s in range(12)]
    assert 0 in lengths and max(lengths) > 0
    weighted = [r for r in records if r["prefix_length"] > 0]
    assert all(0.5 <= r["weight_min"] <= r["weight_max"] <= 5.0 for r in weighted)
    assert all("weight_min" not in r for r in records if r["prefix_length"] == 0)
    policy = XR0Policy.from_checkpoint(tmp_path / "run" / "last", XR0PolicyConfig(cameras=CAMS))
    assert policy.spec.max_prefix == 6 and policy.model.config.dit_mask == "band"


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(steps=1000, warmup_steps=50, lr=1e-3, min_lr=1e-6)
    assert lr_at(0, cfg) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 50)
    assert lr_at(49, cfg) == pytest.approx(1e-3)
    assert lr_at(50, cfg) == pytest.approx(1e-3) and lr_at(525, cfg) == pytest.approx((1e-3 + 1e-6) / 2)
    assert lr_at(1000, cfg) == pytest.approx(1e-6)
    assert lr_at(9, TrainConfig(steps=100, warmup_steps=2000)) == pytest.approx(
        TrainConfig().lr
    )  # capped at 10


def test_no_weight_decay_on_biases_norms_and_adaln_tables(model):
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no = {names[id(p)] for p in no_decay["params"]}
    assert "dit.layers.0.adaln_table" in no and "dit.layers.0.attn.qkv_proj.bias" in no
    assert "dit.layers.0.input_layernorm.weight" in no and "dit.layers.0.attn.q_norm.weight" in no
    yes = {names[id(p)] for p in decay["params"]}
    assert "dit.layers.0.attn.qkv_proj.weight" in yes and "sink.weight" in yes
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_time_limit_stops_and_saves(store, tmp_path):
    summary = Trainer(config(store, steps=10_000, max_minutes=0.002), tmp_path / "run", progress=False).run()
    assert summary["stop"] == "max_minutes" and 0 < summary["steps"] < 10_000
    assert (tmp_path / "run" / "last" / "config.json").is_file()


def test_ema_weights_are_the_checkpoint_and_resume_exactly(store, tmp_path):
    import shutil

    cfg = config(store, steps=4, save_every=2, ema_decay=0.5)
    a, b = tmp_path / "a", tmp_path / "b"
    Trainer(cfg, a, progress=False).run()
    shutil.copytree(a, b, symlinks=True)  # b: the same run, rolled back to its step-2 checkpoint
    shutil.rmtree(b / "checkpoints" / "step-000004")
    (b / "last").unlink()
    (b / "last").symlink_to("checkpoints/step-000002")
    Trainer(cfg, b, resume=True, progress=False).run()
    for name in ("ema", "trainable"):
        x, y = (load_file(run / "last" / "resume" / f"{name}.safetensors") for run in (a, b))
        assert all(torch.equal(x[k], y[k]) for k in x), name
    weights, _ = trained(a)
    ema = load_file(a / "last" / "resume" / "ema.safetensors")
    raw = load_file(a / "last" / "resume" / "trainable.safetensors")
    assert all(torch.equal(weights[k], ema[k]) for k in ema)  # the policy gets the EMA weights
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)


def test_ema_warm_up_forgets_the_random_initialisation():
    # a fixed 0.999 kept 37 % of the random weights after 1000 steps: short runs deployed a blend with noise
    decays = [ema_decay_at(step, 0.999) for step in range(20_000)]
    assert decays[0] == 0.1 and max(decays) == 0.999  # 1/10 is one correctly rounded division
    assert all(a <= b for a, b in zip(decays, decays[1:], strict=False))
    assert float(np.prod(decays[:20])) < 1e-4  # the initialisation's share of the EMA after 20 steps
    assert ema_decay_at(50, 0.5) == 0.5 and ema_decay_at(5, 0.5) == 0.4  # 6/15: the warm-up is lower


def test_evaluation_sees_the_ema_weights_and_training_goes_on_with_the_raw_ones(store, tmp_path):
    runs = {}
    for every in (0, 2):
        t = Trainer(
            config(store, steps=4, ema_decay=0.5, eval_every=every), tmp_path / f"e{every}", progress=False
        )
        t.run()
        runs[every] = t
    t = runs[2]
    raw = {n: p.detach().clone() for n, p in t.params.items()}
    with t._ema_weights():
        assert all(torch.equal(p, t.ema[n].to(p.dtype)) for n, p in t.params.items())
    assert all(torch.equal(p, raw[n]) for n, p in t.params.items())
    assert any(not torch.equal(raw[n], t.ema[n]) for n in raw)
    # the same run with and without evaluations (same ops, same machine): identical weights
    for n, p in runs[0].params.items():
        assert torch.equal(p, t.params[n]) and torch.equal(runs[0].ema[n], t.ema[n]), n


def test_gradient_checkpointing_is_on_for_a_gpu_only_unless_set(store, tmp_path):
    """On the CPU the vision tower's recomputation is pure cost (memory is plentiful); a GPU keeps it."""
    assert TrainConfig().checkpointing("cpu") is False and TrainConfig().checkpointing("cuda") is True
    assert TrainConfig(gradient_checkpointing=False).checkpointing("cuda") is False
    for bad in ("yes", 1):
        with pytest.raises(
            ValueError, match=f"gradient_checkpointing must be auto, true or false, got {bad!r}"
        ):
            TrainConfig(gradient_checkpointing=bad)
    for setting, expected in (("auto", False), (True, True)):  # on the CPU, also where a GPU exists
        t = Trainer(
            config(store, mode="full", steps=1, device="cpu", gradient_checkpointing=setting),
            tmp_path / str(setting),
            progress=False,
        )
        t.run()
        assert t.model.vlm.model.visual.is_activation_checkpointing is expected


# -- `xr0 train`: kill and resume ------------------------------------------------------------------------------
def cli_args(store, out, steps=30) -> list[str]:
    return [
        "train", "--dataset", str(store), "--cameras", *CAMS, "--horizon", "8", "--init", "tiny", "--out", str(out),
        "--steps", str(steps), "--batch-size", "4", "--training-repeat", "2", "--max-pixels", "1024",
        "--lr", "1e-3", "--log-every", "1", "--save-every", "5", "--eval-every", "0", "--num-workers", "0",
        "--async-train", "--no-progress",
    ]  # fmt: skip


def test_kill_and_resume_reproduces_the_uninterrupted_run_exactly(store, tmp_path):
    assert main(cli_args(store, tmp_path / "a")) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-m", "app", *cli_args(store, tmp_path / "b")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (tmp_path / "b" / "checkpoints" / "step-000005").exists():
        assert child.poll() is None and time.monotonic() < deadline, "the training process ended early"
        time.sleep(0.02)
    child.kill()  # SIGKILL: no clean-up of any kind
    child.wait()
    resumed_from = json.loads((tmp_path / "b" / "last" / "resume" / "state.json").read_text())["step"]
    assert resumed_from < 30
    assert main(cli_args(store, tmp_path / "b") + ["--resume"]) == 0
    a = load_file(tmp_path / "a" / "last" / "resume" / "trainable.safetensors")
    b = load_file(tmp_path / "b" / "last" / "resume" / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [
        {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r}
        for run in (tmp_path / "a", tmp_path / "b")
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 30  # every loss after the resume point, bit for bit


# -- bad input -------------------------------------------------------------------------------------------------
def run_cli(argv, capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_bad_input_is_one_sentence_each(store, tmp_path, capsys):
    from recording.writer import StoreWriter
    from tests.recording.synthetic import make_spec

    base = cli_args(store, tmp_path / "x", steps=2)
    empty = tmp_path / "empty.zarr"
    StoreWriter(empty, make_spec(codec="png"), fsync=False).close()
    rc, err = run_cli([*base, "--dataset", str(empty)], capsys)
    assert rc == 1 and "has no committed episodes" in err
    rc, err = run_cli([*base, "--cameras", "cam_high", "cam_right_wrist"], capsys)
    assert rc == 1 and "has no camera 'cam_right_wrist'" in err
    rc, err = run_cli([*base, "--batch-size", "512"], capsys)
    assert rc == 1 and "batch_size 512 is larger than the 70 training samples" in err
    # a checkpoint of another architecture: the same names with other shapes
    other = create_model(
        variant("tiny", dit_config=replace(variant("tiny").dit_config, intermediate_size=64))
    )
    from xr0.processor import XR0Processor

    save_checkpoint(other, XR0Processor.build({}), tmp_path / "other")
    cfg = json.loads((tmp_path / "other" / "config.json").read_text())
    cfg["dit_config"]["intermediate_size"] = 256  # config.json claims the tiny shapes; the weights differ
    (tmp_path / "other" / "config.json").write_text(json.dumps(cfg))
    rc, err = run_cli([*base, "--init", str(tmp_path / "other")], capsys)
    assert rc == 1 and "does not match the XR0 layout" in err and "dit.layers.0.mlp" in err
    (tmp_path / "notxr0").mkdir()
    (tmp_path / "notxr0" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    rc, err = run_cli([*base, "--init", str(tmp_path / "notxr0")], capsys)
    assert rc == 1 and "is not an XR0 (mibot) config" in err
    assert not (tmp_path / "x" / "last").exists()
    with pytest.raises(ValueError, match="batch_size 6 does not divide evenly over 4 processes"):
        check_batch(6, 4)
    rc, err = run_cli([*cli_args(store, tmp_path / "fresh", steps=2), "--resume"], capsys)
    assert rc == 1 and "has no checkpoint to resume from" in err


def test_a_new_model_reads_a_normalised_state_and_its_contract_says_so(store, tmp_path):
    from xr0.contract import ContractError, DeployContract

    Trainer(config(store, steps=2), tmp_path / "new", progress=False).run()
    _, processor = trained(tmp_path / "new")
    contract = DeployContract.load(tmp_path / "new" / "last")
    assert processor.normalizes_state("aloha") and contract.state_normalised
    XR0Policy.from_checkpoint(tmp_path / "new" / "last")  # loads: statistics and contract agree
    # fine-tuning a checkpoint keeps how it reads the state (official checkpoints: raw)
    raw = config(store, steps=2, normalize_state=False)
    Trainer(raw, tmp_path / "raw", progress=False).run()
    Trainer(
        config(store, steps=2, init=str(tmp_path / "raw" / "last")), tmp_path / "ft", progress=False
    ).run()
    for run in ("raw", "ft"):
        assert not trained(tmp_path / run)[1].normalizes_state("aloha")
        assert not DeployContract.load(tmp_path / run / "last").state_normalised
    # statistics and contract that disagree are refused, naming the field
    path = tmp_path / "new" / "last" / "deploy.json"
    d = json.loads(path.read_text())
    path.write_text(json.dumps({**d, "state_normalised": False}))
    with pytest.raises(ContractError, match="state_normalised False; the processor files have state"):
        XR0Policy.from_checkpoint(tmp_path / "new" / "last")


def test_absolute_actions_are_a_new_models_choice_and_the_policy_follows_its_contract(store, tmp_path):
    from xr0.contract import DeployContract

    summary = Trainer(config(store, steps=2, relative_actions=False), tmp_path / "abs", progress=False).run()
    assert (
        summary["eval"]["train"]["joint_mae_rad"] > 0
    )  # the arm joints are measured, whatever the representation
    contract = DeployContract.load(tmp_path / "abs" / "last")
    assert not any(contract.relative)
    policy = XR0Policy.from_checkpoint(tmp_path / "abs" / "last")
    assert not policy.relative.any()
    with pytest.raises(ValueError, match="relative_actions: false needs a new model"):
        config(store, relative_actions=False, init=str(tmp_path / "abs" / "last"))


# -- the keyframe loss ---------------------------------------------------------------------------------------
def test_keyframe_loss_reaches_the_vision_tower_stays_out_of_the_checkpoint_and_resumes(store, tmp_path):
    from xr0.keyframes import HEAD_PREFIX

    cfg = config(store, mode="full", steps=4, save_every=2, keyframe_loss_weight=1.0, ema_decay=0.5)
    a = tmp_path / "a"
    Trainer(cfg, a, progress=False).run()
    records = [r for r in read_jsonl(a / "metrics.jsonl") if "loss" in r]
    assert all(r["keyframe_loss"] > 0 for r in records)
    raw = load_file(a / "last" / "resume" / "trainable.safetensors")
    assert any(k.startswith(HEAD_PREFIX) for k in raw)  # the head resumes with the run ...
    weights, _ = trained(a)  # ... and the policy checkpoint loads strictly, in the official layout
    assert not any(k.startswith(HEAD_PREFIX) for k in weights)
    XR0Policy.from_checkpoint(a / "last", XR0PolicyConfig(cameras=CAMS))
    b = tmp_path / "b"  # resuming from step 2 reproduces the run, head included
    import shutil

    shutil.copytree(a, b, symlinks=True)
    shutil.rmtree(b / "checkpoints" / "step-000004")
    (b / "last").unlink()
    (b / "last").symlink_to("checkpoints/step-000002")
    Trainer(cfg, b, resume=True, progress=False).run()
    again = load_file(b / "last" / "resume" / "trainable.safetensors")
    assert all(torch.equal(raw[k], again[k]) for k in raw)
    with pytest.raises(ValueError, match="keyframe loss on or off"):
        Trainer(replace(cfg, keyframe_loss_weight=0.0, steps=6), b, resume=True, progress=False).run()


def test_keyframe_loss_alone_trains_the_vision_tower(store):
    """The auxiliary loss's gradient reaches every vision tower parameter through the merged image tokens."""
    from xr0.keyframes import view_tokens

    trainer = Trainer(
        config(store, mode="full", keyframe_loss_weight=1.0), store.parent / "unused", progress=False
    )
    trainer._prepare()
    samples = [trainer.train_set[(0, i, 0)] for i in (0, 7)]
    inputs = trainer.train_set.processor.collate([s["inputs"] for s in samples])
    objective, model = trainer.wrapped, trainer.model
    model.encode(inputs)
    merged = objective._vision_out.pop()
    tokens, mask = view_tokens(merged, inputs["image_grid_thw"], 2, batch=2)
    assert tokens.shape[:2] == (2, len(CAMS)) and bool(mask.all())
    assert torch.equal(tokens[1, 0, : mask.shape[-1]], merged[mask.shape[-1] * len(CAMS) :][: mask.shape[-1]])
    target = torch.stack([s["keyframe"] for s in samples])
    from xr0.keyframes import keyframe_loss

    keyframe_loss(objective.keyframe_head, tokens, mask, target).backward()
    vision = [p for n, p in model.named_parameters() if n.startswith("vlm.model.visual.") and p.requires_grad]
    moved = [
        n
        for n, p in model.named_parameters()
        if n.startswith("vlm.model.visual.") and p.grad is not None and bool(p.grad.abs().sum() > 0)
    ]
    # every vision parameter on the path to the merged tokens (the DeepStack mergers feed the LM only)
    assert vision and set(moved) == {
        n
        for n, p in model.named_parameters()
        if n.startswith("vlm.model.visual.") and p.requires_grad and "deepstack" not in n
    }
    with pytest.raises(ValueError, match="keyframe_loss_weight needs the VLM trained"):
        config(store, mode="frozen-vlm", keyframe_loss_weight=1.0)
