"""The simulated bimanual ALOHA in MuJoCo, on the ViperX 300 scenes that the `gym-aloha` package ships.

Follower arms take 14-wide joint targets; cameras render offscreen (EGL) on demand at the size configured
for them. Physics is integrated lazily up to the time of the clock the sim was given, so the same control
loop runs in lockstep with a `SimClock` (as fast as the CPU allows) or against the wall clock.

Compatible with gym-aloha (and so with ACT's and LeRobot's ALOHA sim data, policies and numbers):

- **Gripper**: the 0..1 fraction is gym-aloha's normalised follower ("puppet") gripper position: 0 = the
  left finger's slide at `PUPPET_GRIPPER_POSITION_CLOSE` (0.01844 m), 1 = `PUPPET_GRIPPER_POSITION_OPEN`
  (0.05800 m), linear in between, for commands and measurements alike (`gripper_to_finger`,
  `finger_to_gripper`). The finger actuators only reach 0.021…0.057 m (their ctrlrange, which MuJoCo
  clamps commands to), so a command below 0.066 is "fully closed", one above 0.975 "fully open", and the
  measured fraction of the open gripper is ~0.975, of a gripper closed on nothing ~0.066.
- **Task stages** 0..4 are gym-aloha's `get_reward` (`task_stage`); an episode succeeds once stage 4 was
  reached at any tick (`StageTracker`), as gym-aloha terminates there and LeRobot's eval counts it.

Rendering is the budget on a CPU (Mesa's software EGL): the assets ask for 4096² shadow maps and
reflections, which cost ~8x per frame; we turn them off by default and reuse one renderer per size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from drivers.clock import NS_PER_S, Clock
from drivers.errors import DependencyMissing, DeviceError
from drivers.joints import ARM_DOF, ARM_JOINTS, SIDES, STATE_DIM, side_slice

log = logging.getLogger(__name__)

TASKS = ("transfer_cube", "insertion")
# Our camera names -> the cameras in gym-aloha's scene.
SIM_CAMERAS: dict[str, str] = {
    "cam_high": "top",
    "cam_left_wrist": "left_wrist",
    "cam_right_wrist": "right_wrist",
    "cam_low": "angle",
}
# The joint pose the arms start an episode in (rad; the ALOHA "sleep-ready" pose), and the open gripper.
START_ARM_POSE = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0])
START_GRIPPER = 1.0
MAX_REWARD = 4  # the task stage that means "done" (gym-aloha's max_reward)
# Seeds from here on are held out for evaluation (rollout, eval, the demo): recordings start at
# `robot.sim.seed` (0) and each store continues upwards, so demonstrations and evaluations never share one.
EVAL_SEED_START = 10_000
# Each task's stages by number (gym-aloha's reward 1..4), for reports and plots.
STAGE_NAMES = {
    "transfer_cube": ("touch", "lift", "hand-over", "transfer"),
    "insertion": ("grasp both", "lift both", "peg in socket", "insert"),
}
# gym-aloha's normalisation of the follower ("puppet") gripper: the left finger's slide, m, at fraction 0
# and 1 (gym_aloha/constants.py PUPPET_GRIPPER_POSITION_CLOSE / _OPEN, the same as ACT's constants.py).
PUPPET_GRIPPER_POSITION_CLOSE = 0.01844
PUPPET_GRIPPER_POSITION_OPEN = 0.05800
_GRIPPER_SPAN_M = PUPPET_GRIPPER_POSITION_OPEN - PUPPET_GRIPPER_POSITION_CLOSE


def gripper_to_finger(fraction: float) -> float:
    """The left finger's slide target, m, for a gripper fraction (gym-aloha's
    `unnormalize_puppet_gripper_position`); not clipped: the actuator's ctrlrange limits it."""
    return PUPPET_GRIPPER_POSITION_CLOSE + float(fraction) * _GRIPPER_SPAN_M


def finger_to_gripper(position_m: float) -> float:
    """The gripper fraction of a left-finger slide position, m (gym-aloha's
    `normalize_puppet_gripper_position`); the finger's range maps to about 0.066…0.975."""
    return (float(position_m) - PUPPET_GRIPPER_POSITION_CLOSE) / _GRIPPER_SPAN_M


def task_stage(task: str, contacts: set[tuple[str, str]]) -> int:
    """The task stage 0..4 (4 = done) from the contacts, as gym-aloha's `get_reward` defines it
    (gym_aloha/tasks/sim.py, from ACT's sim_env.py); `contacts` holds (geom1, geom2) name pairs.

    Like gym-aloha it tests ordered pairs and one finger per gripper: the right gripper is its
    `10_right_gripper_finger`, the left gripper its `10_left_gripper_finger`. (MuJoCo reports these pairs in
    this order — the object's box geom before a finger's or the table's mesh, the peg before the socket.)

    transfer_cube: 1 the right finger touches the cube; 2 … and the cube is off the table; 3 the left
    finger touches the cube; 4 … and the cube is off the table.
    insertion: 1 the left finger touches a socket wall and the right finger the peg; 2 … and neither is
    on the table; 3 the peg touches a socket wall, neither on the table; 4 the peg touches the pin."""
    if task == "transfer_cube":
        right = ("red_box", "vx300s_right/10_right_gripper_finger") in contacts
        left = ("red_box", "vx300s_left/10_left_gripper_finger") in contacts
        table = ("red_box", "table") in contacts
        stage = 0
        if right:
            stage = 1
        if right and not table:
            stage = 2  # lifted by the right arm
        if left:
            stage = 3  # attempted transfer
        if left and not table:
            stage = 4  # successful transfer
        return stage
    if task != "insertion":
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    sockets = [f"socket-{i}" for i in range(1, 5)]
    right = ("red_peg", "vx300s_right/10_right_gripper_finger") in contacts
    left = any((s, "vx300s_left/10_left_gripper_finger") in contacts for s in sockets)
    peg_table = ("red_peg", "table") in contacts
    socket_table = any((s, "table") in contacts for s in sockets)
    peg_socket = any(("red_peg", s) in contacts for s in sockets)
    stage = 0
    if left and right:
        stage = 1  # touch both
    if left and right and not peg_table and not socket_table:
        stage = 2  # grasp both
    if peg_socket and not peg_table and not socket_table:
        stage = 3  # peg and socket touching
    if ("red_peg", "pin") in contacts:
        stage = 4  # successful insertion
    return stage


@dataclass(frozen=True)
class SimConfig:
    # Scene: transfer_cube (right arm picks the cube, hands it to the left) or insertion (peg into socket).
    task: Literal["transfer_cube", "insertion"] = "transfer_cube"
    # Seed of the first episode's object poses; each later reset uses the next seed.
    seed: int = 0
    # Physics step in seconds (gym-aloha uses 0.002). Smaller is more accurate and slower.
    physics_timestep_s: float = 0.002
    # Shadows and reflections look nicer but cost ~8x per frame with software rendering.
    fancy_rendering: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not 0 < self.physics_timestep_s <= 0.01:
            raise ValueError("physics_timestep_s must be in (0, 0.01] s")


def assets_dir() -> Path:
    try:
        import gym_aloha
    except ImportError as e:
        raise DependencyMissing(
            "the simulator needs the gym-aloha package for its robot assets: pip install gym-aloha"
        ) from e
    return Path(gym_aloha.__file__).parent / "assets"


def _mujoco():
    try:
        import mujoco
    except ImportError as e:
        raise DependencyMissing("the simulator needs MuJoCo: pip install 'mujoco<3.9'") from e
    return mujoco


class AlohaSim:
    """One MuJoCo world: two ViperX follower arms and the task's objects."""

    def __init__(self, config: SimConfig, clock: Clock) -> None:
        mujoco = _mujoco()
        self.mj = mujoco
        self.config = config
        self.clock = clock
        xml = assets_dir() / f"bimanual_viperx_{config.task}.xml"
        try:
            self.model = mujoco.MjModel.from_xml_path(str(xml))
        except Exception as e:
            raise DeviceError(f"could not load the simulator scene {xml}: {e}") from e
        m = self.model
        m.opt.timestep = config.physics_timestep_s
        if not config.fancy_rendering:
            m.vis.quality.shadowsize = 0
            m.vis.quality.offsamples = 0  # no multisampling: 4x MSAA costs ~2.5x per frame in software
            m.light_castshadow[:] = 0
        self.data = mujoco.MjData(m)

        def jid(name: str) -> int:
            return mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)

        def aid_of_joint(j: int) -> int:
            return int(np.flatnonzero(m.actuator_trnid[:, 0] == j)[0])

        self._qpos = {}  # side -> qpos addresses of the 6 arm joints and the left finger
        self._qvel = {}
        self._act = {}  # side -> actuator ids: 6 arm joints, left finger, right finger
        for side in SIDES:
            names = [f"vx300s_{side}/{j}" for j in ARM_JOINTS] + [f"vx300s_{side}/left_finger"]
            ids = [jid(n) for n in names]
            self._qpos[side] = np.array([m.jnt_qposadr[j] for j in ids])
            self._qvel[side] = np.array([m.jnt_dofadr[j] for j in ids])
            self._act[side] = np.array(
                [aid_of_joint(j) for j in ids] + [aid_of_joint(jid(f"vx300s_{side}/right_finger"))]
            )
        lo, hi = m.actuator_ctrlrange[self._act["left"][ARM_DOF - 1]]
        self.finger_range = (float(lo), float(hi))  # left-finger actuator's reach, m: closed … open
        self._limits = np.zeros((STATE_DIM, 2))
        for side in SIDES:
            ids = [jid(f"vx300s_{side}/{j}") for j in ARM_JOINTS]
            self._limits[side_slice(side)] = np.vstack([m.jnt_range[ids], [0.0, 1.0]])
        self._objects = self._object_joints()
        self._geom_names = {  # the geoms the task stages look at: id -> name
            mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, name): name for name in self._contact_geoms()
        }
        self._renderers: dict[tuple[int, int], object] = {}
        self._frame_cache: dict[tuple[str, int, int], np.ndarray] = {}
        self._cache_step = -1
        self.seed = config.seed
        self.episode = -1
        self._t0_ns = 0
        self._steps = 0
        self.reset(config.seed)

    # -- episode -----------------------------------------------------------------------------------------
    def _object_joints(self) -> list[str]:
        return (
            ["red_box_joint"]
            if self.config.task == "transfer_cube"
            else ["red_peg_joint", "blue_socket_joint"]
        )

    def _contact_geoms(self) -> list[str]:
        fingers = [f"vx300s_{s}/10_{f}_gripper_finger" for s in SIDES for f in ("left", "right")]
        if self.config.task == "transfer_cube":
            return ["red_box", "table", *fingers]
        return ["red_peg", "pin", "table", *[f"socket-{i}" for i in range(1, 5)], *fingers]

    def sample_object_poses(self, seed: int) -> dict[str, np.ndarray]:
        """Object positions (x, y, z) for an episode seed; the same seed gives the same poses."""
        rng = np.random.default_rng(seed)
        if self.config.task == "transfer_cube":
            return {"red_box_joint": np.array([rng.uniform(0.0, 0.2), rng.uniform(0.4, 0.6), 0.05])}
        return {
            "red_peg_joint": np.array([rng.uniform(0.1, 0.2), rng.uniform(0.4, 0.6), 0.05]),
            "blue_socket_joint": np.array([rng.uniform(-0.2, -0.1), rng.uniform(0.4, 0.6), 0.05]),
        }

    def object_start(self) -> np.ndarray:
        """Where the (first) object was placed at this episode's reset: (x, y, z), m. Privileged: for the
        recorder's episode attributes and diagnostic policies, never a deployed one's input."""
        return next(iter(self.sample_object_poses(self.seed).values()))[:3].copy()

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode: arms in the start pose, objects placed from `seed` (default: next seed)."""
        mj, m, d = self.mj, self.model, self.data
        self.seed = (
            self.seed + 1 if seed is None and self.episode >= 0 else (self.seed if seed is None else seed)
        )
        mj.mj_resetData(m, d)
        start = np.concatenate([START_ARM_POSE, [START_GRIPPER]])
        finger = float(np.clip(gripper_to_finger(START_GRIPPER), *self.finger_range))  # as far as it opens
        for side in SIDES:
            d.qpos[self._qpos[side]] = np.concatenate([START_ARM_POSE, [finger]])
            d.qpos[self._qpos[side][-1] + 1] = -finger
            self._write_ctrl(side, start)
        for name, pos in self.sample_object_poses(self.seed).items():
            adr = m.jnt_qposadr[mj.mj_name2id(m, mj.mjtObj.mjOBJ_JOINT, name)]
            d.qpos[adr : adr + 7] = np.concatenate([pos, [1.0, 0.0, 0.0, 0.0]])
        mj.mj_forward(m, d)
        self.episode += 1
        self._t0_ns = self.clock.now_ns()
        self._steps = 0
        self._frame_cache.clear()

    # -- time ----------------------------------------------------------------------------------------------
    @property
    def time_s(self) -> float:
        """Simulated time since the episode's reset, s."""
        return self._steps * self.model.opt.timestep

    def sync(self) -> None:
        """Integrate physics up to the clock's current time (no-op if it is already there)."""
        target = (self.clock.now_ns() - self._t0_ns) / NS_PER_S
        n = int(target / self.model.opt.timestep + 1e-9) - self._steps
        for _ in range(max(0, n)):
            self.mj.mj_step(self.model, self.data)
        if n > 0:
            self._steps += n

    def capture_ns(self) -> int:
        """Clock time of the physics state now in `data` (what a sample taken now shows)."""
        return self._t0_ns + round(self._steps * self.model.opt.timestep * NS_PER_S)

    # -- arms ------------------------------------------------------------------------------------------------
    def _write_ctrl(self, side: str, target: np.ndarray) -> None:
        ids = self._act[side]
        self.data.ctrl[ids[:6]] = target[:6]
        finger = gripper_to_finger(target[6])  # MuJoCo clamps it to the finger actuators' ctrlrange
        self.data.ctrl[ids[6]] = finger
        self.data.ctrl[ids[7]] = -finger

    def set_targets(self, side: str, target: np.ndarray) -> None:
        """Joint targets for one arm: (7,) rad ×6 + gripper fraction."""
        target = np.asarray(target, dtype=np.float64)
        if target.shape != (ARM_DOF,):
            raise ValueError(f"a {side} arm target must have shape ({ARM_DOF},), got {target.shape}")
        self.sync()
        self._write_ctrl(side, target)

    def joint_state(self, side: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Measured position, velocity and actuator force of one arm (gripper as gym-aloha's fraction, which
        the finger's range keeps within about 0.066…0.975; velocity in fractions per s)."""
        self.sync()
        pos = self.data.qpos[self._qpos[side]].copy()
        vel = self.data.qvel[self._qvel[side]].copy()
        pos[6] = finger_to_gripper(pos[6])
        vel[6] = vel[6] / _GRIPPER_SPAN_M
        effort = self.data.actuator_force[self._act[side][:7]].copy()
        return pos, vel, effort

    def limits(self) -> np.ndarray:
        return self._limits.copy()

    def object_poses(self) -> dict[str, np.ndarray]:
        """Current (x, y, z, qw, qx, qy, qz) of each free object, by its joint name."""
        mj, m = self.mj, self.model
        out = {}
        for name in self._objects:
            adr = m.jnt_qposadr[mj.mj_name2id(m, mj.mjtObj.mjOBJ_JOINT, name)]
            out[name] = self.data.qpos[adr : adr + 7].copy()
        return out

    # -- task ------------------------------------------------------------------------------------------------
    def contacts(self) -> set[tuple[str, str]]:
        """(geom1, geom2) names of the current contacts among the geoms the task stages look at."""
        self.sync()
        d, names = self.data, self._geom_names
        pairs = set()
        for i in range(d.ncon):
            a, b = names.get(int(d.contact[i].geom1)), names.get(int(d.contact[i].geom2))
            if a is not None and b is not None:
                pairs.add((a, b))
        return pairs

    def reward(self) -> int:
        """The task stage 0..4 now (gym-aloha's reward, see `task_stage`); 4 means the task is done."""
        return task_stage(self.config.task, self.contacts())

    def is_success(self) -> bool:
        """Whether the task is done now; an episode's success is `StageTracker.success` (any tick)."""
        return self.reward() >= MAX_REWARD

    # -- cameras ----------------------------------------------------------------------------------------------
    def render(self, camera: str, width: int, height: int) -> np.ndarray:
        """An RGB frame of one of our cameras (`cam_high`, …) at the current physics state."""
        if camera not in SIM_CAMERAS:
            raise DeviceError(f"the simulator has no camera {camera!r}; it has {', '.join(SIM_CAMERAS)}")
        self.sync()
        if self._cache_step != self._steps:  # physics moved on: every cached frame is out of date
            self._frame_cache.clear()
            self._cache_step = self._steps
        key = (camera, width, height)
        if key in self._frame_cache:
            return self._frame_cache[key]
        renderer = self._renderer(width, height)
        renderer.update_scene(self.data, SIM_CAMERAS[camera])
        image = renderer.render()
        self._frame_cache[key] = image
        return image

    def _renderer(self, width: int, height: int):
        r = self._renderers.get((width, height))
        if r is None:
            m = self.model
            if width > m.vis.global_.offwidth or height > m.vis.global_.offheight:
                m.vis.global_.offwidth = max(width, m.vis.global_.offwidth)
                m.vis.global_.offheight = max(height, m.vis.global_.offheight)
            try:
                r = self.mj.Renderer(m, height=height, width=width)
            except Exception as e:
                raise DeviceError(
                    f"MuJoCo could not open an offscreen renderer ({e}). Set MUJOCO_GL=egl and install "
                    "the EGL/Mesa libraries: sudo apt-get install libegl1 libgl1 libegl-mesa0 (check with `xr0 doctor`)"
                ) from e
            if not self.config.fancy_rendering:
                flags = r.scene.flags
                flags[self.mj.mjtRndFlag.mjRND_SHADOW] = 0
                flags[self.mj.mjtRndFlag.mjRND_REFLECTION] = 0
                flags[self.mj.mjtRndFlag.mjRND_SKYBOX] = 0
            self._renderers[(width, height)] = r
        return r

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()


class StageTracker:
    """The one success rule, for every loop that judges a simulated episode (record, rollout, teleop, the
    scripted benchmark): `update()` once per control tick; the episode succeeded if the task reached stage
    `MAX_REWARD` at any tick — gym-aloha terminates an episode when reward == max_reward, and LeRobot's eval
    counts an episode successful if any step succeeded. What happens after (the cube dropped again) does
    not undo it."""

    def __init__(self, sim: AlohaSim) -> None:
        self.sim = sim
        self.reset()

    def reset(self) -> None:
        """A new episode."""
        self.stage = 0  # the stage at the last update
        self.max_stage = 0  # the highest stage at any update
        self.ticks = 0  # updates since the reset
        self.success_tick: int | None = None  # the update (0-based) at which stage 4 was first reached
        self.stage_ticks: list[int | None] = [None] * MAX_REWARD  # first update reaching stage 1, 2, …

    def update(self) -> int:
        """Judge the world now (one control tick); returns the stage."""
        self.stage = self.sim.reward()
        self.max_stage = max(self.max_stage, self.stage)
        for s in range(self.stage):
            if self.stage_ticks[s] is None:
                self.stage_ticks[s] = self.ticks
        self.success_tick = self.stage_ticks[MAX_REWARD - 1]
        self.ticks += 1
        return self.stage

    @property
    def success(self) -> bool:
        return self.max_stage >= MAX_REWARD
