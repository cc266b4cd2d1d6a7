"""One Dynamixel chain on one serial port, through `dynamixel-sdk` (Protocol 2.0).

`DynamixelBus` opens the port (with one sentence for a missing port, missing permissions, a busy port),
checks the motors it must find (one message listing every missing or different id), reads and writes
registers with status, and does the per-tick work: a sync read of a register block in one transaction
(`GroupSyncRead` to send, the SDK's packet reader per id to keep each status error byte, which
`GroupSyncRead` drops), `GroupBulkRead` where the motors need different blocks, and `GroupSyncWrite`
of goals (no status packets, so it costs only its bytes on the wire).

Timing. The SDK's port waits `bytes × byte time + 2 × 16 ms + 2 ms` for a status packet (16 ms is the
FTDI default latency timer), i.e. 34 ms — longer than a 30 Hz tick. `_port_class()` subclasses the SDK's
`PortHandler` to (a) use the latency timer the port really has (1 ms after the udev rule in
docs/hardware.md), (b) never wait past the caller's deadline, (c) use the monotonic clock instead of
`time.time()`, and (d) sleep in `select()` instead of spinning while it waits. Every packet is still
built, sent, parsed and checked by the SDK.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import select
import termios
import threading
import time
from dataclasses import dataclass, field

from drivers.dynamixel import protocol as p
from drivers.dynamixel.tables import MODELS, REGISTERS, Register, model_name, to_signed
from drivers.errors import DependencyMissing, DeviceError

log = logging.getLogger(__name__)

# The SDK's result codes (robotis_def), as sentences.
_COMM = {
    -1000: "the port is busy with another transaction",
    -1001: "the instruction packet could not be sent",
    -1002: "no status packet was received",
    -2000: "the instruction packet is malformed",
    -3001: "no status packet (timeout)",
    -3002: "a corrupted status packet (bad CRC or cut short)",
    -9000: "the instruction is not available",
}
# Configuration transactions (ping, register read/write, reboot) are outside the control loop: they wait
# this much longer for an answer than a per-tick read, so a busy host does not fail a connect.
CONFIG_EXTRA_MS = 10.0
MIN_ATTEMPT_NS = 1_000_000  # a sync read of a 9-motor chain answers in ~0.5 ms (4 Mbps) to ~2.5 ms (1 Mbps)
COMM_SUCCESS = 0
COMM_RX_TIMEOUT = -3001
COMM_RX_CORRUPT = -3002


class BusError(DeviceError):
    """A chain could not do what was asked; says which port, which motor and what went wrong."""

    def __init__(self, message: str, port: str = "", motor_id: int | None = None, fault: str = "") -> None:
        super().__init__(message)
        self.port = port
        self.motor_id = motor_id
        self.fault = fault


class PortLost(BusError):
    """The serial device went away (USB unplugged, adapter reset)."""


def _sdk():
    try:
        import dynamixel_sdk
    except ImportError as e:  # pragma: no cover - the package is a project dependency
        raise DependencyMissing(
            "the Dynamixel driver needs the dynamixel-sdk package: pip install dynamixel-sdk"
        ) from e
    return dynamixel_sdk


_PORT_CLASS = None
_HANDLER_CLASS = None


def stuffing_packet_handler(sdk):
    """dynamixel-sdk's Protocol 2.0 packet handler with byte stuffing that reaches the wire.

    The SDK's `txPacket` calls `addStuffing(txpacket)` and ignores what it returns; when stuffing makes
    the packet longer, `addStuffing` builds a new list and the caller's packet goes out unstuffed, with the
    old length (seen in dynamixel-sdk 4.1: writing Homing Offset −131073 sends `… ff ff fd ff …`), and a
    real servo resynchronises on that false header. Here `addStuffing` writes its result back into the
    caller's list, so `txPacket` frames, CRCs and sends the stuffed packet. Every instruction goes through
    `txPacket` (write, sync write, sync/bulk read requests), so this one place covers them all."""
    global _HANDLER_CLASS
    if _HANDLER_CLASS is None:
        base = type(sdk.PacketHandler(2.0))

        class StuffingPacketHandler(base):
            def addStuffing(self, packet):
                stuffed = super().addStuffing(packet)
                if stuffed is not packet:
                    packet[:] = stuffed  # in place: the SDK's txPacket keeps using its own list
                return packet

        _HANDLER_CLASS = StuffingPacketHandler
    return _HANDLER_CLASS()


def _port_class():
    """The SDK's PortHandler with deadline-bounded, latency-aware, non-spinning status waits."""
    global _PORT_CLASS
    if _PORT_CLASS is not None:
        return _PORT_CLASS
    sdk = _sdk()

    class BudgetPort(sdk.PortHandler):
        def __init__(self, port_name: str, latency_ms: float) -> None:
            super().__init__(port_name)
            self.latency_ms = latency_ms
            self.extra_ms = 0.0  # added to a status wait: the motors' return delays in a sync/bulk read
            self.deadline_ms: float | None = None  # monotonic ms after which no wait may continue

        def getCurrentTime(self) -> float:  # noqa: N802 - SDK name
            return time.monotonic_ns() / 1e6

        def setPacketTimeout(self, packet_length: int) -> None:  # noqa: N802
            self.packet_start_time = self.getCurrentTime()
            timeout = self.tx_time_per_byte * packet_length + 2.0 * self.latency_ms + 2.0 + self.extra_ms
            if self.deadline_ms is not None:
                timeout = min(timeout, max(0.0, self.deadline_ms - self.packet_start_time))
            self.packet_timeout = timeout

        def setPacketTimeoutMillis(self, msec: float) -> None:  # noqa: N802
            self.packet_start_time = self.getCurrentTime()
            if self.deadline_ms is not None:
                msec = min(msec, max(0.0, self.deadline_ms - self.packet_start_time))
            self.packet_timeout = msec

        def readPort(self, length: int) -> bytes:  # noqa: N802
            data = self.ser.read(length)
            if not data:
                left_ms = self.packet_timeout - (self.getCurrentTime() - self.packet_start_time)
                if left_ms > 0:
                    select.select([self.ser.fileno()], [], [], min(left_ms, 1.0) / 1e3)
                    data = self.ser.read(length)
            return data

    _PORT_CLASS = BudgetPort
    return BudgetPort


def serial_ports() -> list[str]:
    """Serial devices a U2D2 may be on (udev symlinks first)."""
    return (
        sorted(glob.glob("/dev/ttyDXL*"))
        + sorted(glob.glob("/dev/ttyUSB*"))
        + sorted(glob.glob("/dev/ttyACM*"))
    )


def ftdi_latency_ms(port: str) -> int | None:
    """The FTDI latency timer of `port` (following udev symlinks), or None if it has none."""
    dev = os.path.basename(os.path.realpath(port))
    try:
        with open(f"/sys/bus/usb-serial/devices/{dev}/latency_timer") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


@dataclass
class BusStats:
    transactions: int = 0
    retries: int = 0
    timeouts: int = 0
    corrupt: int = 0
    status_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Reply:
    data: bytes  # the register bytes
    error: int  # the status packet's error byte (bit 7: hardware alert)


@dataclass
class _Attempt:
    motor_id: int | None = None
    result: int = COMM_SUCCESS
    replies: dict[int, Reply] = field(default_factory=dict)


class DynamixelBus:
    def __init__(
        self,
        port: str,
        baudrate: int,
        name: str = "",
        latency_ms: float = 1.0,
        config_wait_ms: float = CONFIG_EXTRA_MS,
    ) -> None:
        self.port_name = port
        self.config_wait_ms = config_wait_ms  # extra wait for an answer in configuration transactions
        self.baudrate = baudrate
        self.name = name or port
        self.latency_ms = latency_ms
        self.stats = BusStats()
        self._port = None
        self._ph = None
        self._lock = threading.Lock()
        self._sync_reads: dict[tuple, object] = {}
        self._sync_writes: dict[tuple, object] = {}
        self._port_lost = False
        # The motors' Return Delay Time (ms): the factory 500 µs until the arm has set it to 0. A sync read
        # of n motors waits n times this longer for its answers.
        self.return_delay_ms = 0.5

    @property
    def where(self) -> str:
        return f"{self.name} ({self.port_name})" if self.name != self.port_name else self.port_name

    # -- lifecycle ---------------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self) -> None:
        sdk = _sdk()
        path = self.port_name
        if not path:
            raise BusError(f"{self.name}: no serial port configured (robot.arms.{self.name}.port is empty)")
        if not os.path.exists(path):
            found = ", ".join(serial_ports()) or "none"
            raise BusError(
                f"{self.name}: serial port {path} does not exist — is the U2D2 plugged in and powered, and is the "
                f"udev rule installed (docs/hardware.md)? Serial ports present: {found}",
                path,
            )
        if not os.access(path, os.R_OK | os.W_OK):
            raise BusError(
                f"{self.name}: permission denied on {path}: add yourself to the dialout group "
                "(`sudo usermod -aG dialout $USER`, then log out and in) or install the udev rule in docs/hardware.md",
                path,
            )
        port = _port_class()(path, self.latency_ms)
        port.baudrate = self.baudrate
        try:
            ok = port.openPort()
        except Exception as e:  # serial.SerialException, OSError
            code = getattr(e, "errno", None)
            if code == errno.EACCES:
                raise BusError(
                    f"{self.name}: permission denied on {path} (dialout group / udev rule)", path
                ) from e
            raise BusError(f"{self.name}: could not open {path}: {e}", path) from e
        if not ok:
            raise BusError(
                f"{self.name}: {self.baudrate} baud is not a rate dynamixel-sdk can set on {path}", path
            )
        try:
            port.ser.exclusive = True  # flock: a second program on the same adapter fails here, not mid-run
        except Exception as e:  # noqa: BLE001
            port.closePort()
            raise BusError(
                f"{self.name}: {path} is in use by another program (another xr0, Dynamixel Wizard, ROS): {e}",
                path,
            ) from e
        latency = ftdi_latency_ms(path)
        if latency is not None:
            if latency > self.latency_ms:
                log.warning(
                    "%s: the FTDI latency timer of %s is %d ms (want %.0f): every read waits that long; "
                    "set it to 1 ms (docs/hardware.md)",
                    self.name,
                    path,
                    latency,
                    self.latency_ms,
                )
            port.latency_ms = max(self.latency_ms, float(latency))
        self._port = port
        self._ph = stuffing_packet_handler(sdk)

    def close(self) -> None:
        with self._lock:
            if self._port is not None:
                try:
                    self._port.closePort()
                except Exception:  # noqa: BLE001 - closing a port that is already gone
                    pass
                self._port = None
                self._sync_reads.clear()
                self._sync_writes.clear()

    def _require(self):
        if self._port is None:
            raise BusError(f"{self.where}: the bus is not open; call open() first", self.port_name)
        return self._port, self._ph

    def _call(self, fn, *args):
        """Run an SDK call; a vanished port becomes `PortLost` with a sentence."""
        try:
            return fn(*args)
        except (OSError, termios.error) as e:  # serial.SerialException is an OSError
            self._port_lost = True
            raise PortLost(
                f"{self.where}: lost the serial port ({e}); is the USB cable unplugged or the adapter reset?",
                self.port_name,
                fault="port lost",
            ) from e

    # -- single registers (configuration; not for the control loop) ---------------------------------------
    def ping(self, motor_id: int, tries: int = 2, deadline_ns: int | None = None) -> tuple[int, int] | None:
        """(model number, status error byte), or None if the motor did not answer (by `deadline_ns`, if
        given: a ping from the control loop; otherwise with the patience of a configuration step)."""
        port, ph = self._require()
        for _ in range(tries):
            with self._lock:
                if deadline_ns is None:
                    port.deadline_ms, port.extra_ms = None, self.config_wait_ms
                else:
                    port.deadline_ms, port.extra_ms = deadline_ns / 1e6, 0.0
                try:
                    number, result, error = self._call(ph.ping, port, motor_id)
                finally:
                    port.deadline_ms = None
            if result == COMM_SUCCESS:
                return number, error
        return None

    def check_motors(self, expected: dict[int, str], names: dict[int, str] | None = None) -> dict[int, int]:
        """Ping every expected id; raise one message listing each missing or different motor.

        Returns {id: status error byte} (bit 7 set: that motor reports a hardware error)."""
        names = names or {}
        problems, errors = [], {}
        for motor_id, want in expected.items():
            label = f"id {motor_id}" + (f" ({names[motor_id]})" if motor_id in names else "")
            found = self.ping(motor_id, tries=3)
            if found is None:
                problems.append(f"{label} did not answer")
                continue
            number, error = found
            errors[motor_id] = error
            if MODELS[want].number != number:
                problems.append(
                    f"{label} is {model_name(number)} (model {number}) but the config says {want}"
                )
        if not problems:
            return errors
        if len(problems) == len(expected):
            raise BusError(
                f"{self.where}: no motor answered at {self.baudrate} baud. Check that the arm is powered (12 V), "
                f"the cable is in, and the servos' Baud Rate matches robot.arms.{self.name}.baudrate "
                "(Interbotix ships 1 Mbps; Dynamixel Wizard shows it)",
                self.port_name,
                fault="no answer",
            )
        raise BusError(
            f"{self.where}: the motors are not what the config says: "
            + "; ".join(problems)
            + " — check the cables between servos, their ids and models (Dynamixel Wizard), or fix "
            f"robot.arms.{self.name}.motor_ids / motor_models",
            self.port_name,
            fault="motor check",
        )

    def read(self, motor_id: int, register: str | Register, tries: int = 3) -> int:
        reg = REGISTERS[register] if isinstance(register, str) else register
        port, ph = self._require()
        result = error = 0
        for _ in range(tries):
            with self._lock:
                port.deadline_ms, port.extra_ms = None, self.config_wait_ms
                data, result, error = self._call(ph.readTxRx, port, motor_id, reg.address, reg.size)
            if result == COMM_SUCCESS and not error & 0x7F:
                raw = int.from_bytes(bytes(data[: reg.size]), "little")
                return to_signed(raw, reg.size) if reg.signed else raw
        raise self._error(motor_id, f"read {reg.name}", result, error)

    def write(self, motor_id: int, register: str | Register, value: int, tries: int = 3) -> None:
        reg = REGISTERS[register] if isinstance(register, str) else register
        port, ph = self._require()
        data = list((int(value) & ((1 << (8 * reg.size)) - 1)).to_bytes(reg.size, "little"))
        result = error = 0
        for _ in range(tries):
            with self._lock:
                port.deadline_ms, port.extra_ms = None, self.config_wait_ms
                result, error = self._call(ph.writeTxRx, port, motor_id, reg.address, reg.size, data)
            if result == COMM_SUCCESS:
                if error & 0x7F:
                    raise self._error(motor_id, f"write {reg.name}={value}", result, error)
                return
        raise self._error(motor_id, f"write {reg.name}={value}", result, error)

    def reboot(self, motor_id: int) -> None:
        port, ph = self._require()
        with self._lock:
            port.deadline_ms, port.extra_ms = None, self.config_wait_ms
            result, error = self._call(ph.reboot, port, motor_id)
        if result != COMM_SUCCESS:
            raise self._error(motor_id, "reboot", result, error)

    def _error(self, motor_id: int | None, what: str, result: int, error: int) -> BusError:
        fault = (
            _COMM.get(result, f"result {result}")
            if result != COMM_SUCCESS
            else p.describe_status_error(error)
        )
        where = f"motor id {motor_id}" if motor_id is not None else "the chain"
        return BusError(f"{self.where}: {what} on {where} failed: {fault}", self.port_name, motor_id, fault)

    # -- the per-tick work ------------------------------------------------------------------------------
    def sync_read(
        self, ids: tuple[int, ...], address: int, length: int, deadline_ns: int
    ) -> dict[int, Reply]:
        """One sync read of `length` bytes at `address` from every id, retried until `deadline_ns`."""
        sdk = _sdk()
        port, ph = self._require()
        key = (ids, address, length)
        group = self._sync_reads.get(key)
        if group is None:
            group = sdk.GroupSyncRead(port, ph, address, length)
            for motor_id in ids:
                group.addParam(motor_id)
            self._sync_reads[key] = group

        def attempt() -> _Attempt:
            out = _Attempt()
            result = self._call(group.txPacket)
            if result != COMM_SUCCESS:
                out.result = result
                return out
            return self._collect(out, [(motor_id, length) for motor_id in ids])

        return self._retry(attempt, deadline_ns, "sync read", len(ids))

    def bulk_read(self, items: dict[int, tuple[int, int]], deadline_ns: int) -> dict[int, Reply]:
        """One bulk read: a different (address, length) per id, retried until `deadline_ns`."""
        sdk = _sdk()
        port, ph = self._require()

        def attempt() -> _Attempt:
            out = _Attempt()
            group = sdk.GroupBulkRead(port, ph)
            for motor_id, (address, length) in items.items():
                group.addParam(motor_id, address, length)
            result = self._call(group.txPacket)
            if result != COMM_SUCCESS:
                out.result = result
                return out
            return self._collect(out, [(motor_id, length) for motor_id, (_, length) in items.items()])

        return self._retry(attempt, deadline_ns, "bulk read", len(items))

    def _collect(self, out: _Attempt, expected: list[tuple[int, int]]) -> _Attempt:
        """Read each motor's status packet after a group request, keeping its error byte (the SDK's group
        readers drop it); stops at the first motor that does not answer cleanly."""
        port, ph = self._require()
        for motor_id, length in expected:
            data, result, error = self._call(ph.readRx, port, motor_id, length)
            if result != COMM_SUCCESS:
                out.motor_id, out.result = motor_id, result
                return out
            out.replies[motor_id] = Reply(bytes(data), error)
        return out

    def _retry(self, attempt, deadline_ns: int, what: str, n_answers: int) -> dict[int, Reply]:
        port, _ = self._require()
        tries = 0
        while True:
            tries += 1
            with self._lock:
                port.deadline_ms = deadline_ns / 1e6
                port.extra_ms = n_answers * self.return_delay_ms
                try:
                    out = attempt()
                finally:
                    port.deadline_ms = None
                    port.extra_ms = 0.0
            self.stats.transactions += 1
            if out.result == COMM_SUCCESS:
                return out.replies
            if out.result == COMM_RX_TIMEOUT:
                self.stats.timeouts += 1
            elif out.result == COMM_RX_CORRUPT:
                self.stats.corrupt += 1
            # Retry while a best-case attempt still fits; each attempt's wait is capped at the deadline.
            if time.monotonic_ns() + MIN_ATTEMPT_NS >= deadline_ns:
                fault = _COMM.get(out.result, f"result {out.result}")
                who = f"motor id {out.motor_id}" if out.motor_id is not None else "the chain"
                raise BusError(
                    f"{self.where}: {what} failed on {who} after {tries} attempt(s) within the time budget: {fault}",
                    self.port_name,
                    out.motor_id,
                    fault,
                )
            self.stats.retries += 1

    def sync_write(self, register: str | Register, values: dict[int, int]) -> None:
        """One sync write of `register` to every id (no status packets: fire and forget)."""
        sdk = _sdk()
        reg = REGISTERS[register] if isinstance(register, str) else register
        port, ph = self._require()
        key = (reg.address, reg.size)
        group = self._sync_writes.get(key)
        if group is None:
            group = self._sync_writes[key] = sdk.GroupSyncWrite(port, ph, reg.address, reg.size)
        group.clearParam()
        mask = (1 << (8 * reg.size)) - 1
        for motor_id, value in values.items():
            group.addParam(motor_id, list((int(value) & mask).to_bytes(reg.size, "little")))
        with self._lock:
            port.deadline_ms = None
            result = self._call(group.txPacket)
        self.stats.transactions += 1
        if result != COMM_SUCCESS:
            raise self._error(None, f"sync write of {reg.name}", result, 0)
