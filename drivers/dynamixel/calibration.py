"""Joint calibration of one Dynamixel arm: raw ticks ⇄ radians and the gripper fraction, in a versioned file.

Each of the 6 joints maps ticks to radians as `rad = sign × (ticks − offset) × 2π/4096`, where `offset` is
the reading in the zero pose and `sign` makes positive angles turn the way the ViperX model (and the
simulator) turns; its limits are the range swept by hand during calibration. The gripper maps
`fraction = (ticks − closed) / (open − closed)`: 0 closed, 1 open.

The file is JSON (`format`, `version`, the arm's name, role, motor ids and models, then the numbers); it
is checked against the arm it is loaded for, so a file made for another arm or another wiring is
refused with a sentence instead of driving the wrong joints. `Calibrator` runs the four steps of
`xr0 calibrate` (zero pose, positive pose, range sweep, gripper closed) on an open bus.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from drivers.dynamixel.tables import RAD_PER_TICK, RAD_S_PER_VELOCITY_UNIT, STATE_BLOCK
from drivers.errors import DeviceError
from drivers.joints import ARM_DOF, ARM_JOINTS

FORMAT = "xr0-dynamixel-calibration"
VERSION = 1
JOINT_LABELS = (*ARM_JOINTS, "gripper")
MIN_SIGN_TICKS = 100  # ~9°: the positive pose must move every joint at least this far from the zero pose
MIN_RANGE_RAD = 0.2  # a joint swept less than this during the range step was not moved


class CalibrationError(DeviceError):
    """A calibration file is missing, unreadable, for another arm, or a calibration step went wrong."""


@dataclass(frozen=True)
class Calibration:
    arm: str  # e.g. left_follower
    role: str  # leader | follower
    motor_ids: tuple[int, ...]  # the chain's ids (joint order, shadows last) when it was calibrated
    motor_models: tuple[str, ...]
    offset: tuple[float, ...]  # (7,) ticks at 0 rad; for the gripper the closed reading
    sign: tuple[int, ...]  # (7,) +1/−1 for the joints; for the gripper the sign of open − closed
    lower: tuple[float, ...]  # (6,) rad
    upper: tuple[float, ...]  # (6,) rad
    gripper_open: float  # ticks
    created: str = ""

    def __post_init__(self) -> None:
        if len(self.offset) != ARM_DOF or len(self.sign) != ARM_DOF:
            raise CalibrationError(f"calibration of {self.arm}: offset and sign need {ARM_DOF} entries each")
        if len(self.lower) != ARM_DOF - 1 or len(self.upper) != ARM_DOF - 1:
            raise CalibrationError(
                f"calibration of {self.arm}: lower and upper need {ARM_DOF - 1} entries each"
            )
        if abs(self.gripper_open - self.offset[-1]) < 1:
            raise CalibrationError(
                f"calibration of {self.arm}: the gripper's open and closed readings are equal"
            )
        for j, (lo, hi) in enumerate(zip(self.lower, self.upper, strict=True)):
            if not lo < hi:
                raise CalibrationError(
                    f"calibration of {self.arm}: {ARM_JOINTS[j]} lower limit {lo} is not below {hi}"
                )

    # -- conversions -------------------------------------------------------------------------------------
    @property
    def _offsets(self) -> np.ndarray:
        return np.asarray(self.offset, dtype=np.float64)

    @property
    def scale(self) -> np.ndarray:
        """(7,) radians (gripper: fraction) per tick."""
        s = np.asarray(self.sign, dtype=np.float64) * RAD_PER_TICK
        s[-1] = 1.0 / (self.gripper_open - self.offset[-1])
        return s

    def to_joint(self, ticks: np.ndarray) -> np.ndarray:
        """(7,) raw positions → rad ×6 + gripper fraction."""
        return (np.asarray(ticks, dtype=np.float64) - self._offsets) * self.scale

    def to_ticks(self, position: np.ndarray) -> np.ndarray:
        """(7,) rad ×6 + gripper fraction → raw goal positions (int)."""
        return np.rint(self._offsets + np.asarray(position, dtype=np.float64) / self.scale).astype(np.int64)

    def velocity(self, units: np.ndarray) -> np.ndarray:
        """(7,) Present Velocity (0.229 rpm units) → rad/s ×6 + gripper fraction/s."""
        ticks_per_s = np.asarray(units, dtype=np.float64) * RAD_S_PER_VELOCITY_UNIT / RAD_PER_TICK
        return ticks_per_s * self.scale

    def limits(self) -> np.ndarray:
        """(7, 2) rad ×6 + gripper [0, 1]."""
        return np.vstack([np.column_stack([self.lower, self.upper]), [0.0, 1.0]])

    # -- file --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "arm": self.arm,
            "role": self.role,
            "created": self.created,
            "motor_ids": list(self.motor_ids),
            "motor_models": list(self.motor_models),
            "joints": {
                name: {
                    "offset_ticks": self.offset[j],
                    "sign": self.sign[j],
                    "lower_rad": self.lower[j],
                    "upper_rad": self.upper[j],
                }
                for j, name in enumerate(ARM_JOINTS)
            },
            "gripper": {"closed_ticks": self.offset[-1], "open_ticks": self.gripper_open},
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)  # atomic: a crash never leaves half a file
        return path

    @classmethod
    def from_dict(cls, data: dict, source: str = "calibration") -> Calibration:
        if data.get("format") != FORMAT:
            raise CalibrationError(
                f"{source} is not an xr0 Dynamixel calibration file (format {data.get('format')!r})"
            )
        if data.get("version") != VERSION:
            raise CalibrationError(
                f"{source} has calibration format version {data.get('version')}, this xr0 reads version {VERSION}; "
                "run `xr0 calibrate` again"
            )
        try:
            joints = [data["joints"][name] for name in ARM_JOINTS]
            gripper = data["gripper"]
            return cls(
                arm=str(data["arm"]),
                role=str(data["role"]),
                motor_ids=tuple(int(i) for i in data["motor_ids"]),
                motor_models=tuple(str(m) for m in data["motor_models"]),
                offset=(*(float(j["offset_ticks"]) for j in joints), float(gripper["closed_ticks"])),
                sign=(
                    *(int(j["sign"]) for j in joints),
                    1 if gripper["open_ticks"] > gripper["closed_ticks"] else -1,
                ),
                lower=tuple(float(j["lower_rad"]) for j in joints),
                upper=tuple(float(j["upper_rad"]) for j in joints),
                gripper_open=float(gripper["open_ticks"]),
                created=str(data.get("created", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(
                f"{source} is incomplete or malformed ({e!r}); run `xr0 calibrate` again"
            ) from e

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"calibration file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CalibrationError(f"calibration file {path} cannot be read: {e}") from e
        return cls.from_dict(data, str(path))

    def check_for(
        self, arm: str, motor_ids: tuple[int, ...], motor_models: tuple[str, ...], source: str
    ) -> None:
        """Refuse a calibration made for another arm or another wiring."""
        if self.arm != arm:
            raise CalibrationError(
                f"{source} was made for arm {self.arm}, not {arm}: point robot.arms.{arm}.calibration at "
                f"{arm}'s own file or run `xr0 calibrate --arm {arm}`"
            )
        if tuple(self.motor_ids) != tuple(motor_ids) or tuple(self.motor_models) != tuple(motor_models):
            raise CalibrationError(
                f"{source} was made for motors {list(self.motor_ids)} ({', '.join(self.motor_models)}), but "
                f"robot.arms.{arm} now lists {list(motor_ids)} ({', '.join(motor_models)}); "
                f"run `xr0 calibrate --arm {arm}` again"
            )


# -- the calibration procedure -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    key: str
    prompt: str
    sweep: bool = False  # positions are sampled continuously while the operator works


STEPS = (
    Step(
        "zero",
        "Put {arm} in its ZERO pose: waist centred, upper arm straight up, forearm level pointing forward, "
        "wrist straight and level, wrist and forearm unrolled (docs/hardware.md, 'Zero pose'). Hold it there.",
    ),
    Step(
        "positive",
        "Move every joint about 30° from the zero pose in its POSITIVE direction: waist turned to the arm's "
        "left, upper arm tilted forward, forearm tilted down, forearm rolled and wrist rotated clockwise "
        "(seen from behind the arm), wrist tilted down. Hold it there.",
    ),
    Step(
        "range",
        "Move every joint slowly through its WHOLE RANGE, and open and close the gripper fully. "
        "Positions are recorded until you confirm.",
        sweep=True,
    ),
    Step("gripper_closed", "CLOSE the gripper fully and hold it closed."),
)


@dataclass
class _Record:
    zero: np.ndarray | None = None
    positive: np.ndarray | None = None
    gripper_closed: float | None = None
    low: np.ndarray = field(default_factory=lambda: np.full(ARM_DOF, np.inf))
    high: np.ndarray = field(default_factory=lambda: np.full(ARM_DOF, -np.inf))


class Calibrator:
    """Runs the calibration steps on one open chain and builds its `Calibration`.

    `read_ticks` returns the (7,) raw positions of the joints and the gripper (master motors, joint order).
    """

    def __init__(
        self,
        arm: str,
        role: str,
        motor_ids: tuple[int, ...],
        motor_models: tuple[str, ...],
        read_ticks: Callable[[], np.ndarray],
    ) -> None:
        self.arm, self.role = arm, role
        self.motor_ids, self.motor_models = tuple(motor_ids), tuple(motor_models)
        self.read_ticks = read_ticks
        self.record = _Record()

    def _sample(self) -> np.ndarray:
        ticks = np.asarray(self.read_ticks(), dtype=np.float64)
        self.record.low = np.minimum(self.record.low, ticks)
        self.record.high = np.maximum(self.record.high, ticks)
        return ticks

    def run(self, wait: Callable[[Step], None], sample_hz: float = 50.0) -> Calibration:
        """Go through the steps; `wait(step)` returns when the operator has done it (Enter, a timer, a script)."""
        for step in STEPS:
            if step.sweep:
                stop = threading.Event()
                errors: list[BaseException] = []

                def sweep(stop: threading.Event = stop, errors: list = errors) -> None:
                    while not stop.is_set():
                        try:
                            self._sample()
                        except BaseException as e:  # noqa: BLE001 - reported after the step
                            errors.append(e)
                            return
                        stop.wait(1.0 / sample_hz)

                worker = threading.Thread(target=sweep, name=f"calibrate-{self.arm}", daemon=True)
                worker.start()
                try:
                    wait(step)
                finally:
                    stop.set()
                    worker.join(timeout=2)
                if errors:
                    raise errors[0]
                self._sample()
            else:
                wait(step)
                ticks = self._sample()
                if step.key == "gripper_closed":
                    self.record.gripper_closed = float(ticks[-1])
                else:
                    setattr(self.record, step.key, ticks)
        return self.result()

    def result(self) -> Calibration:
        r = self.record
        if r.zero is None or r.positive is None or r.gripper_closed is None:
            raise CalibrationError(f"{self.arm}: the calibration steps were not all done")
        sign, lower, upper = [], [], []
        for j, name in enumerate(ARM_JOINTS):
            moved = r.positive[j] - r.zero[j]
            if abs(moved) < MIN_SIGN_TICKS:
                raise CalibrationError(
                    f"{self.arm}: {name} moved only {abs(moved) * RAD_PER_TICK * 180 / math.pi:.0f}° between the zero "
                    "and the positive pose; move it about 30° in its positive direction and calibrate again"
                )
            s = 1 if moved > 0 else -1
            ends = sorted(s * (np.array([r.low[j], r.high[j]]) - r.zero[j]) * RAD_PER_TICK)
            if ends[1] - ends[0] < MIN_RANGE_RAD:
                raise CalibrationError(
                    f"{self.arm}: {name} barely moved during the range step; sweep every joint through its whole range"
                )
            sign.append(s)
            lower.append(float(ends[0]))
            upper.append(float(ends[1]))
        closed = r.gripper_closed
        far = r.low[-1] if abs(r.low[-1] - closed) > abs(r.high[-1] - closed) else r.high[-1]
        if abs(far - closed) < MIN_SIGN_TICKS:
            raise CalibrationError(
                f"{self.arm}: the gripper's open and closed readings are only {abs(far - closed):.0f} ticks apart; "
                "open it fully during the range step"
            )
        return Calibration(
            arm=self.arm,
            role=self.role,
            motor_ids=self.motor_ids,
            motor_models=self.motor_models,
            offset=(*(float(v) for v in r.zero[:6]), float(closed)),
            sign=(*sign, 1 if far > closed else -1),
            lower=tuple(lower),
            upper=tuple(upper),
            gripper_open=float(far),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )


def read_positions(bus, master_ids: tuple[int, ...], budget_s: float = 0.2) -> np.ndarray:
    """(7,) raw present positions of the master motors (a sync read of the state block)."""
    deadline = time.monotonic_ns() + int(budget_s * 1e9)
    replies = bus.sync_read(tuple(master_ids), *STATE_BLOCK, deadline)
    return np.array(
        [int.from_bytes(replies[i].data[6:10], "little", signed=True) for i in master_ids], dtype=np.float64
    )
