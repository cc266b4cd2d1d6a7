"""The bus on the real dynamixel-sdk against the emulator: motor check, exact round trips, port faults."""

import os
import time

import pytest

from drivers.dynamixel import protocol as p
from drivers.dynamixel.bus import BusError, DynamixelBus, PortLost
from drivers.dynamixel.emulator import BusEmulator
from drivers.dynamixel.tables import STATE_BLOCK
from tests.drivers.dynamixel.conftest import TEST_CONFIG_WAIT_MS, TEST_LATENCY_MS

IDS = (1, 2, 4, 6, 7, 8, 9, 3, 5)
MODELS = ("xm540-w270",) * 5 + ("xm430-w350",) * 2 + ("xm540-w270",) * 2
EXPECTED = dict(zip(IDS, MODELS, strict=True))


@pytest.fixture
def emulator():
    with BusEmulator(list(EXPECTED.items()), baudrate=1_000_000, shadows={3: 2, 5: 4}) as emu:
        for m in emu.motors.values():
            m.set("return_delay_time", 0)  # as an arm configures it (factory: 500 µs before each answer)
        yield emu


@pytest.fixture
def bus(emulator):
    b = DynamixelBus(
        emulator.port, 1_000_000, "test_arm", latency_ms=TEST_LATENCY_MS, config_wait_ms=TEST_CONFIG_WAIT_MS
    )
    b.open()
    b.return_delay_ms = 0.0  # the motors answer at once (see the emulator fixture)
    yield b
    b.close()


def soon(ms: float = 100.0) -> int:
    return time.monotonic_ns() + int(ms * 1e6)


def test_motor_check_passes_and_lists_every_problem(emulator, bus):
    assert bus.check_motors(EXPECTED) == dict.fromkeys(IDS, 0)
    emulator.faults.missing = {4, 5}
    wrong = {**EXPECTED, 8: "xl430-w250"}
    with pytest.raises(BusError) as e:
        bus.check_motors(wrong, {4: "elbow", 8: "wrist_rotate"})
    msg = str(e.value)
    assert "id 4 (elbow) did not answer" in msg and "id 5 did not answer" in msg
    assert "id 8 (wrist_rotate) is xm430-w350 (model 1020) but the config says xl430-w250" in msg
    assert "test_arm" in msg and emulator.port in msg


def test_wrong_baud_rate_is_named(emulator):
    b = DynamixelBus(emulator.port, 57_600, "test_arm")
    b.open()
    try:
        with pytest.raises(BusError, match=r"no motor answered at 57600 baud.*Baud Rate matches"):
            b.check_motors(EXPECTED)
    finally:
        b.close()
    assert emulator.ignored > 0  # the emulated servos saw the packets at the wrong speed


def test_port_problems_are_one_sentence(emulator, bus, tmp_path, monkeypatch):
    with pytest.raises(BusError, match=r"serial port /dev/ttyDXL_nowhere does not exist .*udev rule"):
        DynamixelBus("/dev/ttyDXL_nowhere", 1_000_000, "left_follower").open()
    with pytest.raises(BusError, match=r"in use by another program"):
        DynamixelBus(emulator.port, 1_000_000, "left_follower").open()  # `bus` holds it
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: False if path == emulator.port else real_access(path, mode)
    )
    with pytest.raises(BusError, match=r"permission denied on .*dialout"):
        DynamixelBus(emulator.port, 1_000_000, "left_follower").open()


def test_register_and_sync_round_trips_are_exact(emulator, bus):
    assert bus.read(4, "model_number") == 1120
    bus.write(4, "return_delay_time", 7)
    assert emulator.motors[4].get("return_delay_time") == 7
    goals = {1: 1000, 2: 3000, 4: 2222, 6: 17, 7: 4095, 8: 2048, 9: 1500}
    bus.sync_write("torque_enable", dict.fromkeys(IDS, 1))
    bus.sync_write("goal_position", goals)
    time.sleep(0.02)
    for motor_id, goal in goals.items():
        assert bus.read(motor_id, "goal_position") == goal
    # A known physical state comes back exactly through one sync read.
    bus.sync_write("torque_enable", dict.fromkeys(IDS, 0))
    emulator.move_by_hand({1: 1234.0, 4: 2900.0})
    replies = bus.sync_read(IDS, *STATE_BLOCK, soon())
    assert set(replies) == set(IDS)
    position = {i: int.from_bytes(r.data[6:10], "little", signed=True) for i, r in replies.items()}
    assert position[1] == 1234 and position[4] == 2900
    assert position[5] == round(emulator.motors[5].mount[1] - 2900)  # the shadow, mounted mirrored
    assert all(r.error == 0 for r in replies.values())


def test_bulk_read_takes_a_different_block_per_motor(emulator, bus):
    emulator.motors[2].set("present_temperature", 41)
    replies = bus.bulk_read({1: (0, 2), 2: (146, 1), 9: (38, 2)}, soon())
    assert int.from_bytes(replies[1].data, "little") == 1120
    assert replies[2].data == bytes([41])
    assert int.from_bytes(replies[9].data, "little") == 1193  # XM430-W350 factory current limit


def test_eeprom_is_locked_while_torque_is_on(emulator, bus):
    bus.write(9, "torque_enable", 1)
    with pytest.raises(
        BusError, match=r"write operating_mode=5 on motor id 9 failed: access error.*EEPROM is locked"
    ):
        bus.write(9, "operating_mode", 5)
    bus.write(9, "torque_enable", 0)
    bus.write(9, "operating_mode", 5)
    assert emulator.motors[9].get("operating_mode") == 5


def test_shadow_follows_writes_to_its_master_silently(emulator, bus):
    bus.write(3, "secondary_id", 2)
    bus.write(2, "profile_velocity", 77)  # addressed to the master only
    assert emulator.motors[3].get("profile_velocity") == 77
    assert bus.read(2, "profile_velocity") == 77  # one status packet (the master's), not two


def test_corrupt_and_dropped_status_packets_are_retried_within_budget(emulator, bus):
    emulator.faults.corrupt_crc = 1
    bus.sync_read(IDS, *STATE_BLOCK, soon(60))
    assert bus.stats.corrupt == 1 and bus.stats.retries == 1
    emulator.faults.drop = 1
    t0 = time.monotonic()
    bus.sync_read(IDS, *STATE_BLOCK, soon(60))
    assert time.monotonic() - t0 < 0.06
    assert bus.stats.timeouts == 1 and bus.stats.retries == 2


def ftdi_default_bus(emulator, bus) -> DynamixelBus:
    """A bus that assumes the FTDI's factory 16 ms latency timer: the SDK alone would wait 34+ ms for
    one status packet, so finishing within a 10 ms budget proves the budget is what bounds the wait."""
    bus.close()
    slow = DynamixelBus(
        emulator.port, 1_000_000, "test_arm", latency_ms=16.0, config_wait_ms=TEST_CONFIG_WAIT_MS
    )
    slow.open()
    slow.return_delay_ms = 0.0
    return slow


def test_persistent_silence_fails_within_the_budget_naming_the_motor(emulator, bus):
    bus = ftdi_default_bus(emulator, bus)
    emulator.faults.missing = {6}
    t0 = time.monotonic()
    with pytest.raises(BusError) as e:
        bus.sync_read(IDS, *STATE_BLOCK, soon(10))
    elapsed = time.monotonic() - t0
    bus.close()
    assert elapsed < 0.02, f"a failed read took {elapsed * 1e3:.1f} ms, budget 10 ms (+ scheduling slack)"
    assert e.value.motor_id == 6 and "no status packet" in e.value.fault
    assert "test_arm" in str(e.value) and emulator.port in str(e.value)


def test_a_delayed_packet_longer_than_the_budget_is_a_timeout(emulator, bus):
    bus = ftdi_default_bus(emulator, bus)
    emulator.faults.delay, emulator.faults.delay_s = 100, 0.05
    t0 = time.monotonic()
    with pytest.raises(BusError, match="no status packet"):
        bus.sync_read(IDS, *STATE_BLOCK, soon(8))
    elapsed = time.monotonic() - t0
    bus.close()
    assert elapsed < 0.018


def test_reboot_clears_a_hardware_error(emulator, bus):
    emulator.set_hardware_error(4, p.HW_OVERLOAD)
    replies = bus.sync_read(IDS, *STATE_BLOCK, soon())
    assert replies[4].error & p.ALERT and not replies[2].error
    assert bus.read(4, "hardware_error_status") == p.HW_OVERLOAD
    bus.reboot(4)
    time.sleep(emulator.reboot_s + 0.02)
    assert bus.read(4, "hardware_error_status") == 0


def test_unplugged_port_is_named(emulator, bus):
    emulator.disconnect()
    with pytest.raises(PortLost, match=r"test_arm .*lost the serial port.*unplugged"):
        bus.sync_read(IDS, *STATE_BLOCK, soon())


NEEDS_STUFFING = -131073  # little-endian FF FF FD FF: a false header unless stuffed


def test_values_that_need_byte_stuffing_survive_every_instruction_both_ways(emulator, bus):
    """The SDK drops its own stuffing on transmit (see bus.stuffing_packet_handler); the emulator parses as
    strictly as a servo. Write, sync write, sync read and bulk read with values whose bytes hold FF FF FD."""
    bus.write(1, "homing_offset", NEEDS_STUFFING)  # write (an instruction with a stuffed payload)
    assert emulator.motors[1].get("homing_offset") == NEEDS_STUFFING
    bus.sync_write("homing_offset", {2: NEEDS_STUFFING, 4: NEEDS_STUFFING, 6: 5})  # sync write
    time.sleep(0.02)
    assert [emulator.motors[i].get("homing_offset") for i in (2, 4, 6)] == [NEEDS_STUFFING] * 2 + [5]
    # statuses whose data need stuffing, read back through the SDK's receive path
    assert bus.read(2, "homing_offset") == NEEDS_STUFFING
    replies = bus.sync_read((1, 2, 6), 20, 4, soon())
    got = {i: int.from_bytes(r.data, "little", signed=True) for i, r in replies.items()}
    assert got == {1: NEEDS_STUFFING, 2: NEEDS_STUFFING, 6: 5}
    replies = bus.bulk_read({4: (20, 4), 9: (38, 2)}, soon())
    assert int.from_bytes(replies[4].data, "little", signed=True) == NEEDS_STUFFING
