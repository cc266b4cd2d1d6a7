"""`xr0 rollout`, `xr0 serve` and the runner's benchmarks from the command line, on the real simulator."""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.cli.commands import rollout
from app.cli.main import main
from app.cli.parsing import add_common
from app.compose.config import load_config
from app.errors import UserError
from drivers.sim.aloha import EVAL_SEED_START

ROOT = Path(__file__).resolve().parents[2]
SMALL = """
cameras:
  cam_high: {type: sim, width: 32, height: 24}
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(SMALL)
    return p


def rollout_cli(argv: list[str], config_path: Path) -> int:
    """`xr0 rollout ARGV` through the command's own parser and run()."""
    p = argparse.ArgumentParser()
    add_common(p)
    rollout.add_arguments(p)
    args = p.parse_args(argv)
    return rollout.run(args, load_config(config_path, args.robot))


def test_parse_duration():
    assert rollout.parse_duration("30m") == 1800
    assert rollout.parse_duration("1h30m") == 5400
    assert rollout.parse_duration("90s") == 90
    assert rollout.parse_duration("12.5") == 12.5
    for bad in ("", "5x", "m", "10 minutes"):
        with pytest.raises(UserError, match="--duration"):
            rollout.parse_duration(bad)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_rollout_scripted_prints_a_summary(config_path, tmp_path, capsys, mode):
    summary = tmp_path / "summary.json"
    assert rollout_cli(["--duration", "10s", "--mode", mode, "--summary", str(summary)], config_path) == 0
    out = capsys.readouterr().out
    for text in ("tasks completed", "success rate", "inference latency p50", "delay (ticks", "starvations",
                 "safety", "loop lateness", "longest stall"):  # fmt: skip
        assert text in out, text
    data = json.loads(summary.read_text())
    assert data["mode"] == mode and data["tasks"] >= 1 and data["success_rate"] == 1.0
    assert data["ticks"] == 300 and data["delay_ticks"] == {"3": data["chunks"]["on_time"]}
    assert len(data["tasks_per_minute_bucket"]) == 1
    # Held-out seeds by default (never the recordings' 0, 1, …), and the summary says which.
    seeds = [e["seed"] for e in data["episodes"]]
    assert seeds == list(range(EVAL_SEED_START, EVAL_SEED_START + len(seeds)))
    assert f"seeds: {EVAL_SEED_START}…" in out and "held out" in out
    done = [e for e in data["episodes"] if e["success"]]
    assert done and all(e["max_stage"] == 4 and e["reason"] == "success" for e in done)


def test_rollout_seed_overrides_the_held_out_start(config_path, tmp_path, capsys):
    summary = tmp_path / "summary.json"
    assert rollout_cli(["--duration", "1s", "--seed", "7", "--summary", str(summary)], config_path) == 0
    assert [e["seed"] for e in json.loads(summary.read_text())["episodes"]] == [7]
    assert f"seeds: 7…7 (1 episode; below {EVAL_SEED_START}: not held out)" in capsys.readouterr().out


def test_rollout_policy_sources_fail_clearly(config_path, tmp_path):
    with pytest.raises(UserError, match="no such checkpoint"):
        rollout_cli(["--policy", str(tmp_path / "missing"), "--duration", "1s"], config_path)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with pytest.raises(
        UserError, match=f"--policy {ckpt}: .*config.json"
    ):  # an empty folder is no checkpoint
        rollout_cli(["--policy", str(ckpt), "--duration", "1s"], config_path)
    with pytest.raises(UserError, match="could not reach the policy server"):
        rollout_cli(["--policy", "ws://127.0.0.1:9", "--duration", "1s"], config_path)
    with pytest.raises(UserError, match="cannot create dataset .* does not exist"):
        rollout_cli(["--record", str(tmp_path / "no" / "x.zarr"), "--duration", "1s"], config_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_then_roll_out(config_path, tmp_path, capsys):
    """`xr0 serve --policy hold` in its own process, `xr0 rollout --policy ws://…` against it, then Ctrl-C."""
    port = free_port()
    env = dict(os.environ, XR0_POLICY_TOKEN="t0ken", MUJOCO_GL="egl")
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", "serve", "--config", str(config_path), "--policy", "hold",
         "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert r.read() == b"ok\n"
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("xr0 serve did not come up:\n" + server.stdout.read()) from None
                time.sleep(0.2)
        os.environ["XR0_POLICY_TOKEN"] = "t0ken"
        try:
            summary = tmp_path / "s.json"
            url = f"ws://127.0.0.1:{port}"
            assert (
                rollout_cli(["--policy", url, "--duration", "3s", "--summary", str(summary)], config_path)
                == 0
            )
        finally:
            del os.environ["XR0_POLICY_TOKEN"]
        data = json.loads(summary.read_text())
        assert (
            data["policy"] == url
            and data["chunks"]["on_time"] >= 3
            and data["runner"]["inference_errors"] == 0
        )
    finally:
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=30)
    assert "xr0 serve: hold" in out and "requests answered" in out


def test_serve_refuses_a_remote_policy(config_path, capsys):
    assert main(["serve", "--config", str(config_path), "--policy", "ws://127.0.0.1:1"]) == 1
    assert "serves a local policy" in capsys.readouterr().err


def test_bench_async_prints_json_last(config_path, capsys):
    assert main(["bench", "async", "--config", str(config_path), "--minutes", "0.25"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "async" and set(result["modes"]) == {"async", "sync", "async-naive"}
    assert result["modes"]["async"]["tasks"] >= 1 and result["task_time_ratio"] > 1.05  # sync waits
    assert result["jump_ratio"] > 1.5


def test_bench_loop_prints_json_last(config_path, capsys):
    argv = ["bench", "loop", "--config", str(config_path), "--seconds", "2", "--no-record"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "loop" and {"rate", "sleep"} <= set(result)
    for pacing in ("rate", "sleep"):
        assert result[pacing]["ticks_run"] > 0 and "p99" in result[pacing]["lateness_ms"]
