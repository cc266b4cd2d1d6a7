"""The simulated ALOHA on real MuJoCo with offscreen EGL rendering."""

import numpy as np
import pytest

from drivers.clock import SimClock
from drivers.errors import DeviceError, StaleSampleError
from drivers.joints import SIDES
from drivers.robot import BimanualRobot
from drivers.safety import SafetyConfig
from drivers.sim.aloha import AlohaSim, SimConfig
from drivers.sim.parts import SimArm, SimCamera

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
