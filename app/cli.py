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

from app.config import ROBOT_TYPES, load_config
from app.configload import ConfigError
from app.errors import CliError
from app.threads import configure_command
from drivers.errors import DeviceError

# Exit codes, one convention for every command (README "Exit codes"): 0 done; 1 the work failed (a device,
# a dataset, a policy: one sentence says which); 2 the command line or config is wrong (argparse's own
# code for usage errors); 130 interrupted (Ctrl-C).
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

# name -> (help, module implementing it)
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("check packages, rendering, USB/serial, cameras, GPU and disk", "app.doctor"),
    "cameras": ("list connected cameras (serial, model, firmware, USB)", "app.cameras"),
    "teleop": ("drive the followers from the leaders (sim: the scripted teleoperator)", "app.teleop"),
    "record": ("record teleoperated episodes into a Zarr store", "app.record"),
    "replay": ("play an episode's actions back on the robot", "app.replay"),
    "dataset": ("inspect, validate, repair, convert and view datasets", "app.dataset_cli"),
    "train": ("fine-tune XR0 on recorded episodes", "app.train_cli"),
    "serve": ("serve a policy over the network", "app.policy_server"),
    "rollout": ("run a policy on the robot at 30 Hz", "app.rollout"),
    "eval": ("closed-loop evaluation on held-out simulator seeds", "app.eval_cli"),
    "calibrate": ("calibrate the Dynamixel arms (writes robot.arms.NAME.calibration)", "app.calibrate"),
    "bench": ("benchmarks; each prints a one-line JSON summary last", "app.bench"),
    "model": ("model information", "app.model_cli"),
    "demo": ("the whole lab loop on the simulator (the README's main job)", "app.demo"),
}


def add_common(p: argparse.ArgumentParser, nested: bool = False) -> None:
    """The options every command takes. `nested`: for sub-sub-commands, whose defaults must not
    overwrite what was given before the sub-command's name (argparse copies sub-parser defaults over)."""
    unset = argparse.SUPPRESS if nested else None
    p.add_argument("--config", default=unset, help="config file (default: config.yaml in the project)")
    p.add_argument(
        "--robot", choices=ROBOT_TYPES, default=unset, help="override robot.type (sim: no hardware)"
    )
    p.add_argument("-v", "--verbose", action="store_true", default=unset or False, help="debug logging")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, where it has a real one (not None, False or a
    suppressed value) and the help does not already say it; descriptions and epilogs keep their lines."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or action.option_strings == []
            or isinstance(action, argparse._HelpAction | argparse._VersionAction)
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
        return f"{text} (default: {shown})"


class Parser(argparse.ArgumentParser):
    """argparse with our help format, for every command and sub-command (sub-parsers are this class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


class VersionAction(argparse.Action):
    """--version, computed only when asked (it runs git)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from app.version import version_text

        print(version_text())
        parser.exit()


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
        configure_command(args.command, args, config)  # torch threads, by one rule (app/threads.py)
        return args.func(args, config)
    except ConfigError as e:  # the config (or --robot) is wrong: a usage error, as argparse's are
        print(f"{name}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (CliError, DeviceError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
