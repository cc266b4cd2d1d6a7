"""`torchrun --nproc-per-node 2 -m app train …` on the gloo backend (CPU): DDP (frozen VLM) and FSDP2
(full fine-tune) give the loss curve and weights of one process with the same global batch (including the
async recipe, whose L1 weights are normalised over the global batch)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from app.cli.main import main
from tests.xr0.test_train import ROOT, cli_args
from xr0.train_state import read_jsonl


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from tests.xr0.test_data import make_store

    return make_store(tmp_path_factory.mktemp("dist") / "s.zarr", lengths=(40, 30, 30))


@pytest.fixture(scope="module")
def single(store, tmp_path_factory):
    """One-process reference runs, by training mode."""
    runs = {}

    def run(mode: str):
        if mode not in runs:
            out = tmp_path_factory.mktemp(f"single-{mode}") / "run"
            argv = [*cli_args(store, out, steps=6), "--save-every", "0", "--device", "cpu", "--mode", mode]
            assert main(argv) == 0
            runs[mode] = out
        return runs[mode]

    return run


def losses(run):
    return np.array([r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r])


@pytest.mark.parametrize(("strategy", "mode"), [("ddp", "frozen-vlm"), ("fsdp", "full")])
def test_two_gloo_processes_match_one_process(store, single, tmp_path, strategy, mode):
    out = tmp_path / strategy
    args = [*cli_args(store, out, steps=6), "--save-every", "0", "--device", "cpu", "--strategy", strategy]
    args += ["--mode", mode]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "app",
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = single(mode)
    one, two = losses(reference), losses(out)
    assert len(one) == len(two) == 6
    np.testing.assert_allclose(two, one, rtol=2e-4)
    a = load_file(reference / "last" / "resume" / "trainable.safetensors")
    b = load_file(out / "last" / "resume" / "trainable.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=2e-5)
    info = (out / "last" / "training.json").read_text()
    assert '"world_size": 2' in info and f'"strategy": "{strategy}"' in info
