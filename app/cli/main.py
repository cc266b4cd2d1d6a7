"""`xr0` — the command line (DESIGN.md §9).

Every command reads config.yaml (or `--config PATH`), accepts `--robot sim|aloha|aloha-emulated`, and
fails with one sentence naming the field, file or device at fault (exit 1).

Each command lives in a module with `add_arguments(parser)` and `run(args, config) -> int`, listed in
`COMMANDS` below (an explicit table; heavy imports such as torch stay inside `run`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from app.cli.parsing import Parser, VersionAction, add_common
from app.compose.config import load_config
from app.compose.configload import ConfigError
from app.errors import UserError
from app.runtime.threads import configure_command
from drivers.errors import DeviceError

# Exit codes, one convention for every command (README "Exit codes"): 0 done; 1 the work failed (a device,
# a dataset, a policy: one sentence says which); 2 the command line or config is wrong (argparse's own
# code for usage errors); 130 interrupted (Ctrl-C).
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

# name -> (help, module implementing it)
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("check packages, rendering, USB/serial, cameras, GPU and disk", "app.cli.commands.doctor"),
    "cameras": ("list connected cameras (serial, model, firmware, USB)", "app.cli.commands.cameras"),
    "teleop": (
        "drive the followers from the leaders (sim: the scripted teleoperator)",
        "app.cli.commands.teleop",
    ),
    "record": ("record teleoperated episodes into a Zarr store", "app.cli.commands.record"),
    "replay": ("play an episode's actions back on the robot", "app.cli.commands.replay"),
    "dataset": ("inspect, validate, repair, convert and view datasets", "app.cli.commands.dataset"),
    "train": ("fine-tune XR0 on recorded episodes", "app.cli.commands.train"),
    "serve": ("serve a policy over the network", "app.cli.commands.serve"),
    "rollout": ("run a policy on the robot at 30 Hz", "app.cli.commands.rollout"),
    "eval": ("closed-loop evaluation on held-out simulator seeds", "app.cli.commands.eval"),
    "calibrate": (
        "calibrate the Dynamixel arms (writes robot.arms.NAME.calibration)",
        "app.cli.commands.calibrate",
    ),
    "bench": ("benchmarks; each prints a one-line JSON summary last", "app.cli.commands.bench"),
    "model": ("model information", "app.cli.commands.model"),
    "demo": ("the whole lab loop on the simulator (the README's main job)", "app.cli.commands.demo"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="xr0",
        description="Teleop data collection, XR0 fine-tuning and asynchronous rollouts for bimanual ALOHA-class robots.",
    )
    parser.add_argument(
        "--version",
        action=VersionAction,
        help="print the version, git commit and library versions, then exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, module_name) in COMMANDS.items():
        module = importlib.import_module(module_name)
        epilog = getattr(module, "EPILOG", None)
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=epilog)
        add_common(p)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL announces optional accelerators at INFO
    os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco
    name = f"xr0 {args.command}"
    try:
        config = load_config(args.config, args.robot)
        configure_command(args.command, args, config)  # torch threads, by one rule (app/runtime/threads.py)
        return args.func(args, config)
    except ConfigError as e:  # the config (or --robot) is wrong: a usage error, as argparse's are
        print(f"{name}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (UserError, DeviceError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
