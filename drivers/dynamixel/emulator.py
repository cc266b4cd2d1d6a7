"""A virtual Dynamixel chain on a pseudo-terminal that speaks Protocol 2.0 byte for byte, with faults.

`BusEmulator` opens a pty (`os.openpty()`); the driver — the real `dynamixel_sdk.PortHandler` — opens
its slave path like any serial port. A thread serves the master side: it parses instruction packets
(header, stuffing, CRC), runs them against each motor's control table and answers with status packets.

Instructions: ping (unicast and broadcast), read, write, reg write + action, reboot, sync read, sync
write, bulk read, bulk write. Control tables hold the registers of `tables.REGISTERS` with their EEPROM /
RAM split: EEPROM writes while torque is on fail with an access error (the torque lock), read-only
registers cannot be written. A motor with a Secondary ID executes writes addressed to that id silently,
which is how a shadow motor follows its master.

Dynamics are simple and integrated lazily whenever a packet arrives: each joint moves toward the goal
of the motors that drive it (torque on, no hardware error) at their velocity limit; current is
proportional to the tracking error and clipped at the current limit (the goal current in
current-based position mode). Motors on one joint (a master and its mirrored shadow) that want
different positions for more than `FIGHT_S` raise an overload error. With torque off a joint follows
the "hand" — a function of time (a scripted trajectory for emulated leaders) or positions set by
`move_by_hand` — or stays where it is.

Faults (`BusEmulator.faults`; set them from the test thread): corrupted CRC on status packets, dropped
or delayed status packets, missing ids, hardware-error bits (`set_hardware_error`), a disconnected port
(`disconnect`), and a baud rate mismatch (the emulator reads the speed the host set on the pty and
ignores packets sent at another speed, like a servo seeing framing errors).

Timing. A pty delivers bytes at once, whatever the baud rate; with `wire_pacing` each transaction is
held for the time its bytes (and the motors' Return Delay Times) would take on a real bus — the bus
benchmark uses this. An instruction that already has another queued behind it was given up on by the
host (it sends the next one only after an answer or a timeout): it is executed but not answered, as its
answer would otherwise land in the host's next transaction.
"""

from __future__ import annotations

import logging
import os
import random
import select
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from drivers.dynamixel import protocol as p
from drivers.dynamixel.servo import CURRENT_PER_TICK, FIGHT_S, FIGHT_TICKS, EmulatedMotor, Joint
from drivers.dynamixel.tables import (
    BAUD_RATES,
    CURRENT_BASED_POSITION,
    MODELS,
    RPM_PER_VELOCITY_UNIT,
    TICKS_PER_REV,
)

log = logging.getLogger(__name__)

_TERMIOS_SPEED = {getattr(termios, f"B{b}"): b for b in BAUD_RATES.values() if hasattr(termios, f"B{b}")}


@dataclass
class Faults:
    """What goes wrong on the emulated bus. Counts apply to the next status packets; rates to each."""

    corrupt_crc: int = 0  # status packets sent with a wrong CRC
    corrupt_rate: float = 0.0
    drop: int = 0  # status packets not sent at all
    drop_rate: float = 0.0
    delay: int = 0  # status packets sent `delay_s` late
    delay_s: float = 0.0
    missing: set[int] = field(default_factory=set)  # ids that never answer nor act (unplugged)
    seed: int = 0


class BusEmulator:
    """One emulated Dynamixel chain behind a pseudo-terminal; `port` is the path the driver opens."""

    def __init__(
        self,
        motors: Iterable[tuple[int, str]],
        baudrate: int = 4_000_000,
        shadows: dict[int, int] | None = None,
        initial_ticks: dict[int, float] | None = None,
        shadow_mounts: dict[int, float] | None = None,
        reboot_s: float = 0.05,
        name: str = "emulated",
        wire_pacing: bool = False,
    ) -> None:
        """`motors`: (id, model name) pairs; `shadows`: {shadow id: master id} (mechanically coupled,
        mounted mirrored: shadow raw = mount - master raw); `initial_ticks`: master raw positions;
        `wire_pacing`: hold every packet for its time on the wire at `baudrate`, as a real bus does (a pty
        delivers bytes at once, whatever the baud rate)."""
        values = {b: v for v, b in BAUD_RATES.items()}
        if baudrate not in values:
            raise ValueError(f"baudrate {baudrate} is not a Dynamixel baud rate ({sorted(values)})")
        self.name = name
        self.baudrate = baudrate
        self.reboot_s = reboot_s
        self.wire_pacing = wire_pacing
        self._wire_free = 0.0  # monotonic time the (emulated) wire is free again
        self._outbox: list[bytes] = []  # status packets of the instruction being handled
        self._return_delay = 0.0  # s the motors wait before those answers (Return Delay Time)
        self.faults = Faults()
        self.hand: Callable[[float], dict[int, float]] | None = None  # t -> {master id: raw ticks}
        self._rng = random.Random(0)
        self._lock = threading.RLock()
        shadows = dict(shadows or {})
        motors = list(motors)
        self.motors: dict[int, EmulatedMotor] = {}
        joints: dict[int, Joint] = {}
        for motor_id, model_name in motors:
            if model_name not in MODELS:
                raise ValueError(
                    f"motor {motor_id}: unknown model {model_name!r}; known: {', '.join(MODELS)}"
                )
            if motor_id in shadows:
                continue
            joint = Joint((initial_ticks or {}).get(motor_id, TICKS_PER_REV / 2))
            joints[motor_id] = joint
            self.motors[motor_id] = EmulatedMotor(
                motor_id, MODELS[model_name], values[baudrate], joint, (1, 0.0)
            )
        for motor_id, model_name in motors:
            if motor_id in shadows:
                master = shadows[motor_id]
                mount = (shadow_mounts or {}).get(motor_id, float(TICKS_PER_REV))
                shadow = EmulatedMotor(
                    motor_id, MODELS[model_name], values[baudrate], joints[master], (-1, mount)
                )
                self.motors[motor_id] = shadow
        self.joints = joints  # master id -> joint
        self._t0 = time.monotonic()
        self._last = self._t0
        master_fd, slave_fd = os.openpty()
        tty.setraw(slave_fd)
        self._master: int | None = master_fd
        self._slave = slave_fd
        self.port = os.ttyname(slave_fd)
        self._stop = threading.Event()
        self._busy = False
        self._thread: threading.Thread | None = None
        self.packets = 0  # instruction packets served
        self.ignored = 0  # packets ignored (wrong baud, bad header)
        self.stale = 0  # instructions executed but not answered: the host had already moved on

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> BusEmulator:
        self._thread = threading.Thread(target=self._serve, name=f"dxl-emulator-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        self.disconnect()
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None

    def __enter__(self) -> BusEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def disconnect(self) -> None:
        """Pull the plug: the host's next read or write on the port fails."""
        with self._lock:
            if self._master is not None:
                os.close(self._master)
                self._master = None

    def settle(self, timeout: float = 1.0) -> None:
        """Wait until every byte the host sent has been served (sync writes have no answer to wait for)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            master = self._master
            if master is None:
                return
            with self._lock:
                pending = bool(select.select([master], [], [], 0)[0]) or self._busy
            if not pending:
                return
            time.sleep(0.001)

    # -- the world -----------------------------------------------------------------------------------------
    def time_s(self) -> float:
        return time.monotonic() - self._t0

    def set_hardware_error(self, motor_id: int, bits: int) -> None:
        with self._lock:
            self.advance()
            self.motors[motor_id].fault(bits)

    def move_by_hand(self, positions: dict[int, float]) -> None:
        """Hold joints (by master id) at raw master ticks, as a hand would; None releases the joint."""
        with self._lock:
            self.advance()
            for motor_id, ticks in positions.items():
                joint = self.joints[motor_id]
                joint.hand_ticks = ticks
                if ticks is not None and not any(m.drives() for m in self._motors_of(joint)):
                    joint.theta, joint.velocity = float(ticks), 0.0
            self.advance()

    def _motors_of(self, joint: Joint) -> list[EmulatedMotor]:
        return [m for m in self.motors.values() if m.joint is joint]

    def advance(self) -> None:
        """Integrate the joints from the last update to now (called on every packet)."""
        now = time.monotonic()
        dt = now - self._last
        self._last = now
        hand = self.hand(now - self._t0) if self.hand is not None else {}
        for master_id, joint in self.joints.items():
            motors = self._motors_of(joint)
            drivers = [m for m in motors if m.drives()]
            before = joint.theta
            if drivers:
                targets = [m.theta_for(m.get("goal_position")) for m in drivers]
                if max(targets) - min(targets) > FIGHT_TICKS:
                    joint.fight_s += dt
                    if joint.fight_s > FIGHT_S:
                        for m in drivers:
                            m.fault(p.HW_OVERLOAD)
                else:
                    joint.fight_s = 0.0
                target = sum(targets) / len(targets)
                vmax = min(self._max_speed(m) for m in drivers)
                joint.theta += max(-vmax * dt, min(vmax * dt, target - joint.theta))
                for m in motors:
                    limit = (
                        abs(m.get("goal_current"))
                        if m.get("operating_mode") == CURRENT_BASED_POSITION
                        else m.get("current_limit")
                    )
                    err = (m.theta_for(m.get("goal_position")) - joint.theta) * m.mount[0] * m.direction
                    m.current = max(-limit, min(limit, CURRENT_PER_TICK * err)) if m.drives() else 0.0
            else:
                joint.fight_s = 0.0
                held = hand.get(master_id, joint.hand_ticks)
                if held is not None:
                    joint.theta = float(held)
                for m in motors:
                    m.current = 0.0
            joint.velocity = (joint.theta - before) / dt if dt > 1e-6 else 0.0
        for m in self.motors.values():
            m.refresh_present()

    @staticmethod
    def _max_speed(m: EmulatedMotor) -> float:
        """Ticks per second: the profile velocity if set, else the velocity limit."""
        units = m.get("profile_velocity") or m.get("velocity_limit") or 1
        return units * RPM_PER_VELOCITY_UNIT / 60 * TICKS_PER_REV

    # -- serving -------------------------------------------------------------------------------------------
    def _host_baud(self) -> int | None:
        try:
            speed = termios.tcgetattr(self._master)[5]
        except (termios.error, TypeError, OSError):
            return None
        return _TERMIOS_SPEED.get(speed)

    def _serve(self) -> None:
        buffer = bytearray()
        while not self._stop.is_set():
            master = self._master
            if master is None:
                return
            try:
                ready, _, _ = select.select([master], [], [], 0.05)
                if not ready:
                    continue
                self._busy = True  # before the read, so `settle` never sees consumed-but-unserved bytes
                chunk = os.read(master, 4096)
            except OSError:
                self._busy = False
                if self._master is None:
                    return  # disconnected on purpose
                time.sleep(0.01)  # no slave open yet (EIO): wait for the driver
                continue
            try:
                self._serve_bytes(buffer, chunk)
            finally:
                self._busy = False

    def _serve_bytes(self, buffer: bytearray, chunk: bytes) -> None:
        buffer += chunk
        if self._host_baud() != self.baudrate:
            self.ignored += 1
            buffer.clear()  # the servos see framing errors at a different speed
            return
        packets = []
        while buffer:
            packet, used = p.decode(buffer)
            if used == 0:
                break
            del buffer[:used]
            if packet is not None:
                packets.append((packet, used))
        for i, (packet, used) in enumerate(packets):
            # An instruction with another one queued behind it was given up on by the host (it only sends
            # the next one after an answer or a timeout): a real servo would have answered in time, so it is
            # executed but not answered — a late answer would land in the host's next transaction.
            stale = i < len(packets) - 1
            with self._lock:
                self.packets += 1
                self.stale += stale
                self.advance()
                self._handle(packet)
                if stale:
                    self._outbox.clear()
                    self._return_delay = 0.0
            self._flush(used)

    def _responder(self, motor_id: int) -> EmulatedMotor | None:
        m = self.motors.get(motor_id)
        if m is None or motor_id in self.faults.missing or time.monotonic() < m.offline_until:
            return None
        return m

    def _listeners(self, motor_id: int) -> list[EmulatedMotor]:
        """Motors that execute a write addressed to `motor_id`: itself and its shadows."""
        out = []
        for m in self.motors.values():
            if m.id in self.faults.missing or time.monotonic() < m.offline_until:
                continue
            if motor_id == p.BROADCAST_ID or m.id == motor_id or m.get("secondary_id") == motor_id:
                out.append(m)
        return out

    def _send(self, packet: bytes, return_delay: int) -> None:
        f = self.faults
        if f.drop > 0 or (f.drop_rate and self._rng.random() < f.drop_rate):
            f.drop = max(0, f.drop - 1)
            return
        if f.corrupt_crc > 0 or (f.corrupt_rate and self._rng.random() < f.corrupt_rate):
            f.corrupt_crc = max(0, f.corrupt_crc - 1)
            packet = packet[:-1] + bytes([packet[-1] ^ 0x5A])
        if f.delay > 0:
            f.delay -= 1
            self._flush(0)  # what was answered before this packet is not held back by its delay
            time.sleep(f.delay_s)
        self._return_delay += return_delay * 2e-6
        self._outbox.append(packet)

    def _flush(self, instruction_bytes: int) -> None:
        """Write the answers to one instruction. With wire pacing, first wait until the instruction, the
        motors' return delays and the answers would have passed on a real bus (10 bits a byte) — one sleep
        per transaction, as a sleep per packet costs far more than its length on a busy machine. Without
        pacing the answers go out at once (return delays included: they only matter for timing)."""
        data = b"".join(self._outbox)
        self._outbox.clear()
        return_delay, self._return_delay = self._return_delay, 0.0  # the answering motors' delays, summed
        if self.wire_pacing:
            wire = (instruction_bytes + len(data)) * 10 / self.baudrate
            self._wire_free = max(time.monotonic(), self._wire_free) + wire + return_delay
            left = self._wire_free - time.monotonic()
            if left > 0:
                time.sleep(left)
        if data and self._master is not None:
            try:
                os.write(self._master, data)
            except OSError:
                pass

    def _reply(self, m: EmulatedMotor, number: int = 0, params: bytes = b"") -> None:
        self._send(p.status(m.id, m.error_byte(number), params), m.get("return_delay_time"))

    def _handle(self, pk: p.Packet) -> None:
        inst, params, target = pk.instruction, pk.params, pk.motor_id
        if not pk.crc_ok:
            m = self._responder(target)
            if m is not None:
                self._reply(m, p.CRC_ERROR)
            return
        if inst == p.PING:
            ids = sorted(self.motors) if target == p.BROADCAST_ID else [target]
            for motor_id in ids:
                m = self._responder(motor_id)
                if m is not None:
                    number = m.get("model_number")
                    self._reply(m, 0, bytes([number & 0xFF, number >> 8, m.get("firmware_version")]))
        elif inst == p.READ and len(params) == 4:
            m = self._responder(target)
            if m is not None:
                address, length = int.from_bytes(params[:2], "little"), int.from_bytes(params[2:], "little")
                error, data = m.read(address, length)
                self._reply(m, error, data)
        elif inst in (p.WRITE, p.REG_WRITE) and len(params) >= 3:
            address, data = int.from_bytes(params[:2], "little"), params[2:]
            for m in self._listeners(target):
                if inst == p.WRITE:
                    error = m.write(address, data)
                else:
                    m.registered, error = (address, data), 0
                if m.id == target:
                    self._reply(m, error)
        elif inst == p.ACTION:
            for m in self._listeners(target):
                if m.registered is not None:
                    m.write(*m.registered)
                    m.registered = None
                if m.id == target:
                    self._reply(m)
        elif inst == p.REBOOT:
            m = self._responder(target)
            if m is not None:
                self._reply(m)
                m._ram()
                m.offline_until = time.monotonic() + self.reboot_s
        elif inst == p.SYNC_READ and len(params) >= 5:
            address, length = int.from_bytes(params[:2], "little"), int.from_bytes(params[2:4], "little")
            for motor_id in params[4:]:
                m = self._responder(motor_id)
                if m is not None:
                    error, data = m.read(address, length)
                    self._reply(m, error, data)
        elif inst == p.SYNC_WRITE and len(params) >= 5:
            address, length = int.from_bytes(params[:2], "little"), int.from_bytes(params[2:4], "little")
            body = params[4:]
            for i in range(0, len(body) - length, length + 1):
                for m in self._listeners(body[i]):
                    m.write(address, body[i + 1 : i + 1 + length])
        elif inst == p.BULK_READ:
            for i in range(0, len(params) - 4, 5):
                m = self._responder(params[i])
                if m is not None:
                    address = int.from_bytes(params[i + 1 : i + 3], "little")
                    error, data = m.read(address, int.from_bytes(params[i + 3 : i + 5], "little"))
                    self._reply(m, error, data)
        elif inst == p.BULK_WRITE:
            i = 0
            while i + 5 <= len(params):
                address = int.from_bytes(params[i + 1 : i + 3], "little")
                length = int.from_bytes(params[i + 3 : i + 5], "little")
                for m in self._listeners(params[i]):
                    m.write(address, params[i + 5 : i + 5 + length])
                i += 5 + length
        else:
            m = self._responder(target)
            if m is not None:
                self._reply(m, p.INSTRUCTION_ERROR)


def serve_in_process(
    conn, motors: list[tuple[int, str]], baudrate: int, shadows: dict[int, int], wire_pacing: bool = False
) -> None:
    """Run a `BusEmulator` in this (child) process: send its port path on `conn`, stop when `conn` speaks.

    Used with `multiprocessing` (spawn) where the emulator must not share the driver's interpreter lock,
    as a real servo chain does not (the bus benchmark)."""
    emulator = BusEmulator(motors, baudrate=baudrate, shadows=shadows, wire_pacing=wire_pacing).start()
    try:
        conn.send(emulator.port)
        conn.recv()
    finally:
        emulator.stop()
