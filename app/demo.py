"""`xr0 demo` — the README's main job on the simulator.

Today: scripted teleoperation of the task in the simulator, logged to Rerun, with a summary. The recorder,
fine-tuning and the asynchronous rollout join this command as they are built.
"""

from __future__ import annotations

from pathlib import Path

from app.config import AppConfig
from app.errors import CliError
from app.teleop import print_report, run_teleop


def add_arguments(p) -> None:
    p.add_argument("--episodes", type=int, default=2, help="scripted episodes to run")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its artefacts")


def run(args, config: AppConfig) -> int:
    if config.robot.type != "sim":
        raise CliError("xr0 demo runs on the simulator only (robot.type sim, or --robot sim)")
    out = Path(args.out).resolve()
    rrd, summary = out / "teleop.rrd", out / "summary.json"
    task = config.robot.sim.task
    print(f"xr0 demo: {args.episodes} scripted teleoperation episode(s) of {task} in the simulator")
    report, _ = run_teleop(config, args.episodes, None, str(rrd), summary)
    print_report(report)
    print(f"  Rerun recording: {rrd}")
    print(f"      open it with: .venv/bin/rerun {rrd}")
    print(f"  summary:         {summary}")
    return 0
