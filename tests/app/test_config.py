from pathlib import Path

import pytest

from app.compose.config import DEFAULT_CONFIG, AppConfig, load_config
from app.compose.configload import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_default_config_loads_and_is_typed():
    cfg = load_config(DEFAULT_CONFIG)
    assert isinstance(cfg, AppConfig)
    assert cfg.robot.type == "sim"
    assert cfg.control.fps == 30.0
    assert set(cfg.cameras) == {"cam_high", "cam_left_wrist", "cam_right_wrist"}
    assert cfg.robot.arms["left_follower"].shadows == {3: 2, 5: 4}
    assert cfg.data_root == DEFAULT_CONFIG.parent / "datasets"


def test_missing_keys_take_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "control: {fps: 50}\n"))
    assert cfg.control.fps == 50.0
    assert cfg.policy.max_prefix == 6
    assert cfg.data_root == tmp_path / "datasets"


def test_unknown_key_names_file_path_and_suggestion(tmp_path):
    f = write(tmp_path, "robot:\n  safety:\n    max_joint_delta_per_tik: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert str(f) in msg
    assert "robot.safety.max_joint_delta_per_tik" in msg
    assert "did you mean 'max_joint_delta_per_tick'" in msg


def test_unknown_section_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"camreas: unknown key \(did you mean 'cameras'\?\)"):
        load_config(write(tmp_path, "camreas: {}\n"))


def test_wrong_type_names_key_path(tmp_path):
    with pytest.raises(ConfigError, match=r"control\.fps: expected a number, got 'fast'"):
        load_config(write(tmp_path, "control: {fps: fast}\n"))
    with pytest.raises(ConfigError, match=r"cameras\.cam_high\.width: expected a whole number"):
        load_config(write(tmp_path, "cameras: {cam_high: {width: 320.5}}\n"))
    with pytest.raises(
        ConfigError, match=r"robot\.arms\.left_leader\.motor_ids\[1\]: expected a whole number"
    ):
        load_config(write(tmp_path, "robot: {arms: {left_leader: {motor_ids: [1, two]}}}\n"))


def test_literal_choice_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"policy\.mode: 'asynch' is not one of .*did you mean 'async'"):
        load_config(write(tmp_path, "policy: {mode: asynch}\n"))


def test_invalid_values_name_the_section(tmp_path):
    with pytest.raises(ConfigError, match=r"robot\.safety\.max_joint_delta_per_tick must be > 0"):
        load_config(write(tmp_path, "robot: {safety: {max_joint_delta_per_tick: 0}}\n"))
    with pytest.raises(
        ConfigError, match=r"yaml: cameras\.cam_hgh: unknown camera name \(did you mean 'cam_high'"
    ):
        load_config(write(tmp_path, "cameras: {cam_hgh: {}}\n"))
    with pytest.raises(ConfigError, match=r"joint_limits\.left_wrist: unknown joint"):
        load_config(write(tmp_path, "robot: {safety: {joint_limits: {left_wrist: [-1, 1]}}}\n"))
    with pytest.raises(ConfigError, match="motor_ids has 2 entries but motor_models has 1"):
        load_config(
            write(tmp_path, "robot: {arms: {left_leader: {motor_ids: [1, 2], motor_models: [xl430-w250]}}}\n")
        )


def test_robot_override_and_bad_robot(tmp_path):
    f = write(tmp_path, "robot: {type: sim}\n")
    assert load_config(f, robot="aloha").robot.type == "aloha"
    with pytest.raises(ConfigError, match="--robot 'ufo'"):
        load_config(f, robot="ufo")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "robot: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize(
    "text, path",
    [
        ("control: {fps: -3}\n", "control.fps must be"),  # a field's own check
        ("robot: {arms: {left_folower: {port: x}}}\n", "robot.arms.left_folower: unknown arm"),
        ("policy: {server: {port: 70000}}\n", "policy.server.port must be"),  # the section's name
        ("train: {data: {horizon: 1}}\n", "train.data.horizon must be"),  # a path from the top
    ],
)
def test_every_invalid_value_names_the_file_and_the_full_dotted_path(tmp_path, text, path):
    f = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(f"{f}: {path}"), str(e.value)


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    f = write(tmp_path, "control:\n  fps: 30\n  fps: 50\n")
    with pytest.raises(ConfigError, match=r"key 'fps' is given twice \(lines 2 and 3\)"):
        load_config(f)
