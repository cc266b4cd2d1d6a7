"""Learning on real demonstrations: episodes recorded in the simulator by the scripted teleoperator
(`xr0 record --robot sim`), a `tiny` XR0 trained with `xr0 train` on the CPU. The loss falls clearly,
and the checkpoint, loaded as an `XR0Policy`, returns chunks close to the demonstrated actions on
training observations — closer than the per-timestep mean chunk, which a random model does not beat."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.cli.main import main
from recording.reader import EpisodeStore
from xr0.boundary import PolicyObservation
from xr0.checkpoint import load_checkpoint
from xr0.model import create_model
from xr0.policy import RELATIVE_JOINTS, XR0Policy, XR0PolicyConfig, model_to_robot_actions

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
SMALL = """
cameras:
  cam_high: {type: sim, width: 64, height: 48}
  cam_left_wrist: {type: sim, width: 64, height: 48}
  cam_right_wrist: {type: sim, width: 64, height: 48}
recording: {fsync: false}
"""
REL = np.asarray(RELATIVE_JOINTS)


def chunk_errors(policy: XR0Policy, store: EpisodeStore, episodes) -> dict[str, float]:
    """Mean |chunk − demonstrated actions| (joints rad, grippers) at 12 steps of each episode, and the
    same for the mean chunk of the policy's own statistics."""
    T = policy.spec.chunk_length
    mean = policy.processor.stats["aloha"][0][0].numpy()
    err, base = [], []
    for ep in episodes:
        for t in np.linspace(0, store.length(ep) - T, 12).astype(int):
            images = {c: store.get(ep, f"observation.images.{c}", int(t)) for c in CAMERAS}
            state = store.get(ep, "observation.state", int(t))
            obs = PolicyObservation(
                images=images, state=state, instruction=store.info(ep)["task"], t_ns=int(t)
            )
            truth = store.get(ep, "action")[t : t + T]
            err.append(np.abs(policy.infer(obs, np.zeros((0, 14))).actions - truth))
            base.append(np.abs(model_to_robot_actions(mean, state, REL) - truth))
    e, b = np.stack(err), np.stack(base)
    return {
        "joints": float(e[..., REL].mean()),
        "gripper": float(e[..., ~REL].mean()),
        "mean_joints": float(b[..., REL].mean()),
        "mean_gripper": float(b[..., ~REL].mean()),
    }


@pytest.mark.slow
def test_a_tiny_model_learns_the_scripted_demonstrations(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(SMALL)
    store_path = tmp_path / "cube.zarr"
    rec = [
        "record",
        "--config",
        str(config),
        "--robot",
        "sim",
        "--episodes",
        "3",
        "--dataset",
        str(store_path),
    ]
    assert main(rec) == 0
    run = tmp_path / "run"
    train = [
        "train", "--config", str(config), "--robot", "sim", "--dataset", str(store_path), "--variant", "tiny",
        "--out", str(run), "--steps", "400", "--batch-size", "8", "--lr", "1e-3",
        "--max-pixels", "4096", "--save-every", "200", "--eval-every", "200", "--num-workers", "1", "--no-progress",
    ]  # fmt: skip
    assert main(train) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 400 and summary["loss"]["last_over_first"] < 0.6, summary["loss"]

    store = EpisodeStore(store_path)
    train_episodes = store.episodes[:-1]  # the last one is held out
    trained = chunk_errors(
        XR0Policy.from_checkpoint(run / "last", XR0PolicyConfig(seed=0)), store, train_episodes
    )
    model, processor = load_checkpoint(run / "last")  # a random model with the trained statistics
    random_policy = XR0Policy(create_model(model.config, seed=123), processor, XR0PolicyConfig(seed=0))
    untrained = chunk_errors(random_policy, store, train_episodes)
    print(json.dumps({"trained": trained, "random": untrained}))
    # the trained policy beats the mean chunk clearly; a random model of the same shape does not
    assert trained["joints"] < 0.9 * trained["mean_joints"], trained
    assert trained["gripper"] < 0.6 * trained["mean_gripper"], trained
    assert untrained["joints"] > trained["mean_joints"] and untrained["gripper"] > trained["mean_gripper"], (
        untrained
    )
