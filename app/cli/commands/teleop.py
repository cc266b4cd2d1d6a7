"""`xr0 teleop`: compose the rig and the Rerun view, run the `TeleopSession` (app/runtime/teleop.py) with the
operator's keys and status line, print the summary.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from app.compose.config import AppConfig
from app.runtime.events import Publisher
from app.runtime.teleop import HELP, KEYS, TeleopReport, TeleopSession
from app.viz.logger import Sink, open_sink

log = logging.getLogger(__name__)


# -- command line: `xr0 teleop` ---------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--episodes", type=int, default=1, help="episodes to run (sim: each from a new seed)")
    p.add_argument("--episode-seconds", type=float, default=None, help="length of one episode")
    p.add_argument("--rerun", default=None, help="off | spawn | web[:PORT] | FILE.rrd (default: viz.rerun)")


def run_teleop(
    config: AppConfig,
    episodes: int,
    episode_seconds: float | None,
    rerun: str,
    summary_path: Path | None = None,
) -> tuple[TeleopReport, Sink]:
    """Compose the rig and subscribers from config, run the session, always shut down cleanly."""
    from app.compose.rig import build_rig
    from app.viz.logger import rerun_logger

    sink, note = open_sink(rerun, "teleop")
    if note:
        log.warning("%s", note)
    rig = build_rig(config)
    publisher = Publisher()
    if sink.kind != "off":
        publisher.subscribers.append(rerun_logger(sink, config.viz, cameras=list(rig.robot.cameras)))
    seconds = episode_seconds
    if seconds is None:
        sim_seconds = config.robot.scripted.episode_seconds
        seconds = sim_seconds if rig.sim is not None else config.recording.episode_seconds
    from app.runtime.terminal import Console, Keyboard

    console = Console()
    try:
        with Keyboard(keys=KEYS, escapes={}) as keyboard:
            if keyboard.active:
                console.cue(HELP)
            session = TeleopSession(
                rig,
                config.control.fps,
                publisher,
                keyboard=keyboard,
                console=console,
                priority=config.runtime.loop_priority,
            )
            report = session.run(episodes, seconds)
    finally:
        publisher.close()
        rig.close()
    if summary_path is not None:
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(asdict(report), indent=2))
    return report, sink


def print_report(report: TeleopReport) -> None:
    for ep in report.episodes:
        verdict = {True: "success", False: "failure", None: "not judged"}[ep.success]
        seed = f" seed {ep.seed}" if ep.seed is not None else ""
        print(f"  episode {ep.index}{seed}: {ep.ticks} ticks, {verdict}")
    rate = report.ticks / report.wall_s if report.wall_s else 0.0
    print(
        f"  {report.ticks} ticks in {report.wall_s:.1f} s wall ({rate:.1f} ticks/s); safety: {report.safety}"
    )
    if report.lateness_ms:
        lat = report.lateness_ms
        print(f"  loop lateness p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms")
    print(f"  control thread: {report.loop_priority}")
    obs = report.observations
    if obs.get("duplicated_frames") or obs.get("skewed"):
        print(f"  observations: {obs['duplicated_frames']} duplicated frame(s), {obs['skewed']} skewed")
    if report.success_rate is not None:
        print(f"  success rate: {report.success_rate:.0%}")
    if report.paused_ticks:
        print(f"  paused for {report.paused_ticks} ticks (the followers held)")
    if report.error:
        print(f"  stopped early: {report.error}")
    elif report.stopped_by != "done":
        print(f"  stopped by {report.stopped_by}")


def run(args: argparse.Namespace, config: AppConfig) -> int:
    rerun = args.rerun if args.rerun is not None else config.viz.rerun
    report, sink = run_teleop(config, args.episodes, args.episode_seconds, rerun)
    print(f"teleop on robot {config.robot.type}:")
    print_report(report)
    if sink.path is not None:
        print(f"  Rerun recording: {sink.path}")
    if report.error:
        return 1
    return 130 if report.stopped_by == "interrupted" else 0
