"""Round trip through the `lerobot` library itself, in its isolated environment.

Record 2 sim episodes → export to LeRobotDataset v3 → load them with lerobot's `LeRobotDataset` and
compare → import back → compare with the original. The first run on a machine builds the LeRobot
environment (~8 GB, ~3 min, cached in ~/.cache/xr0-workstation); later runs take ~40 s.
"""

import numpy as np
import pytest

from app.cli.main import main
from app.interop.lerobot_env import run_bridge
from recording.reader import EpisodeStore

pytestmark = pytest.mark.slow

CONFIG = """
cameras:
  cam_high: {width: 64, height: 48}
  cam_left_wrist: {width: 64, height: 48}
"""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lerobot")
    cfg = tmp / "config.yaml"
    cfg.write_text(CONFIG)
    src = tmp / "sim.zarr"
    argv = ["record", "--config", str(cfg), "--robot", "sim", "--dataset", str(src), "--episodes", "2"]
    assert main([*argv, "--task", "transfer the cube", "--episode-seconds", "4"]) == 0
    return tmp, cfg, src


def lerobot_cli(kind: str, *args: str) -> int:
    """`xr0 dataset export-lerobot|import-lerobot ARGS`, in-process."""
    return main(["dataset", f"{kind}-lerobot", *args])


def test_export_load_with_lerobot_and_import_back(recorded, capsys):
    tmp, cfg, src = recorded
    out = tmp / "lerobot"
    assert (
        lerobot_cli(
            "export", "--config", str(cfg), "--dataset", str(src), "--out", str(out), "--repo-id", "lab/sim"
        )
        == 0
    )
    assert "exported 2 episode(s), 240 frames" in capsys.readouterr().out
    assert (out / "videos").is_dir()  # LeRobot's usual format by default: AV1 videos

    # lerobot's own reader, in its own environment: every state/action value exact (as float32, LeRobot's
    # dtype), images within the AV1 codec's error, the tasks and rate as recorded.
    report = run_bridge(["verify", "--dataset", str(src), "--lerobot", str(out)])
    assert report["episodes"] == 2 and report["frames"] == 240 and report["fps"] == 30
    assert all(v == 0.0 for v in report["vector_max_abs_diff"].values()), report
    assert report["tasks_equal"]
    assert report["image_psnr_db"] > 30.0, report

    back = tmp / "back.zarr"
    assert (
        main(["dataset", "import-lerobot", "--config", str(cfg), "--src", str(out), "--out", str(back)]) == 0
    )
    a, b = EpisodeStore(src), EpisodeStore(back)
    assert b.episodes == a.episodes and b.tasks == a.tasks == ["transfer the cube"] * 2
    for ep in a.episodes:
        for key in ("observation.state", "observation.velocity", "observation.effort", "action"):
            np.testing.assert_array_equal(
                b.get(ep, key), a.get(ep, key).astype(np.float32).astype(np.float64)
            )
        np.testing.assert_array_equal(
            b.get(ep, "timestamp_ns"), a.get(ep, "timestamp_ns")
        )  # real timing kept
        diff = np.abs(
            b.get(ep, "observation.images.cam_high").astype(int)
            - a.get(ep, "observation.images.cam_high").astype(int)
        )
        assert diff.mean() < 3.0
        # what a plain LeRobot round trip loses comes back: the leader's command, the loop's counters,
        # capture times, and the episode's success flag, seed and outcome
        np.testing.assert_array_equal(
            b.get(ep, "leader.action"), a.get(ep, "leader.action").astype(np.float32).astype(np.float64)
        )
        for key in ("lateness_ns", "action.clamped", "action.rejected", "observation.images.cam_high.t_ns"):
            np.testing.assert_array_equal(b.get(ep, key), a.get(ep, key))
        for attr in ("success", "seed", "outcome", "object_start"):
            assert b.info(ep)[attr] == a.info(ep)[attr], attr
        assert b.info(ep)["success"] is not None


def test_bad_paths_and_unrepresentable_features_are_one_sentence(recorded, tmp_path, capsys):
    _, cfg, src = recorded
    assert (
        lerobot_cli(
            "export",
            "--config",
            str(cfg),
            "--dataset",
            str(tmp_path / "nope.zarr"),
            "--out",
            str(tmp_path / "o"),
            "--repo-id",
            "a/b",
        )
        == 1
    )
    assert "does not exist" in capsys.readouterr().err
    assert (
        lerobot_cli("import", "--config", str(cfg), "--src", str(tmp_path), "--out", str(tmp_path / "y.zarr"))
        == 1
    )
    assert "is not a LeRobot dataset (no meta/info.json)" in capsys.readouterr().err
    argv = ["--config", str(cfg), "--dataset", str(src), "--out", str(tmp_path / "o"), "--repo-id", "lab/a b"]
    assert lerobot_cli("export", *argv) == 1
    assert "--repo-id 'lab/a b': the Hub would reject it" in capsys.readouterr().err
