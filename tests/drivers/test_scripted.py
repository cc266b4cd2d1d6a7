"""The scripted teleoperator on the real MuJoCo scenes: it does both tasks, its IK lands on the commanded
pose, its script stays inside the safety layer's per-tick steps, and its leader arms are read-only arms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drivers.clock import SimClock
from drivers.errors import DeviceError
from drivers.joints import ARM_DOF, GRIPPER_INDICES, SIDES, STATE_DIM, side_slice
from drivers.safety import SafetyConfig
from drivers.sim.aloha import AlohaSim, SimConfig
from drivers.sim.parts import ScriptedLeaderArm
from drivers.sim.scripted import (
    ArmIK,
    ScriptedConfig,
    ScriptedTeleoperator,
    heading_of,
    orientation,
    rotation_angle,
    run_episode,
)

FPS = 30.0


@pytest.fixture(scope="module", params=["transfer_cube", "insertion"])
def rig(request) -> tuple[AlohaSim, ScriptedTeleoperator]:
    sim = AlohaSim(SimConfig(task=request.param, seed=0), SimClock())
    return sim, ScriptedTeleoperator(sim)


@pytest.fixture(scope="module")
def cube_rig() -> tuple[AlohaSim, ScriptedTeleoperator]:
    sim = AlohaSim(SimConfig(task="transfer_cube", seed=0), SimClock())
    return sim, ScriptedTeleoperator(sim)


@pytest.mark.parametrize("seed", [0, 7, 31])
def test_the_script_does_the_task_and_is_still_done_at_the_end(rig, seed: int) -> None:
    sim, teleop = rig
    result = run_episode(sim, teleop, seed, fps=FPS)
    assert result.success, f"{sim.config.task} seed {seed}: reached stage {result.max_reward} only"
    assert result.max_reward == 4
    assert result.ticks == math.ceil(teleop.config.episode_seconds * FPS)
    assert sim.is_success()
    assert teleop.done


@pytest.mark.parametrize("side", SIDES)
def test_ik_reaches_a_commanded_pose_without_touching_the_world(cube_rig, side: str) -> None:
    sim, _ = cube_rig
    sim.reset(0)
    world_qpos = sim.data.qpos.copy()
    ik = ArmIK(sim.model, side)
    start = sim.joint_state(side)[0][:6]
    # A pose a grasp would ask for: over the table in front of the arm, pointing 60° down and across.
    target = np.array([0.1 if side == "right" else -0.1, 0.45, 0.06])
    rot = orientation(heading_of(target, ik.base), math.radians(60), roll=0.3, yaw=0.2)

    q, pos_err, rot_err = ik.solve(target, rot, start, iterations=60)

    reached, reached_rot = ArmIK(sim.model, side).forward(q)  # checked on a second, independent copy
    assert np.linalg.norm(reached - target) < 1e-3 and pos_err < 1e-3
    assert rotation_angle(reached_rot, rot) < 1e-2 and rot_err < 1e-2
    assert np.all(q >= ik.lower) and np.all(q <= ik.upper)
    np.testing.assert_array_equal(sim.data.qpos, world_qpos)


def test_ik_keeps_to_the_joint_ranges_when_the_target_is_out_of_reach(cube_rig) -> None:
    sim, _ = cube_rig
    ik = ArmIK(sim.model, "right")
    start = sim.joint_state("right")[0][:6]
    far = np.array([-1.0, 0.5, 0.3])  # 1.5 m from the right arm's base
    q, pos_err, _ = ik.solve(far, orientation(math.pi, 0.0, 0.0), start, iterations=60)
    assert pos_err > 0.3
    assert np.all(q >= ik.lower) and np.all(q <= ik.upper)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_the_script_moves_within_the_safety_layers_step_limits(rig, seed: int) -> None:
    sim, teleop = rig
    sim.reset(seed)
    teleop.reset()
    limits = SafetyConfig()
    ticks = np.arange(math.ceil(teleop.config.episode_seconds * FPS) + 1) / FPS
    actions = np.array([teleop.action(t) for t in ticks])  # (ticks, 14)
    steps = np.abs(np.diff(actions, axis=0))
    arm = np.delete(steps, list(GRIPPER_INDICES), axis=1)
    assert arm.max() <= limits.max_joint_delta_per_tick, f"a joint jumps {arm.max():.3f} rad in one tick"
    assert steps[:, list(GRIPPER_INDICES)].max() <= limits.max_gripper_delta_per_tick
    # It starts exactly where the arms are, so the first command does not jump either.
    measured = np.concatenate([sim.joint_state(side)[0] for side in SIDES])
    np.testing.assert_allclose(actions[0], measured, atol=1e-3)
    assert np.all(actions >= sim.limits()[:, 0] - 1e-9) and np.all(actions <= sim.limits()[:, 1] + 1e-9)


def test_action_is_a_function_of_time_and_follows_a_new_episode(cube_rig) -> None:
    sim, teleop = cube_rig
    sim.reset(3)
    teleop.reset()
    first = teleop.action(2.6)
    np.testing.assert_array_equal(teleop.action(2.6), first)
    assert teleop.action(1.0).shape == (STATE_DIM,)
    sim.reset(4)  # a new episode the teleoperator was not told about: it plans for it on first use
    assert not np.allclose(teleop.action(2.6), first)
    sim.reset(3)
    np.testing.assert_allclose(teleop.action(2.6), first)


def test_a_config_shorter_than_the_script_is_refused(cube_rig) -> None:
    sim, _ = cube_rig
    with pytest.raises(ValueError, match="episode_seconds"):
        ScriptedTeleoperator(sim, ScriptedConfig(episode_seconds=5.0))
    with pytest.raises(ValueError, match="position_noise_m"):
        ScriptedConfig(position_noise_m=0.5)


@pytest.mark.parametrize("side", SIDES)
def test_the_leader_arm_is_read_only(cube_rig, side: str) -> None:
    sim, teleop = cube_rig
    sim.reset(0)
    arm = ScriptedLeaderArm(teleop, side)
    assert (arm.name, arm.side, arm.role) == (f"{side}_leader", side, "leader")
    with pytest.raises(DeviceError):
        arm.read()  # not connected yet
    arm.connect()
    sim.clock.advance(3_000_000_000)  # 3 s into the episode: the right gripper is closing
    sample = arm.read()
    assert sample.position.shape == (ARM_DOF,)
    assert 0.0 <= sample.position[-1] <= 1.0
    assert sample.velocity is None and sample.effort is None
    assert sample.t_ns == sim.capture_ns()
    np.testing.assert_array_equal(sample.position, teleop.action(sim.time_s)[side_slice(side)])
    assert arm.limits().shape == (ARM_DOF, 2)
    with pytest.raises(DeviceError, match="cannot be commanded"):
        arm.write(sample.position)
    arm.disconnect()
