"""Control tables of the Dynamixel X-series servos an ALOHA uses (Protocol 2.0).

Only the registers the driver and the emulator use are listed, with their address, size, area (EEPROM
registers can be written only while torque is off) and access. Addresses are shared by the whole X
series; the models differ in what they measure (XL430/XC430 report a load in 0.1 % instead of a current)
and in their operating modes (no current-based position control without a current sensor).
Source: the ROBOTIS e-Manual control-table pages of each model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Register:
    name: str
    address: int
    size: int  # bytes, little endian
    eeprom: bool  # EEPROM area: writable only while torque is off
    writable: bool
    signed: bool = False


_REGISTERS = [
    Register("model_number", 0, 2, True, False),
    Register("firmware_version", 6, 1, True, False),
    Register("id", 7, 1, True, True),
    Register("baud_rate", 8, 1, True, True),
    Register("return_delay_time", 9, 1, True, True),  # 2 µs units; 0 answers at once
    Register("drive_mode", 10, 1, True, True),  # bit 0: reverse direction
    Register("operating_mode", 11, 1, True, True),
    Register("secondary_id", 12, 1, True, True),  # 255: none; else follow writes to that id, silently
    Register("homing_offset", 20, 4, True, True, signed=True),
    Register("temperature_limit", 31, 1, True, True),
    Register("max_voltage_limit", 32, 2, True, True),
    Register("min_voltage_limit", 34, 2, True, True),
    Register("current_limit", 38, 2, True, True),  # current-sensing models only
    Register("velocity_limit", 44, 4, True, True),
    Register("max_position_limit", 48, 4, True, True),
    Register("min_position_limit", 52, 4, True, True),
    Register("shutdown", 63, 1, True, True),  # hardware errors that turn torque off
    Register("torque_enable", 64, 1, False, True),
    Register("led", 65, 1, False, True),
    Register("status_return_level", 68, 1, False, True),
    Register("hardware_error_status", 70, 1, False, False),
    Register("position_p_gain", 84, 2, False, True),
    Register("goal_current", 102, 2, False, True, signed=True),
    Register("goal_velocity", 104, 4, False, True, signed=True),
    Register("profile_acceleration", 108, 4, False, True),
    Register("profile_velocity", 112, 4, False, True),
    Register("goal_position", 116, 4, False, True, signed=True),
    Register("moving", 122, 1, False, False),
    Register("present_current", 126, 2, False, False, signed=True),  # XL/XC: present load, 0.1 %
    Register("present_velocity", 128, 4, False, False, signed=True),
    Register("present_position", 132, 4, False, False, signed=True),
    Register("present_input_voltage", 144, 2, False, False),
    Register("present_temperature", 146, 1, False, False),
]
REGISTERS: dict[str, Register] = {r.name: r for r in _REGISTERS}
TABLE_SIZE = 147  # bytes of control table the emulator models (up to present temperature)

# The block one sync read takes every tick: present current (or load), velocity and position.
STATE_BLOCK = (126, 10)

# Operating modes.
CURRENT = 0
VELOCITY = 1
POSITION = 3
EXTENDED_POSITION = 4
CURRENT_BASED_POSITION = 5
PWM = 16

# Baud Rate register value -> baud.
BAUD_RATES = {0: 9600, 1: 57600, 2: 115200, 3: 1_000_000, 4: 2_000_000, 5: 3_000_000, 6: 4_000_000}

TICKS_PER_REV = 4096
RAD_PER_TICK = 2 * math.pi / TICKS_PER_REV
RPM_PER_VELOCITY_UNIT = 0.229
RAD_S_PER_VELOCITY_UNIT = RPM_PER_VELOCITY_UNIT * 2 * math.pi / 60


@dataclass(frozen=True)
class Model:
    name: str
    number: int  # what PING answers
    current_ma_per_unit: float | None  # None: the model reports load, not current
    modes: tuple[int, ...]  # operating modes it supports
    velocity_limit: int  # factory Velocity Limit, 0.229 rpm units
    current_limit: int  # factory Current Limit, units (0 where there is no current sensor)

    @property
    def senses_current(self) -> bool:
        return self.current_ma_per_unit is not None


MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model("xm430-w350", 1020, 2.69, (0, 1, 3, 4, 5, 16), 200, 1193),
        Model("xm540-w270", 1120, 2.69, (0, 1, 3, 4, 5, 16), 128, 2047),
        Model("xl430-w250", 1060, None, (1, 3, 4, 16), 265, 0),
        Model("xc430-w150", 1070, None, (1, 3, 4, 16), 306, 0),
    )
}
MODEL_BY_NUMBER: dict[int, Model] = {m.number: m for m in MODELS.values()}


def model_name(number: int) -> str:
    model = MODEL_BY_NUMBER.get(number)
    return model.name if model else f"unknown model number {number}"


def to_signed(value: int, size: int) -> int:
    bits = 8 * size
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def to_unsigned(value: int, size: int) -> int:
    return value & ((1 << (8 * size)) - 1)
