"""The command line, run in-process through `app.cli.main.main` on the real simulator."""

import json
from pathlib import Path

import numpy as np
import pytest

from app.cli.commands.bench import BENCHES
from app.cli.main import COMMANDS, main

ALL_COMMANDS = [
    "doctor", "cameras", "teleop", "record", "replay", "dataset", "train", "serve",
    "rollout", "eval", "calibrate", "bench", "model", "demo",
]  # fmt: skip

SMALL = """
cameras:
  cam_high: {width: 64, height: 48}
  cam_left_wrist: {width: 64, height: 48}
"""


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(SMALL)
    return p


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ALL_COMMANDS:
        assert name in out
    assert set(COMMANDS) == set(ALL_COMMANDS)  # DESIGN.md §9: exactly the product's command names


def test_version_names_the_commit_and_the_libraries_a_bug_report_needs(capsys):
    import subprocess

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    assert lines[0].startswith("xr0-workstation 0.1.0 (git ") and commit and commit in lines[0]
    names = {line.split()[0] for line in lines[1:]}
    assert {"python", "torch", "transformers", "zarr", "rerun-sdk", "mujoco"} <= names


def test_every_benchmark_of_the_design_is_there():
    assert set(BENCHES) == {
        "sim",
        "bus",
        "cameras",
        "loop",
        "recorder",
        "loader",
        "train",
        "inference",
        "async",
        "server",
        "serve",
        "soak",
        "codecs",
    }


def test_bad_config_is_one_sentence_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("control:\n  fsp: 30\n")
    assert main(["teleop", "--config", str(bad)]) == 2  # a usage error, as argparse's own
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert str(bad) in err and "control.fsp" in err and "did you mean 'fps'" in err


def test_real_robot_without_its_arms_configured_is_one_sentence(small_config, capsys):
    assert main(["teleop", "--config", str(small_config), "--robot", "aloha"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("xr0 teleop: error:") and "robot.arms" in err and "\n" not in err


def test_bad_rerun_sink_names_the_option(small_config, capsys):
    assert main(["teleop", "--config", str(small_config), "--rerun", "web:abc"]) == 1
    assert "web viewer port must be a number" in capsys.readouterr().err


def test_teleop_in_sim_succeeds_and_writes_a_readable_rrd(small_config, tmp_path, capsys):
    rrd = tmp_path / "teleop.rrd"
    assert main(["teleop", "--config", str(small_config), "--robot", "sim", "--rerun", str(rrd)]) == 0
    out = capsys.readouterr().out
    assert "success rate: 100%" in out

    from rerun.chunk import RrdReader

    rows: dict[str, int] = {}
    for chunk in RrdReader(rrd).stream().to_chunks():
        if chunk.is_static:  # series names and other once-only data
            continue
        rows[str(chunk.entity_path)] = rows.get(str(chunk.entity_path), 0) + chunk.num_rows
    ticks = 300  # the scripted episode: 10 s at 30 Hz
    assert rows["/cameras/cam_high"] == ticks
    assert rows["/cameras/cam_left_wrist"] == ticks
    assert "/cameras/cam_right_wrist" not in rows  # only configured cameras are rendered
    assert rows["/arms/left/measured"] == ticks and rows["/arms/right/sent"] == ticks


@pytest.mark.slow
def test_demo_quick_runs_the_whole_loop_twice_and_its_report_matches_the_artefacts(
    small_config, tmp_path, capsys
):
    out_dir, dataset = tmp_path / "demo", tmp_path / "demo.zarr"
    argv = [
        "demo",
        "--quick",
        "--config",
        str(small_config),
        "--out",
        str(out_dir),
        "--dataset",
        str(dataset),
    ]
    assert main([*argv, "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    report = json.loads((out_dir / "report.json").read_text())
    from recording.reader import EpisodeStore

    store = EpisodeStore(dataset)
    assert report["record"]["episodes"] == len(store.episodes) == 2
    assert report["record"]["successes"] == 2  # the scripted demonstrations succeed
    assert report["train"]["summary"]["steps"] == 20 and report["train"]["summary"]["stop"] == "steps"
    deploy = json.loads((out_dir / "train" / "last" / "deploy.json").read_text())
    assert store.image_keys == ["observation.images.cam_high"]  # the quick recipe: the top camera only
    assert [c["name"] for c in deploy["cameras"]] == ["cam_high"]  # trained on it, and says so
    rows = report["eval"]["rows"]
    assert list(rows) == ["learned (tiny XR0)", "scripted demonstrator", "random policy"]
    assert rows["scripted demonstrator"]["ran"] == 2
    assert all(r["episodes"] == 2 for r in rows.values())
    assert (out_dir / "eval" / "eval.json").exists() and list((out_dir / "eval" / "videos").glob("*.mp4"))
    assert "closed-loop on 2 held-out seeds" in out and "random policy" in out
    # again: the store, the finished run and the baselines are reused; nothing fails
    assert main([*argv, "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "reusing the finished training run" in out and "reusing" in out.split("(b)")[0]
    assert json.loads((out_dir / "report.json").read_text())["train"].get("reused") is True


@pytest.mark.slow
def test_demo_records_in_two_processes_the_store_one_process_records(
    small_config, tmp_path, monkeypatch, capsys
):
    from app.cli.commands import demo
    from recording.integrity import validate
    from recording.reader import EpisodeStore

    monkeypatch.setattr(demo, "EPISODES_PER_PROCESS", 1)  # two demonstrations are enough to split
    stores = {}
    for jobs in (2, 1):
        stores[jobs] = path = tmp_path / f"jobs{jobs}" / "demo.zarr"
        path.parent.mkdir()
        argv = ["demo", "--quick", "--episodes", "2", "--jobs", str(jobs), "--skip-train", "--skip-eval"]
        assert (
            main([*argv, "--config", str(small_config), "--out", str(path.parent), "--dataset", str(path)])
            == 0
        )
    assert "in 2 processes" in capsys.readouterr().out
    split, single = EpisodeStore(stores[2]), EpisodeStore(stores[1])
    assert split.episodes == single.episodes == [0, 1]
    assert [split.info(e)["seed"] for e in (0, 1)] == [0, 1] and split.info(1)["index"] == 1
    for e in (0, 1):  # the same seeds give the same demonstrations (another seed moves them by centimetres)
        np.testing.assert_allclose(split.get(e, "action"), single.get(e, "action"), rtol=0, atol=1e-9)
    assert validate(stores[2]).ok
    assert sorted(p.name for p in stores[2].parent.iterdir()) == [
        "demo.zarr",
        "report.json",
    ]  # no side store left


def test_demo_takes_in_the_side_stores_an_interrupted_demo_left(small_config, tmp_path, capsys):
    from app.cli.commands.demo import record_stage
    from app.compose.config import load_config
    from recording.reader import EpisodeStore
    from tests.xr0.test_data import make_store

    config = load_config(small_config)
    make_store(tmp_path / "demo.zarr", lengths=(5, 6))
    side = make_store(tmp_path / "demo.side1.zarr", lengths=(7,), seed=1)
    report = record_stage(config, tmp_path / "demo.zarr", 3)  # enough once the side store is in: no recording
    assert report["episodes"] == 3 and "reusing" in capsys.readouterr().out and not side.exists()
    assert EpisodeStore(tmp_path / "demo.zarr").lengths.tolist() == [5, 6, 7]
    # the main store never started: the side store becomes it
    side = make_store(tmp_path / "other.side1.zarr", lengths=(4,))
    assert record_stage(config, tmp_path / "other.zarr", 1)["episodes"] == 1 and not side.exists()


def test_demo_refuses_a_store_of_other_cameras_naming_both(small_config, tmp_path, capsys):
    from tests.xr0.test_data import make_store

    dataset = make_store(tmp_path / "two.zarr", lengths=(10,), cameras=("cam_high", "cam_left_wrist"))
    argv = ["demo", "--quick", "--config", str(small_config), "--dataset", str(dataset)]
    assert main([*argv, "--out", str(tmp_path / "demo"), "--skip-train", "--skip-eval"]) != 0
    err = capsys.readouterr().err
    assert "holds the cameras cam_high, cam_left_wrist; this demo records cam_high" in err


def test_doctor_runs_and_prints_one_line_per_check(small_config, capsys):
    code = main(["doctor", "--config", str(small_config)])
    out = capsys.readouterr().out
    assert code in (0, 1)
    assert "egl-render" in out and "disk" in out and "pkg mujoco" in out


def test_bench_cameras_prints_one_json_line_last(small_config, capsys):
    pytest.importorskip("pyrealsense2")
    argv = ["bench", "cameras", "--config", str(small_config), "--seconds", "0.5", "--cameras", "2"]
    assert main([*argv, "--width", "64", "--height", "48"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "cameras" and result["frames_delivered"] == result["frames_injected"] > 0
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]


def test_cameras_lists_devices_and_flags_configured_ones_that_are_missing(tmp_path, capsys):
    pytest.importorskip("pyrealsense2")
    cfg = tmp_path / "config.yaml"
    cfg.write_text("cameras:\n  cam_high: {type: realsense, serial: '111122223333'}\n")
    assert main(["cameras", "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "RealSense cameras connected: 0" in out
    assert "111122223333  configured as cam_high but NOT connected" in out


def test_help_shows_defaults_and_record_lists_its_keys(capsys):
    with pytest.raises(SystemExit):
        main(["record", "--help"])
    out = capsys.readouterr().out
    assert "episodes to keep (default: 1)" in out
    assert "→/n next" in out and "Esc/q quit" in out  # the recording keys, before anyone presses one
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "(default: None)" not in capsys.readouterr().out  # no default is better than a wrong-looking one


@pytest.mark.parametrize(
    "argv, mode",
    [
        ([], "full"),  # config.yaml: auto, init tiny → a new model trains everything
        (["--init", "runs/x/last"], "frozen-vlm"),  # auto decided again for the checkpoint given here
        (["--init", "runs/x/last", "--mode", "full"], "full"),
        (["--variant", "tiny"], "full"),
    ],
)
def test_train_mode_auto_follows_the_init_given_on_the_command_line(small_config, argv, mode):
    import argparse

    from app.cli.commands.train import add_arguments, train_config
    from app.compose.config import load_config

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--dataset", "d.zarr", *argv])
    assert train_config(args, load_config(small_config)).mode == mode
