"""`ArmConfig`: one Dynamixel chain as config.yaml describes it (`robot.arms.NAME`), checked against the
servo tables when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ArmConfig:
    """One Dynamixel chain: where it is plugged in, which servos it must find, and its calibration."""

    # Serial device of the U2D2/FTDI adapter; prefer a udev symlink such as /dev/ttyDXL_left_follower.
    port: str = ""
    # Bus speed in baud. Must match the servos' EEPROM Baud Rate: Interbotix ships ALOHA arms at 1 Mbps;
    # 4 Mbps (set with Dynamixel Wizard) cuts the bus time per tick by ~4x.
    baudrate: int = 1_000_000
    # Servo ids on this chain, in joint order (waist … wrist_rotate, gripper; shadow motors after).
    motor_ids: tuple[int, ...] = ()
    # Servo model per id, same order (e.g. xm430-w350, xm540-w270, xl430-w250, xc430-w150).
    motor_models: tuple[str, ...] = ()
    # Shadow motors that follow a master joint: {shadow_id: master_id} (ViperX shoulder and elbow).
    shadows: dict[int, int] = field(default_factory=dict)
    # Calibration file made by `xr0 calibrate` (offsets, signs, gripper range) for exactly this arm.
    calibration: str = ""
    # Gripper current limit in mA (followers run the gripper in current-based position mode).
    gripper_current_limit_ma: float = 538.0
    # Longest time one read of this chain may take in a control tick, retries included (ms). A read that
    # fails within it returns the previous sample (counted; its old capture time shows it is stale).
    read_budget_ms: float = 10.0
    # Failed reads in a row before the arm stops with an error naming the port, motor and fault.
    max_failed_reads: int = 5
    # USB adapter latency timer assumed when waiting for status packets (ms); set the FTDI's to 1 ms
    # (docs/hardware.md). A larger measured value is used instead, with a warning.
    latency_timer_ms: float = 1.0
    # Followers: a joint target further than this from the measured position is not sent (the arm holds
    # and it is counted); a second of such targets in a row stops the arm (rad).
    max_goal_jump_rad: float = 0.5
    # On a hardware error (overload, overheating, voltage, …) reboot the motor, at most max_reboots times
    # per session per motor; beyond that the arm stops with the decoded error.
    reboot_on_error: bool = True
    max_reboots: int = 3
    # Leaders only: added to the 6 leader joint angles to give follower targets (rad), e.g. to correct a
    # mounting difference; empty means zeros.
    to_follower_offsets_rad: tuple[float, ...] = ()
    # Leaders only: the leader gripper fractions that become follower closed (0) and open (1).
    to_follower_gripper: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        from drivers.dynamixel.tables import BAUD_RATES, MODELS

        if len(self.motor_ids) != len(self.motor_models):
            raise ValueError(
                f"motor_ids has {len(self.motor_ids)} entries but motor_models has {len(self.motor_models)}; "
                "give one model per id"
            )
        if self.motor_ids:
            if len(self.motor_ids) != 7 + len(self.shadows):
                raise ValueError(
                    f"motor_ids lists {len(self.motor_ids)} ids, but an arm needs 7 (6 joints + gripper) plus one "
                    f"per shadow motor ({len(self.shadows)})"
                )
            if len(set(self.motor_ids)) != len(self.motor_ids):
                raise ValueError(f"motor_ids {list(self.motor_ids)} lists an id twice")
            bad = [i for i in self.motor_ids if not 0 <= i <= 252]
            if bad:
                raise ValueError(f"motor_ids: {bad} outside 0..252")
            for shadow, master in self.shadows.items():
                if shadow not in self.motor_ids[7:] or master not in self.motor_ids[:6]:
                    raise ValueError(
                        f"shadows: {{{shadow}: {master}}} must map a shadow id listed after the 7 joint ids to "
                        "one of the first 6 (joint) ids"
                    )
        for model in self.motor_models:
            if model not in MODELS:
                raise ValueError(f"motor_models: unknown model {model!r}; known: {', '.join(MODELS)}")
        if self.baudrate not in BAUD_RATES.values():
            raise ValueError(
                f"baudrate {self.baudrate} is not a Dynamixel rate; use one of {sorted(BAUD_RATES.values())}"
            )
        if not 0 < self.gripper_current_limit_ma <= 5000:
            raise ValueError("gripper_current_limit_ma must be in (0, 5000] mA")
        if not 1 <= self.read_budget_ms <= 30:
            raise ValueError("read_budget_ms must be between 1 and 30 ms (a 30 Hz tick is 33 ms)")
        if self.max_failed_reads < 1 or self.max_reboots < 0:
            raise ValueError("max_failed_reads must be >= 1 and max_reboots >= 0")
        if not 0 <= self.latency_timer_ms <= 32:
            raise ValueError("latency_timer_ms must be between 0 and 32 ms")
        if not self.max_goal_jump_rad > 0:
            raise ValueError("max_goal_jump_rad must be > 0")
        if len(self.to_follower_offsets_rad) not in (0, 6):
            raise ValueError("to_follower_offsets_rad needs 6 values (one per joint) or none")
        lo, hi = self.to_follower_gripper
        if lo == hi:
            raise ValueError("to_follower_gripper: the closed and open fractions must differ")
