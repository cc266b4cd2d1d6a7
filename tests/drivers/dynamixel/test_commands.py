"""`xr0 calibrate`, `xr0 teleop --robot aloha-emulated|aloha` and `xr0 bench bus` from the command line."""

import json
from pathlib import Path

import pytest
import yaml

from app.cli.main import main
from app.compose.config import DEFAULT_CONFIG, load_config
from drivers.dynamixel.calibration import Calibration
from drivers.dynamixel.emulated import truth_calibration


@pytest.fixture
def config_file(tmp_path) -> Path:
    """The project's config.yaml, copied (so calibration files land in tmp_path), without cameras."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["cameras"] = {}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_calibrate_emulated_non_interactive_finds_the_assembly(config_file, capsys):
    rc = main(
        [
            "calibrate",
            "--robot",
            "aloha-emulated",
            "--non-interactive",
            "--arm",
            "left_leader",
            "--config",
            str(config_file),
        ]
    )
    assert rc == 0
    path = config_file.parent / "calibration" / "emulated" / "left_leader.json"
    assert f"left_leader: calibration written to {path}" in capsys.readouterr().out
    found = Calibration.load(path)
    arm = load_config(config_file).robot.arms["left_leader"]
    truth = truth_calibration("left_leader", "leader", arm)
    assert (
        found.offset == truth.offset and found.sign == truth.sign and found.gripper_open == truth.gripper_open
    )
    assert not (config_file.parent / "calibration" / "left_leader.json").exists()  # real files untouched


def test_calibrate_refuses_the_simulator(config_file, capsys):
    assert main(["calibrate", "--robot", "sim", "--config", str(config_file)]) == 1
    assert "use --robot aloha" in capsys.readouterr().err


def test_teleop_runs_on_emulated_chains_at_30_hz(config_file, capsys):
    rc = main(["teleop", "--robot", "aloha-emulated", "--episode-seconds", "1", "--config", str(config_file)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "teleop on robot aloha-emulated" in out and "episode 0: 30 ticks" in out


def test_teleop_on_hardware_without_calibration_or_port_says_what_to_do(config_file, capsys):
    assert main(["teleop", "--robot", "aloha", "--episode-seconds", "1", "--config", str(config_file)]) == 1
    err = capsys.readouterr().err
    assert "arm left_follower has no calibration" in err and "xr0 calibrate --arm left_follower" in err
    cfg = load_config(config_file)
    for name, arm in cfg.robot.arms.items():
        truth_calibration(name, "leader" if "leader" in name else "follower", arm).save(
            config_file.parent / arm.calibration
        )
    assert main(["teleop", "--robot", "aloha", "--episode-seconds", "1", "--config", str(config_file)]) == 1
    err = capsys.readouterr().err
    assert "serial port /dev/ttyDXL_follower_left does not exist" in err and "Traceback" not in err


def test_bench_bus_prints_its_summary(config_file, capsys):
    rc = main(
        [
            "bench",
            "bus",
            "--cycles",
            "30",
            "--chains",
            "2",
            "--emulator",
            "thread",
            "--config",
            str(config_file),
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["bench"] == "bus" and summary["motors"] == 9 and summary["baudrate"] == 1_000_000
    assert summary["wire_ms"] == 2.65 and summary["cycle_ms"]["median"] > 0
    assert summary["ratio_to_wire"]["median"] == pytest.approx(summary["cycle_ms"]["median"] / 2.65, abs=0.01)
    assert set(summary["chains_2"]) == {"sequential_ms", "parallel_ms", "cycles"}
