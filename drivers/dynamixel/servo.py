"""One emulated X-series servo: its control table (EEPROM / RAM, access rules) and its place on a joint.

`BusEmulator` owns the chain and the protocol; an `EmulatedMotor` answers for itself: reads and writes
of its registers with the servo's rules (EEPROM locked while torque is on, read-only registers, goal
limits in position mode, torque refused while a hardware error is latched), its power-on state, and
what it reports about the joint it sits on (`Joint`: the physical state, shared by a master and its
mirrored shadow).
"""

from __future__ import annotations

from drivers.dynamixel import protocol as p
from drivers.dynamixel.tables import (
    POSITION,
    REGISTERS,
    RPM_PER_VELOCITY_UNIT,
    TABLE_SIZE,
    TICKS_PER_REV,
    Model,
    to_signed,
    to_unsigned,
)

FIGHT_TICKS = 40  # a master and its shadow disagreeing by more than this …
FIGHT_S = 0.5  # … for this long overload
CURRENT_PER_TICK = 2.0  # emulated current (units) per tick of tracking error


class Joint:
    """One physical joint; its state is the master encoder's raw position in ticks."""

    def __init__(self, theta: float) -> None:
        self.theta = float(theta)
        self.velocity = 0.0  # ticks/s
        self.fight_s = 0.0
        self.hand_ticks: float | None = None  # where a hand holds it (torque off)


class EmulatedMotor:
    def __init__(self, motor_id: int, model: Model, baud_value: int, joint: Joint, mount: tuple[int, float]):
        self.id = motor_id
        self.model = model
        self.joint = joint
        self.mount = mount  # raw = sign * joint.theta + offset (a shadow is mounted mirrored)
        self.table = bytearray(TABLE_SIZE)
        self.registered: tuple[int, bytes] | None = None
        self.offline_until = 0.0  # rebooting
        self.current = 0.0
        self._eeprom(baud_value)
        self._ram()

    # -- registers -------------------------------------------------------------------------------------
    def get(self, name: str) -> int:
        r = REGISTERS[name]
        raw = int.from_bytes(self.table[r.address : r.address + r.size], "little")
        return to_signed(raw, r.size) if r.signed else raw

    def set(self, name: str, value: int) -> None:
        r = REGISTERS[name]
        self.table[r.address : r.address + r.size] = to_unsigned(int(value), r.size).to_bytes(
            r.size, "little"
        )

    def _eeprom(self, baud_value: int) -> None:
        m = self.model
        for name, value in {
            "model_number": m.number,
            "firmware_version": 48,
            "id": self.id,
            "baud_rate": baud_value,
            "return_delay_time": 250,  # factory: 500 µs before every answer
            "operating_mode": POSITION,
            "secondary_id": 255,
            "temperature_limit": 80,
            "max_voltage_limit": 160,
            "min_voltage_limit": 95,
            "current_limit": m.current_limit,
            "velocity_limit": m.velocity_limit,
            "max_position_limit": TICKS_PER_REV - 1,
            "min_position_limit": 0,
            "shutdown": 0x34,  # overload, electrical shock, overheating
        }.items():
            self.set(name, value)

    def _ram(self) -> None:
        """Power-on / reboot state of the RAM area."""
        for name in ("torque_enable", "led", "hardware_error_status", "profile_velocity", "goal_velocity"):
            self.set(name, 0)
        self.set("status_return_level", 2)
        self.set("position_p_gain", 800)
        self.set("goal_current", self.get("current_limit"))
        self.set("goal_position", self.present_position())
        self.set("present_input_voltage", 120)
        self.set("present_temperature", 32)
        self.registered = None

    # -- physical state ----------------------------------------------------------------------------------
    @property
    def direction(self) -> int:
        return -1 if self.get("drive_mode") & 1 else 1

    def raw(self) -> float:
        sign, offset = self.mount
        return sign * self.joint.theta + offset

    def present_position(self) -> int:
        return round(self.direction * self.raw()) + self.get("homing_offset")

    def theta_for(self, position: int) -> float:
        """The joint state at which this motor would read `position`."""
        sign, offset = self.mount
        raw = (position - self.get("homing_offset")) * self.direction
        return (raw - offset) * sign

    def drives(self) -> bool:
        return bool(self.get("torque_enable")) and not self.get("hardware_error_status")

    def refresh_present(self) -> None:
        self.set("present_position", self.present_position())
        sign, _ = self.mount
        rpm = self.direction * sign * self.joint.velocity * 60 / TICKS_PER_REV
        self.set("present_velocity", round(rpm / RPM_PER_VELOCITY_UNIT))
        self.set("present_current", round(self.current) if self.drives() else 0)
        self.set("moving", int(abs(self.joint.velocity) > 1.0))

    def fault(self, bits: int) -> None:
        self.set("hardware_error_status", self.get("hardware_error_status") | bits)
        if bits & self.get("shutdown"):
            self.set("torque_enable", 0)

    # -- access ------------------------------------------------------------------------------------------
    def read(self, address: int, length: int) -> tuple[int, bytes]:
        if address + length > TABLE_SIZE or length == 0:
            return p.ACCESS_ERROR, b""
        return 0, bytes(self.table[address : address + length])

    def write(self, address: int, data: bytes) -> int:
        """Write registers; returns the status error number (0 on success). All or nothing."""
        regs = [r for r in REGISTERS.values() if address <= r.address < address + len(data)]
        if not regs or regs[0].address != address or address + len(data) > TABLE_SIZE:
            return p.ACCESS_ERROR
        if any(r.address + r.size > address + len(data) for r in regs):
            return p.DATA_LENGTH_ERROR
        torque = self.get("torque_enable")
        for r in regs:
            if not r.writable or (r.eeprom and torque):
                return p.ACCESS_ERROR
        values = {}
        for r in regs:
            raw = int.from_bytes(data[r.address - address : r.address - address + r.size], "little")
            values[r.name] = to_signed(raw, r.size) if r.signed else raw
        if "goal_position" in values and self.get("operating_mode") == POSITION:
            if (
                not self.get("min_position_limit")
                <= values["goal_position"]
                <= self.get("max_position_limit")
            ):
                return p.DATA_LIMIT_ERROR
        if "operating_mode" in values and values["operating_mode"] not in self.model.modes:
            return p.DATA_RANGE_ERROR
        if values.get("torque_enable") and self.get("hardware_error_status"):
            return p.RESULT_FAIL  # torque stays off until a reboot clears the hardware error
        if values.get("torque_enable") and not torque:
            self.set("goal_position", self.present_position())  # no jump to a stale goal
        for name, value in values.items():
            self.set(name, value)
        if "current_limit" in values:
            self.set("goal_current", min(abs(self.get("goal_current")), values["current_limit"]))
        return 0

    def error_byte(self, number: int = 0) -> int:
        return number | (p.ALERT if self.get("hardware_error_status") else 0)
