"""Hub sharing without the network: the real huggingface_hub client against an endpoint that refuses
connections (what offline looks like), and everything decided before any upload: repo ids, what is
refused, the model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.errors import UserError
from app.interop.hub import check_repo_id, model_card, push_checkpoint, push_dataset
from tests.app.test_eval import tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def xr0(*argv: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there: the client fails as offline
        "HF_HOME": str(tmp_path / "hf"),
        "HF_TOKEN": "hf_test_token_not_real",
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_repo_ids_the_hub_would_reject_are_refused_before_any_upload():
    assert check_repo_id("lab/cube-policy_v2") == "lab/cube-policy_v2"
    for bad in ("cube-policy", "lab/cube policy", "lab/-cube", "a/b/c"):
        with pytest.raises(UserError, match="--repo-id"):
            check_repo_id(bad)


def test_the_model_card_states_the_deployment_contract(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", cameras=("cam_high", "cam_left_wrist"))
    card = model_card(ckpt, "lab/cube")
    assert "`cam_high` (64×48), `cam_left_wrist` (64×48)" in card
    assert "| control rate | 30 Hz |" in card and "| chunk length / longest prefix | 30 / 6 |" in card
    assert "xr0 model pull --repo-id lab/cube" in card


def test_diagnostic_checkpoints_and_unfinished_stores_are_not_pushed(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "priv", privileged=("object_start",))
    with pytest.raises(UserError, match="privileged simulator inputs"):
        push_checkpoint(ckpt, "lab/cube", api=object())  # refused before the client is used
    with pytest.raises(UserError, match="no config.json"):
        push_checkpoint(tmp_path, "lab/cube", api=object())
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not a Zarr store"):
        push_dataset(tmp_path / "plain", "lab/data", api=object())


def test_offline_push_and_pull_are_one_sentence_each(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    out = xr0("model", "push", "--checkpoint", str(ckpt), "--repo-id", "lab/cube", tmp_path=tmp_path)
    assert out.returncode == 1, out.stderr
    err = out.stderr.strip()
    assert "could not push the checkpoint to lab/cube on the Hugging Face Hub" in err and err.count("\n") == 0
    out = xr0("model", "pull", "--repo-id", "lab/cube", "--out", str(tmp_path / "got"), tmp_path=tmp_path)
    assert out.returncode == 1 and "could not download the checkpoint lab/cube" in out.stderr
    out = xr0(
        "dataset", "pull", "--repo-id", "lab/data", "--dataset", str(tmp_path / "d.zarr"), tmp_path=tmp_path
    )
    assert out.returncode == 1 and "could not download the dataset lab/data" in out.stderr
    assert json.loads((ckpt / "deploy.json").read_text())["format"] == "xr0-deploy"  # nothing was touched
