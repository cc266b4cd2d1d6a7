"""`xr0` — the command line (DESIGN.md §9).

Every command reads config.yaml (or `--config PATH`), accepts `--robot sim|aloha|aloha-emulated`, and
fails with one sentence naming the field, file or device at fault (exit 1). Commands whose capability is
not built yet say which one is missing and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from app.config import ROBOT_TYPES, AppConfig, load_config
from app.configload import ConfigError
from drivers.errors import DeviceError

log = logging.getLogger("xr0")

# Capabilities that later parts of the product add; a command that needs one says so and exits 2.
MISSING = {
    "cameras": "RealSense/OpenCV camera drivers",
    "record": "the Zarr episode store and the recorder",
    "replay": "the Zarr episode store",
    "dataset": "the Zarr episode store",
    "train": "XR0 fine-tuning",
    "serve": "the policy server",
    "rollout": "the asynchronous policy runner",
    "calibrate": "the Dynamixel arm driver",
    "model": "the XR0 model",
}
DATASET_COMMANDS = ("info", "validate", "repair", "stats", "export-lerobot", "import-lerobot", "view")
BENCH_COMMANDS = ("sim", "bus", "cameras", "loop", "recorder", "loader", "train", "inference", "async")
BUILT_BENCHES = {"sim"}


class CliError(Exception):
    """A problem the operator can fix; printed as one sentence, exit 1."""


class NotBuilt(Exception):
    """The command exists but its capability is not part of this version; exit 2."""


# -- commands --------------------------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace, config: AppConfig) -> int:
    from app.doctor import exit_code, format_checks, run_checks

    ports = [a.port for a in config.robot.arms.values() if a.port] if config.robot.type != "sim" else []
    serials = [c.serial for c in config.cameras.values() if c.type == "realsense" and c.serial]
    if config.robot.type == "sim":
        serials = []
    checks = run_checks(data_root=config.data_root, serial_ports=ports, realsense_serials=serials)
    print(format_checks(checks))
    return exit_code(checks)


def _print_teleop_report(report, out: Path | None) -> None:
    for ep in report.episodes:
        verdict = {True: "success", False: "failure", None: "not judged"}[ep.success]
        seed = f" seed {ep.seed}" if ep.seed is not None else ""
        print(f"  episode {ep.index}{seed}: {ep.ticks} ticks, {verdict}")
    rate = report.ticks / report.wall_s if report.wall_s else 0.0
    print(
        f"  {report.ticks} ticks in {report.wall_s:.1f} s wall ({rate:.1f} ticks/s); safety: {report.safety}"
    )
    if report.success_rate is not None:
        print(f"  success rate: {report.success_rate:.0%}")
    if out is not None:
        print(f"  output: {out}")


def run_teleop(
    config: AppConfig, episodes: int, episode_seconds: float | None, rerun: str, summary_path: Path | None
):
    from app.compose import build_rig
    from app.events import Publisher
    from app.teleop import TeleopSession
    from app.viz import RerunLogger, Sink

    try:
        sink = Sink.parse(rerun)
    except ValueError as e:
        raise CliError(str(e)) from e
    rig = build_rig(config)
    publisher = Publisher()
    if sink.kind != "off":
        if sink.path is not None and not sink.path.is_absolute():
            sink = replace(sink, path=Path.cwd() / sink.path)
        publisher.subscribers.append(RerunLogger(sink, config.viz))
    seconds = episode_seconds
    if seconds is None:
        seconds = (
            config.robot.scripted.episode_seconds if rig.sim is not None else config.recording.episode_seconds
        )
    stop = threading.Event()
    session = TeleopSession(rig, config.control.fps, publisher, stop)
    try:
        report = session.run(episodes, seconds)
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        publisher.close()
        rig.close()
    if summary_path is not None:
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(asdict(report), indent=2))
    return report, sink


def cmd_teleop(args: argparse.Namespace, config: AppConfig) -> int:
    rerun = args.rerun if args.rerun is not None else config.viz.rerun
    report, sink = run_teleop(config, args.episodes, args.episode_seconds, rerun, None)
    print(f"teleop on robot {config.robot.type}:")
    _print_teleop_report(report, sink.path)
    return 0


def cmd_demo(args: argparse.Namespace, config: AppConfig) -> int:
    """Until the recorder, trainer and runner are built: a short scripted teleoperation in the simulator."""
    if config.robot.type != "sim":
        raise CliError("xr0 demo runs on the simulator only (robot.type sim)")
    out = Path(args.out).resolve()
    rrd = out / "teleop.rrd"
    summary = out / "summary.json"
    print(
        f"xr0 demo: {args.episodes} scripted teleoperation episode(s) of {config.robot.sim.task} in the simulator"
    )
    report, _ = run_teleop(config, args.episodes, None, str(rrd), summary)
    _print_teleop_report(report, None)
    print(f"  Rerun recording: {rrd}   (open it with: .venv/bin/rerun {rrd})")
    print(f"  summary:         {summary}")
    return 0


def cmd_bench(args: argparse.Namespace, config: AppConfig) -> int:
    if args.bench not in BUILT_BENCHES:
        raise NotBuilt(f"xr0 bench {args.bench} is not available yet in this version")
    from app.bench import bench_sim

    result = bench_sim(config, ticks=args.ticks, seeds=args.seeds, width=args.width, height=args.height)
    print(json.dumps(result))
    return 0


def cmd_not_built(args: argparse.Namespace, config: AppConfig) -> int:
    what = MISSING[args.command]
    sub = f" {args.sub}" if getattr(args, "sub", None) else ""
    raise NotBuilt(
        f"xr0 {args.command}{sub} is not available yet: it needs {what}, which this version does not include"
    )


# -- parser ------------------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="config file (default: config.yaml in the project)")
    p.add_argument(
        "--robot", choices=ROBOT_TYPES, default=None, help="override robot.type (sim needs no hardware)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xr0",
        description="Teleop data collection, XR0 fine-tuning and asynchronous rollouts for bimanual ALOHA-class robots.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, tuple[str, Callable]] = {
        "doctor": ("check Python packages, rendering, USB/serial, cameras, GPU and disk", cmd_doctor),
        "cameras": ("list connected cameras (serial, model, firmware, USB)", cmd_not_built),
        "teleop": ("drive the followers from the leaders (sim: scripted teleoperator)", cmd_teleop),
        "record": ("record teleoperated episodes into a Zarr store", cmd_not_built),
        "replay": ("play an episode's actions back on the robot", cmd_not_built),
        "dataset": ("inspect, validate, repair, convert and view datasets", cmd_not_built),
        "train": ("fine-tune XR0 on recorded episodes", cmd_not_built),
        "serve": ("serve a policy over the network", cmd_not_built),
        "rollout": ("run a policy on the robot at 30 Hz", cmd_not_built),
        "calibrate": ("calibrate the Dynamixel arms", cmd_not_built),
        "bench": ("benchmarks; each prints a one-line JSON summary last", cmd_bench),
        "model": ("model information", cmd_not_built),
        "demo": ("the whole lab loop on the simulator (the README's main job)", cmd_demo),
    }
    for name, (help_text, fn) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        p.set_defaults(func=fn)
        if name == "teleop":
            p.add_argument(
                "--episodes", type=int, default=1, help="episodes to run (sim: each from a new seed)"
            )
            p.add_argument("--episode-seconds", type=float, default=None, help="length of one episode")
            p.add_argument(
                "--rerun", default=None, help="off | spawn | web[:PORT] | FILE.rrd (default: viz.rerun)"
            )
        elif name == "demo":
            p.add_argument("--episodes", type=int, default=2, help="scripted episodes to run")
            p.add_argument("--out", default="runs/demo", help="where the demo writes its artefacts")
        elif name == "dataset":
            p.add_argument("sub", choices=DATASET_COMMANDS, metavar="{" + ",".join(DATASET_COMMANDS) + "}")
        elif name == "model":
            p.add_argument("sub", choices=("info",), metavar="{info}")
        elif name == "bench":
            p.add_argument("bench", choices=BENCH_COMMANDS, metavar="{" + ",".join(BENCH_COMMANDS) + "}")
            p.add_argument(
                "--ticks", type=int, default=150, help="sim: control ticks timed per camera setting"
            )
            p.add_argument(
                "--seeds", type=int, default=50, help="sim: scripted episodes for the success rate (0: skip)"
            )
            p.add_argument("--width", type=int, default=320, help="sim: camera width in pixels")
            p.add_argument("--height", type=int, default=240, help="sim: camera height in pixels")
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
    os.environ.setdefault("MUJOCO_GL", "egl")
    name = f"xr0 {args.command}"
    try:
        config = load_config(args.config, args.robot)
        return args.func(args, config)
    except NotBuilt as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    except (CliError, ConfigError, DeviceError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
