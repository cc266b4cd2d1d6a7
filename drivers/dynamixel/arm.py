"""A Dynamixel arm (6 joints + gripper, optional shadow motors) behind the `Arm` contract.

Connect: open the port, check every motor's id and model, reboot motors that report a hardware error,
read the pose and refuse to start if a joint is outside its calibrated limits (torque left as it was),
align shadow motors with their masters, write the settings that need torque off (return delay 0,
operating modes, gripper current limit, shadow Secondary ID / direction) only where they differ, then:
followers hold where they are (goal = present, torque on); leaders go limp (torque off) for the operator.

Every tick: one sync read of current, velocity and position of every motor within `read_budget_ms`
(retries included). A failed read returns the previous sample — same capture time, so staleness checks
see it — and `max_failed_reads` in a row stop the arm with the port, motor and fault. A status packet
with the hardware-alert bit makes the arm read the Hardware Error Status, log it as a sentence and reboot
the motor (at most `max_reboots`); the rebooting motor is left out of the reads until it is back, then
restored (holding where it is). Followers write goals with one sync write; shadows follow through their
Secondary ID. Leaders map their reading into follower targets (`to_follower_*`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from drivers.arm import JointSample, Role
from drivers.clock import Clock, WallClock
from drivers.dynamixel import protocol as p
from drivers.dynamixel.bus import BusError, DynamixelBus, PortLost
from drivers.dynamixel.calibration import JOINT_LABELS, Calibration
from drivers.dynamixel.config import ArmConfig
from drivers.dynamixel.tables import CURRENT_BASED_POSITION, MODELS, POSITION, STATE_BLOCK
from drivers.errors import DeviceError
from drivers.joints import ARM_DOF

log = logging.getLogger(__name__)

START_TOLERANCE = 0.1  # rad (gripper: fraction) a joint may be outside its calibrated limits at connect
REBOOT_WAIT_S = 0.3  # a rebooted motor is left alone this long before it is asked to hold again
REBOOT_GIVE_UP_S = 3.0  # … and must answer within this
RESTORE_PING_NS = 3_000_000  # the most a tick spends asking a rebooted motor whether it is back
# The first read at connect, before the return delay is set to 0 (factory: 500 µs per motor), may take longer.
CONNECT_READ_BUDGET_MS = 100.0
JUMP_STREAK_STOP = 30  # refused targets in a row (1 s at 30 Hz) before a follower stops


@dataclass
class ArmCounters:
    reads: int = 0
    failed_reads: int = 0  # reads that returned the previous sample
    writes: int = 0
    refused_jumps: int = 0  # targets not sent because they were too far from the measured position
    hardware_errors: int = 0
    reboots: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class DynamixelArm:
    def __init__(
        self,
        name: str,
        side: str,
        role: Role,
        config: ArmConfig,
        calibration: Calibration,
        clock: Clock | None = None,
        group=None,
    ) -> None:
        if len(config.motor_ids) < ARM_DOF:
            raise DeviceError(
                f"robot.arms.{name}: motor_ids must list 7 ids (6 joints + gripper), then shadows"
            )
        self.name, self.side, self.role = name, side, role
        self.config = config
        self.calibration = calibration
        self.clock = clock or WallClock()
        self.bus = DynamixelBus(config.port, config.baudrate, name, config.latency_timer_ms)
        self.ids: tuple[int, ...] = tuple(config.motor_ids)
        self.masters: tuple[int, ...] = self.ids[:ARM_DOF]
        self.models = dict(zip(self.ids, config.motor_models, strict=True))
        self.labels = {i: JOINT_LABELS[j] for j, i in enumerate(self.masters)}
        for shadow, master in config.shadows.items():
            self.labels[shadow] = f"{self.labels[master]} shadow"
        self.counters = ArmCounters()
        self.group = group
        self.emulator = None  # the BusEmulator behind this arm, when it is emulated
        if group is not None:
            group.add(self)
        self._connected = False
        self._last: JointSample | None = None
        self._raw: dict[int, tuple[int, int, int]] = {}  # id -> (current, velocity, position) last read
        self._failed = 0
        self._jump_streak = 0
        self._reboots: dict[int, int] = {}
        self._rebooting: dict[int, float] = {}  # id -> monotonic time it was rebooted
        if role == "leader":
            offsets = np.zeros(ARM_DOF)
            if config.to_follower_offsets_rad:
                offsets[:6] = config.to_follower_offsets_rad
            self._map_offset = offsets
            self._grip_lo, self._grip_hi = config.to_follower_gripper

    def label(self, motor_id: int | None) -> str:
        if motor_id is None:
            return "the chain"
        return f"{self.labels.get(motor_id, 'motor')} (id {motor_id})"

    # -- lifecycle ---------------------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._last, self._raw, self._failed, self._jump_streak = None, {}, 0, 0
        self._reboots, self._rebooting = {}, {}
        self.bus.open()
        try:
            errors = self.bus.check_motors(self.models, self.labels)
            for motor_id, error in errors.items():
                if error & p.ALERT:
                    self._reboot_at_connect(motor_id)
            self._read_now(raise_on_failure=True, budget_ms=CONNECT_READ_BUDGET_MS)
            self._check_start()
            self._configure()
            if self.role == "follower":
                self._hold_here()
            else:
                self.bus.sync_write("torque_enable", dict.fromkeys(self.ids, 0))
        except BaseException:
            self.bus.close()
            raise
        self._connected = True
        log.info("%s connected on %s: %d motors", self.name, self.bus.port_name, len(self.ids))

    def disconnect(self, torque_off: bool = False) -> None:
        if not self.bus.is_open:
            self._connected = False
            return
        try:
            if self.role == "follower":
                if torque_off:
                    self.bus.sync_write("torque_enable", dict.fromkeys(self.ids, 0))
                    log.info("%s: torque off (the arm is limp)", self.name)
                else:
                    log.info("%s: holding its last position (torque stays on)", self.name)
        except PortLost as e:
            raise DeviceError(f"{self.name}: could not set the exit torque policy: {e}") from e
        finally:
            self._connected = False
            self.bus.close()
            log.info("%s: %s; bus %s", self.name, self.counters.as_dict(), self.bus.stats.as_dict())

    def __enter__(self) -> DynamixelArm:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    @property
    def last_sample(self) -> JointSample | None:
        """The newest sample read (None before connect)."""
        return self._last

    def limits(self) -> np.ndarray:
        limits = self.calibration.limits()
        if self.role == "leader":
            limits = np.sort(self._to_follower(limits.T).T, axis=1)
        return limits

    # -- connect steps -------------------------------------------------------------------------------------
    def _reboot_at_connect(self, motor_id: int) -> None:
        bits = self.bus.read(motor_id, "hardware_error_status")
        log.warning(
            "%s: %s reports %s; rebooting it",
            self.name,
            self.label(motor_id),
            p.describe_hardware_error(bits),
        )
        self.counters.hardware_errors += 1
        self.bus.reboot(motor_id)
        self.counters.reboots += 1
        end = time.monotonic() + REBOOT_GIVE_UP_S
        time.sleep(0.05)
        while time.monotonic() < end:
            found = self.bus.ping(motor_id, tries=1)
            if found is not None and not found[1] & p.ALERT:
                return
            time.sleep(0.05)
        raise DeviceError(
            f"{self.name}: {self.label(motor_id)} still reports a hardware error after a reboot "
            f"({p.describe_hardware_error(self.bus.read(motor_id, 'hardware_error_status'))}); power-cycle the arm"
        )

    def _check_start(self) -> None:
        limits = self.calibration.limits()
        position = self.calibration.to_joint(self._master_ticks())
        for j, label in enumerate(JOINT_LABELS):
            lo, hi = limits[j]
            if not lo - START_TOLERANCE <= position[j] <= hi + START_TOLERANCE:
                unit = "" if label == "gripper" else " rad"
                raise DeviceError(
                    f"{self.name}: {label} is at {position[j]:.2f}{unit}, outside its calibrated range "
                    f"[{lo:.2f}, {hi:.2f}]{unit}; the torque was left as it was. Move the joint into its range "
                    f"by hand, or run `xr0 calibrate --arm {self.name}` if the calibration is wrong"
                )

    def _settings(self) -> list[tuple[int, str, int]]:
        """The EEPROM values this arm needs: (id, register, value)."""
        wanted = [(i, "return_delay_time", 0) for i in self.ids]
        if self.role == "follower":
            grip = self.masters[-1]
            model = MODELS[self.models[grip]]
            if not model.senses_current:
                raise DeviceError(
                    f"{self.name}: the gripper motor {self.label(grip)} is a {model.name}, which cannot limit its "
                    "current; a follower gripper needs a current-sensing servo (XM/XH series)"
                )
            units = int(np.ceil(self.config.gripper_current_limit_ma / model.current_ma_per_unit))
            wanted += [(i, "operating_mode", POSITION) for i in self.masters[:-1]]
            wanted += [(grip, "operating_mode", CURRENT_BASED_POSITION), (grip, "current_limit", units)]
            wanted += [(shadow, "operating_mode", POSITION) for shadow in self.config.shadows]
        for shadow, master in self.config.shadows.items():
            wanted.append((shadow, "secondary_id", master))
            reverse = (self.bus.read(master, "drive_mode") & 1) ^ 1
            mode = self.bus.read(shadow, "drive_mode")
            wanted.append((shadow, "drive_mode", (mode & ~1) | reverse))
        return wanted

    def _torque_off_for_eeprom(self, motor_id: int) -> None:
        if self.bus.read(motor_id, "torque_enable"):
            log.warning(
                "%s: turning torque off on %s to change its EEPROM settings — support the arm",
                self.name,
                self.label(motor_id),
            )
            self.bus.write(motor_id, "torque_enable", 0)

    def _configure(self) -> None:
        changed = 0
        for motor_id, register, value in self._settings():
            if self.bus.read(motor_id, register) != value:
                self._torque_off_for_eeprom(motor_id)
                self.bus.write(motor_id, register, value)
                log.debug("%s: %s %s := %d", self.name, self.label(motor_id), register, value)
                changed += 1
        self.bus.return_delay_ms = 0.0  # every motor answers at once from now on
        if changed:
            log.info(
                "%s: wrote %d EEPROM setting(s) (return delay, modes, limits, shadows)", self.name, changed
            )
        if self.role == "follower":
            grip = self.masters[-1]
            self.bus.write(grip, "goal_current", self.bus.read(grip, "current_limit"))
        # Shadows read what their master reads, so one goal drives both without a fight.
        for shadow, master in self.config.shadows.items():
            diff = self.bus.read(master, "present_position") - self.bus.read(shadow, "present_position")
            if abs(diff) > 2:
                self._torque_off_for_eeprom(shadow)
                self._torque_off_for_eeprom(master)
                homing = self.bus.read(shadow, "homing_offset") + diff
                self.bus.write(shadow, "homing_offset", homing)
                log.debug(
                    "%s: aligned %s with its master (homing offset %d)", self.name, self.label(shadow), homing
                )

    def _hold_here(self) -> None:
        """Goal = present position on every master (shadows get it through their Secondary ID), torque on."""
        ticks = self._master_ticks()
        self.bus.sync_write("goal_position", {i: int(t) for i, t in zip(self.masters, ticks, strict=True)})
        self.bus.sync_write("torque_enable", dict.fromkeys(self.ids, 1))

    # -- reading -----------------------------------------------------------------------------------------
    def read(self) -> JointSample:
        if not self._connected:
            raise DeviceError(f"{self.name} is not connected; call connect() first")
        if self.group is not None:
            return self.group.read(self)
        return self._read_now()

    def _master_ticks(self) -> np.ndarray:
        return np.array([self._raw[i][2] for i in self.masters], dtype=np.float64)

    def _read_now(self, raise_on_failure: bool = False, budget_ms: float | None = None) -> JointSample:
        self._restore_rebooted()
        ids = tuple(i for i in self.ids if i not in self._rebooting)
        t_ns = self.clock.now_ns()
        deadline = time.monotonic_ns() + int((budget_ms or self.config.read_budget_ms) * 1e6)
        try:
            replies = self.bus.sync_read(ids, *STATE_BLOCK, deadline)
        except PortLost as e:
            raise DeviceError(f"{self.name}: {e}") from e
        except BusError as e:
            self._failed += 1
            self.counters.failed_reads += 1
            if raise_on_failure or self._last is None or self._failed >= self.config.max_failed_reads:
                raise DeviceError(
                    f"{self.name}: {self.label(e.motor_id)} on {self.bus.port_name}: {e.fault} — "
                    f"{self._failed} read(s) in a row failed; check the cable and power of that motor"
                ) from e
            if self._failed == 1:
                log.warning("%s: read failed (%s); using the previous sample", self.name, e)
            return self._last
        self._failed = 0
        self.counters.reads += 1
        for motor_id, reply in replies.items():
            d = reply.data
            self._raw[motor_id] = (
                int.from_bytes(d[0:2], "little", signed=True),
                int.from_bytes(d[2:6], "little", signed=True),
                int.from_bytes(d[6:10], "little", signed=True),
            )
        for motor_id in [i for i, r in replies.items() if r.error & p.ALERT]:
            self._on_hardware_error(motor_id)
        sample = self._sample(t_ns)
        self._last = sample
        return sample

    def _sample(self, t_ns: int) -> JointSample:
        cal = self.calibration
        raw = np.array([self._raw[i] for i in self.masters], dtype=np.float64)  # (7, 3)
        position = cal.to_joint(raw[:, 2])
        velocity = cal.velocity(raw[:, 1])
        per_unit = [MODELS[self.models[i]].current_ma_per_unit for i in self.masters]
        effort = np.array([c * u if u else np.nan for c, u in zip(raw[:, 0], per_unit, strict=True)])
        effort *= np.sign(cal.scale)
        if self.role == "leader":
            position = self._to_follower(position)
            velocity = velocity.copy()
            velocity[-1] /= self._grip_hi - self._grip_lo
        return JointSample(position=position, velocity=velocity, effort=effort, t_ns=t_ns)

    def _to_follower(self, position: np.ndarray) -> np.ndarray:
        out = np.array(position, dtype=np.float64) + self._map_offset
        out[..., -1] = (np.asarray(position)[..., -1] - self._grip_lo) / (self._grip_hi - self._grip_lo)
        return out

    # -- hardware errors ----------------------------------------------------------------------------------
    def _on_hardware_error(self, motor_id: int) -> None:
        if motor_id in self._rebooting:
            return
        try:
            bits = self.bus.read(motor_id, "hardware_error_status", tries=1)
        except BusError:
            bits = 0
        what = p.describe_hardware_error(bits) if bits else "a hardware error"
        self.counters.hardware_errors += 1
        done = self._reboots.get(motor_id, 0)
        if not self.config.reboot_on_error or done >= self.config.max_reboots:
            again = f" after {done} reboot(s)" if done else ""
            raise DeviceError(
                f"{self.name}: {self.label(motor_id)} on {self.bus.port_name} reports {what}{again}; the motor "
                "has turned its torque off. Find the cause, then power-cycle the arm"
            )
        log.error(
            "%s: %s reports %s; rebooting it (%d of %d)",
            self.name,
            self.label(motor_id),
            what,
            done + 1,
            self.config.max_reboots,
        )
        self.bus.reboot(motor_id)
        self._reboots[motor_id] = done + 1
        self._rebooting[motor_id] = time.monotonic()
        self.counters.reboots += 1

    def _restore_rebooted(self) -> None:
        """Bring motors back into the loop once their reboot is over (one ping each, per read)."""
        for motor_id, since in list(self._rebooting.items()):
            waited = time.monotonic() - since
            if waited < REBOOT_WAIT_S:
                continue
            found = self.bus.ping(motor_id, tries=1, deadline_ns=time.monotonic_ns() + RESTORE_PING_NS)
            if found is None:
                if waited > REBOOT_GIVE_UP_S:
                    raise DeviceError(
                        f"{self.name}: {self.label(motor_id)} on {self.bus.port_name} did not answer "
                        f"{waited:.1f} s after its reboot; check its cable and power"
                    )
                continue
            if self.role == "follower":
                if motor_id == self.masters[-1]:
                    self.bus.write(motor_id, "goal_current", self.bus.read(motor_id, "current_limit"))
                present = self.bus.read(motor_id, "present_position")
                self.bus.write(motor_id, "goal_position", present)
                self.bus.write(motor_id, "torque_enable", 1)
            del self._rebooting[motor_id]
            log.info("%s: %s is back after its reboot", self.name, self.label(motor_id))

    # -- writing ------------------------------------------------------------------------------------------
    def write(self, target: np.ndarray) -> None:
        if self.role != "follower":
            raise DeviceError(f"{self.name} is a leader arm: it is read, not commanded")
        if not self._connected:
            raise DeviceError(f"{self.name} is not connected; call connect() first")
        target = np.asarray(target, dtype=np.float64)
        if target.shape != (ARM_DOF,) or not np.all(np.isfinite(target)):
            raise DeviceError(f"{self.name}: a target must be 7 finite numbers, got {target!r}")
        if self._last is not None:
            gap = np.abs(target[:-1] - self._last.position[:-1])
            j = int(np.argmax(gap))
            if gap[j] > self.config.max_goal_jump_rad:
                self.counters.refused_jumps += 1
                self._jump_streak += 1
                message = (
                    f"{self.name}: the {JOINT_LABELS[j]} target {target[j]:.2f} rad is {gap[j]:.2f} rad from its "
                    f"measured {self._last.position[j]:.2f} rad (limit {self.config.max_goal_jump_rad} rad)"
                )
                if self._jump_streak >= JUMP_STREAK_STOP:
                    raise DeviceError(
                        message
                        + f" for {self._jump_streak} ticks in a row; the arm is holding. Is the joint "
                        "blocked, or was it moved while the program ran?"
                    )
                if self._jump_streak == 1:
                    log.warning("%s; not sent, holding", message)
                return
        self._jump_streak = 0
        lo, hi = self.calibration.limits().T
        ticks = self.calibration.to_ticks(np.clip(target, lo, hi))
        goals = {i: int(t) for i, t in zip(self.masters, ticks, strict=True) if i not in self._rebooting}
        try:
            self.bus.sync_write("goal_position", goals)
        except PortLost as e:
            raise DeviceError(f"{self.name}: {e}") from e
        self.counters.writes += 1
