"""Dynamixel Protocol 2.0 on the wire: framing, byte stuffing, CRC-16, and errors as sentences.

The driver sends and receives through `dynamixel-sdk`; this module is what the bus emulator speaks and
what the benchmark uses to compute wire time. It is written from the Protocol 2.0 specification
(ROBOTIS e-Manual, "DYNAMIXEL Protocol 2.0"): a packet is

    FF FF FD 00 | ID | LEN_L LEN_H | INST | PARAMS… | CRC_L CRC_H

where LEN counts INST, PARAMS and CRC, any `FF FF FD` inside INST+PARAMS is stuffed to `FF FF FD FD`,
and the CRC (CRC-16, polynomial 0x8005, initial value 0, not reflected) covers every byte before it,
stuffed. A status packet has INST 0x55 followed by an error byte.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER = b"\xff\xff\xfd\x00"
BROADCAST_ID = 0xFE
MAX_ID = 0xFC

# Instructions.
PING = 0x01
READ = 0x02
WRITE = 0x03
REG_WRITE = 0x04
ACTION = 0x05
REBOOT = 0x08
STATUS = 0x55
SYNC_READ = 0x82
SYNC_WRITE = 0x83
BULK_READ = 0x92
BULK_WRITE = 0x93
INSTRUCTION_NAMES = {
    PING: "ping",
    READ: "read",
    WRITE: "write",
    REG_WRITE: "reg write",
    ACTION: "action",
    REBOOT: "reboot",
    SYNC_READ: "sync read",
    SYNC_WRITE: "sync write",
    BULK_READ: "bulk read",
    BULK_WRITE: "bulk write",
}

# Status packet error byte: bit 7 is the hardware alert, bits 0..6 an error number.
ALERT = 0x80
RESULT_FAIL = 1
INSTRUCTION_ERROR = 2
CRC_ERROR = 3
DATA_RANGE_ERROR = 4
DATA_LENGTH_ERROR = 5
DATA_LIMIT_ERROR = 6
ACCESS_ERROR = 7
STATUS_ERRORS = {
    RESULT_FAIL: "the motor failed to process the instruction",
    INSTRUCTION_ERROR: "the motor does not know this instruction, or got an action without a reg write",
    CRC_ERROR: "the motor received a packet with a wrong CRC (noise on the bus?)",
    DATA_RANGE_ERROR: "the value is outside the register's range",
    DATA_LENGTH_ERROR: "the data is shorter than the register",
    DATA_LIMIT_ERROR: "the value is outside the limit set in the motor's EEPROM",
    ACCESS_ERROR: (
        "access error: the register is read-only, does not exist, or is in EEPROM while torque is on "
        "(EEPROM is locked while torque is enabled)"
    ),
}

# Hardware Error Status register (address 70) bits, X series.
HW_INPUT_VOLTAGE = 0x01
HW_OVERHEATING = 0x04
HW_ENCODER = 0x08
HW_ELECTRICAL_SHOCK = 0x10
HW_OVERLOAD = 0x20
HARDWARE_ERRORS = {
    HW_INPUT_VOLTAGE: "input voltage error: the supply voltage is outside the motor's range (check the 12 V supply and cables)",
    HW_OVERHEATING: "overheating: the motor is hotter than its temperature limit (let it cool, reduce the load)",
    HW_ENCODER: "encoder error: the motor's position sensor malfunctions",
    HW_ELECTRICAL_SHOCK: "electrical shock: the motor's circuit detected a shock or too little power",
    HW_OVERLOAD: (
        "overload: a load above the motor's maximum lasted too long "
        "(a collision, a blocked joint, or a shadow motor fighting its master)"
    ),
}


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray) -> int:
    crc = 0
    table = _CRC_TABLE
    for b in data:
        crc = ((crc << 8) ^ table[((crc >> 8) ^ b) & 0xFF]) & 0xFFFF
    return crc


def stuff(body: bytes) -> bytes:
    """Insert 0xFD after every FF FF FD inside the instruction and parameters."""
    out = bytearray()
    for b in body:
        out.append(b)
        if b == 0xFD and len(out) >= 3 and out[-3] == 0xFF and out[-2] == 0xFF:
            out.append(0xFD)
    return bytes(out)


def unstuff(body: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(body):
        b = body[i]
        out.append(b)
        if b == 0xFD and len(out) >= 3 and out[-3] == 0xFF and out[-2] == 0xFF:
            if i + 1 < len(body) and body[i + 1] == 0xFD:
                i += 1  # skip the stuffed byte
        i += 1
    return bytes(out)


def encode(motor_id: int, instruction: int, params: bytes = b"") -> bytes:
    """A complete packet (instruction or status) with stuffing and CRC."""
    body = stuff(bytes([instruction]) + bytes(params))
    length = len(body) + 2
    head = HEADER + bytes([motor_id, length & 0xFF, length >> 8])
    crc = crc16(head + body)
    return head + body + bytes([crc & 0xFF, crc >> 8])


def status(motor_id: int, error: int, params: bytes = b"") -> bytes:
    return encode(motor_id, STATUS, bytes([error]) + bytes(params))


@dataclass(frozen=True)
class Packet:
    motor_id: int
    instruction: int
    params: bytes  # unstuffed; for a status packet the first byte is the error
    crc_ok: bool


def decode(buffer: bytearray) -> tuple[Packet | None, int]:
    """Take the first packet out of `buffer`.

    Returns (packet, bytes consumed). Garbage before a header is consumed with no packet; an incomplete
    packet consumes nothing (wait for more bytes).
    """
    start = buffer.find(HEADER)
    if start < 0:
        return None, max(0, len(buffer) - 3)  # keep a possible partial header
    if start > 0:
        return None, start
    if len(buffer) < 7:
        return None, 0
    length = buffer[5] | (buffer[6] << 8)
    if length < 3 or length > 1024:
        return None, 1  # not a real header: skip a byte and search again
    end = 7 + length
    if len(buffer) < end:
        return None, 0
    raw = bytes(buffer[:end])
    false_header = unstuffed_header(raw[7:-2])
    if false_header is not None:
        # A real servo's parser restarts at every FF FF FD it sees: an unstuffed one inside the payload is
        # a new header, and the packet so far is lost. Do the same, so a sender that forgets to stuff fails
        # here as it would on the hardware.
        return None, 7 + false_header
    crc_ok = crc16(raw[:-2]) == (raw[-2] | (raw[-1] << 8))
    body = unstuff(raw[7:-2])
    return Packet(raw[4], body[0], body[1:], crc_ok), end


def unstuffed_header(body: bytes) -> int | None:
    """The index of the first FF FF FD inside `body` (instruction and parameters as sent) that is not
    stuffed (not followed by FD), or None. `FF FF FD FD` is a stuffed FF FF FD and the scan skips its FD."""
    i = 0
    while True:
        i = body.find(b"\xff\xff\xfd", i)
        if i < 0:
            return None
        if i + 3 < len(body) and body[i + 3] == 0xFD:
            i += 4
            continue
        return i


def wire_bytes_sync_read(n_motors: int, data_length: int) -> tuple[int, int]:
    """(instruction bytes, status bytes) of one sync read (no stuffing)."""
    instruction = 10 + 4 + n_motors + 2  # header+id+len+inst, addr+len, ids, crc
    status_each = 11 + data_length  # header+id+len+inst+err+crc, data
    return instruction, n_motors * status_each


def wire_bytes_sync_write(n_motors: int, data_length: int) -> int:
    return 10 + 4 + n_motors * (1 + data_length) + 2


def wire_time_s(n_bytes: int, baudrate: int) -> float:
    """Time on the wire: 10 bits per byte (start, 8 data, stop)."""
    return n_bytes * 10 / baudrate


def describe_status_error(error: int) -> str:
    """The status packet's error byte as a sentence ('' if none)."""
    parts = []
    number = error & 0x7F
    if number:
        parts.append(STATUS_ERRORS.get(number, f"unknown error number {number}"))
    if error & ALERT:
        parts.append("hardware alert (see the Hardware Error Status register)")
    return "; ".join(parts)


def describe_hardware_error(bits: int) -> str:
    """The Hardware Error Status register as a sentence, every set bit named."""
    parts = [text for bit, text in HARDWARE_ERRORS.items() if bits & bit]
    unknown = bits & ~sum(HARDWARE_ERRORS)
    if unknown:
        parts.append(f"unknown hardware error bits 0x{unknown:02x}")
    return "; ".join(parts) if parts else "no hardware error"
