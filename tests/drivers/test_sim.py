"""The simulated ALOHA on real MuJoCo with offscreen EGL rendering."""

import numpy as np
import pytest

from drivers.clock import SimClock
from drivers.errors import DeviceError, StaleSampleError
from drivers.joints import SIDES, side_slice
from drivers.robot import BimanualRobot
from drivers.safety import SafetyConfig, SafetyLayer
from drivers.sim.aloha import (
    PUPPET_GRIPPER_POSITION_CLOSE,
    PUPPET_GRIPPER_POSITION_OPEN,
    AlohaSim,
    SimConfig,
    StageTracker,
    finger_to_gripper,
    gripper_to_finger,
    task_stage,
)
from drivers.sim.parts import SimArm, SimCamera
from drivers.sim.scripted import ScriptedTeleoperator

TICK_NS = 33_333_333
REACH = np.array([0.3, -0.4, 0.6, 0.0, 0.4, 0.3, 0.2])


@pytest.fixture(scope="module")
def world():
    clock = SimClock()
    sim = AlohaSim(SimConfig(task="transfer_cube", seed=3), clock)
    yield sim, clock
    sim.close()


def run_ticks(sim, clock, target, n):
    for _ in range(n):
        for side in SIDES:
            sim.set_targets(side, target)
        clock.advance(TICK_NS)
    return np.concatenate([sim.joint_state(s)[0] for s in SIDES])


def test_reset_is_deterministic_per_seed(world):
    sim, clock = world
    sim.reset(7)
    poses_a = sim.object_poses()
    state_a = run_ticks(sim, clock, REACH, 20)
    sim.reset(8)
    poses_other = sim.object_poses()
    sim.reset(7)
    poses_b = sim.object_poses()
    state_b = run_ticks(sim, clock, REACH, 20)
    np.testing.assert_array_equal(poses_a["red_box_joint"], poses_b["red_box_joint"])
    assert not np.allclose(poses_a["red_box_joint"][:2], poses_other["red_box_joint"][:2])
    np.testing.assert_array_equal(state_a, state_b)  # same seed, same commands: bit-identical physics


def test_next_seed_on_plain_reset(world):
    sim, _ = world
    sim.reset(10)
    sim.reset()
    assert sim.seed == 11


def test_object_poses_within_the_documented_ranges(world):
    sim, _ = world
    for seed in range(20):
        x, y, z = sim.sample_object_poses(seed)["red_box_joint"]
        assert 0.0 <= x <= 0.2 and 0.4 <= y <= 0.6 and z == 0.05


def test_arms_track_joint_targets(world):
    sim, clock = world
    sim.reset(0)
    state = run_ticks(sim, clock, REACH, 60)
    np.testing.assert_allclose(state[:3], REACH[:3], atol=0.05)
    assert sim.reward() == 0  # nothing touched the cube


def test_lockstep_time_follows_the_sim_clock(world):
    sim, clock = world
    sim.reset(0)
    clock.advance(10 * TICK_NS)
    sim.sync()
    assert sim.time_s == pytest.approx(10 * TICK_NS / 1e9, abs=sim.model.opt.timestep)
    assert abs(sim.capture_ns() - clock.now_ns()) <= sim.model.opt.timestep * 1e9


def test_frames_have_the_configured_shape_and_change_when_arms_move(world):
    sim, clock = world
    sim.reset(0)
    cams = {n: SimCamera(sim, n, 160, 120) for n in ("cam_high", "cam_left_wrist", "cam_right_wrist")}
    before = {n: c.latest(100).image.copy() for n, c in cams.items()}
    for img in before.values():
        assert img.shape == (120, 160, 3) and img.dtype == np.uint8
        assert img.std() > 5  # a real picture, not a blank buffer
    run_ticks(sim, clock, REACH, 30)
    after = {n: c.latest(100).image for n, c in cams.items()}
    for n in cams:
        diff = np.abs(after[n].astype(int) - before[n].astype(int)).mean()
        assert diff > 2, f"{n} did not change when the arms moved (mean abs diff {diff:.2f})"
    wide = SimCamera(sim, "cam_high", 320, 240).latest(100).image
    assert wide.shape == (240, 320, 3)


def test_camera_next_needs_the_world_to_advance(world):
    sim, clock = world
    cam = SimCamera(sim, "cam_high", 64, 48)
    cam.latest(100)
    with pytest.raises(DeviceError, match="no new simulated frame"):
        cam.next(10)
    clock.advance(TICK_NS)
    assert cam.next(10).index > 0


def test_stale_frame_is_reported(world):
    sim, clock = world
    cam = SimCamera(sim, "cam_high", 64, 48)
    frame = cam.latest(100)
    assert frame.t_ns == sim.capture_ns()
    with pytest.raises(StaleSampleError, match="cam_high"):
        cam.latest(-1.0)  # any age is too old for a negative bound


def test_a_deferred_camera_renders_at_the_first_read_the_same_frame_or_refuses_once_the_world_moved(world):
    sim, clock = world
    sim.reset(0)
    robot = BimanualRobot(
        followers={s: SimArm(sim, s) for s in SIDES},
        cameras={n: SimCamera(sim, n, 64, 48) for n in ("cam_high", "cam_left_wrist")},
        safety=SafetyConfig(),
        clock=clock,
    )
    for cam in robot.cameras.values():
        cam.deferred = True
    renders = []
    real_render = sim.render
    sim.render = lambda *a: renders.append(a[0]) or real_render(*a)
    try:
        with robot:
            renders.clear()
            obs = robot.observe()
            assert renders == [] and obs.image_index["cam_high"] >= 0  # taken, not rendered
            image = obs.images["cam_high"]
            assert renders == ["cam_high"] and obs.images["cam_high"] is image  # rendered once, when read
            # the frame of that physics state: the same render of the same state (the sim caches it per step)
            assert np.array_equal(image, real_render("cam_high", 64, 48))
            clock.advance(TICK_NS)
            with pytest.raises(
                DeviceError, match="cam_left_wrist: a deferred frame was read after the simulation"
            ):
                obs.images["cam_left_wrist"]
    finally:
        sim.render = real_render


def test_unknown_camera_is_a_clear_error(world):
    sim, _ = world
    with pytest.raises(DeviceError, match="no camera 'cam_side'"):
        sim.render("cam_side", 64, 48)


def test_bimanual_robot_on_the_sim_observes_and_acts_through_safety(world):
    sim, clock = world
    sim.reset(0)
    robot = BimanualRobot(
        followers={s: SimArm(sim, s) for s in SIDES},
        cameras={"cam_high": SimCamera(sim, "cam_high", 64, 48)},
        safety=SafetyConfig(max_joint_delta_per_tick=0.1),
        clock=clock,
    )
    assert robot.features().cameras == {"cam_high": (48, 64, 3)}
    with robot:
        obs = robot.observe()
        assert obs.state.shape == (14,) and obs.velocity.shape == (14,) and obs.effort.shape == (14,)
        assert obs.images["cam_high"].shape == (48, 64, 3)
        start = obs.state.copy()
        target = start.copy()
        target[0] += 1.0  # a jump of 1 rad is slowed to 0.1 rad per tick
        cmd = robot.send_action(target)
        assert cmd.action[0] == pytest.approx(start[0] + 0.1)
        assert robot.safety.counters.clamped_delta == 1
        bad = target.copy()
        bad[2] = np.nan
        held = robot.send_action(bad)
        assert held.rejected
        np.testing.assert_array_equal(held.action, cmd.action)
        with pytest.raises(DeviceError, match="no leader arms"):
            robot.leader_action()


def test_insertion_scene_loads_with_two_objects():
    clock = SimClock()
    sim = AlohaSim(SimConfig(task="insertion", seed=1), clock)
    try:
        poses = sim.object_poses()
        assert set(poses) == {"red_peg_joint", "blue_socket_joint"}
        assert poses["red_peg_joint"][0] > 0 > poses["blue_socket_joint"][0]
        assert sim.reward() == 0
    finally:
        sim.close()


def test_bad_sim_config_names_the_field():
    with pytest.raises(ValueError, match="task must be one of"):
        SimConfig(task="folding")


# -- compatibility with gym-aloha: task stages, success rule, gripper fraction ---------------------------------
RIGHT_R, RIGHT_L = "vx300s_right/10_right_gripper_finger", "vx300s_right/10_left_gripper_finger"
LEFT_L, LEFT_R = "vx300s_left/10_left_gripper_finger", "vx300s_left/10_right_gripper_finger"


def test_transfer_cube_stages_count_one_finger_per_gripper_as_gym_aloha_does():
    stage = lambda *pairs: task_stage("transfer_cube", set(pairs))  # noqa: E731
    assert stage() == 0
    assert stage(("red_box", RIGHT_L), ("red_box", "table")) == 0  # the right gripper's other finger: no
    assert stage(("red_box", RIGHT_R), ("red_box", "table")) == 1
    assert stage(("red_box", RIGHT_R)) == 2  # lifted
    assert stage(("red_box", RIGHT_L)) == 0
    assert stage(("red_box", LEFT_R), ("red_box", RIGHT_R)) == 2  # the left gripper's other finger: no
    assert stage(("red_box", LEFT_L), ("red_box", RIGHT_R), ("red_box", "table")) == 3
    assert stage(("red_box", LEFT_L), ("red_box", RIGHT_R)) == 4
    assert stage(("red_box", LEFT_L)) == 4
    assert stage((RIGHT_R, "red_box")) == 0  # ordered pairs, as gym-aloha tests them


def test_insertion_stages_follow_gym_aloha():
    stage = lambda *pairs: task_stage("insertion", set(pairs))  # noqa: E731
    both = (("socket-2", LEFT_L), ("red_peg", RIGHT_R))
    assert stage(*both, ("red_peg", "table")) == 1
    assert stage(*both, ("socket-1", "table")) == 1
    assert stage(*both) == 2
    assert stage(("socket-2", LEFT_R), ("red_peg", RIGHT_L)) == 0  # the other fingers do not count
    assert stage(("socket-2", LEFT_L), ("red_peg", RIGHT_L)) == 0
    assert stage(*both, ("red_peg", "socket-3")) == 3
    assert stage(("red_peg", "socket-3"), ("red_peg", "table")) == 0
    assert stage(("red_peg", "pin"), ("red_peg", "table")) == 4
    with pytest.raises(ValueError, match="task must be one of"):
        task_stage("folding", set())


class _GymAlohaPhysics:
    """What gym-aloha's `get_reward(physics)` reads, on our MuJoCo world."""

    def __init__(self, sim: AlohaSim) -> None:
        self.data = sim.data
        mj, model = sim.mj, sim.model

        class _Model:
            @staticmethod
            def id2name(i: int, kind: str) -> str:
                return mj.mj_id2name(model, mj.mjtObj.mjOBJ_GEOM, i)

        self.model = _Model()


@pytest.mark.parametrize("task", ["transfer_cube", "insertion"])
def test_stages_equal_gym_alohas_reward_at_every_tick_of_a_scripted_episode(task):
    gym_sim = pytest.importorskip("gym_aloha.tasks.sim", reason="gym-aloha's tasks need dm_control")
    reference = {"transfer_cube": gym_sim.TransferCubeTask, "insertion": gym_sim.InsertionTask}[task]
    clock = SimClock()
    sim = AlohaSim(SimConfig(task=task, seed=5), clock)
    teleop = ScriptedTeleoperator(sim)
    physics = _GymAlohaPhysics(sim)
    tracker = StageTracker(sim)
    try:
        stages, theirs = [], []
        for _ in range(300):
            for side in SIDES:
                sim.set_targets(side, teleop.action(sim.time_s)[side_slice(side)])
            clock.advance(TICK_NS)
            stages.append(tracker.update())
            theirs.append(reference.get_reward(None, physics))
    finally:
        sim.close()
    assert stages == theirs
    reached = list(dict.fromkeys(stages))  # stages in the order first reached
    assert reached == sorted(reached) and reached[0] == 0 and reached[-1] == 4 and len(reached) >= 3
    assert tracker.success and tracker.max_stage == 4 and tracker.success_tick == stages.index(4)


def test_success_is_stage_4_at_any_tick_and_a_reset_forgets_it(world):
    sim, _ = world
    tracker = StageTracker(sim)
    staged = iter([1, 2, 4, 3, 0])
    real_reward = sim.reward
    sim.reward = lambda: next(staged)  # a cube handed over, then dropped
    try:
        assert [tracker.update() for _ in range(5)] == [1, 2, 4, 3, 0]
    finally:
        sim.reward = real_reward
    assert tracker.success and tracker.max_stage == 4 and tracker.success_tick == 2 and tracker.stage == 0
    tracker.reset()
    assert not tracker.success and tracker.max_stage == 0 and tracker.success_tick is None


def test_gripper_fraction_is_gym_alohas_puppet_normalisation():
    constants = pytest.importorskip("gym_aloha.constants")
    assert PUPPET_GRIPPER_POSITION_CLOSE == constants.PUPPET_GRIPPER_POSITION_CLOSE == 0.01844
    assert PUPPET_GRIPPER_POSITION_OPEN == constants.PUPPET_GRIPPER_POSITION_OPEN == 0.058
    assert gripper_to_finger(0.0) == pytest.approx(0.01844) and gripper_to_finger(1.0) == pytest.approx(0.058)
    for x in (-0.1, 0.0, 0.3, 0.5, 1.0, 1.2):
        assert gripper_to_finger(x) == pytest.approx(constants.unnormalize_puppet_gripper_position(x))
        assert finger_to_gripper(gripper_to_finger(x)) == pytest.approx(x)
    for m in (0.021, 0.04, 0.057):
        assert finger_to_gripper(m) == pytest.approx(constants.normalize_puppet_gripper_position(m))


def test_gripper_commands_are_clamped_by_the_actuator_and_measured_states_pass_safety(world):
    sim, clock = world
    sim.reset(0)
    lo, hi = sim.finger_range
    assert (lo, hi) == pytest.approx((0.021, 0.057))
    open_state = np.concatenate([sim.joint_state(s)[0] for s in SIDES])
    assert open_state[6] == pytest.approx(finger_to_gripper(0.057))  # the start pose: as open as it goes
    assert open_state[6] == pytest.approx(0.9747, abs=1e-4)
    closed = REACH.copy()
    closed[6] = 0.0  # 0.01844 m asked, the actuator stops at 0.021 m
    state = run_ticks(sim, clock, closed, 60)
    finger = sim.data.qpos[sim._qpos["left"][-1]]
    assert lo - 1e-3 <= finger <= lo + 2e-3
    assert state[6] == pytest.approx(finger_to_gripper(lo), abs=0.05)  # ~0.066: closed on nothing
    assert 0.0 < state[6] < 0.15
    np.testing.assert_array_equal(sim.limits()[[6, 13]], [[0.0, 1.0], [0.0, 1.0]])  # commands: [0, 1]
    # A measured state (closed, open) starts a safety layer and is echoed back unchanged: nothing rejects it.
    for measured in (state, open_state):
        layer = SafetyLayer(SafetyConfig(), sim.limits(), measured)
        held = layer.filter(measured)
        assert not held.rejected and not held.clamped.any()
        np.testing.assert_array_equal(held.action, measured)
