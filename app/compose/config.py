"""The app's configuration: one tree of frozen dataclasses, loaded from config.yaml.

Each part of the tree is defined next to what it configures (the simulator in `drivers.sim`, the safety
layer in `drivers.safety`, …); this module composes them and holds the parts that belong to the app
itself. Only `app/` reads config files; library modules receive the dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from app.compose.configload import ConfigError, build, did_you_mean, load_yaml
from app.runtime.runner import PolicyConfig  # defined beside the runner it configures
from app.runtime.scripted import ScriptedPolicyConfig
from app.runtime.threads import RuntimeConfig
from app.serving.server import ServerConfig
from app.viz.logger import VizConfig  # defined beside the Rerun logger it configures
from drivers.camera import CameraConfig
from drivers.dynamixel.config import ArmConfig
from drivers.joints import CAMERA_NAMES
from drivers.safety import SafetyConfig
from drivers.sim.aloha import SimConfig
from drivers.sim.scripted import ScriptedConfig
from recording.config import RecordingConfig
from xr0.train_config import TrainConfig  # defined beside the trainer it configures

ROBOT_TYPES = ("sim", "aloha", "aloha-emulated")
ARM_NAMES = ("left_leader", "right_leader", "left_follower", "right_follower")
# Where the project lives: relative paths in config.yaml (data root, calibration files) are resolved
# against the directory of the config file that names them.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = PROJECT_ROOT / "config.yaml"


@dataclass(frozen=True)
class RobotConfig:
    # sim: the MuJoCo ALOHA with a scripted teleoperator as leader; aloha: real Dynamixel arms;
    # aloha-emulated: the Dynamixel driver against the built-in bus emulator (no hardware).
    type: Literal["sim", "aloha", "aloha-emulated"] = "sim"
    # The simulator (used when type is sim).
    sim: SimConfig = field(default_factory=SimConfig)
    # The scripted teleoperator that plays the leader arms in the simulator.
    scripted: ScriptedConfig = field(default_factory=ScriptedConfig)
    # The four Dynamixel chains (used when type is aloha): left/right leader and follower.
    arms: dict[str, ArmConfig] = field(default_factory=dict)
    # Limits every command passes through, on every robot type.
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def __post_init__(self) -> None:
        for name in self.arms:
            if name not in ARM_NAMES:
                raise ValueError(
                    f"arms.{name}: unknown arm{did_you_mean(name, ARM_NAMES)}; arms are {', '.join(ARM_NAMES)}"
                )


@dataclass(frozen=True)
class ControlConfig:
    # Control loop rate in Hz: one observation, one action per tick. XR0 is trained at 30 Hz.
    fps: float = 30.0
    # sim only: lockstep runs the loop on a simulated clock as fast as the CPU allows;
    # realtime paces it against the wall clock like the real robot.
    sim_timing: Literal["lockstep", "realtime"] = "lockstep"

    def __post_init__(self) -> None:
        if not 1 <= self.fps <= 1000:
            raise ValueError(f"fps must be between 1 and 1000 Hz, got {self.fps}")


@dataclass(frozen=True)
class PolicySection(PolicyConfig):
    """The config file's `policy` section: the runner's settings (app/runtime/runner.py) and, beside them,
    the two policy sources that have settings of their own."""

    # The built-in scripted chunk policy (simulator only).
    scripted: ScriptedPolicyConfig = field(default_factory=ScriptedPolicyConfig)
    # `xr0 serve` and the client of `ws://` sources.
    server: ServerConfig = field(default_factory=ServerConfig)


def default_cameras() -> dict[str, CameraConfig]:
    """The ALOHA's three cameras at 320×240 (what config.yaml lists; serials are set per lab)."""
    return {
        name: CameraConfig(type="realsense") for name in ("cam_high", "cam_left_wrist", "cam_right_wrist")
    }


@dataclass(frozen=True)
class AppConfig:
    robot: RobotConfig = field(default_factory=RobotConfig)
    # Cameras by name (cam_high, cam_left_wrist, cam_right_wrist, optional cam_low).
    cameras: dict[str, CameraConfig] = field(default_factory=default_cameras)
    control: ControlConfig = field(default_factory=ControlConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    policy: PolicySection = field(default_factory=PolicySection)
    viz: VizConfig = field(default_factory=VizConfig)
    # `xr0 train`: the fine-tuning recipe, data and augmentation (xr0/train_config.py, docs/training.md).
    train: TrainConfig = field(default_factory=TrainConfig)
    # How many threads each computing process uses (app/runtime/threads.py, docs/architecture.md "Threads").
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    # The directory relative paths are resolved against (set by the loader to the config file's folder).
    base_dir: Path = field(default=PROJECT_ROOT, compare=False)

    def __post_init__(self) -> None:
        for name in self.cameras:
            if name not in CAMERA_NAMES:
                raise ValueError(
                    f"cameras.{name}: unknown camera name{did_you_mean(name, CAMERA_NAMES)}; "
                    f"use one of {', '.join(CAMERA_NAMES)}"
                )

    def resolve(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def data_root(self) -> Path:
        return self.resolve(self.recording.root)


def load_config(path: str | Path | None = None, robot: str | None = None) -> AppConfig:
    """Read config.yaml (default: the project's), apply `--robot`, validate everything once."""
    file = Path(path) if path is not None else DEFAULT_CONFIG
    if not file.is_file():
        raise ConfigError(
            f"config file {file} does not exist (pass --config PATH or create it from config.yaml)"
        )
    try:
        data: Any = load_yaml(file.read_text(), str(file)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{file}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of sections (robot, cameras, …)")
    data.pop("base_dir", None)
    try:
        cfg = build(AppConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{file}: {e}") from None
    cfg = replace(cfg, base_dir=file.resolve().parent)
    if robot is not None:
        if robot not in ROBOT_TYPES:
            raise ConfigError(f"--robot {robot!r} is not one of {', '.join(ROBOT_TYPES)}")
        cfg = replace(cfg, robot=replace(cfg.robot, type=robot))
    return cfg
