"""DynamixelArm on the real dynamixel-sdk against emulated ViperX / WidowX chains."""

import logging
import time

import numpy as np
import pytest

from drivers.dynamixel import protocol as p
from drivers.dynamixel.aloha import load_calibration
from drivers.dynamixel.arm import REBOOT_WAIT_S
from drivers.dynamixel.calibration import Calibration, CalibrationError, Calibrator
from drivers.dynamixel.emulated import REST_POSE, EmulatedOperator, arm_truth, truth_calibration
from drivers.dynamixel.tables import RAD_PER_TICK
from drivers.errors import DeviceError
from tests.drivers.dynamixel.conftest import FOLLOWER, LEADER

TICK = RAD_PER_TICK


def test_connect_configures_a_follower_and_holds_it_where_it_is(chains):
    c = chains("left_follower")
    c.arm.connect()
    c.emulator.settle()
    m = c.motor
    assert all(m(i).get("return_delay_time") == 0 for i in FOLLOWER.motor_ids)
    assert [m(i).get("operating_mode") for i in (1, 2, 4, 6, 7, 8)] == [3] * 6
    assert m(9).get("operating_mode") == 5  # gripper: current-based position
    assert m(9).get("current_limit") == 200 == m(9).get("goal_current")  # ceil(538 mA / 2.69 mA)
    assert (m(3).get("secondary_id"), m(5).get("secondary_id")) == (2, 4)
    assert m(3).direction == -m(2).direction and m(5).direction == -m(4).direction
    assert m(3).present_position() == m(2).present_position()  # shadows aligned with their masters
    assert all(m(i).get("torque_enable") == 1 for i in FOLLOWER.motor_ids)
    assert all(m(i).get("goal_position") == m(i).present_position() for i in FOLLOWER.motor_ids)
    np.testing.assert_allclose(c.arm.read().position, REST_POSE, atol=1.01 * TICK)


def test_connect_leaves_a_leader_limp(chains):
    c = chains("left_leader")
    c.motor(4).set("torque_enable", 1)
    c.arm.connect()
    c.emulator.settle()
    assert all(c.motor(i).get("torque_enable") == 0 for i in LEADER.motor_ids)
    assert c.motor(9).get("operating_mode") == 3  # an XL430 gripper is left in position mode


def test_read_converts_units_exactly(chains):
    c = chains("left_leader")
    c.arm.connect()
    pose = np.array([0.3, -0.5, 0.9, -1.2, 0.4, 2.0, 0.8])
    truth = arm_truth("left_leader", LEADER)
    c.emulator.move_by_hand(dict(zip(LEADER.motor_ids[:7], truth.ticks(pose), strict=True)))
    sample = c.arm.read()
    np.testing.assert_allclose(sample.position[:6], pose[:6], atol=0.51 * TICK)
    assert abs(sample.position[6] - 0.8) < 1 / abs(truth.gripper_open - truth.gripper_closed)
    assert sample.t_ns > 0 and sample.velocity.shape == (7,)
    assert (
        np.isnan(sample.effort[5:]).all() and np.isfinite(sample.effort[:5]).all()
    )  # XL430s report no current


def test_calibration_round_trip_and_file(tmp_path):
    cal = truth_calibration("left_follower", "follower", FOLLOWER)
    ticks = np.array([100, 2048, 3000, 1, 4095, 2500, 1200], dtype=float)
    np.testing.assert_array_equal(cal.to_ticks(cal.to_joint(ticks)), ticks)
    pose = np.array([0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7])
    np.testing.assert_allclose(cal.to_joint(cal.to_ticks(pose)), pose, atol=0.51 * TICK)
    path = cal.save(tmp_path / "left_follower.json")
    assert Calibration.load(path) == cal
    np.testing.assert_array_equal(cal.limits()[6], [0.0, 1.0])


def test_calibrator_recovers_the_emulated_assembly(chains):
    c = chains("right_follower")
    from drivers.dynamixel.bus import DynamixelBus
    from drivers.dynamixel.calibration import read_positions

    bus = DynamixelBus(c.config.port, c.config.baudrate, c.name)
    bus.open()
    try:
        masters = c.config.motor_ids[:7]
        calibrator = Calibrator(
            c.name,
            "follower",
            c.config.motor_ids,
            c.config.motor_models,
            lambda: read_positions(bus, masters),
        )
        found = calibrator.run(EmulatedOperator(c.emulator, c.name, FOLLOWER))
    finally:
        bus.close()
    truth = truth_calibration("right_follower", "follower", FOLLOWER)
    assert (
        found.offset == truth.offset and found.sign == truth.sign and found.gripper_open == truth.gripper_open
    )
    np.testing.assert_allclose(found.lower, truth.lower, atol=TICK)
    np.testing.assert_allclose(found.upper, truth.upper, atol=TICK)


def test_a_calibration_for_another_arm_is_refused(tmp_path):
    path = truth_calibration("left_leader", "leader", LEADER).save(tmp_path / "left_follower.json")
    with pytest.raises(
        CalibrationError, match="was made for arm left_leader, not left_follower.*xr0 calibrate"
    ):
        load_calibration("left_follower", FOLLOWER, path)
    with pytest.raises(DeviceError, match="has no calibration.*xr0 calibrate --arm left_follower"):
        load_calibration("left_follower", FOLLOWER, tmp_path / "missing.json")
    other = truth_calibration("left_follower", "follower", LEADER).save(tmp_path / "wired.json")
    with pytest.raises(CalibrationError, match="was made for motors"):
        load_calibration("left_follower", FOLLOWER, other)


def test_writes_reach_masters_and_shadows_follow_without_a_fight(chains):
    c = chains("left_follower")
    c.arm.connect()
    c.arm.read()
    target = REST_POSE + np.array([0.2, 0.15, -0.2, 0.3, -0.2, 0.4, -0.3])
    c.arm.write(target)
    expected = np.rint(arm_truth("left_follower", FOLLOWER).ticks(target))
    c.emulator.settle()
    got = [c.motor(i).get("goal_position") for i in FOLLOWER.motor_ids[:7]]
    np.testing.assert_array_equal(got, expected)
    assert c.motor(3).get("goal_position") == c.motor(2).get("goal_position")  # through the Secondary ID
    time.sleep(0.8)  # the emulated joints track (and a shadow that fought would overload after 0.5 s)
    sample = c.arm.read()
    np.testing.assert_allclose(sample.position[:6], target[:6], atol=2 * TICK)
    assert not any(c.motor(i).get("hardware_error_status") for i in FOLLOWER.motor_ids)
    assert c.motor(5).present_position() == c.motor(4).present_position()


def test_leader_reading_becomes_follower_targets(chains):
    leader = chains(
        "left_leader", to_follower_offsets_rad=(0.1, 0, 0, 0, -0.05, 0), to_follower_gripper=(0.2, 0.8)
    )
    follower = chains("left_follower")
    leader.arm.connect()
    follower.arm.connect()
    pose = REST_POSE + np.array([0.2, 0.1, -0.2, 0.1, -0.2, 0.3, 0.0])  # near the follower (no refused jump)
    lt = arm_truth("left_leader", LEADER)
    leader.emulator.move_by_hand(dict(zip(LEADER.motor_ids[:7], lt.ticks(pose), strict=True)))
    mapped = leader.arm.read().position
    want = pose + np.array([0.1, 0, 0, 0, -0.05, 0, 0])
    want[6] = (0.5 - 0.2) / 0.6
    np.testing.assert_allclose(mapped, want, atol=1e-3)
    follower.arm.read()
    follower.arm.write(mapped)
    follower.emulator.settle()
    assert follower.arm.counters.refused_jumps == 0
    ft = arm_truth("left_follower", FOLLOWER)
    got = [follower.motor(i).get("goal_position") for i in FOLLOWER.motor_ids[:7]]
    np.testing.assert_array_equal(got, np.rint(ft.ticks(mapped)))
    # Different arms, different assemblies: the same angle is a different tick count on each.
    assert not np.array_equal(np.rint(ft.ticks(mapped)), np.rint(lt.ticks(mapped)))


def test_a_joint_outside_its_limits_at_start_is_refused_and_torque_left_as_it_was(chains):
    pose = REST_POSE.copy()
    pose[2] = 1.9  # elbow, upper limit 1.6
    c = chains("left_follower", pose=pose)
    with pytest.raises(
        DeviceError,
        match=r"left_follower: elbow is at 1\.90 rad, outside its calibrated range \[-1\.76, 1\.60\] rad; the torque was left",
    ):
        c.arm.connect()
    assert all(c.motor(i).get("torque_enable") == 0 for i in FOLLOWER.motor_ids)
    assert not c.arm.bus.is_open


def test_a_wrong_model_on_the_chain_is_named(chains):
    c = chains("left_follower")
    c.arm.models[8] = "xl430-w250"
    with pytest.raises(DeviceError, match=r"id 8 \(wrist_rotate\) is xm430-w350 .* config says xl430-w250"):
        c.arm.connect()


def test_goal_too_far_from_the_measured_position_is_held_then_stops(chains):
    c = chains("left_follower")
    c.arm.connect()
    c.arm.read()
    c.emulator.settle()
    before = c.motor(4).get("goal_position")
    far = REST_POSE.copy()
    far[2] += 0.8
    c.arm.write(far)
    c.emulator.settle()
    assert c.motor(4).get("goal_position") == before and c.arm.counters.refused_jumps == 1
    for _ in range(28):
        c.arm.write(far)
    with pytest.raises(
        DeviceError, match=r"left_follower: the elbow target .* for 30 ticks in a row; the arm is holding"
    ):
        c.arm.write(far)


@pytest.mark.parametrize("torque_off", [True, False])
def test_torque_policy_on_exit(chains, torque_off):
    c = chains("left_follower")
    c.arm.connect()
    c.arm.disconnect(torque_off=torque_off)
    c.emulator.settle()
    assert all(c.motor(i).get("torque_enable") == (0 if torque_off else 1) for i in FOLLOWER.motor_ids)
    assert not c.arm.bus.is_open


def test_failed_reads_hold_the_last_sample_within_budget_then_stop(chains):
    # With the FTDI's factory 16 ms latency timer the SDK alone would wait 34+ ms per attempt: finishing
    # within ~the 8 ms budget (+ scheduling slack on a busy machine) shows the budget bounds the read.
    c = chains("left_follower", read_budget_ms=8.0, max_failed_reads=4, latency_timer_ms=16.0)
    c.arm.connect()
    good = c.arm.read()
    c.emulator.faults.drop_rate = 1.0
    for _ in range(3):
        t0 = time.monotonic()
        assert c.arm.read() is good  # same sample, same (old) capture time
        assert time.monotonic() - t0 < 0.018
    t0 = time.monotonic()
    with pytest.raises(DeviceError) as e:
        c.arm.read()
    assert time.monotonic() - t0 < 0.018
    assert f"left_follower: waist (id 1) on {c.config.port}: no status packet (timeout)" in str(e.value)
    assert "4 read(s) in a row failed" in str(e.value)
    c.emulator.faults.drop_rate = 0.0
    assert c.arm.read().t_ns > good.t_ns  # it recovers when the bus does


def test_corrupted_packets_are_retried_and_counted(chains):
    c = chains("left_follower")
    c.arm.connect()
    c.emulator.faults.corrupt_rate = 0.05
    for _ in range(30):
        c.arm.read()
    stats, counters = c.arm.bus.stats, c.arm.counters
    assert stats.corrupt > 0 and stats.retries > 0
    assert (
        counters.reads + counters.failed_reads == 31
    )  # none raised; a rare read that ran out of budget held
    assert counters.failed_reads <= 3


def test_hardware_error_is_decoded_and_the_motor_rebooted(chains, caplog):
    c = chains("left_follower")
    c.arm.connect()
    c.arm.read()
    c.emulator.settle()
    c.emulator.set_hardware_error(4, p.HW_OVERLOAD)
    assert c.motor(4).get("torque_enable") == 0  # the servo shut down
    with caplog.at_level(logging.ERROR):
        c.arm.read()
    assert (
        "left_follower: elbow (id 4) reports overload" in caplog.text
        and "rebooting it (1 of 3)" in caplog.text
    )
    assert c.arm.counters.reboots == 1 and c.motor(4).get("hardware_error_status") == 0
    time.sleep(REBOOT_WAIT_S + 0.05)
    # back in the loop: holding where it is, torque on. The loop reads every tick; on a loaded machine the
    # emulator's reboot can finish a few ticks late, so read as the loop would, for up to a second.
    deadline = time.monotonic() + 1.0
    while True:
        c.arm.read()
        c.emulator.settle()
        if c.motor(4).get("torque_enable") == 1 or time.monotonic() > deadline:
            break
        time.sleep(1 / 30)
    assert (
        c.motor(4).get("torque_enable") == 1
        and c.motor(4).get("goal_position") == c.motor(4).present_position()
    )


def test_hardware_error_beyond_the_reboot_budget_stops_with_the_sentence(chains):
    c = chains("left_follower", max_reboots=0)
    c.arm.connect()
    c.emulator.set_hardware_error(9, p.HW_OVERHEATING | p.HW_INPUT_VOLTAGE)
    with pytest.raises(
        DeviceError, match=r"left_follower: gripper \(id 9\) on .* reports input voltage error.*; overheating"
    ):
        c.arm.read()


def test_hardware_error_at_connect_is_rebooted(chains):
    c = chains("left_follower")
    c.emulator.set_hardware_error(7, p.HW_ELECTRICAL_SHOCK)
    c.arm.connect()
    assert c.arm.counters.reboots == 1 and c.motor(7).get("hardware_error_status") == 0


def test_an_unplugged_port_names_the_arm(chains):
    c = chains("left_follower")
    c.arm.connect()
    c.emulator.disconnect()
    with pytest.raises(DeviceError, match=r"left_follower: .*lost the serial port"):
        c.arm.read()


def test_a_motor_that_stops_answering_is_named_after_the_held_reads(chains):
    c = chains("left_follower", max_failed_reads=3)
    c.arm.connect()
    c.arm.read()
    c.emulator.faults.missing = {6}
    c.arm.read()
    c.arm.read()
    with pytest.raises(
        DeviceError, match=r"left_follower: forearm_roll \(id 6\) on .*3 read\(s\) in a row failed"
    ):
        c.arm.read()
