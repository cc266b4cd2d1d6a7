"""A scripted teleoperator: the "human" on the leader arms of the simulated ALOHA.

At the start of an episode it reads the simulator's privileged state (where the objects were placed),
writes a short plan of end-effector waypoints per arm — a time, a tool-point position, a gripper
orientation and a gripper opening — and turns that plan into joint targets the way a person moving the
leader arms would produce them: smoothly, and as a function of time since the reset only.

Planning, in three steps:

1. Waypoints (`_PLANNERS`, one function per task) place the tool centre point (TCP, a point between the
   fingertips, `TCP_OFFSET` in the gripper link's frame) relative to the objects. The first waypoint is the
   arm's own pose at the reset, so the script starts exactly where the arm is.
2. Orientation is written in the arm's own terms — pitch below horizontal, roll about the pointing axis,
   yaw away from the plane the arm reaches in — so that a plain reach keeps the forearm-roll and
   wrist-rotate joints still and the path crosses the wrist singularity (wrist angle 0) harmlessly.
   Between waypoints every quantity moves along one minimum-jerk profile (at rest at each waypoint).
3. Inverse kinematics, sampled at `ik_rate_hz` along that path: damped least squares on MuJoCo's own point
   Jacobian (`mj_jac` at the TCP on the gripper body) in a private `MjData`, so the simulated world is never
   touched. Each sample starts from the previous sample's solution (warm start), needs only a few iterations
   and stays inside the joint ranges. The result is a joint table; `action(t)` interpolates it linearly.

Everything is computed once at `reset()`, so `action(t)` is cheap, deterministic and the same whoever asks
(a leader arm read, `run_episode`, a test). Waypoint timings are chosen so that no joint moves more than
the safety layer's per-tick step (0.1 rad, gripper 0.25 at 30 Hz); the tests check that.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from drivers.clock import NS_PER_S
from drivers.errors import DeviceError
from drivers.joints import ARM_JOINTS, SIDES, STATE_DIM, side_slice
from drivers.safety import SafetyConfig, SafetyLayer
from drivers.sim.aloha import AlohaSim, SimConfig, StageTracker

if TYPE_CHECKING:
    import mujoco  # imported where it is used, so that the config can be loaded without MuJoCo

log = logging.getLogger(__name__)

# The tool centre point in the `gripper_link` frame (m): on the gripper's pointing axis (x), 2.4 cm short of
# the fingertips (which end at x ≈ 0.154), midway between the finger pads.
TCP_OFFSET = np.array([0.13, 0.0, 0.0])
# Height of each object's centre when it rests on the table (m); the table top is at z = 0.
RESTING_Z = {"red_box_joint": 0.02, "red_peg_joint": 0.01, "blue_socket_joint": 0.022}
# Gripper openings (fraction 0 closed … 1 open) the scripts use.
OPEN, CLOSED = 1.0, 0.0


@dataclass(frozen=True)
class ScriptedConfig:
    # How long one demonstration lasts, s: the task script (8-9 s) and then holding still. Must cover the script.
    episode_seconds: float = 10.0
    # How often inverse kinematics is solved along the planned path, Hz; joints are interpolated in between.
    ik_rate_hz: float = 30.0
    # Newton steps of inverse kinematics per path sample at most (warm-started, so a few suffice).
    ik_iterations: int = 8
    # Std of a random offset added to each planned grasp/meeting point, m, per episode (0 = no noise).
    # Drawn from the episode's seed, so a seed still gives one demonstration. Use ~0.005 for variety.
    position_noise_m: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.episode_seconds <= 600.0:
            raise ValueError("scripted.episode_seconds must be in (0, 600] s; the task scripts take 8-9 s")
        if not 1.0 <= self.ik_rate_hz <= 1000.0:
            raise ValueError("scripted.ik_rate_hz must be in [1, 1000] Hz; 30 matches the control rate")
        if not 1 <= self.ik_iterations <= 100:
            raise ValueError("scripted.ik_iterations must be in [1, 100]")
        if not 0.0 <= self.position_noise_m <= 0.02:
            raise ValueError(
                "scripted.position_noise_m must be in [0, 0.02] m; larger offsets miss the objects"
            )


# -- rotations ----------------------------------------------------------------------------------------------
def orientation(heading: float, pitch: float, roll: float, yaw: float = 0.0) -> np.ndarray:
    """A gripper orientation (3×3, columns = the gripper's x, y, z axes in the world) in the arm's own terms.

    `heading`: azimuth of the vertical plane the arm reaches in (rad, world); `pitch`: how far the gripper
    points below horizontal (rad); `roll`: turn about its pointing axis (rad; 0 = fingers closing
    horizontally); `yaw`: extra turn about world z away from the arm's plane (rad). With roll = yaw = 0 the
    forearm-roll and wrist-rotate joints stay at zero, so the path never fights the wrist singularity."""
    return _rot_z(heading + yaw) @ _rot_y(pitch) @ _rot_x(roll)


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def wrap(a: float, half_period: float = math.pi) -> float:
    """An angle wrapped into [-half_period, half_period)."""
    return (a + half_period) % (2.0 * half_period) - half_period


def angles_of(rot: np.ndarray, heading: float) -> tuple[float, float, float]:
    """Pitch, roll and yaw (rad) of a gripper orientation for an arm reaching along `heading`; the inverse
    of `orientation` away from a vertical pointing axis."""
    x = rot[:, 0]
    yaw = wrap(math.atan2(x[1], x[0]) - heading)
    m = _rot_z(heading + yaw).T @ rot  # = R_y(pitch) R_x(roll)
    return math.atan2(-m[2, 0], m[0, 0]), math.atan2(-m[1, 2], m[1, 1]), yaw


def rotation_error(target: np.ndarray, now: np.ndarray) -> np.ndarray:
    """World-frame vector (axis × sin(angle)) of the rotation that turns orientation `now` into `target`
    (both 3×3); it points the right way for any angle below 180°, which is all a warm-started IK needs."""
    return 0.5 * (
        np.cross(now[:, 0], target[:, 0])
        + np.cross(now[:, 1], target[:, 1])
        + np.cross(now[:, 2], target[:, 2])
    )


def rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    """The angle (rad) between two orientations (3×3)."""
    return math.acos(min(1.0, max(-1.0, (float(np.trace(a @ b.T)) - 1.0) / 2.0)))


# -- inverse kinematics -----------------------------------------------------------------------------------
class ArmIK:
    """Damped-least-squares IK for one arm's 6 joints on a private copy of the simulator's kinematics."""

    def __init__(
        self, model: mujoco.MjModel, side: str, tcp_offset: np.ndarray = TCP_OFFSET, damping: float = 0.02
    ) -> None:
        import mujoco

        self.mj = mujoco
        self.model = model
        self.data = mujoco.MjData(model)  # ours alone: the simulated world's MjData is never written
        joints = [
            mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, f"vx300s_{side}/{j}") for j in ARM_JOINTS
        ]
        if min(joints) < 0:
            raise DeviceError(f"the simulator scene has no {side} ViperX arm joints; is it an ALOHA scene?")
        self.qpos_adr = np.array([model.jnt_qposadr[j] for j in joints])
        self.dof_adr = np.array([model.jnt_dofadr[j] for j in joints])
        self.lower, self.upper = model.jnt_range[joints].T.copy()
        self.body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, f"vx300s_{side}/gripper_link")
        mujoco.mj_kinematics(model, self.data)
        self.base = self.data.xpos[
            mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, f"vx300s_{side}")
        ].copy()
        self.tcp_offset = np.asarray(tcp_offset, dtype=np.float64)
        self.damping = damping
        self.rot_weight = 0.2  # m per rad: 1 rad of orientation error weighs like 20 cm of position error
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (m) and gripper orientation (3×3) for joint angles `q` (6,)."""
        d = self.data
        d.qpos[self.qpos_adr] = q
        self.mj.mj_kinematics(self.model, d)
        rot = d.xmat[self.body].reshape(3, 3).copy()
        return d.xpos[self.body] + rot @ self.tcp_offset, rot

    def solve(
        self, pos: np.ndarray, rot: np.ndarray, q_init: np.ndarray, iterations: int = 8, tol_m: float = 1e-4
    ) -> tuple[np.ndarray, float, float]:
        """Joint angles (6,) that put the TCP at `pos` with orientation `rot` (3×3), starting from `q_init`.

        Returns the solution and its remaining position (m) and orientation (rad) errors."""
        q = np.clip(np.asarray(q_init, dtype=np.float64).copy(), self.lower, self.upper)
        for i in range(iterations + 1):
            tcp, rot_now = self.forward(q)
            e_pos = pos - tcp
            e_rot = rotation_error(rot, rot_now)
            pos_err = float(np.linalg.norm(e_pos))
            if (
                pos_err < tol_m and float(np.linalg.norm(e_rot)) * self.rot_weight < tol_m
            ) or i == iterations:
                break
            q = self._step(q, tcp, e_pos, e_rot)
        return q, pos_err, rotation_angle(rot, rot_now)

    def _step(self, q: np.ndarray, tcp: np.ndarray, e_pos: np.ndarray, e_rot: np.ndarray) -> np.ndarray:
        self.mj.mj_comPos(self.model, self.data)  # mj_jac reads the com-based frames this computes
        self.mj.mj_jac(self.model, self.data, self._jacp, self._jacr, tcp, self.body)
        jac = np.vstack(
            [self._jacp[:, self.dof_adr], self.rot_weight * self._jacr[:, self.dof_adr]]
        )  # (6, 6)
        err = np.concatenate([e_pos, self.rot_weight * e_rot])
        dq = jac.T @ np.linalg.solve(jac @ jac.T + self.damping**2 * np.eye(6), err)
        biggest = np.abs(dq).max()
        if biggest > 0.3:  # keep each Newton step small enough for the linearisation to hold
            dq *= 0.3 / biggest
        return np.clip(q + dq, self.lower, self.upper)


# -- waypoints ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Waypoint:
    t_s: float  # when the arm is there, s since the reset
    pos: np.ndarray  # (3,) TCP position in the world, m
    pitch: float  # gripper pointing this far below horizontal, rad
    roll: float  # gripper turned about its pointing axis, rad (0: fingers close horizontally)
    yaw: float  # gripper turned about world z away from the plane the arm reaches in, rad
    gripper: float  # opening, 0 closed … 1 open


def min_jerk(s: float) -> float:
    """The minimum-jerk timing profile on [0, 1]: starts and ends at rest."""
    s = min(max(s, 0.0), 1.0)
    return s * s * s * (10.0 - 15.0 * s + 6.0 * s * s)


def pose_at(waypoints: Sequence[Waypoint], t_s: float) -> Waypoint:
    """The waypoint path's state at time `t_s`: every quantity moves on the same minimum-jerk profile."""
    if t_s <= waypoints[0].t_s:
        return waypoints[0]
    for a, b in zip(waypoints, waypoints[1:], strict=False):
        if t_s <= b.t_s:
            s = min_jerk((t_s - a.t_s) / (b.t_s - a.t_s))
            return Waypoint(
                t_s,
                a.pos + s * (b.pos - a.pos),
                a.pitch + s * (b.pitch - a.pitch),
                a.roll + s * (b.roll - a.roll),
                a.yaw + s * (b.yaw - a.yaw),
                a.gripper + s * (b.gripper - a.gripper),
            )
    return waypoints[-1]


class PathBuilder:
    """Collects one arm's waypoints in time order; each step moves some quantities and keeps the rest."""

    def __init__(self, start: Waypoint) -> None:
        self.points = [start]

    @property
    def last(self) -> Waypoint:
        return self.points[-1]

    def to(self, t_s: float, pos: np.ndarray | None = None, **changes: float) -> PathBuilder:
        """Arrive at time `t_s` at `pos` (m) with the given `pitch`, `roll`, `yaw` (rad) and `gripper`."""
        if not t_s > self.last.t_s:
            raise ValueError(f"waypoint times must increase: {t_s} s after {self.last.t_s} s")
        unknown = set(changes) - {"pitch", "roll", "yaw", "gripper"}
        if unknown:
            raise ValueError(
                f"a waypoint has no {', '.join(sorted(unknown))}; it has pitch, roll, yaw, gripper"
            )
        last = self.last
        new = Waypoint(
            t_s,
            last.pos if pos is None else np.asarray(pos, dtype=np.float64),
            float(changes.get("pitch", last.pitch)),
            float(changes.get("roll", last.roll)),
            float(changes.get("yaw", last.yaw)),
            float(changes.get("gripper", last.gripper)),
        )
        self.points.append(new)
        return self


@dataclass(frozen=True)
class PlanInput:
    objects: dict[str, np.ndarray]  # object joint name -> (x, y, z, yaw): where the script expects it to rest
    start: dict[str, Waypoint]  # side -> the arm's pose at the reset, as a waypoint at t = 0
    base: dict[str, np.ndarray]  # side -> (3,) position of the arm's base (waist axis) in the world, m


Planner = Callable[[PlanInput], dict[str, list[Waypoint]]]
DOWN_60 = math.radians(60.0)  # pitch of a grasp from above, tilted back towards the arm's base


def heading_of(pos: np.ndarray, base: np.ndarray) -> float:
    """Azimuth (rad) of the vertical plane through an arm's waist axis and the point `pos`."""
    return math.atan2(pos[1] - base[1], pos[0] - base[0])


def face_yaw(obj_yaw: float, target: np.ndarray, base: np.ndarray) -> float:
    """The gripper yaw (rad, relative to the arm's reach plane) that squares the fingers with an object's
    faces, for an object turned `obj_yaw` about z whose faces repeat every 90°."""
    return wrap(obj_yaw - heading_of(target, base), math.pi / 4)


def plan_transfer_cube(inp: PlanInput) -> dict[str, list[Waypoint]]:
    """Right arm picks the cube from above, lifts it to mid-air; the left arm takes it and the right lets go."""
    cube = inp.objects["red_box_joint"][:3]
    grasp = cube + np.array([0.0, 0.0, 0.01])  # TCP 1 cm above the cube's centre: fingertips clear the table
    yaw = face_yaw(inp.objects["red_box_joint"][3], grasp, inp.base["right"])
    meet = np.array([0.0, 0.5, 0.25])  # where the right arm holds the cube for the hand-over
    cube_in_air = meet + (cube - grasp)  # the cube's centre when the right TCP is at `meet`
    right = PathBuilder(inp.start["right"])
    # Above the cube, pointing down and back (fingers across the arm's plane), then down around it while
    # turning the fingers square to the cube's faces.
    right.to(1.6, grasp + [0.0, 0.0, 0.09], pitch=DOWN_60, roll=0.0, yaw=0.0, gripper=OPEN)
    right.to(2.6, grasp, yaw=yaw)
    right.to(2.8).to(3.4, gripper=CLOSED).to(3.7)  # settle, squeeze, let the grip settle
    right.to(4.9, meet + [0.05, 0.0, 0.0], yaw=0.0)  # lift, short of the meeting point
    right.to(5.4, meet)
    right.to(6.9).to(7.4, gripper=OPEN)  # wait for the left grip, then let go
    right.to(8.4, meet + [0.12, 0.0, 0.05])  # back away
    # Left: level, pointing at the right arm, fingers turned to close vertically on the cube's top and bottom.
    left = PathBuilder(inp.start["left"])
    left.to(3.0).to(5.0, cube_in_air + [-0.12, 0.0, 0.0], pitch=0.0, roll=math.pi / 2, yaw=0.0, gripper=OPEN)
    left.to(6.0, cube_in_air + [-0.008, 0.0, 0.0])  # slide the fingers over the cube
    left.to(6.2).to(6.8, gripper=CLOSED)  # squeeze
    left.to(7.6).to(8.6, cube_in_air + [-0.08, 0.0, 0.02])  # after the right lets go, pull it away
    return {"left": left.points, "right": right.points}


def plan_insertion(inp: PlanInput) -> dict[str, list[Waypoint]]:
    """Left arm picks the socket, right arm the peg, each at its middle; both lift, and the right arm slides
    the peg into the socket's open +x end until it meets the pin inside."""
    peg, socket = inp.objects["red_peg_joint"][:3], inp.objects["blue_socket_joint"][:3]
    peg_grasp = peg + np.array([0.0, 0.0, 0.015])  # fingertips just clear of the table
    socket_grasp = socket + np.array([0.0, 0.0, 0.013])  # fingers on the side walls
    socket_air = np.array([-0.1, 0.5, 0.2])  # where the left arm holds the socket's centre
    # The peg (12 cm) touches the pin (8 cm, centred in the socket) when their centres are 10 cm apart.
    # Aim 3 mm low: the socket slips a little further down in its grasp than the peg does (0 to -6 mm work).
    peg_touch = socket_air + np.array([0.10, 0.0, -0.003])
    left = PathBuilder(inp.start["left"])
    left.to(1.6, socket_grasp + [0.0, 0.0, 0.09], pitch=DOWN_60, roll=0.0, yaw=0.0).to(2.6, socket_grasp)
    left.to(2.8).to(3.4, gripper=CLOSED).to(3.7)
    left.to(5.2, socket_air + (socket_grasp - socket))
    right = PathBuilder(inp.start["right"])
    right.to(1.6, peg_grasp + [0.0, 0.0, 0.09], pitch=DOWN_60, roll=0.0, yaw=0.0).to(2.6, peg_grasp)
    right.to(2.8).to(3.4, gripper=CLOSED).to(3.7)
    right.to(5.2, peg_touch + [0.05, 0.0, 0.0] + (peg_grasp - peg))  # lined up, 3 cm outside the socket
    right.to(5.5).to(8.0, peg_touch + [-0.01, 0.0, 0.0] + (peg_grasp - peg))  # in, pressing on the pin
    return {"left": left.points, "right": right.points}


_PLANNERS: dict[str, Planner] = {"transfer_cube": plan_transfer_cube, "insertion": plan_insertion}


# -- the teleoperator -----------------------------------------------------------------------------------------
class ScriptedTeleoperator:
    """Plans one demonstration per episode from the objects' poses and replays it as leader-arm joints."""

    def __init__(self, sim: AlohaSim, config: ScriptedConfig = ScriptedConfig()) -> None:
        self.sim = sim
        self.config = config
        task = sim.config.task
        if task not in _PLANNERS:
            raise ValueError(
                f"there is no scripted teleoperator for the task {task!r}; scripts: {', '.join(_PLANNERS)}"
            )
        self._planner = _PLANNERS[task]
        self._ik = {side: ArmIK(sim.model, side) for side in SIDES}
        self._table = np.zeros((1, STATE_DIM))  # (n_samples, 14) joint targets at k / ik_rate_hz
        self._episode = -2  # the sim episode the table was planned for
        self.waypoints: dict[str, list[Waypoint]] = {}
        self.worst_ik_error_m = 0.0  # largest TCP position error IK left in the current plan
        self.reset()

    def reset(self) -> None:
        """Plan the current episode; call right after `sim.reset()` (`action` also notices a new episode)."""
        t0 = time.perf_counter()
        start = {side: self.sim.joint_state(side)[0] for side in SIDES}
        self.waypoints = self._planner(self._plan_input(start))
        script_s = max(points[-1].t_s for points in self.waypoints.values())
        if script_s > self.config.episode_seconds:
            raise ValueError(
                f"the {self.sim.config.task} script takes {script_s:g} s but scripted.episode_seconds is "
                f"{self.config.episode_seconds:g} s; raise it to at least {math.ceil(script_s)} s"
            )
        self._table = self._solve(start)
        self._episode = self.sim.episode
        log.debug(
            "planned %s episode %d in %.0f ms",
            self.sim.config.task,
            self._episode,
            (time.perf_counter() - t0) * 1e3,
        )

    def _plan_input(self, start: dict[str, np.ndarray]) -> PlanInput:
        rng = np.random.default_rng(self.sim.seed + 7919)  # noise of its own, apart from the object placement
        objects = {}
        for name, pose in self.sim.object_poses().items():
            w, x, y, z = pose[3:]
            yaw = math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
            xyzw = np.array([pose[0], pose[1], RESTING_Z.get(name, pose[2]), yaw])
            if self.config.position_noise_m > 0:
                xyzw[:2] += rng.normal(0.0, self.config.position_noise_m, 2)
            objects[name] = xyzw
        starts, bases = {}, {}
        for side in SIDES:
            ik = self._ik[side]
            pos, rot = ik.forward(start[side][:6])
            pitch, roll, yaw = angles_of(rot, heading_of(pos, ik.base))
            gripper = min(max(float(start[side][6]), 0.0), 1.0)  # a measured fraction may leave [0, 1] a hair
            starts[side] = Waypoint(0.0, pos, pitch, roll, yaw, gripper)
            bases[side] = ik.base
        return PlanInput(objects=objects, start=starts, base=bases)

    def _solve(self, start: dict[str, np.ndarray]) -> np.ndarray:
        """Sample the waypoint paths at `ik_rate_hz` and solve IK at each sample, warm-started."""
        cfg = self.config
        n = int(math.ceil(cfg.episode_seconds * cfg.ik_rate_hz)) + 1
        table = np.zeros((n, STATE_DIM))
        worst = 0.0
        for side in SIDES:
            cols = side_slice(side)
            q = np.clip(start[side][:6], self._ik[side].lower, self._ik[side].upper)
            for k in range(n):
                w = pose_at(self.waypoints[side], k / cfg.ik_rate_hz)
                rot = orientation(heading_of(w.pos, self._ik[side].base), w.pitch, w.roll, w.yaw)
                q, err_m, _ = self._ik[side].solve(w.pos, rot, q, cfg.ik_iterations)
                worst = max(worst, err_m)
                table[k, cols] = np.concatenate([q, [w.gripper]])
        self.worst_ik_error_m = worst
        if worst > 0.01:
            log.warning(
                "the scripted plan for seed %d is %.1f cm off somewhere (out of reach?)",
                self.sim.seed,
                worst * 100,
            )
        return table

    def action(self, t_s: float) -> np.ndarray:
        """(14,) leader joint targets (left 7 then right 7) at `t_s` seconds after the reset.

        The plan is a precomputed table, so this is an interpolation: the same `t_s` always gives the same
        targets. A new simulator episode (a `sim.reset()` not followed by `reset()`) is planned on first use."""
        if self.sim.episode != self._episode:
            self.reset()
        x = min(max(t_s, 0.0), self.config.episode_seconds) * self.config.ik_rate_hz
        k = min(int(x), len(self._table) - 1)
        frac = x - k
        if frac == 0.0 or k + 1 >= len(self._table):
            return self._table[k].copy()
        return (1.0 - frac) * self._table[k] + frac * self._table[k + 1]

    @property
    def done(self) -> bool:
        """Whether the demonstration is over at the simulator's current time (it holds its last pose after)."""
        self.sim.sync()
        # Physics time moves in whole steps and may stop just short of the clock: done when not one more fits.
        return self.config.episode_seconds - self.sim.time_s < self.sim.model.opt.timestep + 1e-9


# -- measuring ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EpisodeResult:
    success: bool  # the task was done (stage 4) at some tick: the one rule (`StageTracker`)
    max_reward: int  # highest reward stage reached at any tick
    ticks: int  # control ticks run
    held_at_end: bool  # still done at the last tick (the demonstrator does not drop what it handed over)


def run_episode(sim: AlohaSim, teleop: ScriptedTeleoperator, seed: int, fps: float = 30.0) -> EpisodeResult:
    """Play one scripted demonstration in lockstep, without rendering, through the same per-tick safety
    clamp as the real control loop. The sim's clock is stepped to each tick's deadline (a `SimClock` jumps)."""
    sim.reset(seed)
    teleop.reset()
    initial = np.concatenate([sim.joint_state(side)[0] for side in SIDES])
    safety = SafetyLayer(SafetyConfig(), sim.limits(), initial)
    period_ns = round(NS_PER_S / fps)
    start_ns = sim.clock.now_ns()
    ticks = math.ceil(teleop.config.episode_seconds * fps)
    stages = StageTracker(sim)
    for k in range(ticks):
        command = safety.filter(teleop.action(sim.time_s)).action
        for side in SIDES:
            sim.set_targets(side, command[side_slice(side)])
        sim.clock.sleep_until(start_ns + (k + 1) * period_ns)
        stages.update()
    return EpisodeResult(
        success=stages.success, max_reward=stages.max_stage, ticks=ticks, held_at_end=sim.is_success()
    )


def measure_success(
    task: str, seeds: Sequence[int], config: ScriptedConfig = ScriptedConfig()
) -> dict[str, object]:
    """Success rate of the scripted teleoperator on `task` over `seeds` (a fresh simulator on a SimClock).

    `success_rate` counts episodes done at any tick (the one rule, `StageTracker`); `held_at_end_rate`
    those still done at their last tick."""
    from drivers.clock import SimClock

    seeds = list(seeds)
    if not seeds:
        raise ValueError("measure_success needs at least one seed")
    sim = AlohaSim(SimConfig(task=task, seed=seeds[0]), SimClock())
    teleop = ScriptedTeleoperator(sim, config)
    results: dict[int, EpisodeResult] = {}
    t0 = time.perf_counter()
    for seed in seeds:
        results[seed] = run_episode(sim, teleop, seed)
        log.info(
            "%s seed %d: success=%s max stage %d", task, seed, results[seed].success, results[seed].max_reward
        )
    elapsed = time.perf_counter() - t0
    n = len(seeds)
    done = sum(r.success for r in results.values())
    log.info("%s: %d of %d episodes succeeded, %.2f s each", task, done, n, elapsed / n)
    return {
        "task": task,
        "episodes": n,
        "success_rate": done / n,  # stage 4 at some tick
        "held_at_end_rate": sum(r.held_at_end for r in results.values()) / n,  # and still at the last tick
        "mean_max_reward": sum(r.max_reward for r in results.values()) / n,
        "failed_seeds": [s for s, r in results.items() if not r.success],
        "seconds_per_episode": elapsed / n,
    }
