"""A robot PC installs without torch and transformers (README "A robot PC without torch"): teleop, record
and a rollout driven by a policy served elsewhere run with both made unimportable in every process they
start (a `sitecustomize` on PYTHONPATH blocks them, as a venv without them would fail to import them)."""

import os
import subprocess
import sys

import pytest

from app.runtime.scripted import HoldPolicy
from app.serving.server import PolicyServer
from recording.reader import EpisodeStore

BLOCKER = """
import importlib.abc, sys

class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, _NoTorch())
"""


@pytest.fixture
def without_torch(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(site), "MUJOCO_GL": "egl"}

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout
        )

    return run


def test_the_blocker_works(without_torch):
    run = without_torch("-c", "import torch")
    assert run.returncode != 0 and "No module named 'torch'" in run.stderr


def test_teleop_and_record_run_without_torch(without_torch, tmp_path):
    teleop = without_torch("-m", "app", "teleop", "--robot", "sim", "--episode-seconds", "0.5")
    assert teleop.returncode == 0, teleop.stderr[-3000:]
    store = tmp_path / "robot-pc.zarr"
    args = ["--robot", "sim", "--episodes", "1", "--episode-seconds", "0.5", "--dataset", str(store)]
    record = without_torch("-m", "app", "record", *args)
    assert record.returncode == 0, record.stderr[-3000:]
    assert len(EpisodeStore(store).episodes) == 1


def test_a_rollout_of_a_served_policy_runs_without_torch(without_torch, tmp_path):
    server = PolicyServer(HoldPolicy(chunk_length=30, max_prefix=6, fps=30.0), "127.0.0.1", 0)
    server.start()
    try:
        args = ["--robot", "sim", "--policy", server.url, "--duration", "2s", "--summary", "s.json"]
        rollout = without_torch("-m", "app", "rollout", *args)
    finally:
        server.stop()
    assert rollout.returncode == 0, rollout.stderr[-3000:]
    assert (tmp_path / "s.json").exists() and server.served > 0


def test_the_robot_requirements_are_the_project_without_torch():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = (root / "requirements-robot.txt").read_text().splitlines()
    robot = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert robot == [d for d in project if not d.startswith(("torch", "transformers", "peft"))]
