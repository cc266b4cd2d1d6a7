"""`xr0 eval` on the real simulator: held-out seeds, stages, the replay rung through the deploy path,
videos that decode, a checkpoint's contract against the rig, and a server that goes away mid-eval."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.cli.evaluation import evaluate_seeds
from app.cli.main import main
from app.compose.config import load_config
from app.runtime.eval import wilson
from app.runtime.replay_policy import ReplayPolicy
from app.serving.server import PolicyServer
from drivers.joints import JOINT_NAMES
from drivers.sim.aloha import EVAL_SEED_START
from recording.reader import EpisodeStore
from xr0.contract import CameraContract, ContractError, DeployContract

SMALL = """
cameras:
  cam_high: {type: sim, width: 64, height: 48}
policy:
  episode_seconds: 9
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(SMALL)
    return p


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """Two scripted demonstrations (seeds 0 and 1) with the small config."""
    d = tmp_path_factory.mktemp("rec")
    cfg = d / "config.yaml"
    cfg.write_text(SMALL)
    store = d / "demo.zarr"
    assert (
        main(["record", "--config", str(cfg), "--robot", "sim", "--dataset", str(store), "--episodes", "2"])
        == 0
    )
    return store


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_wilson_interval():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-3), pytest.approx(0.7634, abs=1e-3))
    lo, hi = wilson(50, 50)
    assert lo == pytest.approx(0.9287, abs=1e-3) and hi == 1.0


def test_recorded_episodes_carry_seed_and_object_start(recorded):
    store = EpisodeStore(recorded)
    infos = [store.info(e) for e in store.episodes]
    assert [i["seed"] for i in infos] == [0, 1]
    assert all(i["success"] and i["max_stage"] == 4 for i in infos)
    assert infos[0]["object_start"] != infos[1]["object_start"] and len(infos[0]["object_start"]) == 3


def test_replay_rung_reproduces_the_demonstrations_and_writes_videos(recorded, config_path, tmp_path, capsys):
    """Rung (a): the recorded actions, served as chunks through the async schedule with its prefix and the
    safety layer, succeed on every recorded seed; the prefixes agree with the recordings exactly."""
    import av

    out = tmp_path / "eval"
    argv = ["eval", "--config", str(config_path), "--policy", f"replay:{recorded}", "--episodes", "5"]
    assert main([*argv, "--jobs", "1", "--videos", "1", "--out", str(out)]) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["ran"] == 2 and summary["successes"] == 2  # the store has two seeds: no more are run
    assert summary["chunks"]["prefix_mismatches"] == 0 and summary["chunks"]["rejected"] == 0
    report = json.loads((out / "eval.json").read_text())
    assert [e["seed"] for e in report["episodes"]] == [0, 1]
    first = report["episodes"][0]
    assert first["stage"] == 4 and first["stage_ticks"] == sorted(first["stage_ticks"])
    with av.open(first["video"]) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == first["ticks"] and frames[0].shape == (48, 64, 3)
    assert (out / "eval.png").stat().st_size > 10_000
    assert report["episodes"][1]["video"] is None


def test_scripted_on_held_out_seeds_over_two_processes(config_path, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "--config", str(config_path), "--policy", "scripted", "--episodes", "2", "--jobs", "2"]
    assert main([*argv, "--videos", "0", "--out", str(out)]) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["successes"] == 2 and summary["stage_rates"]["transfer"] == 1.0
    report = json.loads((out / "eval.json").read_text())
    assert report["seeds"] == [EVAL_SEED_START, EVAL_SEED_START + 1] and report["jobs"] == 2


def tiny_checkpoint(path: Path, cameras=("cam_high",), seeds=(0, 1), fps=30.0, privileged=()) -> Path:
    """A random tiny XR0 saved with a deployment contract (no training needed to test the contract)."""
    from xr0.checkpoint import save_checkpoint
    from xr0.config import variant
    from xr0.contract import stats_digest
    from xr0.model import create_model
    from xr0.policy import XR0_INDEX
    from xr0.processor import XR0Processor

    T = 30
    mean, std = np.zeros((T, 32), np.float32), np.zeros((T, 32), np.float32)
    std[:, list(XR0_INDEX)] = 0.1
    processor = XR0Processor.build({"aloha": {"mean": mean.tolist(), "std": std.tolist()}}, max_pixels=4096)
    model = create_model(replace(variant("tiny"), action_length=T, max_prefix=6), seed=0)
    save_checkpoint(model, processor, path)
    DeployContract(
        robot_type="aloha",
        joint_names=JOINT_NAMES,
        cameras=tuple(CameraContract(c, 48, 64) for c in cameras),
        max_pixels=4096,
        fps=fps,
        chunk_length=T,
        max_prefix=6,
        relative=(True,) * 6 + (False,) + (True,) * 6 + (False,),
        seeds=tuple(seeds),
        privileged=tuple(privileged),
        stats_sha256=stats_digest({"mean": mean, "std": std}),
    ).save(path)
    return path


def test_a_checkpoint_that_does_not_match_the_rig_is_one_sentence(config_path, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", cameras=("cam_high", "cam_left_wrist"))
    argv = ["eval", "--config", str(config_path), "--policy", str(ckpt), "--episodes", "1", "--jobs", "1"]
    assert main([*argv, "--out", str(tmp_path / "e")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cam_left_wrist" in err[0] and "cam_high" in err[0]


def test_training_seeds_are_refused_unless_allowed(config_path, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", seeds=(EVAL_SEED_START, EVAL_SEED_START + 5))
    argv = ["eval", "--config", str(config_path), "--policy", str(ckpt), "--episodes", "1", "--jobs", "1"]
    assert main([*argv, "--out", str(tmp_path / "e")]) == 1
    assert "were used to train" in capsys.readouterr().err
    # a held-out seed runs the (random, untrained) checkpoint: an outcome, whatever it is
    assert (
        main(
            [
                *argv,
                "--seed-start",
                str(EVAL_SEED_START + 1),
                "--out",
                str(tmp_path / "e2"),
                "--episode-seconds",
                "1",
            ]
        )
        == 0
    )
    summary = last_json(capsys.readouterr().out)
    assert summary["ran"] == 1 and summary["chunks"]["used"] >= 1


def test_contract_names_both_sides():
    c = DeployContract(
        robot_type="aloha",
        joint_names=JOINT_NAMES,
        cameras=(CameraContract("cam_high", 240, 320),),
        max_pixels=4096,
        fps=30.0,
        chunk_length=30,
        max_prefix=6,
        relative=(True,) * 14,
    )
    c.check_rig(cameras={"cam_high": (480, 640), "cam_low": (240, 320)}, fps=30.0, joint_names=JOINT_NAMES)
    with pytest.raises(ContractError, match=r"320×240 frames.*640×360"):
        c.check_rig(cameras={"cam_high": (360, 640)}, fps=30.0, joint_names=JOINT_NAMES)
    with pytest.raises(ContractError, match=r"30 Hz.*50 Hz"):
        c.check_rig(cameras={"cam_high": (240, 320)}, fps=50.0, joint_names=JOINT_NAMES)
    with pytest.raises(ContractError, match="joints"):
        c.check_rig(cameras={"cam_high": (240, 320)}, fps=30.0, joint_names=JOINT_NAMES[::-1])
    again = DeployContract.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c


def test_a_server_that_goes_away_fails_the_remaining_episodes_with_the_reason(
    recorded, config_path, tmp_path
):
    config = replace(load_config(config_path, "sim"))
    config = replace(config, policy=replace(config.policy, episode_seconds=3.0))
    server = PolicyServer(ReplayPolicy(recorded), "127.0.0.1", 0)
    server.start()
    results = []

    def emit(r):
        results.append(r)
        if len(results) == 1:
            server.stop()  # after the first episode, the server is gone for good

    try:
        evaluate_seeds(config, server.url, [0, 1, 2], tmp_path, set(), emit)
    finally:
        if not results:
            server.stop()
    assert [r.seed for r in results] == [0, 1, 2]
    assert results[0].reason == "timeout" and results[0].chunks["used"] > 0  # 3 s: not done, but served
    assert results[1].reason.startswith("policy error") and results[1].chunks["used"] == 0
    assert results[2].reason == results[1].reason and results[2].ticks == 0


def test_a_privileged_model_runs_under_eval_only(config_path, tmp_path, capsys):
    """Rung (b): a model that reads where the cube started gets it from the simulator under `xr0 eval`,
    in unused dims of its state; `xr0 rollout` refuses it, with a sentence."""
    from xr0.boundary import PolicyObservation
    from xr0.policy import XR0Policy

    ckpt = tiny_checkpoint(tmp_path / "ckpt", privileged=("object_start",))
    policy = XR0Policy.from_checkpoint(ckpt)
    assert policy.spec.privileged == ("object_start",)
    obs = PolicyObservation({"cam_high": np.zeros((48, 64, 3), np.uint8)}, np.zeros(14), "go", 0)
    with pytest.raises(ValueError, match="object_start"):
        policy.infer(obs, np.zeros((0, 14)))
    a = policy.infer(replace(obs, privileged={"object_start": np.array([0.1, 0.5, 0.05])}), np.zeros((0, 14)))
    b = policy.infer(replace(obs, privileged={"object_start": np.array([0.0, 0.4, 0.05])}), np.zeros((0, 14)))
    assert a.actions.shape == (30, 14) and np.abs(a.actions - b.actions).max() > 1e-6  # it reads the input
    argv = ["--config", str(config_path), "--policy", str(ckpt)]
    assert (
        main(
            [
                "eval",
                *argv,
                "--episodes",
                "1",
                "--jobs",
                "1",
                "--episode-seconds",
                "1",
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    assert last_json(capsys.readouterr().out)["chunks"]["used"] >= 1
    assert main(["rollout", *argv, "--duration", "1s"]) == 1
    assert "simulator-only inputs (object_start)" in capsys.readouterr().err


def test_ctrl_c_writes_the_partial_report(config_path, tmp_path):
    """SIGINT after the first episode: the report holds it, the rest are 'not run: interrupted', exit 130."""
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "app.cli.main", "eval", "--config", str(config_path), "--policy", "scripted"]
    # enough episodes that the signal always lands mid-run (a scripted episode takes ~0.3 s here)
    cmd += ["--episodes", "300", "--jobs", "1", "--videos", "0", "--out", str(out)]
    env = dict(os.environ, MUJOCO_GL="egl", PYTHONUNBUFFERED="1")
    # a shell without job control starts background jobs with SIGINT ignored, and children inherit that:
    # give the command the default disposition a terminal's Ctrl-C meets
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip().startswith("[1/300]"):
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(lines) + rest
    report = json.loads((out / "eval.json").read_text())
    assert report["ended"] == "interrupted"
    reasons = [e["reason"] for e in report["episodes"]]
    assert reasons[0] == "success" and reasons[-1] == "not run: interrupted"
    assert report["totals"]["ran"] >= 1
