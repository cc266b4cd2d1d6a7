"""The thread rule (app/runtime/threads.py): its arithmetic, the config key, and what a command applies."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from app.compose.config import load_config
from app.compose.configload import ConfigError
from app.runtime import threads
from app.runtime.threads import configure_command, configure_threads, decide_threads


@pytest.mark.parametrize(
    ("cpus", "processes", "helpers", "expected"),
    [
        (2, 1, 0, 2),  # `xr0 serve` alone on a 2-core machine
        (2, 1, 2, 1),  # a trainer with 2 loader workers on 2 cores: the measured case (never 0)
        (16, 1, 2, 14),  # … on 16 cores
        (2, 1, 1, 1),  # an in-process policy beside the control loop
        (8, 1, 1, 7),
        (64, 8, 2, 6),  # torchrun, 8 ranks with 2 workers each: (64 − 16) // 8
        (2, 2, 0, 1),  # two gloo ranks on 2 cores
        (3, 2, 0, 1),
    ],
)
def test_auto_shares_the_cpus_left_by_the_helpers(cpus, processes, helpers, expected):
    n, why = decide_threads("auto", cpus=cpus, processes=processes, helpers=helpers)
    assert n == expected and why.startswith(f"auto: {cpus} CPUs")


def test_config_wins_then_the_environment_except_torchrun_s_default():
    assert decide_threads(3, cpus=2, helpers=2, started_with="1") == (3, "runtime.torch_threads")
    assert decide_threads("auto", cpus=16, started_with="4")[0] == 4
    # torchrun sets OMP_NUM_THREADS=1 for every rank on its own: the rule divides the CPUs instead
    assert decide_threads("auto", cpus=16, processes=2, started_with="1", torchrun=True)[0] == 8
    for junk in ("", "0", "two", None):
        assert decide_threads("auto", cpus=4, started_with=junk)[0] == 4


def test_the_config_key_is_validated_with_its_name(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("{}\n")
    assert load_config(f).runtime.torch_threads == "auto"
    f.write_text("runtime: {torch_threads: 2}\n")
    assert load_config(f).runtime.torch_threads == 2
    for bad, message in (
        ("0", "torch_threads must be auto or a whole number"),
        ("many", "runtime.torch_threads"),
    ):
        f.write_text(f"runtime: {{torch_threads: {bad}}}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(f)


def test_configure_sets_torch_and_the_environment_for_children(monkeypatch):
    monkeypatch.setattr(threads, "_STARTED_WITH", None)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    assert configure_threads("test", 1) == 1
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    assert configure_threads("test", "auto") == 2
    assert torch.get_num_threads() == 2 and os.environ["MKL_NUM_THREADS"] == "2"


def test_commands_count_their_helpers(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "_STARTED_WITH", None)
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    config = load_config()  # train.data.num_workers: auto (0 on the CPU, 2 on a GPU)
    assert configure_command("train", argparse.Namespace(num_workers=None, device="cpu"), config) == 8
    train = argparse.Namespace(num_workers=None, device="cuda")
    assert configure_command("train", train, config) == 6
    assert configure_command("train", argparse.Namespace(num_workers=0), config) == 8
    assert configure_command("train", argparse.Namespace(num_workers=2), config) == 6
    assert configure_command("rollout", argparse.Namespace(), config) == 7  # the control loop beside
    assert configure_command("serve", argparse.Namespace(), config) == 8
    assert configure_command("record", argparse.Namespace(), config) is None  # no torch compute
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun, 2 ranks × (1 + 2 workers) on 8 CPUs
    assert configure_command("train", train, config) == 2
