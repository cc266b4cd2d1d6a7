"""`xr0 record`, `xr0 replay` and `xr0 dataset …` on the real simulator and real stores."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.cli.main import main
from app.cli.recording import RecordPlan, record
from app.compose.config import load_config
from app.compose.rig import build_rig
from drivers.errors import DeviceError
from drivers.joints import JOINT_NAMES
from recording.integrity import validate
from recording.reader import EpisodeStore, recorded_seeds
from recording.video import psnr

SMALL = """
cameras:
  cam_high: {type: sim, width: 64, height: 48}
  cam_left_wrist: {type: sim, width: 64, height: 48}
recording: {fsync: false}
"""


@pytest.fixture(scope="module")
def small_config(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "config.yaml"
    p.write_text(SMALL)
    return p


@pytest.fixture(scope="module")
def recorded(small_config, tmp_path_factory) -> Path:
    """`xr0 record --robot sim --episodes 2`: two scripted transfer-cube demonstrations."""
    path = tmp_path_factory.mktemp("rec") / "demo.zarr"
    argv = [
        "record",
        "--config",
        str(small_config),
        "--robot",
        "sim",
        "--episodes",
        "2",
        "--dataset",
        str(path),
    ]
    assert main(argv) == 0
    return path


def test_record_in_sim_writes_successful_episodes_with_the_design_attributes(recorded):
    store = EpisodeStore(recorded)
    assert store.episodes == [0, 1] and store.lengths.tolist() == [300, 300]  # 10 s scripted episodes
    assert store.attrs["robot_type"] == "sim" and store.attrs["joint_names"] == list(JOINT_NAMES)
    assert store.attrs["cameras"] == {"cam_high": [48, 64, 3], "cam_left_wrist": [48, 64, 3]}
    assert store.attrs["image_codec"]["name"] == "jpeg" and store.attrs["image_codec"]["jpeg_quality"] == 90
    for ep, seed in ((0, 0), (1, 1)):
        info = store.info(ep)
        assert info["success"] is True and info["success_source"] == "sim" and info["max_stage"] == 4
        assert info["seed"] == seed and info["sim_task"] == "transfer_cube"
        assert info["task"] == "transfer the cube to the other arm"
        assert info["calibration"]["kind"] == "sim" and info["robot_type"] == "sim"
        assert info["rate_ok"] is True and info["loop_rate_hz"] == pytest.approx(30.0)
        assert info["interrupted"] is False and info["outcome"] == "done"
    # Actions are what was sent after safety; the leader's raw command sits beside them with its time.
    action, leader = store.get(0, "action"), store.get(0, "leader.action")
    assert (
        action.shape == (300, 14) and np.abs(action - leader).max() < 0.11
    )  # the scripted moves stay in limits
    ts = store.get(0, "timestamp_ns")
    assert np.all(np.diff(ts) == round(1e9 / 30))  # lockstep: ticks exactly on their deadlines
    assert np.all(store.get(0, "observation.images.cam_high.t_ns") <= store.get(0, "action.t_ns"))
    assert store.get(0, "observation.images.cam_high", 150).shape == (48, 64, 3)


def test_replay_reproduces_the_recorded_episode_in_sim(recorded, small_config, capsys):
    assert (
        main(
            [
                "replay",
                "--config",
                str(small_config),
                "--robot",
                "sim",
                "--dataset",
                str(recorded),
                "--episode",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "300 steps" in out and "result: success (recorded: success)" in out
    assert "largest joint-state difference to the recording: 0.00e+00" in out


def test_dataset_info_validate_stats_view(recorded, small_config, tmp_path, capsys, monkeypatch):
    cfg = ["--config", str(small_config)]
    assert main(["dataset", "info", "--dataset", str(recorded), "--json", *cfg]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 2 and info["steps"] == 600 and info["success"] == {"judged": 2, "succeeded": 2}
    assert info["flagged_low_rate"] == [] and info["bytes_per_minute"] > 0
    assert main(["dataset", "validate", "--dataset", str(recorded), "--deep", *cfg]) == 0
    assert "ok: 2 committed episode(s), 600 steps (deep)" in capsys.readouterr().out
    assert main(["dataset", "stats", "--dataset", str(recorded), *cfg]) == 0
    assert "not stored (--write stores them)" in capsys.readouterr().out
    assert not EpisodeStore(recorded).stats  # printing statistics does not modify the store
    assert main(["dataset", "info", "--dataset", str(recorded), *cfg]) == 0
    assert "statistics" not in capsys.readouterr().out  # not computed: nothing to say (training needs none)
    monkeypatch.setenv("XR0_PROG", "./xr0w")
    assert main(["dataset", "stats", "--dataset", str(recorded), "--write", *cfg]) == 0
    assert EpisodeStore(recorded).stats["relative_action"]["shape"] == [30, 14]
    assert main(["dataset", "info", "--dataset", str(recorded), *cfg]) == 0
    assert "(./xr0w dataset stats --write)" in capsys.readouterr().out  # hints name the command the user ran

    rrd = tmp_path / "view.rrd"
    assert (
        main(["dataset", "view", "--dataset", str(recorded), "--episode", "1", "--rerun", str(rrd), *cfg])
        == 0
    )
    from rerun.chunk import RrdReader

    rows: dict[str, int] = {}
    for chunk in RrdReader(rrd).stream().to_chunks():
        if not chunk.is_static:
            rows[str(chunk.entity_path)] = rows.get(str(chunk.entity_path), 0) + chunk.num_rows
    assert rows["/cameras/cam_high"] == 300 and rows["/arms/left/measured"] == 300
    assert rows["/arms/right/leader"] == 300


def test_dataset_commands_on_bad_paths_are_one_sentence(tmp_path, small_config, capsys):
    (tmp_path / "plain").mkdir()
    for path, expect in (
        (tmp_path / "missing.zarr", "does not exist"),
        (tmp_path / "plain", "not a Zarr store"),
    ):
        for sub in ("info", "validate", "repair", "stats"):
            assert main(["dataset", sub, "--dataset", str(path), "--config", str(small_config)]) == 1
            err = capsys.readouterr().err.strip()
            assert expect in err and err.count("\n") == 0, (sub, err)
    # the earlier positional spelling still works for a release, with a deprecation line
    assert main(["dataset", "info", str(tmp_path / "plain"), "--config", str(small_config)]) == 1
    first, second = capsys.readouterr().err.strip().splitlines()
    assert "positional dataset is deprecated; write --dataset" in first and "not a Zarr store" in second
    assert main(["dataset", "info", "--config", str(small_config)]) == 1
    assert "dataset info needs --dataset PATH|NAME" in capsys.readouterr().err
    assert main(["record", "--config", str(small_config), "--dataset", str(tmp_path / "plain")]) == 1
    assert "not a Zarr store" in capsys.readouterr().err


def test_record_refuses_to_start_without_disk_space_for_the_plan(tmp_path, small_config, capsys):
    argv = ["record", "--config", str(small_config), "--dataset", str(tmp_path / "big.zarr")]
    assert main([*argv, "--episodes", "100000000", "--episode-seconds", "600"]) == 1
    err = capsys.readouterr().err
    assert "not enough disk space for the planned episodes" in err and "GB are free" in err
    assert not (tmp_path / "big.zarr").exists()


class Breaker:
    """A subscriber that breaks the robot at a given tick: a follower arm disconnects (a real DeviceError)."""

    def __init__(self, robot, at_tick: int) -> None:
        self.robot, self.at_tick, self.ticks = robot, at_tick, 0

    def on_step(self, e) -> None:
        self.ticks += 1
        if self.ticks == self.at_tick:
            self.robot.followers["left"].disconnect()

    def on_episode(self, e) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("on_interrupt", ["commit", "discard"])
def test_an_error_in_the_loop_commits_or_discards_the_episode_never_half_writes(tmp_path, on_interrupt):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SMALL.replace("{fsync: false}", f"{{fsync: false, on_interrupt: {on_interrupt}}}"))
    config = load_config(cfg)
    rig = build_rig(config)
    plan = RecordPlan(tmp_path / "e.zarr", "t", episodes=3, seconds=10.0, reset_seconds=0.0)
    with pytest.raises(DeviceError, match="left_follower is not connected"):
        record(config, plan, extra_subscribers=(Breaker(rig.robot, at_tick=340),), rig=rig)
    store = EpisodeStore(tmp_path / "e.zarr")
    assert validate(tmp_path / "e.zarr").ok and store.partial == []
    assert store.info(0)["length"] == 300 and store.info(0)["interrupted"] is False
    if on_interrupt == "commit":
        assert store.episodes == [0, 1]
        info = store.info(1)
        assert info["length"] == 40 and info["interrupted"] is True and info["outcome"] == "error"
    else:
        assert store.episodes == [0]


def test_bench_recorder_prints_its_numbers_as_json_last(tmp_path, small_config, capsys):
    argv = ["bench", "recorder", "--config", str(small_config), "--seconds", "1", "--ab-seconds", "1", "--block-seconds", "0.25",
            "--width", "64", "--height", "48", "--frames", "4", "--read-seconds", "0.3", "--dir", str(tmp_path), "--priority", "off"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "recorder" and result["sustained"]["dropped_steps"] == 0
    assert result["control_thread"] == "normal (off)"
    assert result["throughput"]["x_realtime"] > 0 and result["samples_per_s"] > 0
    assert min(result["psnr_db"].values()) > 30 and result["bytes_per_minute"] > 0
    assert list(tmp_path.iterdir()) == []  # the temporary store is removed


def test_a_store_continues_its_seeds_and_an_explicit_repeat_is_warned(tmp_path, small_config, capsys):
    path = tmp_path / "seeds.zarr"
    argv = ["record", "--config", str(small_config), "--robot", "sim", "--dataset", str(path),
            "--episode-seconds", "0.5"]  # fmt: skip
    assert main([*argv, "--episodes", "2"]) == 0
    assert recorded_seeds(path) == {0, 1}
    assert main([*argv, "--episodes", "3"]) == 0  # a second session appended: continues, repeats nothing
    store = EpisodeStore(path)
    assert [store.info(e)["seed"] for e in store.episodes] == [0, 1, 2, 3, 4]
    assert recorded_seeds(store) == recorded_seeds(path) == {0, 1, 2, 3, 4}
    # Different seeds, different demonstrations (the cube is elsewhere, so is the plan).
    assert np.abs(store.get(0, "leader.action") - store.get(2, "leader.action")).max() > 1e-3
    assert "warning" not in capsys.readouterr().out
    assert main([*argv, "--episodes", "1", "--seed", "3"]) == 0  # asked for: recorded, with a warning
    out = capsys.readouterr().out
    assert "warning: seeds.zarr already holds episodes recorded on seed(s) 3" in out
    assert EpisodeStore(path).info(5)["seed"] == 3
    assert main([*argv, "--episodes", "1", "--seed", "10000"]) == 0
    assert "held out for evaluation" in capsys.readouterr().out
    assert main([*argv, "--episodes", "1"]) == 0  # continues after the highest seed
    assert EpisodeStore(path).info(7)["seed"] == 10001


class DropTheCube:
    """After the hand-over, puts the cube back on the table away from both grippers, and records the stage
    at each tick after: the episode ends at stage 0 though it reached stage 4."""

    def __init__(self, sim, at_tick: int) -> None:
        self.sim, self.at_tick, self.stages_after = sim, at_tick, []

    def on_step(self, e) -> None:
        sim = self.sim
        if e.tick == self.at_tick:
            joint = sim.mj.mj_name2id(sim.model, sim.mj.mjtObj.mjOBJ_JOINT, "red_box_joint")
            adr, dof = sim.model.jnt_qposadr[joint], sim.model.jnt_dofadr[joint]
            sim.data.qpos[adr : adr + 7] = [0.2, 0.4, 0.02, 1.0, 0.0, 0.0, 0.0]
            sim.data.qvel[dof : dof + 6] = 0.0
            sim.mj.mj_forward(sim.model, sim.data)
        if e.tick >= self.at_tick:
            self.stages_after.append(sim.reward())

    def on_episode(self, e) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_recorded_episode_succeeds_if_stage_4_was_reached_at_any_tick(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SMALL)
    config = load_config(cfg)
    rig = build_rig(config)
    drop = DropTheCube(rig.sim, at_tick=285)  # stage 4 from ~7 s on; dropped at 9.5 s of 10
    plan = RecordPlan(tmp_path / "d.zarr", "t", episodes=1, seconds=10.0, reset_seconds=0.0)
    report, _ = record(config, plan, extra_subscribers=(drop,), rig=rig)
    assert drop.stages_after and drop.stages_after[-1] == 0  # not done at the last tick …
    info = EpisodeStore(tmp_path / "d.zarr").info(0)
    assert info["success"] is True and info["max_stage"] == 4  # … but done at some tick: a success
    assert report.episodes[0]["success"] is True


class KillsTheWriter:
    """A subscriber that SIGKILLs the recorder's writer process at one tick (a crash of that process only)."""

    def __init__(self, at_tick: int) -> None:
        self.at_tick = at_tick

    def on_step(self, event) -> None:
        import multiprocessing
        import os
        import signal

        if event.tick == self.at_tick:
            for child in multiprocessing.active_children():
                if child.name == "xr0-recorder-writer":
                    os.kill(child.pid, signal.SIGKILL)

    def on_episode(self, event) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_killed_writer_is_reported_with_what_repair_recovers(tmp_path, capsys):
    from app.cli.commands.record import _print_report
    from recording.integrity import repair

    cfg = tmp_path / "c.yaml"
    cfg.write_text(SMALL)
    config = load_config(cfg)
    path = tmp_path / "k.zarr"
    plan = RecordPlan(path, "t", episodes=2, seconds=4.0, reset_seconds=0.0)
    report, recorder = record(config, plan, extra_subscribers=(KillsTheWriter(at_tick=90),))
    _print_report(path, report, recorder)
    out = capsys.readouterr()
    attempt = report.episodes[0]
    assert not attempt["kept"] and attempt["status"] == "not confirmed" and attempt["on_disk_steps"] > 0
    assert "discarded" not in out.out  # it was not: its steps are on disk
    assert f"{attempt['on_disk_steps']} steps reached the disk and `dataset repair` recovers them" in out.out
    assert f"{attempt['on_disk_steps']} steps had reached the disk" in out.out
    repair(path, fsync=False)
    store = EpisodeStore(path)
    assert store.episodes == [0] and store.info(0)["length"] >= attempt["on_disk_steps"]


def test_dataset_compact_then_every_reader_uses_the_archive(recorded, small_config, tmp_path, capsys):
    cfg = ["--config", str(small_config)]
    path = tmp_path / "archived.zarr"
    shutil.copytree(recorded, path)
    assert main(["dataset", "compact", "--dataset", str(path), "--crf", "99", *cfg]) != 0
    assert "dataset compact: av1 crf must be 0..63, got 99" in capsys.readouterr().err
    assert (
        main(["dataset", "compact", "--dataset", str(path), "--episodes", "1", "--preset", "10", *cfg]) == 0
    )
    out = capsys.readouterr().out
    assert "compacted 1 episode(s) to av1 crf 24" in out and "PSNR (worst episode) cam_high" in out
    assert main(["dataset", "info", "--dataset", str(path), "--json", *cfg]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tiers"] == {"live": 1, "archive": 1}
    codecs = info["per_camera"]["cam_high"]["codecs"]
    assert codecs == {"jpeg q90": 1, "av1 crf 24 (30-frame segments)": 1}
    assert main(["dataset", "compact", "--dataset", str(path), "--fast", *cfg]) == 0  # the other episode
    assert "compacted 1 episode(s) to h264 crf 18" in capsys.readouterr().out
    assert main(["dataset", "validate", "--dataset", str(path), "--deep", *cfg]) == 0
    assert (
        psnr(
            EpisodeStore(path).get(0, "observation.images.cam_high"),
            EpisodeStore(recorded).get(0, "observation.images.cam_high"),
        )
        > 35
    )
    original, archived = EpisodeStore(recorded), EpisodeStore(path)
    frames = archived.get(1, "observation.images.cam_high")
    assert psnr(frames, original.get(1, "observation.images.cam_high")) > 35
    assert np.array_equal(archived.get(1, "action"), original.get(1, "action"))
    argv = ["replay", *cfg, "--robot", "sim", "--dataset", str(path), "--episode", "1"]
    assert main(argv) == 0
    assert "largest joint-state difference to the recording: 0.00e+00" in capsys.readouterr().out
