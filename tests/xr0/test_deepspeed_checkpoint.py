"""Post-training checkpoints of the official trainer (Lightning + DeepSpeed): laid out here as that trainer
writes them, read safely and strictly, converted to our layout bit for bit, and used as `--init`."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from app.cli.main import main
from tests.xr0.conftest import aloha_stats
from tests.xr0.test_data import CAMS, make_store
from xr0.checkpoint import CheckpointError, load_checkpoint, load_post_training, save_checkpoint
from xr0.config import tiny_special_ids, tiny_vlm, variant
from xr0.deepspeed_checkpoint import PostTrainingError, read_model_states
from xr0.model import cast_parameters, create_model
from xr0.processor import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from xr0.tokenizer import build_tokenizer

T = 16  # the run's chunk length
ROOT_DIR = "test/project_xr0/cube"  # trainer.default_root_dir, relative to where the official trainer ran


# -- the official layout ----------------------------------------------------------------------------------
def posttrained(seed: int = 1, config=None):
    """The weights a post-training run ends with: another seed than the base, in bf16 as DeepSpeed keeps them."""
    return cast_parameters(create_model(config or variant("tiny"), seed=seed), torch.bfloat16)


def module_entry(model) -> dict[str, torch.Tensor]:
    """The runner's state dict ("model." + key) as DeepSpeed saves it: every parameter a view into one flat
    buffer, and the tied lm_head the very same tensor as the input embeddings."""
    state = model.state_dict()
    unique = {}
    for key, t in state.items():
        unique.setdefault(t.data_ptr(), key)
    flat = torch.cat([state[k].flatten() for k in unique.values()])
    views, offset = {}, 0
    for ptr, key in unique.items():
        n = state[key].numel()
        views[ptr] = flat[offset : offset + n].view(state[key].shape)
        offset += n
    return {"model." + k: views[t.data_ptr()] for k, t in state.items()}


def model_states(module: dict[str, torch.Tensor]) -> dict:
    """What DeepSpeed's engine saves for ZeRO-2 (bf16), with Lightning's checkpoint as its client state."""
    shapes = OrderedDict((k.removeprefix("model."), t.shape) for k, t in module.items())
    return {
        "module": module, "buffer_names": [], "optimizer": None, "param_shapes": [shapes],
        "frozen_param_shapes": None, "shared_params": {}, "frozen_param_fragments": None,
        "lr_scheduler": {"base_lrs": [1.0, 1.0], "last_epoch": 5, "_step_count": 6, "_last_lr": [1e-6, 1e-6],
                         "_get_lr_called_within_step": False, "lr_lambdas": [None]},
        "data_sampler": None, "random_ltd": None, "sparse_tensor_module_names": set(), "skipped_steps": 0,
        "global_steps": 5, "global_samples": 80, "dp_world_size": 1, "mp_world_size": 1,
        "ds_config": {"zero_optimization": {"stage": 2, "allgather_bucket_size": 5e8}, "bf16": {"enabled": True},
                      "gradient_clipping": 1.0, "train_micro_batch_size_per_gpu": 1},
        "ds_version": "0.17.1",
        "epoch": 0, "global_step": 5, "pytorch-lightning_version": "2.5.2",
        "loops": {"fit_loop": {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": 5},
                               "epoch_loop.batch_progress": {"total": {"ready": 5, "completed": 5}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None, 'mode': 'min'}": {
            "monitor": None, "best_model_score": None, "best_model_path": "", "current_score": None,
            "dirpath": ROOT_DIR, "best_k_models": {}, "kth_best_model_path": "",
            "kth_value": torch.tensor(float("inf")), "last_model_path": f"{ROOT_DIR}/last.ckpt"}},
        "lr_schedulers": [{"base_lrs": [1.0, 1.0], "last_epoch": 5, "lr_lambdas": [None]}],
    }  # fmt: skip


def run_config(
    stats: dict, async_train: bool = True, pretrained: str = "pretrained_ckpt/xr0_pretrained.pt"
) -> dict:
    """The resolved config the official trainer dumps into the run folder (shapes of the tiny model)."""
    return {
        "data": {"params": {"max_steps": 5, "type": "json", "train_datasets": {
            "action_length": T, "batch_size": 16, "mean": stats["mean"], "std": stats["std"],
            "train_path": ["data/json"]}}, "type": "BaseDataModule"},
        "model": {"params": {"model": {
            "action_shape": [T, 32], "async_train": async_train, "dit_num_layers": 2, "dit_hidden_size": 128,
            "enable_freq": True,
            "prefix_mask_prob": 0.5, "state_shape": [1, 32], "training_repeat": 4, "type": "XR0"},
            "pretrained": pretrained}, "type": "BaseRunner"},
        "trainer": {"default_root_dir": ROOT_DIR, "exp_name": "cube", "max_steps": 5, "precision": "bf16-mixed",
                    "strategy": {"params": {"allgather_bucket_size": 5e8}, "type": "deepspeed"}},
    }  # fmt: skip


def mmengine_dump(config: dict) -> str:
    """config.py as mmengine's Config.dump writes it: `name = dict(key=value, …)` per top-level key."""

    def fmt(value) -> str:
        if isinstance(value, dict):
            return "dict(" + ", ".join(f"{k}={fmt(v)}" for k, v in value.items()) + ")"
        if isinstance(value, list):
            return "[" + ", ".join(fmt(v) for v in value) + "]"
        return repr(value)

    return "".join(f"{name} = {fmt(value)}\n" for name, value in config.items())


def write_run(project: Path, model, stats: dict, states: dict | None = None, fmt: str = "py", **kw) -> Path:
    """PROJECT/test/project_xr0/cube/{config.py|config.yaml, last.ckpt/checkpoint/mp_rank_00_model_states.pt}."""
    run = project / ROOT_DIR
    (run / "last.ckpt" / "checkpoint").mkdir(parents=True)
    torch.save(
        states or model_states(module_entry(model)),
        run / "last.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt",
    )
    config = run_config(stats, **kw)
    if fmt == "py":
        (run / "config.py").write_text(mmengine_dump(config))
    else:
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


@pytest.fixture
def project(tmp_path, model, processor):
    """The official trainer's working folder: pretrained_ckpt/ holds the release the run started from."""
    save_checkpoint(model, processor, tmp_path / "pretrained_ckpt")
    return tmp_path


def assert_same_weights(loaded, trained) -> None:
    a, b = loaded.state_dict(), trained.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype == torch.bfloat16 for k in a)


# -- reading ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ["run", "last.ckpt", "checkpoint"])
def test_each_entry_folder_loads_the_post_trained_weights_exactly(project, entry):
    trained, stats = posttrained(), aloha_stats(T)
    run = write_run(project, trained, stats)
    path = {"run": run, "last.ckpt": run / "last.ckpt", "checkpoint": run / "last.ckpt" / "checkpoint"}[entry]
    loaded, processor = load_checkpoint(path)  # the base is found through model.params.pretrained
    assert_same_weights(loaded, trained)
    assert loaded.vlm.lm_head.weight is loaded.vlm.model.language_model.embed_tokens.weight
    c = loaded.config
    assert (c.dit_mask, c.noisy_rope_offset, c.local_window, c.max_prefix, c.action_length) == (
        "band",
        10,
        4,
        6,
        T,
    )
    assert processor.list_robot_types() == ["aloha"] and processor.chunk_length("aloha") == T
    mean, std = processor.stats["aloha"]
    assert torch.equal(mean[0], torch.tensor(stats["mean"], dtype=torch.float32))
    # the official post-training code decodes with std + 1e-6: the converted statistics carry it
    assert torch.equal(std[0], torch.tensor(stats["std"], dtype=torch.float32) + 1e-6)
    size = processor.image_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)


def test_convert_writes_our_layout_bit_for_bit(project, capsys):
    trained = posttrained()
    run = write_run(project, trained, aloha_stats(T), async_train=False)
    out = project / "converted"
    argv = ["model", "convert", str(run / "last.ckpt"), str(out), "--base", str(project / "pretrained_ckpt")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "tensors match the XR0 layout" in captured.err and f"into {out}" in captured.out
    assert (
        len(list(out.glob("model-*-of-*.safetensors"))) >= 1
        and (out / "model.safetensors.index.json").is_file()
    )
    loaded, processor = load_checkpoint(out)
    assert_same_weights(loaded, trained)
    assert loaded.config.max_prefix == 0 and loaded.config.dit_mask == "band"  # synchronous post-training
    _, direct = load_post_training(run)
    assert all(
        torch.equal(a, b) for a, b in zip(processor.stats["aloha"], direct.stats["aloha"], strict=True)
    )
    assert main(["model", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layout"] == "ok (strict)"
    assert main(argv) == 1 and "is not an empty folder" in capsys.readouterr().err
    assert main(["model", "convert", str(out), str(project / "again")]) == 1
    assert "is already a checkpoint directory" in capsys.readouterr().err


def test_a_qwen3_vl_base_gives_the_architecture_as_the_official_deploy_code_does(tmp_path):
    # The official deploy builds the VLM from Qwen3-VL's own config.json and the DiT from the run's config
    # (hidden 1024 → here 128, 8 KV heads of the VLM's head_dim, an MLP 4× as wide).
    tiny = variant("tiny")
    trained = posttrained(
        config=replace(tiny, dit_config=replace(tiny.dit_config, intermediate_size=4 * 128))
    )
    base = tmp_path / "Qwen3-VL"
    base.mkdir()
    qwen = {"architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl", "dtype": "bfloat16",
            "transformers_version": "4.57.0", **tiny_vlm(tiny_special_ids())}  # fmt: skip
    (base / "config.json").write_text(json.dumps(qwen))
    build_tokenizer().save(str(base / "tokenizer.json"))
    pre = {"image_processor_type": "Qwen2VLImageProcessorFast", "processor_class": "Qwen3VLProcessor",
           "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3,
           "image_std": [0.5] * 3, "size": {"shortest_edge": 65536, "longest_edge": 16777216}}  # fmt: skip
    (base / "preprocessor_config.json").write_text(json.dumps(pre))
    run = write_run(tmp_path, trained, aloha_stats(T))
    with pytest.raises(CheckpointError, match="--base DIR_OR_HUB_ID"):  # the run's config leads nowhere
        load_checkpoint(run)
    loaded, _ = load_post_training(run, base=base)
    assert_same_weights(loaded, trained)
    assert loaded.config.dit_config == replace(tiny.dit_config, intermediate_size=512)
    (tmp_path / "pretrained_ckpt").mkdir()  # where the official README puts the release: found there too
    base.rename(tmp_path / "pretrained_ckpt" / "Qwen3-VL")
    again, _ = load_checkpoint(run)
    assert_same_weights(again, trained)


def test_harmless_objects_beside_the_weights_are_read_as_inert_stand_ins(tmp_path):
    file = tmp_path / "mp_rank_00_model_states.pt"
    extras = {"hparams": argparse.Namespace(lr=1e-4, name="run"), "score": np.float64(0.5),
              "curve": np.zeros(3), "dirpath": pathlib.Path("/runs/x"), "steps": {1, 2}}  # fmt: skip
    torch.save({"module": {"model.sink.weight": torch.ones(1, 4)}, **extras}, file)
    assert list(read_model_states(file)) == ["sink.weight"]


# -- refusals ----------------------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_global_is_refused_without_running_it(project, capsys):
    marker = project / "PWNED"
    trained = posttrained()
    states = model_states(module_entry(trained))
    states["hparams"] = _Payload(marker)
    run = write_run(project, trained, aloha_stats(T), states=states)
    file = run / "last.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt"
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(run)
    message = str(e.value)
    assert f"{file} holds the Python global {os.system.__module__}.system" in message and "\n" not in message
    assert main(["model", "convert", str(run), str(project / "out")]) == 1
    assert "was not unpickled" in capsys.readouterr().err
    assert not marker.exists() and not (project / "out").exists()


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape", "unprefixed", "untied"])
def test_layout_mismatches_are_one_sentence_each(project, change):
    trained = posttrained()
    module = module_entry(trained)
    if change == "missing":
        del module["model.dit.layers.1.adaln_table"]
    elif change == "unexpected":
        module["model.dit.sink.weight"] = torch.zeros(1, 128, dtype=torch.bfloat16)
    elif change == "shape":
        module["model.t_projector.layers.0.bias"] = torch.zeros(7, dtype=torch.bfloat16)
    elif change == "unprefixed":
        module["sink.weight"] = module.pop("model.sink.weight")
    else:  # lm_head no longer the input embeddings, which the config ties to it
        module["model.vlm.lm_head.weight"] = module["model.vlm.lm_head.weight"] + 1
    run = write_run(project, trained, aloha_stats(T), states=model_states(module))
    expected = {"missing": "missing dit.layers.1.adaln_table", "unexpected": "unexpected dit.sink.weight",
                "shape": r"t_projector.layers.0.bias has shape \(7,\), the model expects \(768,\)",
                "unprefixed": "module entry 'sink.weight' lacks the 'model.' prefix",
                "untied": "vlm.lm_head.weight differs from vlm.model.language_model.embed_tokens.weight"}[change]  # fmt: skip
    with pytest.raises(CheckpointError, match=expected) as e:
        load_checkpoint(run)
    assert "\n" not in str(e.value)
    assert change in ("unprefixed", "untied") or "does not match the XR0 layout" in str(e.value)


def test_what_is_missing_is_named(project, capsys):
    trained = posttrained()
    run = write_run(project, trained, aloha_stats(T), pretrained="elsewhere/xr0_pretrained.pt")
    with pytest.raises(CheckpointError, match=r"no base with the architecture and tokenizer .* --base"):
        load_checkpoint(run)
    (run / "config.py").unlink()
    with pytest.raises(CheckpointError, match="has neither config.py nor config.yaml"):
        load_checkpoint(run / "last.ckpt")
    bad = aloha_stats(T)
    bad["std"] = bad["std"][:-1]
    (run / "config.py").write_text(mmengine_dump(run_config(bad)))
    with pytest.raises(CheckpointError, match=r"train_datasets.std has shape \(15, 32\)"):
        load_checkpoint(run)
    (run / "config.py").write_text("import os\ndata = dict(mean=os.getcwd())\n")
    with pytest.raises(CheckpointError, match="only literals and dict"):
        load_checkpoint(run)
    zero3 = {k: torch.empty(0, dtype=t.dtype) for k, t in module_entry(trained).items()}
    torch.save(model_states(zero3), run / "last.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt")
    with pytest.raises(PostTrainingError, match="zero_to_fp32"):
        read_model_states(run / "last.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt")
    (project / "empty").mkdir()
    assert main(["model", "convert", str(project / "empty"), str(project / "out")]) == 1
    assert "is neither an official post-training checkpoint" in capsys.readouterr().err
    assert main(["model", "info", str(run)]) == 1
    assert "convert it with `xr0 model convert" in capsys.readouterr().err


# -- as a starting point -------------------------------------------------------------------------------------------
def test_xr0_train_init_from_a_post_training_run(project):
    trained = posttrained()
    run = write_run(project, trained, aloha_stats(T), fmt="yaml")
    store = make_store(project / "s.zarr", lengths=(30, 30))
    out = project / "ft"
    argv = [
        "train", "--dataset", str(store), "--cameras", *CAMS, "--horizon", "8", "--init", str(run),
        "--out", str(out), "--steps", "2", "--batch-size", "4", "--training-repeat", "2", "--max-pixels", "1024",
        "--lr", "1e-3", "--log-every", "1", "--save-every", "0", "--eval-every", "0", "--num-workers", "0",
        "--mode", "frozen-vlm", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    tuned, _ = load_checkpoint(out / "last")
    before, after = trained.state_dict(), tuned.state_dict()
    vlm = [k for k in before if k.startswith("vlm.")]
    assert all(torch.equal(before[k], after[k]) for k in vlm)  # frozen-vlm: the run's VLM, bit for bit
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("dit."))
