"""`xr0 calibrate`: make the calibration file of each Dynamixel arm, one guided step at a time.

For each arm: open its port, check its motors, turn its torque off (support the arm!), then four steps —
zero pose, positive pose, range sweep, gripper closed (docs/hardware.md walks through them) — and write
`robot.arms.NAME.calibration` (JSON, versioned; checked against the arm whenever it is loaded).

Interactive by default: each step waits for Enter. `--non-interactive` takes each step after
`--step-seconds` instead (move the arm during the countdown). With `--robot aloha-emulated` a scripted
operator moves the emulated arm as each step asks (after Enter, when interactive), and the result is
written to the `emulated/` folder beside the real files, so rehearsing never overwrites a real arm's.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from app.compose.config import ARM_NAMES, AppConfig
from app.compose.rig import calibration_file
from app.errors import UserError
from drivers.dynamixel.aloha import ARMS, EMULATED_CONFIG_WAIT_MS
from drivers.dynamixel.bus import DynamixelBus
from drivers.dynamixel.calibration import JOINT_LABELS, STEPS, Calibration, Calibrator, Step, read_positions
from drivers.dynamixel.emulated import EmulatedOperator, emulate_arm
from drivers.joints import ARM_DOF, ARM_JOINTS


def _interactive(name: str) -> Callable[[Step], None]:
    def wait(step: Step) -> None:
        number = STEPS.index(step) + 1
        print(f"\n[{name}] step {number}/{len(STEPS)}: {step.prompt.format(arm=name)}")
        try:
            input("  press Enter when done … ")
        except EOFError:
            raise UserError(
                "xr0 calibrate waits for Enter after each step, but its input is not a terminal; run it in a "
                "terminal, or pass --non-interactive (steps taken after --step-seconds)"
            ) from None

    return wait


def _timed(name: str, seconds: float) -> Callable[[Step], None]:
    def wait(step: Step) -> None:
        number = STEPS.index(step) + 1
        print(
            f"[{name}] step {number}/{len(STEPS)}: {step.prompt.format(arm=name)} ({seconds:.0f} s)",
            flush=True,
        )
        time.sleep(seconds)

    return wait


def _scripted(name: str, operator: EmulatedOperator) -> Callable[[Step], None]:
    def wait(step: Step) -> None:
        number = STEPS.index(step) + 1
        print(
            f"[{name}] step {number}/{len(STEPS)}: {step.key.replace('_', ' ')} (emulated operator)",
            flush=True,
        )
        operator(step)

    return wait


def calibrate_arm(config: AppConfig, name: str, interactive: bool = True, step_seconds: float = 5.0) -> Path:
    """Calibrate one arm and write its file; returns the path."""
    if name not in config.robot.arms:
        raise UserError(f"arm {name} is not configured under robot.arms ({', '.join(config.robot.arms)})")
    _, role = ARMS[name]
    arm = config.robot.arms[name]
    emulator = None
    if config.robot.type == "aloha-emulated":
        emulator = emulate_arm(name, role, arm, motion="still")
        arm = replace(arm, port=emulator.port)
    bus = DynamixelBus(arm.port, arm.baudrate, name, arm.latency_timer_ms)
    if emulator is not None:
        bus.config_wait_ms = EMULATED_CONFIG_WAIT_MS
    try:
        bus.open()
        labels = {i: JOINT_LABELS[j] for j, i in enumerate(arm.motor_ids[:ARM_DOF])}
        bus.check_motors(dict(zip(arm.motor_ids, arm.motor_models, strict=True)), labels)
        print(f"{name}: torque off — the arm goes limp; support it", flush=True)
        bus.sync_write("torque_enable", dict.fromkeys(arm.motor_ids, 0))
        masters = tuple(arm.motor_ids[:ARM_DOF])
        calibrator = Calibrator(
            name, role, tuple(arm.motor_ids), tuple(arm.motor_models), lambda: read_positions(bus, masters)
        )
        if emulator is not None:
            # Nobody can move an emulated arm by hand: a scripted operator does each step (after Enter
            # when interactive, so the prompts can be rehearsed).
            operator = _scripted(name, EmulatedOperator(emulator, name, arm))
            prompt = _interactive(name) if interactive else None

            def wait(step: Step) -> None:
                if prompt is not None:
                    prompt(step)
                operator(step)

        elif interactive:
            wait = _interactive(name)
        else:
            wait = _timed(name, step_seconds)
        calibration = calibrator.run(wait)
    finally:
        bus.close()
        if emulator is not None:
            emulator.stop()
    path = calibration.save(calibration_file(config, name))
    Calibration.load(path).check_for(name, tuple(arm.motor_ids), tuple(arm.motor_models), str(path))
    return path


def describe(calibration: Calibration) -> str:
    lines = []
    for j, joint in enumerate(ARM_JOINTS):
        lines.append(
            f"    {joint:<13} zero at {calibration.offset[j]:6.0f} ticks, sign {calibration.sign[j]:+d}, "
            f"range [{calibration.lower[j]:+.2f}, {calibration.upper[j]:+.2f}] rad"
        )
    lines.append(
        f"    gripper       closed {calibration.offset[-1]:.0f} ticks, open {calibration.gripper_open:.0f} ticks"
    )
    return "\n".join(lines)


# -- command line: `xr0 calibrate` --------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--arm",
        action="append",
        choices=ARM_NAMES,
        help="arm to calibrate (repeat for several; default: all configured)",
    )
    p.add_argument(
        "--non-interactive",
        action="store_true",
        help="take each step after --step-seconds instead of waiting for Enter (aloha-emulated: a scripted operator)",
    )
    p.add_argument(
        "--step-seconds", type=float, default=5.0, help="non-interactive: seconds per step on hardware"
    )


def run(args: argparse.Namespace, config: AppConfig) -> int:
    if config.robot.type == "sim":
        raise UserError(
            "xr0 calibrate calibrates Dynamixel arms: use --robot aloha (or --robot aloha-emulated to rehearse); "
            "the simulator needs no calibration"
        )
    names = args.arm or [n for n in ARM_NAMES if n in config.robot.arms]
    if not names:
        raise UserError("robot.arms configures no arm to calibrate (see config.yaml)")
    for name in names:
        path = calibrate_arm(
            config, name, interactive=not args.non_interactive, step_seconds=args.step_seconds
        )
        print(f"{name}: calibration written to {path}")
        print(describe(Calibration.load(path)))
    return 0
