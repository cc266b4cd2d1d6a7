"""Protocol 2.0 framing of the emulator, checked against the dynamixel-sdk's own implementation."""

import random

from dynamixel_sdk import PacketHandler

from drivers.dynamixel import protocol as p


def test_crc_matches_the_sdk():
    sdk = PacketHandler(2.0)
    rng = random.Random(1)
    for n in (0, 1, 7, 64, 300):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert p.crc16(data) == sdk.updateCRC(0, list(data), len(data))


def test_stuffing_round_trip_and_sdk_agreement():
    body = bytes([0x03, 0x74, 0x00, 0xFF, 0xFF, 0xFD, 0x01, 0xFF, 0xFF, 0xFD])
    stuffed = p.stuff(body)
    assert stuffed == bytes([0x03, 0x74, 0x00, 0xFF, 0xFF, 0xFD, 0xFD, 0x01, 0xFF, 0xFF, 0xFD, 0xFD])
    assert p.unstuff(stuffed) == body
    # The SDK stuffs a packet the same way (its addStuffing works on a whole packet with a dummy CRC).
    packet = [0xFF, 0xFF, 0xFD, 0x00, 1, len(body) + 2, 0, *body, 0, 0]
    sdk = PacketHandler(2.0).addStuffing(packet)
    assert bytes(sdk[7:-2]) == stuffed


def test_encode_decode_with_garbage_and_split_input():
    packet = p.encode(7, p.WRITE, bytes([116, 0, 0xFF, 0xFF, 0xFD, 0x00]))
    buf = bytearray(b"\x00\x13" + packet[:5])
    got, used = p.decode(buf)
    assert got is None and used == 2  # garbage before the header is dropped
    del buf[:used]
    assert p.decode(buf) == (None, 0)  # incomplete: wait for more
    buf += packet[5:]
    got, used = p.decode(buf)
    assert used == len(packet) and got.crc_ok
    assert (got.motor_id, got.instruction, got.params) == (
        7,
        p.WRITE,
        bytes([116, 0, 0xFF, 0xFF, 0xFD, 0x00]),
    )
    bad = bytearray(packet)
    bad[-1] ^= 1
    assert not p.decode(bad)[0].crc_ok


def test_errors_are_sentences():
    assert "EEPROM is locked while torque is enabled" in p.describe_status_error(p.ACCESS_ERROR)
    assert "hardware alert" in p.describe_status_error(p.ALERT)
    text = p.describe_hardware_error(p.HW_OVERLOAD | p.HW_INPUT_VOLTAGE)
    assert text.startswith("input voltage error") and "overload" in text
    assert p.describe_hardware_error(0) == "no hardware error"


def test_wire_time_of_a_nine_motor_cycle():
    tx, rx = p.wire_bytes_sync_read(9, 10)
    assert (tx, rx) == (25, 189)  # 14+9+2 instruction bytes; 9 status packets of 11+10 bytes
    assert p.wire_bytes_sync_write(7, 4) == 51
    assert abs(p.wire_time_s(tx + rx + 51, 1_000_000) - 2.65e-3) < 1e-9


def test_an_unstuffed_header_inside_a_payload_restarts_the_parser_as_on_a_servo():
    # what dynamixel-sdk 4.1 sends for "write Homing Offset −131073 to id 1": the value's bytes
    # FF FF FD FF unstuffed, with the unstuffed length — a real servo resynchronises on that false header
    body = bytes([p.WRITE, 20, 0, 0xFF, 0xFF, 0xFD, 0xFF])
    head = p.HEADER + bytes([1, len(body) + 2, 0])  # FF FF FD 00, id, length
    crc = p.crc16(head + body)
    unstuffed = head + body + bytes([crc & 0xFF, crc >> 8])
    packet, used = p.decode(bytearray(unstuffed))
    assert packet is None and used == 7 + 3  # dropped up to the false header, parsing restarts there
    assert p.unstuffed_header(body) == 3 and p.unstuffed_header(p.stuff(body)) is None
    packet, used = p.decode(bytearray(p.encode(1, p.WRITE, body[1:])))  # stuffed: accepted
    assert packet is not None and packet.params == body[1:] and packet.crc_ok
